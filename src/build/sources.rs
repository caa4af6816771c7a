//! What a COPY or ADD places: files of the build context, or of another image (`--from`),
//! as (host file, path in the image, mode). Directories are walked; a directory source
//! places its contents under the destination, as Docker does. From an image, symlinks and
//! empty directories are carried too (`Extra`), for a backend that places them
//! (`Backend::add_files`); from the context, symlinks are followed and empty directories
//! left out, as `run -F` attaches them.

use super::BuildError;
use crate::backend::Backend;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// One file to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub host: PathBuf,
    /// Absolute path in the target image.
    pub dest: String,
    pub mode: u32,
    pub size: u64,
}

/// What a COPY --from carries besides regular files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extra {
    /// An empty directory of the source (a directory with entries comes with them).
    Dir { dest: String, mode: u32 },
    /// A symlink inside a copied directory, kept as a link (a source named on the COPY
    /// line is followed instead, as Docker does).
    Symlink { dest: String, target: String },
}

/// Where a source goes: `dest` is a directory when it ends with `/`, when there are
/// several sources or when the source is a directory.
fn target(dest: &str, into_dir: bool, name: &str) -> String {
    if into_dir {
        format!("{}/{}", dest.trim_end_matches('/'), name)
    } else {
        dest.to_string()
    }
}

/// The files of `sources` (relative to `context`, glob patterns allowed) for `dest`.
/// ADD of an http(s) URL: fetched on this machine into `scratch`, placed at `dest` (or in it,
/// named after the URL's last path segment, when `dest` ends in `/`) with mode 0600, as
/// Docker does. `timeout` bounds the whole download, in seconds.
pub fn from_url(url: &str, dest: &str, scratch: &Path, timeout: u64) -> Result<Source, BuildError> {
    use std::io::Write;
    let fail = |why: String| BuildError::Source(format!("ADD {url}: {why}"));
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(fail("only http:// and https:// URLs are fetched".into()));
    }
    let name = url
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, path)| path.rsplit('/').next().unwrap_or_default())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("index.html");
    let dest = if dest.ends_with('/') {
        format!("{dest}{name}")
    } else {
        dest.to_string()
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(timeout.max(1)))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut resp = client
        .get(url)
        .send()
        .map_err(|e| fail(crate::api::network::describe(&e)))?;
    if !resp.status().is_success() {
        return Err(fail(format!("the server answered {}", resp.status())));
    }
    let host = scratch.join(format!("{}", uuid::Uuid::new_v4()));
    let mut file = std::fs::File::create(&host).map_err(|e| fail(e.to_string()))?;
    let size = resp
        .copy_to(&mut file)
        .map_err(|e| fail(format!("reading the body: {e}")))?;
    file.flush().map_err(|e| fail(e.to_string()))?;
    Ok(Source {
        host,
        dest,
        mode: 0o600,
        size,
    })
}

pub fn from_context(
    context: &Path,
    sources: &[String],
    dest: &str,
) -> Result<Vec<Source>, BuildError> {
    let mut matched: Vec<PathBuf> = Vec::new();
    for source in sources {
        let rel = inside(source).ok_or_else(|| {
            BuildError::Source(format!("'{source}' is outside the build context"))
        })?;
        if source.contains(['*', '?', '[']) {
            let glob = globset::Glob::new(&rel.to_string_lossy())
                .map_err(|e| BuildError::Source(format!("'{source}': {e}")))?
                .compile_matcher();
            let before = matched.len();
            for entry in walkdir::WalkDir::new(context)
                .min_depth(1)
                .sort_by_file_name()
            {
                let entry = entry.map_err(|e| BuildError::Source(e.to_string()))?;
                let path = entry.path().strip_prefix(context).unwrap_or(entry.path());
                if glob.is_match(path) {
                    matched.push(path.to_path_buf());
                }
            }
            if matched.len() == before {
                return Err(BuildError::Source(format!("no file matches '{source}'")));
            }
        } else {
            matched.push(rel);
        }
    }
    let into_dir = dest.ends_with('/') || matched.len() > 1;
    let mut out = Vec::new();
    for rel in matched {
        let host = context.join(&rel);
        let meta = std::fs::metadata(&host).map_err(|e| {
            BuildError::Source(format!("'{}' in the build context: {e}", rel.display()))
        })?;
        if meta.is_dir() {
            // Docker copies a directory's contents, not the directory itself, also when
            // there are several sources.
            walk_dir(&host, dest.trim_end_matches('/'), &mut out)?;
        } else {
            out.push(Source {
                dest: target(dest, into_dir, &name_of(&rel)),
                mode: meta.permissions().mode() & 0o7777,
                size: meta.len(),
                host,
            });
        }
    }
    Ok(out)
}

fn walk_dir(dir: &Path, base: &str, out: &mut Vec<Source>) -> Result<(), BuildError> {
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(|e| BuildError::Source(e.to_string()))?;
        // Symlinks to files are followed (their content is copied), as `run -F` does.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        out.push(Source {
            host: entry.path().to_path_buf(),
            dest: format!("{base}/{}", rel.to_string_lossy()),
            mode: meta.permissions().mode() & 0o7777,
            size: meta.len(),
        });
    }
    Ok(())
}

