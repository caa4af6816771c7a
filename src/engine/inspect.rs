//! Looking inside an image without starting anything: resolve a path through the image's
//! layer chain the way overlayfs would (top layer first, whiteouts hide, opaque
//! directories stop the merge) and read directories and files from wherever they live.
//!
//! The `host` base is read straight from `/` through its mask, without crossing into other
//! mounted filesystems (the host view overlay never shows them either). Symlinks met on
//! the way are resolved inside the image, never on the host.

use super::layers::{is_opaque, is_whiteout};
use super::store::{Layout, HOST_LAYER};
use crate::wire::FileItem;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: not a regular file")]
    NotAFile(String),
    #[error("{0}: too many levels of symbolic links")]
    Loop(String),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// One directory of the chain: where it is on disk, and whether it is the host root
/// (whose other mounted filesystems must not show).
#[derive(Debug, Clone)]
struct Layer {
    dir: PathBuf,
    host: bool,
}

/// An image's layers, ready for lookups.
pub struct View {
    layers: Vec<Layer>,
    host_dev: Option<u64>,
}

/// What a path resolves to: the entry's metadata and the file that holds it.
#[derive(Debug, Clone)]
pub struct Found {
    pub meta: fs::Metadata,
    pub real: PathBuf,
}

const MAX_LINKS: usize = 40;

impl View {
    pub fn new(layout: &Layout, layer_ids: &[String]) -> View {
        let mut layers = Vec::new();
        let mut host_dev = None;
        for id in layer_ids {
            if id == HOST_LAYER {
                layers.push(Layer {
                    dir: layout.layer_dir(HOST_LAYER),
                    host: false,
                });
                layers.push(Layer {
                    dir: PathBuf::from("/"),
                    host: true,
                });
                host_dev = fs::metadata("/").ok().map(|m| m.dev());
            } else {
                layers.push(Layer {
                    dir: layout.layer_dir(id),
                    host: false,
                });
            }
        }
        View { layers, host_dev }
    }

    /// The topmost entry for an already-resolved path (no symlink handling), honouring
    /// whiteouts and opaque directories above it.
    fn lookup_exact(&self, rel: &Path) -> Option<Found> {
        'layers: for layer in &self.layers {
            // An opaque or whited-out ancestor in this layer hides everything below.
            let mut anc = PathBuf::new();
            for comp in rel.components() {
                let p = layer.dir.join(&anc);
                if !anc.as_os_str().is_empty() {
                    if let Ok(m) = fs::symlink_metadata(&p) {
                        if is_whiteout(&m) {
                            return None;
                        }
                        if !m.is_dir() {
                            continue 'layers;
                        }
                    }
                }
                anc.push(comp);
            }
            let full = layer.dir.join(rel);
            let Ok(meta) = fs::symlink_metadata(&full) else {
                if self.hidden_below(layer, rel) {
                    return None;
                }
                continue;
            };
            // Another filesystem mounted on the host (/dev, /proc, ...) shows as the empty
            // mount point it is on the root filesystem: `list` reads nothing from it.
            if is_whiteout(&meta) {
                return None;
            }
            return Some(Found { meta, real: full });
        }
        None
    }

    /// Whether an opaque ancestor in `layer` stops the lookup of `rel` from going lower.
    fn hidden_below(&self, layer: &Layer, rel: &Path) -> bool {
        let mut anc = PathBuf::new();
        for comp in rel.components() {
            if !anc.as_os_str().is_empty() {
                let p = layer.dir.join(&anc);
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) && is_opaque(&p) {
                    return true;
                }
            }
            anc.push(comp);
        }
        false
    }

    /// Resolves `path` (absolute, inside the image), following symlinks inside the image
    /// for every component but the last unless `follow_last`.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<(PathBuf, Found), InspectError> {
        let mut pending: Vec<std::ffi::OsString> = Path::new(path)
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .rev()
            .collect();
        let mut cur = PathBuf::new();
        let mut links = 0;
        let root_meta = self
            .lookup_exact(Path::new(""))
            .or_else(|| {
                fs::symlink_metadata(&self.layers.first()?.dir)
                    .ok()
                    .map(|meta| Found {
                        meta,
                        real: self.layers[0].dir.clone(),
                    })
            })
            .ok_or_else(|| InspectError::NotFound("/".into()))?;
        let mut found = root_meta;
        while let Some(name) = pending.pop() {
            if name == ".." {
                cur.pop();
                found = self.lookup_exact(&cur).unwrap_or(found);
                continue;
            }
            let next = cur.join(&name);
            let f = self
                .lookup_exact(&next)
                .ok_or_else(|| InspectError::NotFound(display(&next)))?;
            let last = pending.is_empty();
            if f.meta.file_type().is_symlink() && (!last || follow_last) {
                links += 1;
                if links > MAX_LINKS {
                    return Err(InspectError::Loop(display(&next)));
                }
                let target = fs::read_link(&f.real).map_err(|e| InspectError::Io {
                    path: display(&next),
                    source: e,
                })?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                for comp in target.components().rev() {
                    match comp {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
                continue;
            }
            if !last && !f.meta.is_dir() {
                return Err(InspectError::NotADirectory(display(&next)));
            }
            cur = next;
            found = f;
        }
        Ok((cur, found))
    }

    /// The merged listing of a directory (a symlink to one is followed), sorted by name;
    /// for anything else, the entry itself, unfollowed (as `ls -l` does).
    pub fn list(&self, path: &str) -> Result<Vec<(String, Found)>, InspectError> {
        let rel = match self.resolve(path, true) {
            Ok((rel, found)) if found.meta.is_dir() => rel,
            _ => {
                let (rel, found) = self.resolve(path, false)?;
                let name = rel
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Ok(vec![(name, found)]);
            }
        };
        let mut seen: BTreeMap<String, Option<Found>> = BTreeMap::new();
        for layer in &self.layers {
            let dir = layer.dir.join(&rel);
            let Ok(meta) = fs::symlink_metadata(&dir) else {
                if self.hidden_below(layer, &rel) {
                    break;
                }
                continue;
            };
            if is_whiteout(&meta) || !meta.is_dir() {
                break;
            }
            if layer.host && self.host_dev.is_some_and(|d| meta.dev() != d) {
                continue;
            }
            let rd = fs::read_dir(&dir).map_err(|e| InspectError::Io {
                path: display(&rel),
                source: e,
            })?;
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if seen.contains_key(&name) {
                    continue;
                }
                let Ok(m) = fs::symlink_metadata(entry.path()) else {
                    continue;
                };
                if is_whiteout(&m) {
                    seen.insert(name, None);
                } else {
                    seen.insert(
                        name,
                        Some(Found {
                            meta: m,
                            real: entry.path(),
                        }),
                    );
                }
            }
            if is_opaque(&dir) || self.hidden_below(layer, &rel) {
                break;
            }
        }
        Ok(seen
            .into_iter()
            .filter_map(|(n, f)| Some((n, f?)))
            .collect())
    }

    /// Opens a regular file of the image for reading.
    pub fn open(&self, path: &str) -> Result<(fs::File, fs::Metadata), InspectError> {
        let (rel, found) = self.resolve(path, true)?;
        if !found.meta.is_file() {
            return Err(InspectError::NotAFile(display(&rel)));
        }
        let file = fs::File::open(&found.real).map_err(|e| InspectError::Io {
            path: display(&rel),
            source: e,
        })?;
        Ok((file, found.meta))
    }
}

