//! The sandbox's user namespace: root inside is an unprivileged range of ids outside, and
//! image files keep their owners through idmapped mounts.
//!
//! The supervisor clones the sandbox's init into a new user namespace, maps ids 0–65535
//! inside to a range of host ids (`Range`), and hands the init idmapped copies of the
//! store (and of `/` for the `host` image): a file owned by uid 0 on disk shows as root
//! inside, and a file root creates inside lands on disk owned by 0. The init attaches them
//! in its own mount namespace and mounts the overlay itself (`userxattr`), so that every
//! capability it holds counts only inside. Where the kernel or the store's filesystem
//! cannot do this, the sandbox runs without a user namespace (see `Level`).
//!
//! What is verified on this kind of kernel (6.18, ext4): `open_tree(OPEN_TREE_CLONE)` plus
//! `mount_setattr(MOUNT_ATTR_IDMAP)` in the host namespaces, attached with `move_mount` by
//! the init once it is uid 0 of its namespace (before that its host uid is 0, which the
//! idmapping does not map: creating anything through it then fails with EOVERFLOW).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Which step of the probe (see `probe`) this machine refused, in words `doctor` shows.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{dir}: {source}")]
    Dir {
        dir: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the probe dir is outside the store")]
    OutsideStore,
    #[error(transparent)]
    Nul(#[from] std::ffi::NulError),
    /// Preparing or handing over the probe's descriptors.
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("a user namespace: {0}")]
    Clone(#[source] nix::Error),
    #[error("uid/gid maps: {0}")]
    Maps(#[source] io::Error),
    #[error("an idmapped mount of the store: {0}")]
    IdmapStore(#[source] io::Error),
    #[error("an idmapped mount of /: {0}")]
    IdmapRoot(#[source] io::Error),
    #[error(transparent)]
    Wait(nix::Error),
    #[error("files made inside do not keep their owners")]
    Owners,
    /// The probe's child stopped at this step.
    #[error("{0} failed")]
    Step(&'static str),
}

/// Host ids the sandbox's ids 0–65535 map to, when /etc/subuid and /etc/subgid name no range
/// for `contree`: above the ranges useradd hands out to users (100000 up) and systemd's
/// container ranges (524288–1879048191).
pub const DEFAULT_BASE: u32 = 0x7000_0000;
/// How many ids a sandbox has: 0–65535, what images use.
pub const COUNT: u32 = 65536;

/// The host ids a sandbox's ids map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Range {
    pub uid: u32,
    pub gid: u32,
    pub count: u32,
}

impl Range {
    /// The subordinate range of user `contree` in /etc/subuid and /etc/subgid if both name
    /// one of at least 65536 ids, else the default.
    pub fn for_contree() -> Range {
        let read = |file: &str| subordinate(&std::fs::read_to_string(file).unwrap_or_default());
        match (read("/etc/subuid"), read("/etc/subgid")) {
            (Some(uid), Some(gid)) => Range {
                uid,
                gid,
                count: COUNT,
            },
            _ => Range {
                uid: DEFAULT_BASE,
                gid: DEFAULT_BASE,
                count: COUNT,
            },
        }
    }
}

/// The first `contree:START:COUNT` line with COUNT ≥ 65536.
fn subordinate(text: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut parts = line.trim().split(':');
        let (name, start, count) = (parts.next()?, parts.next()?, parts.next()?);
        let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
        (name == "contree" && count >= COUNT && start.checked_add(COUNT).is_some()).then_some(start)
    })
}

/// Writes the uid and gid maps of the user namespace of `pid` (a child we just cloned).
pub fn write_maps(pid: i32, range: Range) -> io::Result<()> {
    std::fs::write(
        format!("/proc/{pid}/uid_map"),
        format!("0 {} {}\n", range.uid, range.count),
    )?;
    std::fs::write(
        format!("/proc/{pid}/gid_map"),
        format!("0 {} {}\n", range.gid, range.count),
    )
}

/// `struct mount_attr` of mount_setattr(2) (linux/mount.h): one definition for every caller.
#[repr(C)]
pub(crate) struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// A detached copy of the mount at `path` (not its submounts) whose ids go through the user
/// namespace `userns`, as a mount fd to attach elsewhere.
pub fn idmapped(path: &Path, userns: &File) -> io::Result<OwnedFd> {
    let p = c_path(path)?;
    // SAFETY: open_tree(2) with a valid path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr(2) on our detached mount with a properly sized struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Attaches the detached mount `fd` at `target` (relative to the working directory).
pub fn attach(fd: &OwnedFd, target: &Path) -> io::Result<()> {
    let t = c_path(target)?;
    // SAFETY: move_mount(2) from our mount fd to a valid path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends descriptors over a unix socket (SCM_RIGHTS), with one byte of data.
pub fn send_fds(sock: &OwnedFd, fds: &[RawFd]) -> io::Result<()> {
    super::fdpass::send(sock, &[0u8], fds)
}

/// Receives up to `n` descriptors sent by `send_fds` (waiting for them); none when the
/// other end closed without sending.
pub fn recv_fds(sock: RawFd, n: usize) -> io::Result<Vec<OwnedFd>> {
    super::fdpass::recv(sock, &mut [0u8; 1], n).map(|(_, fds)| fds)
}

/// The user namespace of process `pid`, to idmap mounts with.
pub fn userns_of(pid: i32) -> io::Result<File> {
    File::open(format!("/proc/{pid}/ns/user"))
}

/// Whether sandboxes here can have a user namespace with idmapped mounts of the store (and
/// of `/`): tries the whole of it once on a tiny overlay in `scratch` (a directory of the
/// store that this process owns), in a child in namespaces of its own. The error says which
/// step this machine refused.
pub fn probe(store: &Path, scratch: &Path, range: Range) -> Result<(), ProbeError> {
    for dir in ["lower", "upper", "work", "mnt/store", "mnt/root"] {
        std::fs::create_dir_all(scratch.join(dir))
            .map_err(|source| ProbeError::Dir { dir, source })?;
    }
    let rel = scratch
        .strip_prefix(store)
        .map_err(|_| ProbeError::OutsideStore)?;
    let store_rel = Path::new("store").join(rel);
    let data = CString::new(format!(
        "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work,userxattr",
        store_rel.display()
    ))?;
    let points = c_path(&scratch.join("mnt"))?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let (ours, theirs) = (OwnedFd::from(ours), OwnedFd::from(theirs));
    let mut stack = vec![0u8; 64 * 1024];
    let theirs_raw = theirs.as_raw_fd();
    // The child only makes system calls with what was prepared above (the caller may have
    // threads: nothing may allocate in the copy).
    let child = Box::new(move || -> isize {
        // SAFETY: raw syscalls with pointers to data prepared before the clone.
        unsafe {
            if libc::chdir(points.as_ptr()) != 0 {
                return 10;
            }
            let mut byte = [0u8; 1];
            let mut iov = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            let mut control = [0u8; 64];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len();
            if libc::recvmsg(theirs_raw, &mut msg, 0) < 1 {
                return 11;
            }
            let header = libc::CMSG_FIRSTHDR(&msg);
            if header.is_null() {
                return 12;
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header) as *const RawFd);
            // The raw calls: libc's wrappers would wait for the caller's other threads,
            // which this copy does not have.
            if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
            {
                return 13;
            }
            if libc::syscall(
                libc::SYS_move_mount,
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                c"store".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ) != 0
            {
                return 14;
            }
            if libc::mount(
                c"overlay".as_ptr(),
                c"root".as_ptr(),
                c"overlay".as_ptr(),
                0,
                data.as_ptr().cast(),
            ) != 0
            {
                return 15;
            }
            let fd = libc::open(
                c"root/probe".as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            );
            if fd < 0 {
                return 16;
            }
            0
        }
    });
    let flags = nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNS;
    // SAFETY: the child only runs the closure above (raw syscalls on prepared data).
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(ProbeError::Clone)?;
    drop(theirs);
    let handed = (|| -> Result<(), ProbeError> {
        write_maps(pid.as_raw(), range).map_err(ProbeError::Maps)?;
        let userns = userns_of(pid.as_raw())?;
        let mount = idmapped(store, &userns).map_err(ProbeError::IdmapStore)?;
        idmapped(Path::new("/"), &userns).map_err(ProbeError::IdmapRoot)?;
        Ok(send_fds(&ours, &[mount.as_raw_fd()])?)
    })();
    if handed.is_err() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let status = nix::sys::wait::waitpid(pid, None).map_err(ProbeError::Wait)?;
    handed?;
    let step = match status {
        nix::sys::wait::WaitStatus::Exited(_, 0) => None,
        nix::sys::wait::WaitStatus::Exited(_, 15) => Some("an overlay inside a user namespace"),
        nix::sys::wait::WaitStatus::Exited(_, 16) => Some("writing through the idmapped overlay"),
        nix::sys::wait::WaitStatus::Exited(_, 14) => Some("attaching an idmapped mount"),
        _ => Some("setting up a user namespace"),
    };
    match step {
        None if std::fs::symlink_metadata(scratch.join("upper/probe"))
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) =>
        {
            Ok(())
        }
        None => Err(ProbeError::Owners),
        Some(step) => Err(ProbeError::Step(step)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subordinate_range_of_contree_is_used_when_big_enough() {
        assert_eq!(
            subordinate("alice:100000:65536\ncontree:300000:65536\n"),
            Some(300000)
        );
        assert_eq!(subordinate("contree:300000:1000\n"), None);
        assert_eq!(subordinate("contree:4294967000:65536\n"), None);
        assert_eq!(subordinate("alice:100000:65536\n"), None);
    }
}
