//! A cgroup per sandbox: memory, process and CPU limits, and what the run consumed.
//!
//! Each controller comes from wherever the host has it: the cgroup2 tree when it is enabled
//! there (`cgroup.controllers`), else a cgroup v1 hierarchy (hybrid hosts keep memory, pids
//! and cpu in v1 and an empty v2 tree at /sys/fs/cgroup/unified). Every run gets a directory
//! `contree/<op>.<pid>.<start>.<pidns>` under each hierarchy it uses, naming its supervisor
//! (pid, start time, pid namespace), so whoever finds the directory of a dead supervisor
//! removes it (`reap`).
//!
//! Moving a process between cgroups takes a global lock whose writer waits for an RCU grace
//! period (milliseconds, measured 5 to 18 ms here): a run must never do that. The init is
//! born in its v2 cgroup (`clone3` with `CLONE_INTO_CGROUP`), and joins its v1 cgroups by
//! writing `0` to their `tasks` files itself before it does anything else (a single thread
//! moving itself skips that lock). The supervisor opens those files, so a sandbox whose root
//! is not host root can still write them; the init closes them before the command starts.
//! This module never touches a cgroup it did not create, except stale ones of its own kind.

mod host;

use super::limits::Limits;
use host::Hierarchy;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// The directory under each hierarchy's root that holds the sandboxes' cgroups.
pub const PARENT: &str = "contree";

/// The cgroup hierarchies of this host, as the mount table shows them.
#[derive(Debug, Clone, Default)]
pub struct Host {
    hierarchies: Vec<Hierarchy>,
}

impl Host {
    /// Creates the cgroup of one run, with `limits` written, named for this supervisor.
    pub fn create(&self, op: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let me = std::process::id() as i32;
        let start = crate::procfs::process_start_time(me).unwrap_or(0);
        let name = format!("{op}.{me}.{start}.{}", pid_namespace().unwrap_or(0));
        let mut cg = Cgroup {
            dirs: Vec::new(),
            into: None,
            join: Vec::new(),
            memory: None,
            cpu: None,
            pids: None,
            unenforced: Vec::new(),
        };
        match self.build(&mut cg, &name, limits) {
            Ok(()) => Ok(cg),
            Err(e) => {
                // Nothing half-made stays behind.
                cg.remove();
                Err(e)
            }
        }
    }

    fn build(&self, cg: &mut Cgroup, name: &str, limits: &Limits) -> Result<(), CgroupError> {
        // The v2 tree places the init at birth and counts its CPU time even without the
        // cpu controller; v1 hierarchies only where they carry a controller v2 lacks.
        let v2 = self.v2();
        let mut needed: Vec<&Hierarchy> = v2.into_iter().collect();
        for c in ["memory", "pids", "cpu", "cpuacct"] {
            let want = match c {
                "pids" => limits.pids.is_some(),
                "cpu" => limits.cpus.is_some(),
                "cpuacct" => v2.is_none(),
                _ => true,
            };
            if let Some(h) = self.carrier(c).filter(|_| want) {
                if !needed.iter().any(|n| n.mount == h.mount) {
                    needed.push(h);
                }
            }
        }
        for h in needed {
            let dir = h.base.join(PARENT).join(name);
            if h.v2 {
                ensure_v2_parent(&h.base, &h.controllers)?;
            }
            make_dir(&dir, &h.base)?;
            cg.dirs.push((dir.clone(), h.v2));
            if h.v2 {
                let fd = nix::fcntl::open(
                    &dir,
                    nix::fcntl::OFlag::O_PATH
                        | nix::fcntl::OFlag::O_DIRECTORY
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|e| CgroupError::io(&dir, e.into()))?;
                // SAFETY: a descriptor open just above, owned by nobody else.
                cg.into = Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            } else {
                let tasks = dir.join("tasks");
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&tasks)
                    .map_err(|e| CgroupError::io(&tasks, e))?;
                cg.join.push(OwnedFd::from(file));
            }
            let has = |c: &str| h.controllers.contains(&c);
            if has("memory") && cg.memory.is_none() {
                cg.memory = Some((dir.clone(), h.v2));
            }
            if has("pids") && cg.pids.is_none() {
                cg.pids = Some((dir.clone(), h.v2));
            }
            if (h.v2 || has("cpuacct")) && cg.cpu.is_none() {
                cg.cpu = Some((dir.clone(), h.v2));
            }
        }
        cg.apply(self, limits)
    }

    /// Removes the cgroups of supervisors that are gone (a crash, a killed supervisor):
    /// their sandboxes died with them (the init's parent-death signal), so the directories
    /// only need removing; one that still holds a process is left alone. Returns what was
    /// found; with `remove` false only looks.
    pub fn reap(&self, remove: bool) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for root in self.roots() {
            let Ok(entries) = fs::read_dir(&root) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !entry.path().is_dir() || owner_alive(&name) {
                    continue;
                }
                if remove {
                    let _ = fs::remove_dir(entry.path());
                }
                found.push(entry.path());
            }
        }
        found
    }
}

