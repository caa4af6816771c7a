//! Mount plumbing around a sandbox: the /proc and minimal /dev its init mounts inside the
//! new root, and the supervisor's private mount namespace and mount-point tmpfs, which make
//! every mount of a run vanish with its supervisor.

use super::sys::{Mount, Sys};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::io;
use std::path::Path;

/// /proc, a minimal /dev and /dev/pts, /dev/shm inside the new root.
pub(crate) fn setup_mounts(sys: &impl Sys, root: &Path, userns: bool) -> io::Result<()> {
    let proc_dir = root.join("proc");
    sys.create_dir_all(&proc_dir)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    sys.mount(&Mount::fs("proc", "proc", &proc_dir, flags, None))?;
    let dev = root.join("dev");
    sys.create_dir_all(&dev)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    let options = Some("mode=755,size=65536k");
    sys.mount(&Mount::fs("tmpfs", "tmpfs", &dev, flags, options))?;
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
            sys.create_file(&path)?;
            sys.mount(&Mount::bind(&Path::new("/dev").join(name), &path))?;
            continue;
        }
        sys.char_device(&path, major, minor)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        sys.symlink(target, &dev.join(link))?;
    }
    let pts = dev.join("pts");
    sys.create_dir(&pts)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let options = Some("newinstance,ptmxmode=0666,mode=620");
    sys.mount(&Mount::fs("devpts", "devpts", &pts, flags, options))?;
    let shm = dev.join("shm");
    sys.create_dir(&shm)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    sys.mount(&Mount::fs("tmpfs", "shm", &shm, flags, Some("mode=1777")))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sandbox::sys::Recorded;

    #[test]
    fn proc_comes_first_then_a_dev_tmpfs_its_nodes_links_pts_and_shm() {
        let sys = Recorded::default();
        setup_mounts(&sys, Path::new("/r"), false).unwrap();
        let proc = sys.position("mount proc /r/proc proc MS_NOSUID | MS_NODEV | MS_NOEXEC -");
        let dev = sys
            .position("mount tmpfs /r/dev tmpfs MS_NOSUID | MS_STRICTATIME mode=755,size=65536k");
        let null = sys.position("mknod /r/dev/null c 1 3");
        let ptmx = sys.position("ln -s pts/ptmx /r/dev/ptmx");
        let pts = sys.position(
            "mount devpts /r/dev/pts devpts MS_NOSUID | MS_NOEXEC newinstance,ptmxmode=0666,mode=620",
        );
        let shm = sys.position("mount shm /r/dev/shm tmpfs MS_NOSUID | MS_NODEV mode=1777");
        assert!(proc < dev && dev < null && null < ptmx && ptmx < pts && pts < shm);
        // Exactly the six nodes a program expects, nothing that reaches hardware.
        let nodes = sys.starting("mknod");
        assert_eq!(
            nodes,
            [
                "mknod /r/dev/null c 1 3",
                "mknod /r/dev/zero c 1 5",
                "mknod /r/dev/full c 1 7",
                "mknod /r/dev/random c 1 8",
                "mknod /r/dev/urandom c 1 9",
                "mknod /r/dev/tty c 5 0",
            ]
        );
        // A private devpts: the host's terminals are not in it.
        assert!(pts > 0 && sys.starting("mount /dev/").is_empty());
    }

    #[test]
    fn in_a_user_namespace_the_hosts_nodes_are_bound_instead_of_made() {
        let sys = Recorded::default();
        setup_mounts(&sys, Path::new("/r"), true).unwrap();
        assert!(sys.starting("mknod").is_empty());
        for name in ["null", "zero", "full", "random", "urandom", "tty"] {
            let touch = sys.position(&format!("touch /r/dev/{name}"));
            let bind = sys.position(&format!("mount /dev/{name} /r/dev/{name} - MS_BIND -"));
            assert!(touch < bind, "{name}: the target exists before the bind");
        }
    }
}
