//! Looking inside an image without starting anything: resolve a path through the image's
//! layer chain the way overlayfs would (top layer first, whiteouts hide, opaque
//! directories stop the merge) and read directories and files from wherever they live.
//!
//! The `host` base is read straight from `/` through its mask. Symlinks met on the way are
//! resolved inside the image, never on the host.
//!
//! Containment: every reader (`list`, `open`, the server's `download`/`archive`, and
//! `grep`) goes through `View::resolve`, `View::list` or `View::walk`, and reads
//! content only with `Found::open`/`Found::link_target`. The one rule is `Layer::holds`: an
//! entry is part of the image only if it is on the mount of the layer it was found in. The
//! host's other mounts (`/proc`, `/sys`, `/dev`, a tmpfs, a bind mount) are not, as the sandbox's overlay
//! of `/` does not show them either: a mount point shows as the empty directory the image
//! holds there (what a sandbox sees before it mounts its own `/proc`), and nothing below it
//! is ever looked up or read (`OtherFilesystem`). The kernel enforces the same at open
//! (`openat2` with `RESOLVE_NO_XDEV`), so a host directory swapped for a link or a mount
//! after the lookup leads nowhere. This module must never read a path of the host in any
//! other way.

mod listing;

pub use listing::file_item;

use super::layers::{is_opaque, is_whiteout};
use super::mountid::{mount_id, statx_mount_id};
use super::store::{Layout, HOST_LAYER};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
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
    /// The path leads below a mount point of the host (or onto a pseudo filesystem): not
    /// part of the image, never read.
    #[error("{path}: not in the image: {mount} is where another filesystem is mounted on the host (/proc, /sys, /dev, a tmpfs, a bind mount: never read through an image)")]
    OtherFilesystem { path: String, mount: String },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// One directory of the chain: where it is on disk and the mount it is on.
#[derive(Debug, Clone)]
struct Layer {
    dir: PathBuf,
    /// `st_dev` of `dir`; `None` when it cannot be read (then nothing in it is).
    dev: Option<u64>,
    /// The id of the mount `dir` is on (see `mount_id`).
    mount: Option<u64>,
}

impl Layer {
    fn at(dir: PathBuf) -> Layer {
        let dev = fs::metadata(&dir).ok().map(|m| m.dev());
        let mount = mount_id(&dir);
        Layer { dir, dev, mount }
    }

    /// The containment rule (see the module doc): whether the entry at `path` found in this
    /// layer is on the layer's own mount, and so part of the image. Mount ids decide: the
    /// device number says too much (btrfs gives each subvolume one, overlayfs reports a
    /// file's lower filesystem) and too little (a bind mount keeps its filesystem's); it is
    /// the rule only where the kernel has no mount ids (before 5.8).
    fn holds(&self, meta: &fs::Metadata, path: &Path) -> bool {
        match (self.mount, self.mount.and_then(|_| mount_id(path))) {
            (Some(layer), Some(entry)) => layer == entry,
            _ => self.dev == Some(meta.dev()),
        }
    }

    fn found(&self, meta: fs::Metadata, real: PathBuf) -> Found {
        Found {
            mount_point: !self.holds(&meta, &real),
            meta,
            real,
            layer: self.clone(),
        }
    }
}

/// An image's layers, ready for lookups.
pub struct View {
    layers: Vec<Layer>,
}

/// What a path resolves to: the entry's metadata and the file that holds it.
#[derive(Debug, Clone)]
pub struct Found {
    pub meta: fs::Metadata,
    /// The root of another filesystem mounted on the host: shown as the empty directory the
    /// image holds there; `meta` is the mounted root's, and nothing in it is read.
    pub mount_point: bool,
    real: PathBuf,
    /// The layer it was found in.
    layer: Layer,
}

const MAX_LINKS: usize = 40;

