//! The writable layer's size limit (`resources_limits.max_layer_bytes`).
//!
//! A run's upper dir lives on the store's disk so that its snapshot is one rename, and no
//! plain directory makes writes past a size fail: only project quotas would (ext4 or XFS
//! with `prjquota`), and they are off on usual filesystems and missing from this kernel
//! altogether (no `QFMT_V2`, no `XFS_QUOTA`). So there are two mechanisms:
//!
//! - **A filesystem of exactly that size** when the request names the limit (`run
//!   --max-layer-bytes`, the API field): a sparse file in the run's scratch dir, formatted
//!   ext4 and mounted through a loop device, holds the upper and work dirs; writing past it
//!   fails with ENOSPC inside, as on a full disk. The file is unlinked as soon as the loop
//!   device holds it and the mount lives in the supervisor's private namespace, so a crash
//!   leaves nothing behind. The commit copies the layer into the store (`copy_tree`). It
//!   costs about 20 ms (mkfs) and 1 ms (mount) per run, so only such runs pay it.
//! - **A guard** for the default limit: the upper dir stays where it is, and the supervisor
//!   watches the store's disk once a second; when the disk has taken as much as the layer
//!   could still grow (or every few seconds anyway, since other programs free space too),
//!   it measures the layer, and stops the run if it is past the limit. The commit refuses a
//!   layer past it as well. No ENOSPC inside, but the host's disk is safe, and the common
//!   run pays one statfs(2) a second and a walk of its (small) layer now and then.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the guard looks at the store's disk.
pub const GUARD_EVERY: Duration = Duration::from_secs(1);
/// How often the guard measures the layer in any case; never more than 2% of the time it
/// takes (a layer of many files takes long to walk).
const MEASURE_EVERY: Duration = Duration::from_secs(5);

/// The formatter the exact mechanism needs (e2fsprogs).
const MKFS: &str = "mkfs.ext4";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{MKFS} not found (install e2fsprogs)")]
    NoMkfs,
    /// A loop device needs root: rootless runs keep the guard.
    #[error("rootless: a loop device needs root")]
    Rootless,
    #[error("{MKFS} failed: {0}")]
    Mkfs(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LayerError {
    let what = what.into();
    move |source| LayerError::Io { what, source }
}

/// Which mechanism holds a limit on this host, for `contree doctor`.
pub fn exact_available() -> Result<(), LayerError> {
    if crate::rootless::active() {
        return Err(LayerError::Rootless);
    }
    find_mkfs().ok_or(LayerError::NoMkfs)?;
    fs::metadata("/dev/loop-control").map_err(io_err("/dev/loop-control"))?;
    Ok(())
}

fn find_mkfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(MKFS))
        .find(|p| p.is_file())
}

/// The layer's own filesystem, mounted at `mount` (see the module doc).
#[derive(Debug)]
pub struct LayerFs {
    pub mount: PathBuf,
}