fn name_of(rel: &Path) -> String {
    rel.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `source` as a path inside the context (`..` may not leave it; a leading `/` is the
/// context's root).
fn inside(source: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(source).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// The files of `sources` (absolute, or relative to `/`) in `image`, copied into `into`
/// (a scratch directory of the caller's) through the backend's file reads, and the
/// symlinks and empty directories under them.
pub fn from_image(
    backend: &dyn Backend,
    image: &str,
    sources: &[String],
    dest: &str,
    into: &Path,
) -> Result<(Vec<Source>, Vec<Extra>), BuildError> {
    let into_dir = dest.ends_with('/') || sources.len() > 1;
    let mut out = Vec::new();
    let mut extra = Vec::new();
    for source in sources {
        let path = format!("/{}", source.trim_start_matches('/'));
        let path = if path.len() > 1 {
            path.trim_end_matches('/').to_string()
        } else {
            path
        };
        match is_dir(backend, image, &path)? {
            true => {
                let base = dest.trim_end_matches('/').to_string();
                let mut found = Found {
                    files: &mut out,
                    extra: &mut extra,
                };
                copy_image_dir(backend, image, &path, &base, 0o755, into, &mut found)?;
            }
            false => {
                let name = path.rsplit('/').next().unwrap_or_default().to_string();
                let dest = target(dest, into_dir, &name);
                out.push(fetch(backend, image, &path, dest, into)?);
            }
        }
    }
    Ok((out, extra))
}

/// What a walk of an image's directory found.
struct Found<'a> {
    files: &'a mut Vec<Source>,
    extra: &'a mut Vec<Extra>,
}

/// Whether `path` of `image` is a directory (a listing of a file lists the file itself, so
/// its parent is asked); a symlink counts as what it points to.
pub fn is_dir(backend: &dyn Backend, image: &str, path: &str) -> Result<bool, BuildError> {
    let Some((parent, name)) = path.rsplit_once('/').filter(|(_, n)| !n.is_empty()) else {
        return Ok(true);
    };
    let parent = if parent.is_empty() { "/" } else { parent };
    let list = backend.list_dir(image, parent)?;
    let item = list
        .files
        .iter()
        .find(|f| f.path.rsplit('/').next() == Some(name))
        .ok_or_else(|| BuildError::Source(format!("{path}: not in image {image}")))?;
    if item.is_symlink {
        return Ok(backend.read_file(image, path).is_err());
    }
    Ok(item.is_dir)
}

fn copy_image_dir(
    backend: &dyn Backend,
    image: &str,
    dir: &str,
    base: &str,
    mode: u32,
    into: &Path,
    found: &mut Found<'_>,
) -> Result<(), BuildError> {
    let list = backend.list_dir(image, dir)?;
    let mut empty = true;
    for item in list.files {
        let name = item
            .path
            .rsplit('/')
            .next()
            .unwrap_or(&item.path)
            .to_string();
        if name == "." || name == ".." || name.is_empty() {
            continue;
        }
        empty = false;
        let path = format!("{}/{name}", dir.trim_end_matches('/'));
        let dest = format!("{base}/{name}");
        if item.is_dir {
            let mode = item.mode & 0o7777;
            copy_image_dir(backend, image, &path, &dest, mode, into, found)?;
        } else if item.is_regular {
            found.files.push(fetch(backend, image, &path, dest, into)?);
        } else if item.is_symlink && !item.symlink_to.is_empty() {
            found.extra.push(Extra::Symlink {
                dest,
                target: item.symlink_to,
            });
        } else {
            crate::debug!("COPY --from: {path} is not a file, directory or symlink; skipped");
        }
    }
    if empty {
        found.extra.push(Extra::Dir {
            dest: base.to_string(),
            mode,
        });
    }
    Ok(())
}

/// One file of `image`, written under `into`.
fn fetch(
    backend: &dyn Backend,
    image: &str,
    path: &str,
    dest: String,
    into: &Path,
) -> Result<Source, BuildError> {
    let (mut reader, mode) = backend.read_file(image, path)?;
    let host = into.join(format!("{}", uuid::Uuid::new_v4().simple()));
    let io = |e| BuildError::Io {
        what: format!("copying {path} of image {image} to {}", host.display()),
        source: e,
    };
    let mut file = std::fs::File::create(&host).map_err(io)?;
    let size = std::io::copy(&mut reader, &mut file).map_err(io)?;
    Ok(Source {
        host,
        dest,
        mode: mode.unwrap_or(0o644),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_inside_the_context() {
        assert_eq!(inside("a/../b"), Some(PathBuf::from("b")));
        assert_eq!(inside("/etc/x"), Some(PathBuf::from("etc/x")));
        assert_eq!(inside("."), Some(PathBuf::new()));
        assert_eq!(inside("../x"), None);
    }

    #[test]
    fn files_and_directories_land_like_docker_puts_them() {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ctx.path().join("d/sub")).unwrap();
        std::fs::write(ctx.path().join("d/sub/f"), "x").unwrap();
        std::fs::write(ctx.path().join("a.txt"), "a").unwrap();
        std::fs::write(ctx.path().join("b.txt"), "b").unwrap();
        let dests = |s: &[&str], d: &str| {
            let s: Vec<String> = s.iter().map(|x| x.to_string()).collect();
            from_context(ctx.path(), &s, d)
                .unwrap()
                .into_iter()
                .map(|s| s.dest)
                .collect::<Vec<_>>()
        };
        assert_eq!(dests(&["a.txt"], "/x"), vec!["/x"]);
        assert_eq!(dests(&["a.txt"], "/x/"), vec!["/x/a.txt"]);
        assert_eq!(dests(&["*.txt"], "/x"), vec!["/x/a.txt", "/x/b.txt"]);
        assert_eq!(dests(&["d"], "/app"), vec!["/app/sub/f"]);
        assert!(from_context(ctx.path(), &["nope".into()], "/x").is_err());
        assert!(from_context(ctx.path(), &["../x".into()], "/x").is_err());
    }
}
