//! Expanding parsed `--file` specs into the concrete files to attach.
//!
//! A spec naming a regular file (symlinks followed) becomes one attachment and is never
//! subject to excludes. A directory is walked top-down in file-name order without following
//! directory symlinks: a symlink to a regular file is attached with its target's content and
//! stat, while a symlink to a directory and a dangling symlink are skipped silently. Sockets,
//! fifos and devices inside a directory are skipped too. Excluded directories are pruned
//! before descending. This module reads metadata only, never file content.

use std::collections::HashSet;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use walkdir::WalkDir;

use super::{AttachError, FileSpec};

/// One file to attach, after stat and directory expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file to read; symlinks are not resolved in the path itself, reading follows them.
    pub host_path: PathBuf,
    pub instance_path: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits incl. setuid/setgid/sticky.
    pub mode: u32,
    pub size: u64,
}

/// The default excludes, always applied to directory attachments.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    ".*",
    ".git",
    "*.pyc",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".venv",
    "node_modules",
    "dist",
    "build",
];

/// Compiled exclude patterns (defaults + extra), fnmatch-style.
pub struct Excludes {
    set: GlobSet,
}

impl Excludes {
    /// Compiles [`DEFAULT_EXCLUDES`] plus `extra`.
    pub fn new(extra: &[String]) -> Result<Excludes, AttachError> {
        let mut builder = GlobSetBuilder::new();
        let patterns = DEFAULT_EXCLUDES
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str));
        for pattern in patterns {
            let glob = GlobBuilder::new(&fnmatch_to_glob(pattern))
                // fnmatch: `*` crosses `/`, and a backslash is an ordinary character.
                .literal_separator(false)
                .backslash_escape(false)
                .case_insensitive(false)
                .build()
                .map_err(|e| AttachError::BadExclude {
                    pattern: pattern.to_string(),
                    reason: e.kind().to_string(),
                })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| AttachError::BadExclude {
            pattern: e.glob().unwrap_or_default().to_string(),
            reason: e.kind().to_string(),
        })?;
        Ok(Excludes { set })
    }

    /// Whether the `/`-separated relative path `rel` is excluded: some pattern matches the
    /// whole path or any single component of it.
    pub fn is_excluded(&self, rel: &str) -> bool {
        self.set.is_match(rel) || rel.split('/').any(|component| self.set.is_match(component))
    }
}