impl View {
    pub fn new(layout: &Layout, layer_ids: &[String]) -> View {
        let mut layers = Vec::new();
        for id in layer_ids {
            layers.push(Layer::at(layout.layer_dir(id)));
            if id == HOST_LAYER {
                layers.push(Layer::at(PathBuf::from("/")));
            }
        }
        View { layers }
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
            if is_whiteout(&meta) {
                return None;
            }
            return Some(layer.found(meta, full));
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
                let first = self.layers.first()?;
                fs::symlink_metadata(&first.dir)
                    .ok()
                    .map(|meta| first.found(meta, first.dir.clone()))
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
            // A mount point is the end of the image: as the last component it is an empty
            // directory, and nothing is ever looked up below it.
            if f.mount_point && (!last || !f.meta.is_dir()) {
                return Err(InspectError::OtherFilesystem {
                    path: path.to_string(),
                    mount: display(&next),
                });
            }
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
            if !layer.holds(&meta, &dir) {
                // A mount point: the image's directory there is empty.
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
                let found = layer.found(m, entry.path());
                if is_whiteout(&found.meta) || (found.mount_point && !found.meta.is_dir()) {
                    // A file mounted over another shows neither: the image's own is unknown.
                    seen.insert(name, None);
                } else {
                    seen.insert(name, Some(found));
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

    /// Visits everything below the directory `path`, each entry before what it holds, with
    /// its path relative to `path`: the one tree walk readers share (`archive`, `grep`).
    /// Symlinks are visited, never followed; a mount point is visited as the empty
    /// directory it is in the image, never entered.
    pub fn walk(
        &self,
        path: &str,
        visit: &mut dyn FnMut(&Path, &Found) -> io::Result<()>,
    ) -> io::Result<()> {
        self.walk_pruned(path, &mut |rel, found| visit(rel, found).map(|()| true))
    }

    /// `walk`, where the visitor of a directory says whether to go into it (`grep` leaves
    /// out the directories its globs exclude without listing them).
    pub fn walk_pruned(
        &self,
        path: &str,
        visit: &mut dyn FnMut(&Path, &Found) -> io::Result<bool>,
    ) -> io::Result<()> {
        self.walk_in(path.trim_end_matches('/'), Path::new(""), visit)
    }

    fn walk_in(
        &self,
        image_dir: &str,
        rel: &Path,
        visit: &mut dyn FnMut(&Path, &Found) -> io::Result<bool>,
    ) -> io::Result<()> {
        let dir = if image_dir.is_empty() { "/" } else { image_dir };
        for (name, found) in self.list(dir).map_err(io::Error::other)? {
            let child = rel.join(&name);
            let enter = visit(&child, &found)?;
            if enter && found.meta.is_dir() && !found.mount_point {
                self.walk_in(&format!("{image_dir}/{name}"), &child, visit)?;
            }
        }
        Ok(())
    }

    /// Opens a regular file of the image for reading.
    pub fn open(&self, path: &str) -> Result<(fs::File, fs::Metadata), InspectError> {
        let (rel, found) = self.resolve(path, true)?;
        if !found.meta.is_file() {
            return Err(InspectError::NotAFile(display(&rel)));
        }
        let file = found.open().map_err(|e| match e {
            InspectError::OtherFilesystem { mount, .. } => InspectError::OtherFilesystem {
                path: display(&rel),
                mount,
            },
            InspectError::Io { source, .. } => InspectError::Io {
                path: display(&rel),
                source,
            },
            other => other,
        })?;
        Ok((file, found.meta))
    }
}

impl Found {
    /// Opens the regular file for reading, the only way file content is read: beneath its
    /// layer's directory, through no symlink and no mount point, then checked to be the file
    /// the lookup found, on the layer's filesystem, which is no pseudo filesystem.
    pub fn open(&self) -> Result<fs::File, InspectError> {
        use nix::fcntl::OFlag;
        let fd = self.open_beneath(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)?;
        Ok(fs::File::from(fd))
    }

    /// The target of a symlink, read from the link itself (opened as `open` does; openat2
    /// refuses any flag but these with `O_PATH`).
    pub fn link_target(&self) -> Result<PathBuf, InspectError> {
        let fd = self.open_beneath(nix::fcntl::OFlag::O_PATH)?;
        nix::fcntl::readlinkat(Some(fd.as_raw_fd()), "")
            .map(PathBuf::from)
            .map_err(|e| self.io(io::Error::from(e)))
    }

    /// The entry's path in the image (a layer mirrors the image's root), for messages: the
    /// store's own location is never shown to a client.
    fn image_path(&self) -> String {
        display(
            self.real
                .strip_prefix(&self.layer.dir)
                .unwrap_or(&self.real),
        )
    }

    fn io(&self, source: io::Error) -> InspectError {
        InspectError::Io {
            path: self.image_path(),
            source,
        }
    }

    fn other_filesystem(&self) -> InspectError {
        InspectError::OtherFilesystem {
            path: self.image_path(),
            mount: self.image_path(),
        }
    }

    fn open_beneath(&self, flags: nix::fcntl::OFlag) -> Result<OwnedFd, InspectError> {
        use nix::fcntl::OFlag;
        if self.mount_point {
            return Err(self.other_filesystem());
        }
        let root = &self.layer.dir;
        let rel = self
            .real
            .strip_prefix(root)
            .map_err(|_| self.io(io::Error::other("outside its layer")))?;
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = open_beneath(root, rel, flags).map_err(|e| {
            if e.raw_os_error() == Some(libc::EXDEV) {
                // A mount appeared on the way since the lookup.
                self.other_filesystem()
            } else {
                self.io(e)
            }
        })?;
        // The very entry the lookup found, on the layer's mount: a host path changed in
        // between is not read.
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| self.io(e.into()))?;
        let mount = statx_mount_id(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH);
        let same_mount = match (self.layer.mount, mount) {
            (Some(layer), Some(file)) => layer == file,
            _ => self.layer.dev == Some(st.st_dev as u64),
        };
        if !same_mount || (st.st_dev as u64, st.st_ino as u64) != (self.meta.dev(), self.meta.ino())
        {
            return Err(self.io(io::Error::other("it changed while being read")));
        }
        let fs_type = nix::sys::statfs::fstatfs(fd.as_fd())
            .map_err(|e| self.io(e.into()))?
            .filesystem_type()
            .0 as u32;
        if PSEUDO_FILESYSTEMS.contains(&fs_type) {
            return Err(self.other_filesystem());
        }
        Ok(fd)
    }
}

/// Kernel filesystems that hold no image content (statfs(2) magic numbers, linux/magic.h):
/// never read, even if a layer directory were on one. (`/dev`'s devtmpfs reports tmpfs's
/// magic: the mount point rule keeps it out.)
const PSEUDO_FILESYSTEMS: &[u32] = &[
    libc::PROC_SUPER_MAGIC as u32,
    libc::SYSFS_MAGIC as u32,
    libc::DEVPTS_SUPER_MAGIC as u32,
    libc::DEBUGFS_MAGIC as u32,
    libc::TRACEFS_MAGIC as u32,
    libc::SECURITYFS_MAGIC as u32,
    libc::CGROUP_SUPER_MAGIC as u32,
    libc::CGROUP2_SUPER_MAGIC as u32,
    libc::BPF_FS_MAGIC as u32,
    libc::NSFS_MAGIC as u32,
    libc::SELINUX_MAGIC as u32,
    libc::SMACK_MAGIC as u32,
    libc::HUGETLBFS_MAGIC as u32,
    0x6265_6570, // configfs
    0xde5e_81e4, // efivarfs
    0x6165_676c, // pstore
    0x4249_4e4d, // binfmt_misc
    0x1980_0202, // mqueue
    0x6573_5543, // fusectl
];

/// Opens `rel` beneath the directory `root` with `openat2(2)`: `RESOLVE_BENEATH`,
/// `RESOLVE_NO_SYMLINKS` and `RESOLVE_NO_XDEV` make the kernel refuse any symlink, `..`
/// escape or mount point on the way, whatever changed since the lookup. Kernels before 5.6
/// (ENOSYS), or a seccomp policy that hides the call (EPERM), get a plain `O_NOFOLLOW`
/// open; the caller's check of mount, device and inode then still holds.
fn open_beneath(root: &Path, rel: &Path, flags: nix::fcntl::OFlag) -> io::Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: `open` just returned this descriptor, owned by nothing else.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new().flags(flags).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    let fd = match nix::fcntl::openat2(dir.as_raw_fd(), rel, how) {
        Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::EPERM) => {
            nix::fcntl::openat(Some(dir.as_raw_fd()), rel, flags, Mode::empty())?
        }
        other => other?,
    };
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn display(rel: &Path) -> String {
    format!("/{}", rel.display())
}

#[cfg(test)]
mod tests {
    use super::super::layers::{make_whiteout, set_opaque};
    use super::*;