fn display(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// The API's `FileItem` for one directory entry.
pub fn file_item(name: &str, found: &Found) -> FileItem {
    let m = &found.meta;
    let ft = m.file_type();
    let symlink_to = if ft.is_symlink() {
        fs::read_link(&found.real)
            .ok()
            .map(|t| t.display().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    FileItem {
        size: m.size(),
        path: name.to_string(),
        owner: user_name(m.uid())
            .map(serde_json::Value::from)
            .unwrap_or_else(|| m.uid().into()),
        group: group_name(m.gid())
            .map(serde_json::Value::from)
            .unwrap_or_else(|| m.gid().into()),
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode(),
        mtime: m.mtime(),
        nlink: m.nlink(),
        is_dir: ft.is_dir(),
        is_regular: ft.is_file(),
        is_symlink: ft.is_symlink(),
        is_socket: ft.is_socket(),
        is_fifo: ft.is_fifo(),
        symlink_to,
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

/// The plain-text listing (`ls -l` style) the API serves with `text=1`.
pub fn text_listing(items: &[FileItem]) -> String {
    let mut out = String::new();
    for it in items {
        let kind = if it.is_dir {
            'd'
        } else if it.is_symlink {
            'l'
        } else {
            '-'
        };
        let perms = mode_text(it.mode);
        let name = if it.is_symlink {
            format!("{} -> {}", it.path, it.symlink_to)
        } else {
            it.path.clone()
        };
        let owner = it
            .owner
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| it.uid.to_string());
        let group = it
            .group
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| it.gid.to_string());
        let time = chrono::DateTime::from_timestamp(it.mtime, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "{kind}{perms} {:>3} {owner:<8} {group:<8} {:>10} {time} {name}\n",
            it.nlink, it.size
        ));
    }
    out
}

fn mode_text(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for (i, c) in ['r', 'w', 'x', 'r', 'w', 'x', 'r', 'w', 'x']
        .iter()
        .enumerate()
    {
        let bit = 1 << (8 - i);
        s.push(if mode & bit != 0 { *c } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::layers::{make_whiteout, set_opaque};
    use super::*;

    fn layout(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    #[test]
    fn lookups_follow_overlay_rules_and_image_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let l = layout(t.path());
        let (low, mid, top) = (l.layer_dir("low"), l.layer_dir("mid"), l.layer_dir("top"));
        fs::create_dir_all(low.join("usr/bin")).unwrap();
        fs::write(low.join("usr/bin/tool"), "low").unwrap();
        fs::write(low.join("usr/bin/gone"), "x").unwrap();
        fs::create_dir_all(low.join("etc/conf")).unwrap();
        fs::write(low.join("etc/conf/a"), "a").unwrap();
        std::os::unix::fs::symlink("usr/bin", low.join("bin")).unwrap();
        fs::create_dir_all(mid.join("usr/bin")).unwrap();
        make_whiteout(&mid.join("usr/bin/gone")).unwrap();
        fs::create_dir_all(top.join("etc/conf")).unwrap();
        set_opaque(&top.join("etc/conf")).unwrap();
        fs::write(top.join("etc/conf/b"), "b").unwrap();
        fs::write(top.join("usr-note"), "n").unwrap();
        let view = View::new(&l, &["top".into(), "mid".into(), "low".into()]);

        let (file, _) = view.open("/bin/tool").unwrap();
        assert_eq!(std::io::read_to_string(file).unwrap(), "low");
        assert!(matches!(
            view.open("/usr/bin/gone"),
            Err(InspectError::NotFound(_))
        ));
        let names: Vec<String> = view
            .list("/etc/conf")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["b"]);
        let names: Vec<String> = view
            .list("/usr/bin")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["tool"]);
        let single: Vec<String> = view
            .list("/usr-note")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(single, ["usr-note"]);
        let root: Vec<String> = view
            .list("/")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(root, ["bin", "etc", "usr", "usr-note"]);
    }
}
