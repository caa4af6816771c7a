//! The system calls of the sandbox's mount plan (/proc, /dev, the masks) behind a trait:
//! `Host` makes them; the tests record them, so the plan and its order are checked
//! without root or namespaces. Generic, not `dyn`: the init pays nothing for the seam.

use nix::mount::MsFlags;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// linux/mount.h
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;

/// The arguments of one mount(2).
pub(crate) struct Mount<'a> {
    /// A path, or a filesystem's name (`proc`, `tmpfs`).
    pub source: &'a Path,
    pub target: &'a Path,
    pub fstype: Option<&'a str>,
    pub flags: MsFlags,
    pub data: Option<&'a str>,
}

impl<'a> Mount<'a> {
    /// A new filesystem of type `fstype` at `target`, `source` naming it in the mount table.
    pub fn fs(
        fstype: &'a str,
        source: &'a str,
        target: &'a Path,
        flags: MsFlags,
        data: Option<&'a str>,
    ) -> Self {
        Mount {
            source: Path::new(source),
            target,
            fstype: Some(fstype),
            flags,
            data,
        }
    }

    /// `source` bound at `target`.
    pub fn bind(source: &'a Path, target: &'a Path) -> Self {
        Mount {
            source,
            target,
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
        }
    }
}

pub(crate) trait Sys {
    /// mount(2).
    fn mount(&self, m: &Mount) -> io::Result<()>;
    /// Adds `MOUNT_ATTR_*` flags to the mount at `path`, keeping its others.
    fn add_attr(&self, path: &Path, attr: u64) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// An empty regular file (a bind mount's target).
    fn create_file(&self, path: &Path) -> io::Result<()>;
    /// A character device usable by everyone (0666, whatever the umask).
    fn char_device(&self, path: &Path, major: u64, minor: u64) -> io::Result<()>;
    fn symlink(&self, target: &str, link: &Path) -> io::Result<()>;
}

/// The real calls.
pub(crate) struct Host;

impl Sys for Host {
    fn mount(&self, m: &Mount) -> io::Result<()> {
        nix::mount::mount(Some(m.source), m.target, m.fstype, m.flags, m.data)?;
        Ok(())
    }

    /// mount_setattr(2) (Linux 5.12); before it, a bind remount that restates the mount's
    /// current flags.
    fn add_attr(&self, path: &Path, attr: u64) -> io::Result<()> {
        use crate::engine::idmap::MountAttr;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let attrs = MountAttr {
            attr_set: attr,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: a NUL-terminated path and a mount_attr of the size given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c.as_ptr(),
                0,
                &attrs,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(err);
        }
        let current = nix::sys::statvfs::statvfs(path)?.flags();
        use nix::sys::statvfs::FsFlags;
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
        for (have, keep) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if current.contains(have) {
                flags |= keep;
            }
        }
        if attr & MOUNT_ATTR_RDONLY != 0 {
            flags |= MsFlags::MS_RDONLY;
        }
        if attr & MOUNT_ATTR_NODEV != 0 {
            flags |= MsFlags::MS_NODEV;
        }
        nix::mount::mount(None::<&str>, path, None::<&str>, flags, None::<&str>)?;
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        std::fs::File::create(path).map(drop)
    }

    fn char_device(&self, path: &Path, major: u64, minor: u64) -> io::Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(
            path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )?;
        // mknod applies the umask; devices must be world-usable.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
    }

    fn symlink(&self, target: &str, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }
}

/// Records every call as a line of text, and answers ENOENT for mounts over `missing`
/// targets (entries a kernel lacks) and EPERM for `refused` filesystem types.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Recorded {
    pub calls: std::cell::RefCell<Vec<String>>,
    pub missing: Vec<&'static str>,
    pub refused: Vec<&'static str>,
}

#[cfg(test)]
impl Recorded {
    fn push(&self, line: String) {
        self.calls.borrow_mut().push(line);
    }

    /// The calls whose line starts with `prefix`.
    pub fn starting(&self, prefix: &str) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Where `line` is in the record (panics when it was never made).
    pub fn position(&self, line: &str) -> usize {
        let calls = self.calls.borrow();
        calls
            .iter()
            .position(|c| c == line)
            .unwrap_or_else(|| panic!("no call {line:?} in {calls:#?}"))
    }
}

#[cfg(test)]
impl Sys for Recorded {
    fn mount(&self, m: &Mount) -> io::Result<()> {
        let t = m.target.display().to_string();
        if self.missing.iter().any(|missing| t.ends_with(missing)) {
            return Err(io::ErrorKind::NotFound.into());
        }
        if m.fstype.is_some_and(|f| self.refused.contains(&f)) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let flags: Vec<&str> = m.flags.iter_names().map(|(name, _)| name).collect();
        self.push(format!(
            "mount {} {t} {} {} {}",
            m.source.display(),
            m.fstype.unwrap_or("-"),
            flags.join(" | "),
            m.data.unwrap_or("-")
        ));
        Ok(())
    }

    fn add_attr(&self, path: &Path, attr: u64) -> io::Result<()> {
        let name = match attr {
            MOUNT_ATTR_RDONLY => "rdonly",
            MOUNT_ATTR_NODEV => "nodev",
            _ => "other",
        };
        self.push(format!("attr {} {name}", path.display()));
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.push(format!("mkdir -p {}", path.display()));
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.push(format!("mkdir {}", path.display()));
        Ok(())
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        self.push(format!("touch {}", path.display()));
        Ok(())
    }

    fn char_device(&self, path: &Path, major: u64, minor: u64) -> io::Result<()> {
        self.push(format!("mknod {} c {major} {minor}", path.display()));
        Ok(())
    }

    fn symlink(&self, target: &str, link: &Path) -> io::Result<()> {
        self.push(format!("ln -s {target} {}", link.display()));
        Ok(())
    }
}
