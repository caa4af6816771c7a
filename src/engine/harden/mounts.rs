//! /proc, /sys and /dev inside the sandbox, made in the init's mount namespace before it
//! pivots into the root (the command can never undo them: it lacks CAP_SYS_ADMIN, and the
//! seccomp filter refuses every mount call).
//!
//! - /proc: the kernel knobs (`/proc/sys`, `sysrq-trigger`, `irq`, `bus`, `fs`) are read-only
//!   bind mounts of themselves; files that show the kernel's memory, keys, timers and symbols
//!   are masked with /dev/null and directories of hardware interfaces with an empty
//!   read-only tmpfs (the entries runc masks, plus symbols, page and slab internals).
//! - /sys: a read-only sysfs with the firmware tables and power-meter counters masked;
//!   where sysfs cannot be mounted it is an empty read-only tmpfs.
//! - /dev: read-only once its few nodes exist, and `nodev` on the writable root, so a
//!   device node the command makes or an image brings cannot be opened.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Entries of /proc that stay readable but are never writable.
pub const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// Files of /proc that read as empty (/dev/null over them). Not `kmsg` (opening it needs
/// CAP_SYSLOG in the initial user namespace, which no sandbox holds) nor `key-users` (key
/// counts per uid): every mount costs each run time.
pub const PROC_MASKED_FILES: [&str; 12] = [
    "kcore",
    "keys",
    "kallsyms",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "latency_stats",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "vmallocinfo",
    "slabinfo",
];
/// Directories of /proc shown empty.
pub const PROC_MASKED_DIRS: [&str; 3] = ["acpi", "scsi", "asound"];
/// Directories of /sys shown empty: firmware tables, and energy counters (a side channel).
pub const SYS_MASKED_DIRS: [&str; 2] = ["firmware", "devices/virtual/powercap"];

/// What `apply` did, for `contree doctor`.
#[derive(Debug, Default)]
pub struct Report {
    pub read_only: Vec<&'static str>,
    pub masked: Vec<&'static str>,
    /// Why /sys is empty instead of a read-only sysfs.
    pub sys_fallback: Option<io::Error>,
}

// linux/mount.h
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Hardens the mounts under `root` (after the init mounted /proc and built /dev there).
/// Entries this kernel lacks are skipped: the mount says ENOENT, which saves a stat of
/// every entry on every run.
pub fn apply(root: &Path) -> io::Result<Report> {
    let mut report = Report::default();
    let proc_dir = root.join("proc");
    for name in PROC_READ_ONLY {
        let path = proc_dir.join(name);
        if present(bind(&path, &path))? {
            add_flags(&path, MOUNT_ATTR_RDONLY)?;
            report.read_only.push(name);
        }
    }
    let null = root.join("dev/null");
    for name in PROC_MASKED_FILES {
        if present(bind(&null, &proc_dir.join(name)))? {
            report.masked.push(name);
        }
    }
    for name in PROC_MASKED_DIRS {
        if present(empty_dir(&proc_dir.join(name)))? {
            report.masked.push(name);
        }
    }
    report.sys_fallback = sys(&root.join("sys")).err();
    let dev = root.join("dev");
    add_flags(&dev, MOUNT_ATTR_RDONLY)?;
    add_flags(root, MOUNT_ATTR_NODEV)?;
    Ok(report)
}

/// Whether a mount over an entry was made; false when the entry does not exist.
fn present(mounted: io::Result<()>) -> io::Result<bool> {
    match mounted {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A read-only sysfs at `dir` with the sensitive parts masked; else an empty read-only dir
/// (and the reason).
fn sys(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Refused in a user namespace that does not own the network namespace (sysfs shows
    // the network namespace's devices).
    if let Err(e) = mount(Some("sysfs"), dir, Some("sysfs"), flags, None::<&str>) {
        empty_dir(dir)?;
        return Err(e.into());
    }
    for name in SYS_MASKED_DIRS {
        present(empty_dir(&dir.join(name)))?;
    }
    Ok(())
}

fn bind(source: &Path, target: &Path) -> io::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(())
}

/// An empty read-only tmpfs over `dir`.
fn empty_dir(dir: &Path) -> io::Result<()> {
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,mode=555"),
    )?;
    Ok(())
}

/// Adds mount attributes to the mount at `path`, keeping the others (mount_setattr(2),
/// Linux 5.12; before it, a bind remount that restates the mount's current flags).
fn add_flags(path: &Path, attr: u64) -> io::Result<()> {
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
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)?;
    Ok(())
}