impl LayerFs {
    /// Makes a `size`-byte ext4 filesystem from a sparse file in `scratch` and mounts it at
    /// `mount` (an empty directory in the supervisor's private mount namespace).
    pub fn create(scratch: &Path, mount: &Path, size: u64) -> Result<LayerFs, LayerError> {
        exact_available()?;
        let mkfs = find_mkfs().ok_or(LayerError::NoMkfs)?;
        let image = scratch.join("layer.img");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&image)
            .map_err(io_err(image.display().to_string()))?;
        // Unlinked once the loop device holds it, or now if that fails.
        let _unlink = Unlink(&image);
        file.set_len(size)
            .map_err(io_err("sizing the layer file"))?;
        // No journal (a crash discards the layer anyway), no reserved blocks, an inode per
        // 8 KiB; the inode tables are written lazily, so a large file stays sparse.
        let out = std::process::Command::new(mkfs)
            .args([
                "-q", "-F", "-m", "0", "-b", "4096", "-i", "8192", "-I", "256",
            ])
            .args(["-O", "^has_journal,^resize_inode"])
            .args(["-E", "nodiscard,lazy_itable_init=1,root_owner=0:0"])
            .arg(&image)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(io_err(MKFS))?;
        if !out.status.success() {
            return Err(LayerError::Mkfs(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let device = attach_loop(&file)?;
        drop(file);
        let dev_path = format!("/dev/loop{}", device.1);
        nix::mount::mount(
            Some(dev_path.as_str()),
            mount,
            Some("ext4"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| LayerError::Io {
            what: format!("mounting {dev_path} at {}", mount.display()),
            source: e.into(),
        })?;
        // The mount holds the device now; with autoclear it goes when the mount does.
        drop(device);
        for d in ["upper", "work"] {
            fs::create_dir(mount.join(d)).map_err(io_err(format!("{d} dir of the layer")))?;
        }
        Ok(LayerFs {
            mount: mount.to_path_buf(),
        })
    }

    pub fn upper(&self) -> PathBuf {
        self.mount.join("upper")
    }

    pub fn work(&self) -> PathBuf {
        self.mount.join("work")
    }

    /// Whether the layer ran out of room (bytes or inodes): writes failed with ENOSPC.
    pub fn full(&self) -> bool {
        match nix::sys::statvfs::statvfs(&self.mount) {
            Ok(s) => {
                let free = s.blocks_available() * s.fragment_size();
                free < 64 * 1024 || s.files_free() == 0
            }
            Err(_) => false,
        }
    }
}

struct Unlink<'a>(&'a Path);

impl Drop for Unlink<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// Binds `file` to a free loop device (autoclear, direct I/O so its pages are not cached
/// twice); returns the device's descriptor and number.
fn attach_loop(file: &fs::File) -> Result<(OwnedFd, u32), LayerError> {
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    const LO_FLAGS_DIRECT_IO: u32 = 16;
    let control = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(io_err("/dev/loop-control"))?;
    // Another process may take the device we were offered: then ask again.
    for _ in 0..32 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io_err("a free loop device")(io::Error::last_os_error()));
        }
        let path = format!("/dev/loop{n}");
        let dev = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(path.clone()))?;
        // SAFETY: struct loop_config is plain data; zero is valid for every field.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = file.as_raw_fd() as u32;
        config.block_size = 4096;
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        // SAFETY: LOOP_CONFIGURE reads a struct loop_config we own.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if rc == 0 {
            return Ok((OwnedFd::from(dev), n as u32));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(io_err(format!("configuring {path}"))(e));
        }
    }
    Err(io_err("a free loop device")(io::Error::from_raw_os_error(
        libc::EBUSY,
    )))
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// The default limit's guard (see the module doc).
#[derive(Debug)]
pub struct Guard {
    disk: PathBuf,
    upper: PathBuf,
    pub limit: u64,
    /// Bytes in use on the store's disk when the run started.
    start: u64,
    /// Measure the layer once the disk has grown by this much since the start.
    measure_at: u64,
    last: Instant,
    measured: Instant,
    measure_every: Duration,
}

impl Guard {
    pub fn new(disk: &Path, upper: &Path, limit: u64) -> Guard {
        Guard {
            disk: disk.to_path_buf(),
            upper: upper.to_path_buf(),
            limit,
            start: used(disk).unwrap_or(0),
            measure_at: limit,
            last: Instant::now(),
            measured: Instant::now(),
            measure_every: MEASURE_EVERY,
        }
    }

    /// How long the supervisor may wait before the next `check`.
    pub fn due_in(&self) -> Duration {
        GUARD_EVERY.saturating_sub(self.last.elapsed())
    }

    /// `Some(layer bytes)` once the layer is past the limit. Everything the layer holds
    /// was taken from the disk, so it cannot pass the limit before the disk has grown by
    /// what it still had: it is measured (a walk of the upper dir) then, and every few
    /// seconds in case others freed space meanwhile.
    pub fn check(&mut self) -> Option<u64> {
        if self.last.elapsed() < GUARD_EVERY {
            return None;
        }
        self.last = Instant::now();
        let grown = used(&self.disk).unwrap_or(0).saturating_sub(self.start);
        if grown < self.measure_at && self.measured.elapsed() < self.measure_every {
            return None;
        }
        let walk = Instant::now();
        let size = super::layers::layer_size(&self.upper);
        self.measure_every = MEASURE_EVERY.max(walk.elapsed() * 50);
        self.measured = Instant::now();
        if size > self.limit {
            return Some(size);
        }
        self.measure_at = grown + (self.limit - size);
        None
    }
}

