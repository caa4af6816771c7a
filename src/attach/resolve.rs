//! Resolvers: where the files of one `--file` spec come from.
//!
//! A spec without a scheme names a host path, which `expand::expand_one` stats and walks.
//! A spec `SCHEME:REST...` goes to the resolver a plugin registered for SCHEME, found
//! through [`Schemes`]; what it answers is placed here by [`place`], with the same rules as
//! a local directory (instance path, owner and mode overrides, excludes), and its in-memory
//! content is written to a content-addressed file so that hashing, dedup and upload treat
//! it exactly like a local file. A single letter before `:` (a Windows drive) or a plain
//! path never reaches a plugin.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{expand, AttachError, Attachment, Excludes, FileSpec, PlaceError};
use crate::plugin::PluginError;

/// Turns one parsed spec into attachments, in order.
pub trait Resolver {
    fn resolve(&self, spec: &FileSpec, excludes: &Excludes)
        -> Result<Vec<Attachment>, AttachError>;
}

/// What the spec parser needs to know about a registered scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemeInfo {
    /// How many `:`-separated pieces REST takes.
    pub parts: usize,
    /// How to write one, for errors (`git:REV:PATH`).
    pub usage: String,
}

/// The schemes registered by plugins. An error is a name no plugin can answer for (say,
/// two plugins claiming one scheme).
pub trait Schemes {
    fn scheme(&self, name: &str) -> Result<Option<SchemeInfo>, PluginError>;
    fn resolver(&self, name: &str) -> Result<Option<&dyn Resolver>, PluginError>;
}

/// No plugins: every spec is a host path.
pub struct NoSchemes;

impl Schemes for NoSchemes {
    fn scheme(&self, _name: &str) -> Result<Option<SchemeInfo>, PluginError> {
        Ok(None)
    }
    fn resolver(&self, _name: &str) -> Result<Option<&dyn Resolver>, PluginError> {
        Ok(None)
    }
}

/// Whether `piece` (the text before a spec's first `:`) could name a scheme: two or more of
/// `a-z 0-9 + - .`, starting with a letter. One letter is a Windows drive, never a scheme.
pub fn looks_like_scheme(piece: &str) -> bool {
    let mut chars = piece.chars();
    piece.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// `SCHEME` and `REST` of a parsed spec's host, when it has a scheme. The parser only
/// lets a `:` into the host for a registered scheme, so a plain path never matches.
pub fn split_scheme(host: &str) -> Option<(&str, &str)> {
    host.split_once(':')
        .filter(|(scheme, _)| looks_like_scheme(scheme))
}

/// Expands specs into attachments through their resolvers, in order; later entries for the
/// same instance path win, at their position (as [`expand::expand`]).
pub fn expand_with(
    specs: &[FileSpec],
    excludes: &Excludes,
    schemes: &dyn Schemes,
) -> Result<Vec<Attachment>, AttachError> {
    let mut all = Vec::new();
    for spec in specs {
        let before = all.len();
        match split_scheme(&spec.host) {
            None => expand::expand_one(spec, excludes, &mut all)?,
            Some((scheme, _)) => {
                let resolver = schemes
                    .resolver(scheme)
                    .map_err(|source| AttachError::Scheme {
                        spec: spec.to_string(),
                        source: Box::new(source),
                    })?
                    .ok_or_else(|| AttachError::NoScheme {
                        spec: spec.to_string(),
                        scheme: scheme.to_string(),
                    })?;
                all.extend(resolver.resolve(spec, excludes)?);
            }
        }
        expand::check_destinations(spec, &all[before..])?;
    }
    Ok(expand::dedup_keep_last(all))
}

/// Where a resolved file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Host(PathBuf),
    Content(Vec<u8>),
}

/// One file as a resolver answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Relative to what REST names, `/`-separated; `""` for the one file REST names.
    pub rel: String,
    pub source: Source,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