/// Removes cgroup directories `reap` found (empty ones only: see `reap`).
pub fn remove_stale<'a>(dirs: impl Iterator<Item = &'a Path>) {
    for dir in dirs {
        let _ = fs::remove_dir(dir);
    }
}

/// Whether the supervisor named in a cgroup's name (`<op>.<pid>.<start>.<pidns>`) still
/// runs. Names of another kind, and supervisors of another pid namespace (whose pids mean
/// nothing here), are not ours to judge: alive.
fn owner_alive(name: &str) -> bool {
    let mut parts = name.rsplitn(4, '.');
    let (Some(ns), Some(start), Some(pid), Some(_op)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return true;
    };
    let (Ok(ns), Ok(start), Ok(pid)) =
        (ns.parse::<u64>(), start.parse::<u64>(), pid.parse::<i32>())
    else {
        return true;
    };
    if Some(ns) != pid_namespace() {
        return true;
    }
    crate::procfs::process_start_time(pid) == Some(start)
}

/// The inode of this process's pid namespace.
fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// `contree` under the v2 root, with the wanted controllers enabled for its children (and
/// in the root's own `subtree_control` first, as a cgroup can only pass on what it has).
fn ensure_v2_parent(root: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let parent = root.join(PARENT);
    let enabled = fs::read_to_string(parent.join("cgroup.subtree_control"));
    let missing: Vec<&str> = controllers
        .iter()
        .copied()
        .filter(|c| *c != "cpuacct")
        .filter(|c| {
            enabled
                .as_ref()
                .map(|e| !e.split_whitespace().any(|x| x == *c))
                .unwrap_or(true)
        })
        .collect();
    if enabled.is_ok() && missing.is_empty() {
        return Ok(());
    }
    make_dir(&parent, root)?;
    for dir in [root, parent.as_path()] {
        for c in &missing {
            // Refused where the tree is not ours to change (a delegated subtree with
            // processes in it): that limit then goes unenforced, and `apply` says so.
            let _ = write(&dir.join("cgroup.subtree_control"), &format!("+{c}"));
        }
    }
    Ok(())
}

