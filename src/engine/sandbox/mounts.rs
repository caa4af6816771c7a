//! Mount plumbing around a sandbox: the /proc and minimal /dev its init mounts inside the
//! new root, and the supervisor's private mount namespace and mount-point tmpfs, which make
//! every mount of a run vanish with its supervisor.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::io;
use std::path::Path;

/// /proc, a minimal /dev and /dev/pts, /dev/shm inside the new root.
pub(crate) fn setup_mounts(root: &Path, userns: bool) -> io::Result<()> {
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )?;
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        if userns {
            // No mknod of devices inside a user namespace: the host's own nodes, bound.
            std::fs::File::create(&path)?;
            mount(
                Some(Path::new("/dev").join(name).as_path()),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            continue;
        }
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )?;
        // mknod applies the umask; devices must be world-usable.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    let pts = dev.join("pts");
    std::fs::create_dir(&pts)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    )?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm)?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    Ok(())
}

/// Makes the caller's mount namespace private so nothing it mounts reaches the host, and
/// so everything it mounts disappears with it (no leftover mounts after a crash).
pub fn private_mount_namespace() -> io::Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    Ok(())
}

/// Mounts a small tmpfs for a supervisor's mount points (and the empty second layer of
/// the host view).
pub fn mount_points_tmpfs(target: &Path) -> io::Result<()> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=64k,mode=755"),
    )?;
    Ok(())
}

pub fn unmount(target: &Path) {
    let _ = umount2(target, MntFlags::MNT_DETACH);
}