/// Places a resolver's files like a local directory's: under the spec's `/inst`, else
/// under `name` (the resolver's idea of a host path). The spec's owner and mode win, then
/// the resolver's, then the host file's stat (content: 0, 0, 0644). Excludes apply to the
/// relative paths, as to a walked directory; a lone file (`rel` empty) is never excluded.
/// In-memory content is stored under `content_dir` by its SHA-256.
pub fn place(
    spec: &FileSpec,
    name: &str,
    files: Vec<Resolved>,
    excludes: &Excludes,
    content_dir: &Path,
) -> Result<Vec<Attachment>, AttachError> {
    let invalid = |reason: PlaceError| AttachError::Place {
        spec: spec.to_string(),
        reason,
    };
    let base = spec.instance.as_deref().unwrap_or(name);
    if base.is_empty() {
        return Err(invalid(PlaceError::NoPlace));
    }
    if files.iter().any(|f| f.rel.is_empty()) && files.len() > 1 {
        return Err(invalid(PlaceError::LoneFile));
    }
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let rel = &file.rel;
        let bad_rel = rel.starts_with('/')
            || rel
                .split('/')
                .any(|p| p == ".." || p == "." || (p.is_empty() && !rel.is_empty()));
        if bad_rel {
            return Err(invalid(PlaceError::BadPath(rel.clone())));
        }
        if !rel.is_empty() && excludes.is_excluded(rel) {
            continue;
        }
        let instance_path = if rel.is_empty() {
            base.to_string()
        } else {
            format!("{}/{rel}", base.trim_end_matches('/'))
        };
        let (host_path, size, stat) = match file.source {
            Source::Host(path) => {
                let meta = fs::metadata(&path).map_err(|source| AttachError::Stat {
                    host: path.display().to_string(),
                    source,
                })?;
                if !meta.is_file() {
                    return Err(AttachError::NotFileOrDir {
                        host: path.display().to_string(),
                    });
                }
                let stat = (meta.uid(), meta.gid(), meta.mode() & 0o7777);
                (path, meta.len(), stat)
            }
            Source::Content(bytes) => {
                let path = store_content(content_dir, &bytes)?;
                (path, bytes.len() as u64, (0, 0, 0o644))
            }
        };
        out.push(Attachment {
            host_path,
            instance_path,
            uid: spec.uid.or(file.uid).unwrap_or(stat.0),
            gid: spec.gid.or(file.gid).unwrap_or(stat.1),
            mode: spec
                .mode
                .or(file.mode.map(|m| m & 0o7777))
                .unwrap_or(stat.2),
            size,
        });
    }
    Ok(out)
}