fn make_dir(dir: &Path, root: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir.parent() != Some(root) => {
            if let Some(parent) = dir.parent() {
                make_dir(parent, root)?;
            }
            fs::create_dir(dir).map_err(|e| CgroupError::io(dir, e))
        }
        Err(e) => Err(CgroupError::io(dir, e)),
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Removes a cgroup directory; a process still in it (one that was exiting) is killed
/// first. Tries a few times, briefly: the kernel frees a cgroup as its last task is reaped.
fn remove_dir(dir: &Path, tries: u32) -> bool {
    for i in 0..tries {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) => {}
        }
        if write(&dir.join("cgroup.kill"), "1").is_err() {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) of a process inside a cgroup of our own.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1 << i.min(6)));
    }
    false
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    fn io(path: &Path, source: io::Error) -> CgroupError {
        CgroupError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The cgroup of one run: a directory per hierarchy used.
#[derive(Debug)]
pub struct Cgroup {
    /// (directory, is v2), in creation order.
    dirs: Vec<(PathBuf, bool)>,
    /// The v2 directory, for `clone3(CLONE_INTO_CGROUP)`.
    into: Option<OwnedFd>,
    /// The v1 `tasks` files the init writes `0` to (see the module doc).
    join: Vec<OwnedFd>,
    /// Where the memory, CPU accounting and pids files are: (directory, is v2).
    memory: Option<(PathBuf, bool)>,
    cpu: Option<(PathBuf, bool)>,
    pids: Option<(PathBuf, bool)>,
    /// Limits asked for that this host cannot enforce (no controller for them).
    pub unenforced: Vec<&'static str>,
}

/// How the init enters its cgroup: born into `into`, then joins the v1 ones by their
/// `tasks` files. Handed to the sandbox (see `sandbox::Spec`).
#[derive(Debug, Default)]
pub struct Placement {
    pub into: Option<OwnedFd>,
    pub join: Vec<OwnedFd>,
}

impl Placement {
    /// In the init, before anything else: moves it into its v1 cgroups (and its v2 one on a
    /// kernel without `CLONE_INTO_CGROUP`), and roots a new cgroup namespace there (the one
    /// it was cloned with is rooted at the supervisor's).
    pub fn join(self) -> io::Result<()> {
        let born_outside = BORN_OUTSIDE.load(std::sync::atomic::Ordering::Relaxed);
        if let (Some(dir), true) = (&self.into, born_outside) {
            // The slow way (a global lock, an RCU grace period), only on old kernels.
            let procs = nix::fcntl::openat(
                Some(dir.as_raw_fd()),
                "cgroup.procs",
                nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )?;
            // SAFETY: a descriptor just opened, owned here.
            let procs = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(procs) };
            nix::unistd::write(&procs, b"0\n")?;
        }
        if self.join.is_empty() && !born_outside {
            return Ok(());
        }
        for fd in &self.join {
            // SAFETY: writing two bytes from a static buffer to a descriptor we own.
            if unsafe { libc::write(fd.as_raw_fd(), b"0\n".as_ptr().cast(), 2) } < 0 {
                return Err(io::Error::other(format!(
                    "joining the sandbox's cgroup: {}",
                    io::Error::last_os_error()
                )));
            }
        }
        drop(self.join);
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)?;
        Ok(())
    }
}

/// What a run consumed, read from its cgroup when it has ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub user_usec: Option<u64>,
    pub system_usec: Option<u64>,
    /// user + system.
    pub cpu_usec: Option<u64>,
    pub memory_peak: Option<u64>,
    /// Processes the kernel's OOM killer ended in the sandbox.
    pub oom_kills: u64,
    /// Forks refused by the pids limit.
    pub pids_refused: u64,
}

impl Cgroup {
    /// The init's way in; the supervisor keeps nothing of it.
    pub fn placement(&mut self) -> Placement {
        Placement {
            into: self.into.take(),
            join: std::mem::take(&mut self.join),
        }
    }