/// fnmatch has no `{a,b}` alternation but globset does; wrap braces outside a character class
/// in a class of their own so they stay literal.
fn fnmatch_to_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' | '}' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            '[' => {
                // Copy the class verbatim; a `]` right after `[`, `[!` or `[^` is a member.
                out.push('[');
                if let Some(&neg @ ('!' | '^')) = chars.peek() {
                    out.push(neg);
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push(']');
                    chars.next();
                }
                for member in chars.by_ref() {
                    out.push(member);
                    if member == ']' {
                        break;
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Expands specs into attachments, in order.
///
/// Later entries for the same instance path win: dedup keeps the last, at its position.
pub fn expand(specs: &[FileSpec], excludes: &Excludes) -> Result<Vec<Attachment>, AttachError> {
    let mut all = Vec::new();
    for spec in specs {
        let before = all.len();
        expand_one(spec, excludes, &mut all)?;
        check_destinations(spec, &all[before..])?;
    }
    Ok(dedup_keep_last(all))
}

/// Every file of `spec` must land on a path with a name: `f:/` (or `f:/x/..`) names the
/// root directory, which no file can replace. Checked here, not by the parser, because
/// `dir:/` is fine: a directory's files land under `/`.
pub(super) fn check_destinations(spec: &FileSpec, added: &[Attachment]) -> Result<(), AttachError> {
    let nameless = |p: &str| {
        !matches!(
            Path::new(p).components().next_back(),
            Some(std::path::Component::Normal(_))
        )
    };
    let Some(bad) = added.iter().find(|a| nameless(&a.instance_path)) else {
        return Ok(());
    };
    let name = spec
        .host
        .rsplit(['/', ':'])
        .find(|piece| !piece.is_empty() && *piece != "." && *piece != "..")
        .unwrap_or("file");
    let suggestion = FileSpec {
        instance: Some(format!("/{name}")),
        ..spec.clone()
    };
    Err(AttachError::NotAFilePath {
        spec: spec.to_string(),
        instance: bad.instance_path.clone(),
        suggestion: suggestion.to_string(),
    })
}

pub(super) fn expand_one(
    spec: &FileSpec,
    excludes: &Excludes,
    out: &mut Vec<Attachment>,
) -> Result<(), AttachError> {
    let fully_explicit =
        spec.instance.is_some() && spec.uid.is_some() && spec.gid.is_some() && spec.mode.is_some();
    // Follows symlinks, like upstream's stat(HOST).
    let meta = match fs::metadata(&spec.host) {
        Ok(meta) => meta,
        // With nothing to default, a missing host is reported as "not a file", like upstream.
        Err(_) if fully_explicit => {
            return Err(AttachError::NotFileOrDir {
                host: spec.host.clone(),
            })
        }
        Err(source) => {
            return Err(AttachError::Stat {
                host: spec.host.clone(),
                source,
            })
        }
    };

    if meta.is_file() {
        let instance_path = spec.instance.clone().unwrap_or_else(|| spec.host.clone());
        out.push(attachment(
            spec,
            PathBuf::from(&spec.host),
            instance_path,
            &meta,
        ));
        return Ok(());
    }
    if !meta.is_dir() {
        return Err(AttachError::NotFileOrDir {
            host: spec.host.clone(),
        });
    }

    // `/` trims to "" so that files land at `/<rel>`; the host is trimmed the same way to
    // avoid `proj//a.txt` when typed as `proj/`.
    let base = spec
        .instance
        .as_deref()
        .unwrap_or(&spec.host)
        .trim_end_matches('/');
    let root = Path::new(&spec.host);
    let walker = WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter()
        // Directories are tested before descending, so an excluded one is never read.
        // A non-UTF-8 name is tested lossily so excludes still apply; if kept, it fails below.
        .filter_entry(|entry| !excludes.is_excluded(&relative_lossy(root, entry.path())));
    for entry in walker {
        let entry = entry.map_err(|e| AttachError::Read {
            path: e.path().unwrap_or(root).to_string_lossy().into_owned(),
            source: e.into(),
        })?;
        let file_type = entry.file_type();
        let meta = if file_type.is_file() {
            entry.metadata().map_err(|e| AttachError::Stat {
                host: entry.path().to_string_lossy().into_owned(),
                source: e.into(),
            })?
        } else if file_type.is_symlink() {
            // A dangling link or one to a directory has nothing to attach.
            match fs::metadata(entry.path()) {
                Ok(target) if target.is_file() => target,
                _ => continue,
            }
        } else {
            continue;
        };
        let rel = relative(root, entry.path())?;
        let instance_path = format!("{base}/{rel}");
        out.push(attachment(spec, entry.into_path(), instance_path, &meta));
    }
    Ok(())
}

/// The spec's explicit owner and mode win over the file's own.
fn attachment(
    spec: &FileSpec,
    host_path: PathBuf,
    instance_path: String,
    meta: &Metadata,
) -> Attachment {
    Attachment {
        host_path,
        instance_path,
        uid: spec.uid.unwrap_or_else(|| meta.uid()),
        gid: spec.gid.unwrap_or_else(|| meta.gid()),
        mode: spec.mode.unwrap_or_else(|| meta.mode() & 0o7777),
        size: meta.len(),
    }
}

/// `path` relative to `root`, `/`-separated; must be UTF-8 to become an instance path.
fn relative(root: &Path, path: &Path) -> Result<String, AttachError> {
    let non_utf8 = || AttachError::NonUtf8Path {
        path: path.to_string_lossy().into_owned(),
    };
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut out = String::new();
    for component in rel.components() {
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(component.as_os_str().to_str().ok_or_else(non_utf8)?);
    }
    Ok(out)
}

fn relative_lossy(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<_> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect();
    parts.join("/")
}

pub(super) fn dedup_keep_last(all: Vec<Attachment>) -> Vec<Attachment> {
    let mut seen = HashSet::new();
    let mut kept: Vec<Attachment> = all
        .into_iter()
        .rev()
        .filter(|a| seen.insert(a.instance_path.clone()))
        .collect();
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn spec(text: &str) -> FileSpec {
        super::super::parse_spec(text, &mut Vec::new()).unwrap()
    }

    fn excludes(extra: &[&str]) -> Excludes {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Excludes::new(&extra).unwrap()
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn instances(attachments: &[Attachment]) -> Vec<&str> {
        attachments
            .iter()
            .map(|a| a.instance_path.as_str())
            .collect()
    }

    fn host(dir: &Path) -> String {
        dir.to_str().unwrap().to_string()
    }

    #[test]
    fn project_directory_keeps_only_unexcluded_files() {
        let (_tmp, proj) = crate::paths::temp_path("proj");
        for rel in [
            "a.txt",
            "src/main.py",
            ".env",
            ".git/config",
            "__pycache__/x.pyc",
            "node_modules/x.js",
            "logs/x.log",
        ] {
            write(&proj, rel, "x");
        }
        let got = expand(
            &[spec(&format!("{}:/app", host(&proj)))],
            &excludes(&["*.log"]),
        )
        .unwrap();
        assert_eq!(instances(&got), ["/app/a.txt", "/app/src/main.py"]);
        assert_eq!(got[1].host_path, proj.join("src/main.py"));
    }

    #[test]
    fn exclude_matches_whole_path_or_any_component() {
        let ex = excludes(&["sub/*", "*.log"]);
        assert!(ex.is_excluded("src/.env"));
        assert!(ex.is_excluded("sub/build/o"));
        assert!(ex.is_excluded("sub/keep.txt"));
        assert!(ex.is_excluded("logs/x.log"));
        // `*` crosses `/` in the whole-path test.
        assert!(ex.is_excluded("a/b/c.log"));
        assert!(!ex.is_excluded("src/main.py"));
        assert!(!ex.is_excluded("sub"));
        // Case-sensitive.
        assert!(!ex.is_excluded("BUILD/x"));
        assert!(!excludes(&[]).is_excluded("distance/x"));
    }

    #[test]
    fn fnmatch_classes_work_and_braces_are_literal() {
        let ex = excludes(&["[ab]*.tmp", "[!x]z", "{a,b}"]);
        assert!(ex.is_excluded("a1.tmp"));
        assert!(!ex.is_excluded("c1.tmp"));
        assert!(ex.is_excluded("yz"));
        assert!(!ex.is_excluded("xz"));
        assert!(ex.is_excluded("{a,b}"));
        assert!(!ex.is_excluded("a"));
    }

    #[test]
    fn bad_exclude_pattern_is_named() {
        let err = Excludes::new(&["[abc".to_string()])
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("invalid exclude pattern '[abc': "), "{err}");
    }

    #[test]
    fn excluded_subdirectories_are_pruned_and_sub_star_excludes_children() {
        let (_tmp, root) = crate::paths::temp_path("r");
        write(&root, "sub/build/o", "x");
        write(&root, "sub/keep.txt", "x");
        write(&root, "src/.env", "x");
        write(&root, "src/ok.rs", "x");
        let got = expand(
            &[spec(&format!("{}:/", host(&root)))],
            &excludes(&["sub/*"]),
        )
        .unwrap();
        assert_eq!(instances(&got), ["/src/ok.rs"]);
    }

    #[test]
    fn single_file_spec_ignores_excludes_and_keeps_host_as_typed() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), ".env", "secret");
        let path = host(&tmp.path().join(".env"));
        let got = expand(&[spec(&path)], &excludes(&["*"])).unwrap();
        assert_eq!(instances(&got), [path.as_str()]);
        assert_eq!(got[0].size, 6);
    }

    #[test]
    fn directory_without_instance_uses_host_as_base() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "d/a", "1");
        let typed = format!("{}/d/", host(tmp.path()));
        let got = expand(&[spec(&typed)], &excludes(&[])).unwrap();
        assert_eq!(instances(&got), [format!("{}/d/a", host(tmp.path()))]);
    }

    #[test]
    fn defaults_come_from_stat_and_explicit_fields_win() {
        let (_tmp, file) = crate::paths::temp_path("f");
        fs::write(&file, "hello").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o4750)).unwrap();
        let meta = fs::metadata(&file).unwrap();
        let got = expand(&[spec(&host(&file))], &excludes(&[])).unwrap();
        assert_eq!(
            got,
            [Attachment {
                host_path: file.clone(),
                instance_path: host(&file),
                uid: meta.uid(),
                gid: meta.gid(),
                mode: 0o4750,
                size: 5,
            }]
        );
        let got = expand(
            &[spec(&format!("{}:/x:u7:g8:m600", host(&file)))],
            &excludes(&[]),
        )
        .unwrap();
        assert_eq!((got[0].uid, got[0].gid, got[0].mode), (7, 8, 0o600));
        assert_eq!(got[0].instance_path, "/x");
    }

    #[test]
    fn directory_files_take_spec_overrides_else_their_own_stat() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "d/x", "1");
        write(tmp.path(), "d/y", "1");
        fs::set_permissions(tmp.path().join("d/x"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(tmp.path().join("d/y"), fs::Permissions::from_mode(0o640)).unwrap();
        let d = host(&tmp.path().join("d"));
        let got = expand(&[spec(&format!("{d}:/app:u5"))], &excludes(&[])).unwrap();
        assert_eq!(
            got.iter().map(|a| (a.uid, a.mode)).collect::<Vec<_>>(),
            [(5, 0o700), (5, 0o640)]
        );
    }

    #[test]
    fn a_file_needs_a_name_where_it_lands_but_a_directory_may_land_on_root() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "d/a", "1");
        write(tmp.path(), "f.txt", "1");
        let f = host(&tmp.path().join("f.txt"));
        for instance in ["/", "//", "/x/..", "/."] {
            let err = expand(&[spec(&format!("{f}:{instance}"))], &excludes(&[])).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid file spec '{f}:{instance}': '{instance}' is not a file path; give the file a name, like '{f}:/f.txt'")
            );
        }
        assert_eq!(
            instances(&expand(&[spec(&format!("{f}:/x/."))], &excludes(&[])).unwrap()),
            ["/x/."]
        );
        let d = host(&tmp.path().join("d"));
        let got = expand(&[spec(&format!("{d}:/"))], &excludes(&[])).unwrap();
        assert_eq!(instances(&got), ["/a"]);
    }

    #[test]
    fn missing_host_errors() {
        let err = expand(&[spec("/no/such/file")], &excludes(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot stat host file '/no/such/file': No such file or directory (os error 2)"
        );
        let err = expand(&[spec("/no/such/file:/x:u0:g0:m755")], &excludes(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host path '/no/such/file' is neither file nor directory"
        );
    }

    #[test]
    fn fifo_is_neither_file_nor_directory() {
        let (tmp, fifo) = crate::paths::temp_path("p");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = expand(&[spec(&host(&fifo))], &excludes(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("host path '{}' is neither file nor directory", host(&fifo))
        );
        // Inside a directory a fifo is skipped rather than failing the run.
        write(tmp.path(), "ok", "1");
        let got = expand(&[spec(&format!("{}:/d", host(tmp.path())))], &excludes(&[])).unwrap();
        assert_eq!(instances(&got), ["/d/ok"]);
    }

    #[test]
    fn symlinks_in_a_directory() {
        let (tmp, outside) = crate::paths::temp_path("outside");
        write(&outside, "target.txt", "target content");
        write(&outside, "inner/deep.txt", "x");
        let d = tmp.path().join("d");
        write(&d, "real.txt", "r");
        symlink(outside.join("target.txt"), d.join("link.txt")).unwrap();
        symlink(&outside, d.join("dirlink")).unwrap();
        symlink(tmp.path().join("missing"), d.join("dangling")).unwrap();
        let got = expand(&[spec(&format!("{}:/app", host(&d)))], &excludes(&[])).unwrap();
        assert_eq!(instances(&got), ["/app/link.txt", "/app/real.txt"]);
        // The link path is kept; its size is the target's.
        assert_eq!(got[0].host_path, d.join("link.txt"));
        assert_eq!(got[0].size, "target content".len() as u64);
    }

    #[test]
    fn symlink_to_file_as_spec_is_followed_and_symlinked_directory_root_is_walked() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "real/a", "abc");
        symlink(tmp.path().join("real/a"), tmp.path().join("flink")).unwrap();
        symlink(tmp.path().join("real"), tmp.path().join("dlink")).unwrap();
        let got = expand(
            &[
                spec(&format!("{}:/f", host(&tmp.path().join("flink")))),
                spec(&format!("{}:/d", host(&tmp.path().join("dlink")))),
            ],
            &excludes(&[]),
        )
        .unwrap();
        assert_eq!(instances(&got), ["/f", "/d/a"]);
        assert_eq!(got[0].size, 3);
    }

    #[test]
    fn later_entries_for_the_same_instance_path_win_at_their_position() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "one", "1");
        write(tmp.path(), "two", "22");
        write(tmp.path(), "three", "333");
        let p = |name: &str| host(&tmp.path().join(name));
        let got = expand(
            &[
                spec(&format!("{}:/x", p("one"))),
                spec(&format!("{}:/y", p("two"))),
                spec(&format!("{}:/x", p("three"))),
            ],
            &excludes(&[]),
        )
        .unwrap();
        assert_eq!(instances(&got), ["/y", "/x"]);
        assert_eq!(got[1].host_path, tmp.path().join("three"));
    }

    #[test]
    fn non_utf8_names_are_excluded_lossily_or_rejected() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let (_tmp, d) = crate::paths::temp_path("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join(OsStr::from_bytes(b".hidden\xff")), "x").unwrap();
        let got = expand(&[spec(&format!("{}:/a", host(&d)))], &excludes(&[])).unwrap();
        assert!(got.is_empty());
        fs::write(d.join(OsStr::from_bytes(b"bad\xff")), "x").unwrap();
        let err = expand(&[spec(&format!("{}:/a", host(&d)))], &excludes(&[])).unwrap_err();
        assert!(matches!(err, AttachError::NonUtf8Path { .. }), "{err}");
    }

    #[test]
    fn double_star_is_accepted_and_crosses_directories() {
        let ex = excludes(&["a**b", "**/gen/**"]);
        assert!(ex.is_excluded("a/x/b"));
        assert!(ex.is_excluded("src/gen/x.rs"));
        assert!(!ex.is_excluded("src/main.rs"));
    }

    #[test]
    fn walk_order_is_sorted_by_file_name() {
        let tmp = tempfile::tempdir().unwrap();
        for rel in ["b", "a/z", "a/y", "c"] {
            write(tmp.path(), rel, "1");
        }
        let got = expand(
            &[spec(&format!("{}:/r/", host(tmp.path())))],
            &excludes(&[]),
        )
        .unwrap();
        assert_eq!(instances(&got), ["/r/a/y", "/r/a/z", "/r/b", "/r/c"]);
    }
}