/// Writes `bytes` to `dir/<sha256>` unless it is already there (write, then rename, so a
/// half-written file is never found); returns its path.
fn store_content(dir: &Path, bytes: &[u8]) -> Result<PathBuf, AttachError> {
    let sha = crate::sha256::of(bytes);
    let path = dir.join(&sha);
    if fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
        return Ok(path);
    }
    fs::create_dir_all(dir).map_err(|source| AttachError::CacheDir {
        dir: dir.display().to_string(),
        source,
    })?;
    let write_err = |source| AttachError::CacheWrite {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    tmp.persist(&path).map_err(|e| write_err(e.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::parse_spec;
    use std::collections::BTreeMap;

    /// Schemes from a table; resolves to one fixed file named after REST.
    struct Fake(BTreeMap<&'static str, usize>);

    struct FakeResolver(PathBuf);

    impl Resolver for FakeResolver {
        fn resolve(
            &self,
            spec: &FileSpec,
            excludes: &Excludes,
        ) -> Result<Vec<Attachment>, AttachError> {
            let (_, rest) = split_scheme(&spec.host).unwrap();
            let files = vec![
                Resolved {
                    rel: "a.txt".into(),
                    source: Source::Content(rest.as_bytes().to_vec()),
                    uid: None,
                    gid: None,
                    mode: Some(0o755),
                },
                Resolved {
                    rel: ".hidden".into(),
                    source: Source::Content(b"h".to_vec()),
                    uid: Some(5),
                    gid: None,
                    mode: None,
                },
            ];
            place(spec, "fake", files, excludes, &self.0)
        }
    }

    impl Schemes for (Fake, FakeResolver) {
        fn scheme(&self, name: &str) -> Result<Option<SchemeInfo>, PluginError> {
            if name == "clash" {
                return Err(PluginError::Clash {
                    what: "file scheme",
                    name: "clash:".into(),
                    first: "/a.so".into(),
                    second: "/b.so".into(),
                });
            }
            Ok(self.0 .0.get(name).map(|&parts| SchemeInfo {
                parts,
                usage: format!("{name}:REST"),
            }))
        }
        fn resolver(&self, name: &str) -> Result<Option<&dyn Resolver>, PluginError> {
            Ok(self
                .0
                 .0
                .contains_key(name)
                .then_some(&self.1 as &dyn Resolver))
        }
    }

    fn schemes(dir: &Path) -> (Fake, FakeResolver) {
        (
            Fake(BTreeMap::from([("fake", 2), ("one", 1)])),
            FakeResolver(dir.into()),
        )
    }

    fn parse(spec: &str, s: &dyn Schemes) -> Result<FileSpec, AttachError> {
        crate::attach::parse_spec_with(spec, s, &mut Vec::new())
    }

    #[test]
    fn a_registered_scheme_takes_its_parts_then_the_usual_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let s = schemes(tmp.path());
        let spec = parse("fake:a:b:/app:u1:m600", &s).unwrap();
        assert_eq!(spec.host, "fake:a:b");
        assert_eq!(spec.instance.as_deref(), Some("/app"));
        assert_eq!((spec.uid, spec.mode), (Some(1), Some(0o600)));
        assert_eq!(parse(&spec.to_string(), &s).unwrap(), spec);
        // Too few parts, or an empty one, is the scheme's usage error.
        for bad in ["fake:a", "fake:a:", "fake::b"] {
            assert_eq!(
                parse(bad, &s).unwrap_err().to_string(),
                format!(
                    "invalid file spec '{bad}': expected fake:REST[:/inst][:uUID][:gGID][:mMODE]"
                )
            );
        }
        assert_eq!(
            parse("clash:x", &s).unwrap_err().to_string(),
            "cannot resolve file spec 'clash:x': file scheme 'clash:' is provided by two plugins: '/a.so' and '/b.so'"
        );
    }

    #[test]
    fn drives_plain_paths_and_unknown_schemes_stay_local() {
        let tmp = tempfile::tempdir().unwrap();
        let s = schemes(tmp.path());
        assert_eq!(parse("proj:/app", &s).unwrap().host, "proj");
        assert_eq!(parse("fake", &s).unwrap().host, "fake");
        assert_eq!(parse("./fake:/x", &s).unwrap().host, "./fake");
        // `C:\x:/app` is a drive: same error as without plugins.
        assert_eq!(
            parse("C:\\x:/app", &s).unwrap_err().to_string(),
            parse_spec("C:\\x:/app", &mut Vec::new())
                .unwrap_err()
                .to_string()
        );
        assert!(!looks_like_scheme("c"));
        assert!(!looks_like_scheme("Git"));
        assert!(looks_like_scheme("s3"));
        assert!(looks_like_scheme("git+ssh"));
    }

    #[test]
    fn resolved_files_are_placed_like_a_directory_and_content_is_stored_by_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let s = schemes(tmp.path());
        let excludes = Excludes::new(&[]).unwrap();
        let specs = [
            parse("fake:x:y:/app:g7", &s).unwrap(),
            parse("fake:q:r", &s).unwrap(),
        ];
        let got = expand_with(&specs, &excludes, &s).unwrap();
        let view: Vec<_> = got
            .iter()
            .map(|a| (a.instance_path.as_str(), a.uid, a.gid, a.mode, a.size))
            .collect();
        // `.hidden` falls to the default excludes, as in a walked directory.
        assert_eq!(
            view,
            [
                ("/app/a.txt", 0, 7, 0o755, 3),
                ("fake/a.txt", 0, 0, 0o755, 3)
            ]
        );
        assert_eq!(fs::read(&got[0].host_path).unwrap(), b"x:y");
        assert_eq!(
            got[0].host_path.file_name().unwrap().to_str().unwrap(),
            crate::attach::sha256_file(&got[0].host_path).unwrap()
        );
    }

    #[test]
    fn a_scheme_nobody_provides_is_named() {
        let spec = FileSpec {
            host: "nope:x".into(),
            instance: None,
            uid: None,
            gid: None,
            mode: None,
        };
        let err = expand_with(&[spec], &Excludes::new(&[]).unwrap(), &NoSchemes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot resolve file spec 'nope:x': no plugin provides the 'nope:' scheme"
        );
    }

    #[test]
    fn bad_answers_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = parse_spec("x", &mut Vec::new()).unwrap();
        let ex = Excludes::new(&[]).unwrap();
        let file = |rel: &str| Resolved {
            rel: rel.into(),
            source: Source::Content(vec![]),
            uid: None,
            gid: None,
            mode: None,
        };
        for rel in ["../x", "/abs", "a//b", "a/./b"] {
            let err = place(&spec, "n", vec![file(rel)], &ex, tmp.path()).unwrap_err();
            assert!(err.to_string().contains("bad path"), "{rel}: {err}");
        }
        let err = place(&spec, "n", vec![file(""), file("a")], &ex, tmp.path()).unwrap_err();
        assert!(err.to_string().contains("lone file"), "{err}");
        let out = place(&spec, "n", vec![file("")], &ex, tmp.path()).unwrap();
        assert_eq!(out[0].instance_path, "n");
    }
}
