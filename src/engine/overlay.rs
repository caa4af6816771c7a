//! Overlay mounts through the kernel's new mount API (fsopen/fsconfig/fsmount/move_mount).
//!
//! Why not mount(2): its option string is one page, so a long layer chain is silently cut
//! at 4 KiB. With `lowerdir+` (Linux 6.8+) every layer is its own fsconfig call and paths
//! need no escaping. Older kernels fall back to one `lowerdir` string.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

struct FsContext {
    fd: OwnedFd,
}

/// A failed call on a filesystem context, with the kernel's own explanation (the context's
/// message log) when it gave one.
#[derive(Debug)]
struct FsError {
    source: io::Error,
    notes: Vec<String>,
}

impl FsError {
    fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.notes.is_empty() {
            write!(f, "{}", self.source)
        } else {
            write!(f, "{} ({})", self.source, self.notes.join("; "))
        }
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<FsError> for io::Error {
    fn from(e: FsError) -> io::Error {
        if e.notes.is_empty() {
            e.source
        } else {
            io::Error::new(e.source.kind(), e.to_string())
        }
    }
}

/// Why an overlay mount failed: at a `lowerdir+` layer (which a kernel before 6.8 refuses),
/// or anywhere else.
#[derive(Debug, thiserror::Error)]
enum OverlayError {
    #[error("lowerdir+ {}: {source}", lower.display())]
    LowerAppend { lower: PathBuf, source: FsError },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<FsError> for OverlayError {
    fn from(e: FsError) -> OverlayError {
        OverlayError::Io(e.into())
    }
}

impl From<OverlayError> for io::Error {
    fn from(e: OverlayError) -> io::Error {
        match e {
            OverlayError::LowerAppend { ref source, .. } => {
                io::Error::new(source.source.kind(), e.to_string())
            }
            OverlayError::Io(e) => e,
        }
    }
}

impl FsContext {
    fn open(fstype: &str) -> io::Result<FsContext> {
        let name = cstr(fstype.as_bytes())?;
        // SAFETY: fsopen takes a NUL-terminated name and flags; it returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by the kernel and is owned by nobody else.
        Ok(FsContext {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    fn set(&self, key: &str, value: Option<&[u8]>) -> Result<(), FsError> {
        let bad = |source| FsError {
            source,
            notes: Vec::new(),
        };
        let key = cstr(key.as_bytes()).map_err(bad)?;
        let value = value.map(cstr).transpose().map_err(bad)?;
        let (cmd, ptr) = match &value {
            Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: all pointers are valid NUL-terminated strings or null as fsconfig allows.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                cmd,
                key.as_ptr(),
                ptr,
                0,
            )
        };
        if rc < 0 {
            return Err(self.error(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Adds the kernel's own explanation (the context's message log) to an error.
    fn error(&self, source: io::Error) -> FsError {
        let mut buf = [0u8; 512];
        let mut notes = Vec::new();
        loop {
            // SAFETY: reading into a stack buffer of the given size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            notes.push(
                String::from_utf8_lossy(&buf[..n as usize])
                    .trim()
                    .to_string(),
            );
        }
        FsError { source, notes }
    }

    fn mount_at(self, target: &Path) -> io::Result<()> {
        // SAFETY: plain syscalls on the context's fd, and an fd we then own.
        let mfd = unsafe {
            let rc = libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            );
            if rc < 0 {
                return Err(self.error(io::Error::last_os_error()).into());
            }
            let mfd = libc::syscall(libc::SYS_fsmount, self.fd.as_raw_fd(), FSMOUNT_CLOEXEC, 0);
            if mfd < 0 {
                return Err(self.error(io::Error::last_os_error()).into());
            }
            OwnedFd::from_raw_fd(mfd as i32)
        };
        super::idmap::attach(&mfd, target)
    }
}

/// The layers of one overlay mount.
pub struct Overlay<'a> {
    /// Top layer first.
    pub lowers: &'a [PathBuf],
    /// `(upperdir, workdir)`; without it the mount is read-only.
    pub upper: Option<(&'a Path, &'a Path)>,
    /// Mounted inside a user namespace: overlayfs then keeps its markers in `user.overlay.*`
    /// xattrs (see `layers`).
    pub userxattr: bool,
}

impl Overlay<'_> {
    pub fn mount(&self, target: &Path) -> io::Result<()> {
        match self.mount_with(target, true) {
            // EINVAL on `lowerdir+` means a kernel older than 6.8: use the joined form.
            Err(OverlayError::LowerAppend { source, .. })
                if source.errno() == Some(libc::EINVAL) =>
            {
                Ok(self.mount_with(target, false)?)
            }
            other => Ok(other?),
        }
    }

    fn mount_with(&self, target: &Path, append: bool) -> Result<(), OverlayError> {
        let ctx = FsContext::open("overlay")?;
        if append {
            for lower in self.lowers {
                ctx.set("lowerdir+", Some(lower.as_os_str().as_bytes()))
                    .map_err(|source| OverlayError::LowerAppend {
                        lower: lower.clone(),
                        source,
                    })?;
            }
        } else {
            let mut joined = Vec::new();
            for (i, lower) in self.lowers.iter().enumerate() {
                if i > 0 {
                    joined.push(b':');
                }
                for &b in lower.as_os_str().as_bytes() {
                    if b == b':' || b == b'\\' || b == b',' {
                        joined.push(b'\\');
                    }
                    joined.push(b);
                }
            }
            ctx.set("lowerdir", Some(&joined))?;
        }
        if self.userxattr {
            ctx.set("userxattr", None)?;
        }
        if let Some((upper, work)) = self.upper {
            ctx.set("upperdir", Some(upper.as_os_str().as_bytes()))?;
            ctx.set("workdir", Some(work.as_os_str().as_bytes()))?;
            // Layers must stay plain directories that a later flatten can read: no
            // redirect or metacopy xattrs, no index.
            // (`userxattr` allows only `nofollow`, which creates none either.)
            let redirect: &[u8] = if self.userxattr { b"nofollow" } else { b"off" };
            let _ = ctx.set("redirect_dir", Some(redirect));
            let _ = ctx.set("metacopy", Some(b"off"));
            let _ = ctx.set("index", Some(b"off"));
            // No sync of the whole upper filesystem at unmount, on the path of every run.
            // The commit that follows is a rename plus a SQLite transaction, which is as
            // durable as the store is; a crash mid-run leaves only a scratch dir.
            let _ = ctx.set("volatile", None);
        }
        Ok(ctx.mount_at(target)?)
    }
}