    fn apply(&mut self, host: &Host, limits: &Limits) -> Result<(), CgroupError> {
        let mut missing = Vec::new();
        // A file that is not there is a controller the tree would not give this cgroup (a
        // delegated v2 subtree whose root has processes): that limit goes unenforced.
        let mut put = |dir: &Path, file: &str, value: &str, limit: &'static str| {
            let path = dir.join(file);
            match write(&path, value) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing.push(limit);
                    Ok(())
                }
                other => other.map_err(|e| CgroupError::io(&path, e)),
            }
        };
        if let Some(bytes) = limits.memory {
            match &self.memory {
                Some((dir, true)) => {
                    put(dir, "memory.max", &bytes.to_string(), "memory")?;
                    // RAM and swap together stay within the limit: no swap beyond it.
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
                Some((dir, false)) => {
                    put(dir, "memory.limit_in_bytes", &bytes.to_string(), "memory")?;
                    let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string());
                }
                None => self.unenforced.push("memory"),
            }
        }
        if let Some(n) = limits.pids {
            // The init is one of the sandbox's processes too.
            let max = (n + 1).to_string();
            match &self.pids {
                Some((dir, _)) => put(dir, "pids.max", &max, "pids")?,
                None => self.unenforced.push("pids"),
            }
        }
        if let Some(cpus) = limits.cpus {
            const PERIOD: u64 = 100_000;
            let quota = ((cpus * PERIOD as f64).round() as u64).max(1_000);
            match host.carrier("cpu") {
                Some(h) => {
                    let dir = self
                        .dirs
                        .iter()
                        .find(|(d, _)| d.starts_with(&h.base))
                        .map(|(d, _)| d.clone());
                    match (dir, h.v2) {
                        (Some(dir), true) => {
                            put(&dir, "cpu.max", &format!("{quota} {PERIOD}"), "cpus")?
                        }
                        (Some(dir), false) => {
                            put(&dir, "cpu.cfs_period_us", &PERIOD.to_string(), "cpus")?;
                            put(&dir, "cpu.cfs_quota_us", &quota.to_string(), "cpus")?;
                        }
                        (None, _) => self.unenforced.push("cpus"),
                    }
                }
                None => self.unenforced.push("cpus"),
            }
        }
        missing.dedup();
        self.unenforced.extend(missing);
        Ok(())
    }

    /// What the sandbox consumed; call once its processes are gone.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        let read = |dir: &Path, file: &str| fs::read_to_string(dir.join(file)).ok();
        let field = |text: &str, key: &str| -> Option<u64> {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok())?
            })
        };
        match &self.cpu {
            Some((dir, true)) => {
                if let Some(stat) = read(dir, "cpu.stat") {
                    u.cpu_usec = field(&stat, "usage_usec");
                    u.user_usec = field(&stat, "user_usec");
                    u.system_usec = field(&stat, "system_usec");
                }
            }
            Some((dir, false)) => {
                let ns = |f: &str| read(dir, f).and_then(|t| t.trim().parse::<u64>().ok());
                u.cpu_usec = ns("cpuacct.usage").map(|n| n / 1000);
                u.user_usec = ns("cpuacct.usage_user").map(|n| n / 1000);
                u.system_usec = ns("cpuacct.usage_sys").map(|n| n / 1000);
            }
            None => {}
        }
        match &self.memory {
            Some((dir, true)) => {
                u.memory_peak = read(dir, "memory.peak").and_then(|t| t.trim().parse().ok());
                if let Some(events) = read(dir, "memory.events") {
                    u.oom_kills = field(&events, "oom_kill").unwrap_or(0);
                }
            }
            Some((dir, false)) => {
                u.memory_peak =
                    read(dir, "memory.max_usage_in_bytes").and_then(|t| t.trim().parse().ok());
                if let Some(control) = read(dir, "memory.oom_control") {
                    u.oom_kills = field(&control, "oom_kill").unwrap_or(0);
                }
            }
            None => {}
        }
        if let Some((dir, _)) = &self.pids {
            if let Some(events) = read(dir, "pids.events") {
                u.pids_refused = field(&events, "max").unwrap_or(0);
            }
        }
        u
    }

    /// Removes the run's directories (its processes are gone by now).
    pub fn remove(self) {
        for (dir, _) in self.dirs.iter().rev() {
            remove_dir(dir, 8);
        }
    }
}

/// `struct clone_args` of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Set when this kernel has no `clone3` or no `CLONE_INTO_CGROUP` (before 5.7): the init,
/// a copy of this process made after, then joins its v2 cgroup itself (`Placement::join`).
static BORN_OUTSIDE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `clone_into` failed only because the kernel lacks it: then clone the usual way.
pub fn unsupported(e: &io::Error) -> bool {
    let missing = matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::E2BIG)
    );
    if missing {
        BORN_OUTSIDE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    missing
}

/// Like fork(2) with `flags`, the child born in the cgroup `dir` and running `child` (whose
/// result is its exit code). For a single-threaded caller, as fork is.
pub fn clone_into(
    flags: libc::c_int,
    dir: RawFd,
    child: &mut dyn FnMut() -> isize,
) -> io::Result<nix::unistd::Pid> {
    let args = CloneArgs {
        flags: flags as u32 as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: dir as u64,
    };
    // SAFETY: clone3 with no stack behaves as fork: the child runs on a copy of this
    // (single-threaded) process and never returns from here; it leaves with _exit.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        0 => {
            let code = child();
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code as i32) }
        }
        pid if pid > 0 => Ok(nix::unistd::Pid::from_raw(pid as i32)),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_dead_supervisors_are_stale() {
        let me = std::process::id() as i32;
        let start = crate::procfs::process_start_time(me).unwrap();
        let ns = pid_namespace().unwrap();
        assert!(owner_alive(&format!("a-b-c.{me}.{start}.{ns}")));
        assert!(!owner_alive(&format!("a-b-c.{me}.{}.{ns}", start + 1)));
        // Another pid namespace's supervisor: not ours to judge.
        assert!(owner_alive(&format!("a-b-c.{me}.{}.{}", start + 1, ns + 1)));
        assert!(owner_alive("system.slice"));
        assert!(owner_alive("x.y.z"));
    }
}
