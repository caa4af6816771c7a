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
use std::path::Path;

use crate::engine::sandbox::sys::{Mount, Sys, MOUNT_ATTR_NODEV, MOUNT_ATTR_RDONLY};
use nix::mount::MsFlags;

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

/// Hardens the mounts under `root` (after the init mounted /proc and built /dev there).
/// Entries this kernel lacks are skipped: the mount says ENOENT, which saves a stat of
/// every entry on every run.
pub(crate) fn apply(sys: &impl Sys, root: &Path) -> io::Result<Report> {
    let mut report = Report::default();
    let proc_dir = root.join("proc");
    for name in PROC_READ_ONLY {
        let path = proc_dir.join(name);
        if present(bind(sys, &path, &path))? {
            sys.add_attr(&path, MOUNT_ATTR_RDONLY)?;
            report.read_only.push(name);
        }
    }
    let null = root.join("dev/null");
    for name in PROC_MASKED_FILES {
        if present(bind(sys, &null, &proc_dir.join(name)))? {
            report.masked.push(name);
        }
    }
    for name in PROC_MASKED_DIRS {
        if present(empty_dir(sys, &proc_dir.join(name)))? {
            report.masked.push(name);
        }
    }
    report.sys_fallback = sysfs(sys, &root.join("sys")).err();
    let dev = root.join("dev");
    sys.add_attr(&dev, MOUNT_ATTR_RDONLY)?;
    sys.add_attr(root, MOUNT_ATTR_NODEV)?;
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
fn sysfs(sys: &impl Sys, dir: &Path) -> io::Result<()> {
    sys.create_dir_all(dir)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Refused in a user namespace that does not own the network namespace (sysfs shows
    // the network namespace's devices).
    if let Err(e) = sys.mount(&Mount::fs("sysfs", "sysfs", dir, flags, None)) {
        empty_dir(sys, dir)?;
        return Err(e);
    }
    for name in SYS_MASKED_DIRS {
        present(empty_dir(sys, &dir.join(name)))?;
    }
    Ok(())
}

fn bind(sys: &impl Sys, source: &Path, target: &Path) -> io::Result<()> {
    sys.mount(&Mount::bind(source, target))
}

/// An empty read-only tmpfs over `dir`.
fn empty_dir(sys: &impl Sys, dir: &Path) -> io::Result<()> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    sys.mount(&Mount::fs(
        "tmpfs",
        "tmpfs",
        dir,
        flags,
        Some("size=4k,mode=555"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sandbox::sys::Recorded;

    #[test]
    fn kernel_knobs_are_bound_read_only_and_secrets_masked_before_dev_and_root_are_sealed() {
        let sys = Recorded::default();
        let report = apply(&sys, Path::new("/r")).unwrap();
        for name in PROC_READ_ONLY {
            let bind = sys.position(&format!("mount /r/proc/{name} /r/proc/{name} - MS_BIND -"));
            let ro = sys.position(&format!("attr /r/proc/{name} rdonly"));
            assert_eq!(ro, bind + 1, "{name}: read-only right after its bind");
        }
        for name in PROC_MASKED_FILES {
            sys.position(&format!("mount /r/dev/null /r/proc/{name} - MS_BIND -"));
        }
        let empty = "tmpfs MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC size=4k,mode=555";
        for name in PROC_MASKED_DIRS {
            sys.position(&format!("mount tmpfs /r/proc/{name} {empty}"));
        }
        let sysfs =
            sys.position("mount sysfs /r/sys sysfs MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC -");
        for name in SYS_MASKED_DIRS {
            assert!(sys.position(&format!("mount tmpfs /r/sys/{name} {empty}")) > sysfs);
        }
        // The last two: after them nothing under the root can be made a device or changed
        // in /dev.
        let calls = sys.calls.borrow().clone();
        assert_eq!(
            calls[calls.len() - 2..],
            ["attr /r/dev rdonly", "attr /r nodev"]
        );
        assert_eq!(report.read_only, PROC_READ_ONLY);
        assert_eq!(
            report.masked.len(),
            PROC_MASKED_FILES.len() + PROC_MASKED_DIRS.len()
        );
        assert!(report.sys_fallback.is_none());
    }

    #[test]
    fn entries_this_kernel_lacks_are_skipped_and_not_reported() {
        let sys = Recorded {
            missing: vec!["/proc/timer_stats", "/proc/irq", "/proc/asound"],
            ..Default::default()
        };
        let report = apply(&sys, Path::new("/r")).unwrap();
        assert!(!report.read_only.contains(&"irq"));
        assert!(!report.masked.contains(&"timer_stats"));
        assert!(!report.masked.contains(&"asound"));
        assert!(sys.starting("attr /r/proc/irq").is_empty());
        assert!(report.read_only.contains(&"sys"));
    }

    #[test]
    fn where_sysfs_is_refused_sys_is_an_empty_read_only_dir_and_the_reason_is_kept() {
        let sys = Recorded {
            refused: vec!["sysfs"],
            ..Default::default()
        };
        let report = apply(&sys, Path::new("/r")).unwrap();
        let empty = "tmpfs MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC size=4k,mode=555";
        sys.position(&format!("mount tmpfs /r/sys {empty}"));
        assert!(sys.starting("mount tmpfs /r/sys/").is_empty());
        assert_eq!(
            report.sys_fallback.and_then(|e| e.raw_os_error()),
            Some(libc::EPERM)
        );
    }
}
