//! The init's part of the network, inside the sandbox's namespace: `lo` up, the generated
//! resolv.conf over the image's, and the wait until the helper has configured the rest.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The sandbox init's part, moved into the init with the rest of its spec.
pub enum Inside {
    /// `--no-network`: loopback only.
    Loopback,
    /// A user-mode stack: the command waits for `go`; `resolv` is bound over the image's
    /// /etc/resolv.conf.
    Stack { go: OwnedFd, resolv: PathBuf },
}

impl Inside {
    /// Descriptors the init must keep (see `sandbox::close_inherited_fds`).
    pub fn fds(&self) -> Vec<RawFd> {
        match self {
            Inside::Loopback => Vec::new(),
            Inside::Stack { go, .. } => vec![go.as_raw_fd()],
        }
    }

    /// In the init, before `pivot_root`: `lo` up (a new namespace starts with it down),
    /// and a detached copy of the generated resolv.conf to put in place once the root is
    /// the sandbox's (see `bind_resolv_conf`).
    pub fn before_pivot(&self) -> io::Result<Option<OwnedFd>> {
        loopback_up()?;
        match self {
            Inside::Loopback => Ok(None),
            Inside::Stack { resolv, .. } => open_tree_clone(resolv).map(Some),
        }
    }

    /// In the init, just before the command starts: waits until the supervisor says the
    /// helper has configured the interface.
    pub fn wait(&self) -> io::Result<()> {
        let Inside::Stack { go, .. } = self else {
            return Ok(());
        };
        let mut byte = [0u8; 1];
        loop {
            // SAFETY: reading one byte into a stack buffer from a pipe we own.
            let n = unsafe { libc::read(go.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            match n {
                1 => return Ok(()),
                0 => {
                    return Err(io::Error::other(
                        "the network was never configured (the supervisor went away)",
                    ))
                }
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }
}

/// In the init, after `pivot_root`: mounts the generated resolv.conf over /etc/resolv.conf,
/// following the image's own symlinks inside the new root. An image without one (or with a
/// dangling link) keeps what it has: nothing is created in its layers for this.
pub fn bind_resolv_conf(tree: Option<OwnedFd>) -> io::Result<()> {
    let Some(tree) = tree else {
        return Ok(());
    };
    if !std::fs::metadata("/etc/resolv.conf").is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    let target = c"/etc/resolv.conf";
    // SAFETY: move_mount(2) of the detached tree `tree` onto a NUL-terminated path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_SYMLINKS,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mounting /etc/resolv.conf: {e}"),
        ));
    }
    Ok(())
}

/// A detached bind mount of `path` (open_tree(2) with OPEN_TREE_CLONE): it stays usable
/// after `pivot_root` leaves the supervisor's mounts behind.
fn open_tree_clone(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: open_tree(2) with a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    // SAFETY: a fresh fd from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Brings `lo` up in a fresh network namespace (it starts down).
fn loopback_up() -> io::Result<()> {
    // SAFETY: an ordinary socket used only for interface ioctls, closed by OwnedFd.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sock is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the flags member of ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