/// Bytes in use on the filesystem of `path`.
fn used(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some(s.blocks().saturating_sub(s.blocks_free()) * s.fragment_size())
}

/// Copies the tree `src` into the existing directory `dst` (the layer's own filesystem into
/// the store, another filesystem): file types, owners, modes, extended attributes (overlay
/// markers, file capabilities), times and hard links inside the tree are kept.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, fs::Metadata, PathBuf)> = Vec::new();
    for entry in walkdir::WalkDir::new(src).min_depth(1) {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        let target = dst.join(rel);
        let meta = entry.metadata().map_err(io::Error::other)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&target)?;
            dirs.push((entry.path().to_path_buf(), meta, target));
            continue;
        }
        if meta.nlink() > 1 && !ft.is_symlink() {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = links.get(&key) {
                fs::hard_link(first, &target)?;
                continue;
            }
            links.insert(key, target.clone());
        }
        if ft.is_file() {
            fs::copy(entry.path(), &target)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else {
            let p = c_path(&target)?;
            let kind = if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                meta.mode()
            } else {
                // A socket cannot be recreated by mknod usefully: an empty file keeps the name.
                libc::S_IFREG | (meta.mode() & 0o7777)
            };
            // SAFETY: mknod with a valid path, the source's type and mode, and its rdev.
            if unsafe { libc::mknod(p.as_ptr(), kind, meta.rdev()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        copy_meta(entry.path(), &target, &meta)?;
    }
    // Directories last, deepest first: creating their entries changed their times.
    for (src, meta, target) in dirs.iter().rev() {
        copy_meta(src, target, meta)?;
    }
    Ok(())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Owner, then mode (chown clears set-id bits), then extended attributes (chown clears
/// file capabilities too), then times.
fn copy_meta(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<()> {
    crate::rootless::lchown(dst, meta.uid(), meta.gid())?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    copy_xattrs(src, dst)?;
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    let p = c_path(dst)?;
    // SAFETY: utimensat with a valid path and two timespecs.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let (s, d) = (c_path(src)?, c_path(dst)?);
    let mut names = vec![0u8; 4096];
    // SAFETY: llistxattr into a buffer of the given size.
    let n = unsafe { libc::llistxattr(s.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(()),
            _ => Err(e),
        };
    }
    names.truncate(n as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).map_err(io::Error::other)?;
        let mut value = vec![0u8; 65536];
        let len = super::layers::lgetxattr(&s, &name, &mut value)?;
        // SAFETY: lsetxattr with the bytes just read.
        let rc =
            unsafe { libc::lsetxattr(d.as_ptr(), name.as_ptr(), value.as_ptr().cast(), len, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_links_modes_times_and_special_files() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(src.join("d/a"), "a").unwrap();
        fs::hard_link(src.join("d/a"), src.join("b")).unwrap();
        std::os::unix::fs::symlink("d/a", src.join("l")).unwrap();
        fs::set_permissions(src.join("d/a"), fs::Permissions::from_mode(0o4750)).unwrap();
        super::super::layers::make_whiteout(&src.join("gone")).unwrap();
        super::super::layers::set_opaque(&src.join("d/e")).unwrap();
        let p = c_path(&src.join("d")).unwrap();
        let times = [libc::timespec {
            tv_sec: 1000,
            tv_nsec: 0,
        }; 2];
        // SAFETY: utimensat on a path of ours.
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) },
            0
        );
        copy_tree(&src, &dst).unwrap();
        let a = fs::metadata(dst.join("d/a")).unwrap();
        assert_eq!(a.mode() & 0o7777, 0o4750);
        assert_eq!(a.ino(), fs::metadata(dst.join("b")).unwrap().ino());
        assert_eq!(fs::read_link(dst.join("l")).unwrap(), Path::new("d/a"));
        assert!(super::super::layers::is_whiteout(
            &fs::symlink_metadata(dst.join("gone")).unwrap()
        ));
        assert!(super::super::layers::is_opaque(&dst.join("d/e")));
        assert_eq!(fs::metadata(dst.join("d")).unwrap().mtime(), 1000);
    }
}