    #[test]
    fn lookups_follow_overlay_rules_and_image_symlinks() {
        let (_t, l) = Layout::temp();
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
        let names = |path| -> Vec<String> {
            let listed = view.list(path).unwrap();
            listed.into_iter().map(|(n, _)| n).collect()
        };
        assert_eq!(names("/etc/conf"), ["b"]);
        assert_eq!(names("/usr/bin"), ["tool"]);
        assert_eq!(names("/usr-note"), ["usr-note"]);
        assert_eq!(names("/"), ["bin", "etc", "usr", "usr-note"]);
    }

    #[test]
    fn content_is_read_only_from_the_entry_the_lookup_found() {
        let (_t, l) = Layout::temp();
        let top = l.layer_dir("top");
        fs::create_dir_all(top.join("d")).unwrap();
        fs::write(top.join("d/f"), "first").unwrap();
        std::os::unix::fs::symlink("/proc/1", top.join("d/init")).unwrap();
        let view = View::new(&l, &["top".into()]);
        let listed = view.list("/d").unwrap();
        let link = &listed.iter().find(|(n, _)| n == "init").unwrap().1;
        assert_eq!(link.link_target().unwrap(), Path::new("/proc/1"));
        assert_eq!(file_item("init", link).symlink_to, "/proc/1");
        assert!(!link.mount_point);
        // The link leads out of the image's layers: nothing there is in this image.
        assert!(matches!(
            view.open("/d/init/environ"),
            Err(InspectError::NotFound(_))
        ));
        let (_, found) = view.resolve("/d/f", true).unwrap();
        // Swapped for another file after the lookup: not read.
        fs::write(top.join("d/g"), "second").unwrap();
        fs::rename(top.join("d/g"), top.join("d/f")).unwrap();
        assert!(matches!(found.open(), Err(InspectError::Io { .. })));
        let (file, _) = view.open("/d/f").unwrap();
        assert_eq!(std::io::read_to_string(file).unwrap(), "second");
    }
}
