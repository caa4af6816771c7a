//! Rootless mode: the local engine run by an ordinary user, inside a user namespace of its
//! own (as `podman unshare` does), where the user's uid is 0 and every namespace, mount and
//! overlay the engine makes is owned by that namespace.
//!
//! The process enters it once, before it opens the store and while it has one thread
//! (`enter`); everything it starts (the supervisor, a sandbox, `serve`'s supervisors)
//! inherits it. The store's files are then the user's on disk, and root of the namespace may
//! handle all of them (`gc`, imports, commits), which the user outside could not for files
//! owned by subordinate ids. With subordinate ids (/etc/subuid and /etc/subgid, set through
//! `newuidmap`/`newgidmap`) ids 1–65535 map too; without, only the user's own id is mapped:
//! files of other owners (the host's, an image's) show as `nobody` and `chown` to another
//! id fails with EINVAL.
//!
//! `active` says whether this process is in a user namespace other than the host's, however
//! it got there: the engine then builds what cannot be built there differently (overlays
//! with `userxattr`, the `host` image from views of single directories, cgroups only under one
//! delegated to the user).

use std::io;
use std::sync::OnceLock;

/// Why this user cannot have a user namespace here.
#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    /// The kernel (or a security module) refused it: `why` names the setting.
    #[error("this system does not let ordinary users create user namespaces ({source}): {why}")]
    Forbidden {
        why: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot map ids in the user namespace: {0}")]
    Maps(#[source] io::Error),
    #[error("{program} failed: {detail}")]
    Helper {
        program: &'static str,
        detail: String,
    },
    #[error("cannot start the id-mapping helper: {0}")]
    Fork(#[source] io::Error),
}

/// Which ids the namespace maps: the user's own only, or 0–65535 with subordinate ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// uid → 0 and gid → 0, nothing else.
    Own { uid: u32, gid: u32 },
    /// uid → 0, then `count` subordinate ids from `subuid` (`subgid`) → 1….
    Subordinate {
        uid: u32,
        gid: u32,
        subuid: u32,
        subgid: u32,
        count: u32,
    },
}

/// The ids inside that images use: 0–65535.
const WANTED: u32 = 65535;

/// Whether this process runs in a user namespace other than the host's: its uid map is not
/// the identity of all ids. Read once.
pub fn active() -> bool {
    static ACTIVE: OnceLock<bool> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| !is_initial(&map))
    })
}

/// Whether this process's user namespace maps a single uid (rootless without subordinate
/// ids): files can then only be owned by root of the namespace (the user). Read once.
pub fn one_id() -> bool {
    static ONE: OnceLock<bool> = OnceLock::new();
    *ONE.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| mapped_ids(&map) == 1)
    })
}

/// How many ids the uid map `map` maps.
fn mapped_ids(map: &str) -> u64 {
    map.lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

/// lchown(2) for copying an owner into the store: rootless, an id this namespace does not
/// map (EINVAL) leaves the file to root of the namespace, which is all a user with no
/// subordinate ids can have.
pub fn lchown(path: &std::path::Path, uid: u32, gid: u32) -> io::Result<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && active() => Ok(()),
        other => other,
    }
}

/// This process's uid and gid maps in words, for `doctor`: `uid 0 → 1001` and so on,
/// with what a single id means.
pub fn current_mapping() -> String {
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let (uids, gids) = (read("/proc/self/uid_map"), read("/proc/self/gid_map"));
    let mut text = format!("uids {}; gids {}", describe_map(&uids), describe_map(&gids));
    if mapped_ids(&uids) == 1 {
        text.push_str(
            "; only the user's own id is mapped (no /etc/subuid entry, or no newuidmap): files of other owners show as nobody and chown to other ids fails",
        );
    }
    text
}

/// `0 1001 1` lines as `0 → 1001, 1-65535 → 100000-165534`.
fn describe_map(map: &str) -> String {
    let parts: Vec<String> = map
        .lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let [inside, outside, count] = f[..] else {
                return None;
            };
            Some(if count == 1 {
                format!("{inside} → {outside}")
            } else {
                format!(
                    "{inside}-{} → {outside}-{}",
                    inside + count - 1,
                    outside + count - 1
                )
            })
        })
        .collect();
    parts.join(", ")
}

/// Whether `newuidmap` and `newgidmap` are installed.
pub fn id_helpers_installed() -> bool {
    helper("newuidmap").is_some() && helper("newgidmap").is_some()
}

/// Whether `map` (a `/proc/PID/uid_map`) is the initial namespace's: `0 0 4294967295`.
fn is_initial(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// Enters a user namespace of this user's own when the process is not root (and not in
/// one already), and returns how it maps ids; `None` when nothing was to be done. Must be
/// called while the process has a single thread (unshare(2) refuses otherwise).
pub fn enter() -> Result<Option<Mapping>, RootlessError> {
    if nix::unistd::geteuid().is_root() || active_now() {
        return Ok(None);
    }
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    // The tests' way to see a host that forbids them, without touching a kernel setting.
    if crate::failpoint::refused("userns-forbidden") {
        return Err(forbidden(io::Error::from_raw_os_error(libc::EPERM)));
    }
    let mapping = planned_mapping(uid, gid);
    match mapping {
        Mapping::Own { uid, gid } => {
            unshare().map_err(forbidden)?;
            write_own_maps(uid, gid).map_err(RootlessError::Maps)?;
        }
        Mapping::Subordinate { .. } => enter_with_helpers(&mapping)?,
    }
    Ok(Some(mapping))
}

/// `active`, read now rather than once (before and after `enter` differ).
fn active_now() -> bool {
    std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| !is_initial(&map))
}

/// The mapping this user would get: subordinate ids where /etc/subuid and /etc/subgid
/// give the user a range and `newuidmap`/`newgidmap` are installed, else the own id.
pub fn planned_mapping(uid: u32, gid: u32) -> Mapping {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name);
    let read = |file: &str| std::fs::read_to_string(file).unwrap_or_default();
    let sub_u = subordinate(&read("/etc/subuid"), user.as_deref(), uid);
    // newgidmap checks /etc/subgid against the user's name (or uid), not the group's.
    let sub_g = subordinate(&read("/etc/subgid"), user.as_deref(), uid)
        .or_else(|| subordinate(&read("/etc/subgid"), group.as_deref(), gid));
    match (sub_u, sub_g, helper("newuidmap"), helper("newgidmap")) {
        (Some((subuid, cu)), Some((subgid, cg)), Some(_), Some(_)) => Mapping::Subordinate {
            uid,
            gid,
            subuid,
            subgid,
            count: cu.min(cg).min(WANTED),
        },
        _ => Mapping::Own { uid, gid },
    }
}

/// The first range of `/etc/subuid`-format `text` for `name` (or the numeric `id`): start
/// and count.
fn subordinate(text: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    let id = id.to_string();
    text.lines().find_map(|line| {
        let mut parts = line.trim().split(':');
        let (who, start, count) = (parts.next()?, parts.next()?, parts.next()?);
        if Some(who) != name && who != id {
            return None;
        }
        let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
        (count > 0 && start.checked_add(count).is_some()).then_some((start, count))
    })
}

/// Where the setuid helper `name` is installed.
fn helper(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn unshare() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(io::Error::from)
}

fn forbidden(source: io::Error) -> RootlessError {
    RootlessError::Forbidden {
        why: diagnose(&Knobs::read()),
        source,
    }
}

fn write_own_maps(uid: u32, gid: u32) -> io::Result<()> {
    // Without setgroups denied an unprivileged process may not write its gid map.
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1\n"))
}

/// Unshares the user namespace and has `newuidmap`/`newgidmap` map it: they must run in
/// the host's namespace (their setuid bit counts for nothing inside ours), so a child
/// forked first waits until we are in the new namespace, then runs them on our pid.
fn enter_with_helpers(mapping: &Mapping) -> Result<(), RootlessError> {
    let Mapping::Subordinate {
        uid,
        gid,
        subuid,
        subgid,
        count,
    } = *mapping
    else {
        return Ok(());
    };
    let me = std::process::id().to_string();
    let uid_args = [
        me.clone(),
        "0".into(),
        uid.to_string(),
        "1".into(),
        "1".into(),
        subuid.to_string(),
        count.to_string(),
    ];
    let gid_args = [
        me,
        "0".into(),
        gid.to_string(),
        "1".into(),
        "1".into(),
        subgid.to_string(),
        count.to_string(),
    ];
    let (go_r, go_w) = nix::unistd::pipe().map_err(|e| RootlessError::Fork(e.into()))?;
    let (err_r, err_w) = nix::unistd::pipe().map_err(|e| RootlessError::Fork(e.into()))?;
    // SAFETY: the process has one thread (see `enter`); the child only reads a pipe, runs
    // two programs and leaves with _exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| RootlessError::Fork(e.into()))? {
        nix::unistd::ForkResult::Child => {
            drop(go_w);
            drop(err_r);
            let mut byte = [0u8; 1];
            let code = if nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&go_r), &mut byte)
                == Ok(1)
            {
                // Both at once: each is an exec of a setuid program, about a millisecond.
                let start = |program: &'static str, args: &[String]| {
                    let child = std::process::Command::new(program)
                        .args(args)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::piped())
                        .spawn();
                    (program, child)
                };
                let finish = |(program, child): (&str, io::Result<std::process::Child>)| match child
                    .and_then(|c| c.wait_with_output())
                {
                    Ok(out) if out.status.success() => None,
                    Ok(out) => Some(format!(
                        "{program}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )),
                    Err(e) => Some(format!("{program}: {e}")),
                };
                let uids = start("newuidmap", &uid_args);
                let gids = start("newgidmap", &gid_args);
                let failed = finish(uids).or(finish(gids));
                match failed {
                    None => 0,
                    Some(msg) => {
                        let _ = nix::unistd::write(&err_w, msg.as_bytes());
                        1
                    }
                }
            } else {
                2
            };
            // SAFETY: leaving the forked copy without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(go_r);
            drop(err_w);
            let unshared = unshare();
            if let Err(e) = unshared {
                drop(go_w);
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(forbidden(e));
            }
            let _ = nix::unistd::write(&go_w, b"1");
            drop(go_w);
            let status = nix::sys::wait::waitpid(child, None);
            let mut detail = String::new();
            let _ = io::Read::read_to_string(&mut std::fs::File::from(err_r), &mut detail);
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                _ => Err(RootlessError::Helper {
                    program: "newuidmap/newgidmap",
                    detail: if detail.is_empty() {
                        "it did not map the namespace".into()
                    } else {
                        detail
                    },
                }),
            }
        }
    }
}

/// The kernel settings that decide whether an ordinary user may create a user namespace;
/// `None` where this kernel has no such setting.
#[derive(Debug, Default, Clone)]
pub struct Knobs {
    /// `kernel.unprivileged_userns_clone` (Debian's and Arch's kernels).
    pub unprivileged_userns_clone: Option<String>,
    /// `user.max_user_namespaces`.
    pub max_user_namespaces: Option<String>,
    /// `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu 23.10 and later).
    pub apparmor_restrict: Option<String>,
}

impl Knobs {
    pub fn read() -> Knobs {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        Knobs {
            unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone"),
            max_user_namespaces: read("/proc/sys/user/max_user_namespaces"),
            apparmor_restrict: read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        }
    }
}

/// Which setting forbids unprivileged user namespaces, and how an administrator allows
/// contree; said when creating one failed.
pub fn diagnose(k: &Knobs) -> String {
    let mut why = Vec::new();
    if k.unprivileged_userns_clone.as_deref() == Some("0") {
        why.push(
            "kernel.unprivileged_userns_clone is 0; allow them with `sysctl -w kernel.unprivileged_userns_clone=1` (as root; persist it in /etc/sysctl.d/)",
        );
    }
    if k.max_user_namespaces.as_deref() == Some("0") {
        why.push(
            "user.max_user_namespaces is 0; allow them with `sysctl -w user.max_user_namespaces=15000` (as root; persist it in /etc/sysctl.d/)",
        );
    }
    if k.apparmor_restrict.as_deref() == Some("1") {
        why.push(
            "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns is 1); allow contree with an AppArmor profile for its binary that grants `userns,` (docs/rootless.md shows one), or set the sysctl to 0",
        );
    }
    if why.is_empty() {
        return "no known setting forbids them here (a seccomp filter, a container runtime or the user namespace limit may; see docs/rootless.md), or run contree as root".into();
    }
    why.join("; ")
}

/// Whether an ordinary user could create a user namespace here, judging by the settings
/// alone (for `doctor` run as root): `None` when none forbids it, else which one does and
/// how to allow it.
pub fn forbidding_setting(k: &Knobs) -> Option<String> {
    let forbids = k.unprivileged_userns_clone.as_deref() == Some("0")
        || k.max_user_namespaces.as_deref() == Some("0")
        || k.apparmor_restrict.as_deref() == Some("1");
    forbids.then(|| diagnose(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_namespace_maps_every_id_to_itself() {
        assert!(is_initial("         0          0 4294967295\n"));
        assert!(!is_initial("         0       1001          1\n"));
        assert!(!is_initial("0 1001 1\n1 100000 65536\n"));
        assert_eq!(mapped_ids("0 1001 1\n1 100000 65535\n"), 65536);
        assert_eq!(mapped_ids("         0       1001          1\n"), 1);
    }

    #[test]
    fn a_subordinate_range_is_found_by_name_or_uid() {
        let text = "alice:100000:65536\n1002:200000:1000\n";
        assert_eq!(
            subordinate(text, Some("alice"), 1001),
            Some((100000, 65536))
        );
        assert_eq!(subordinate(text, Some("bob"), 1002), Some((200000, 1000)));
        assert_eq!(subordinate(text, Some("carol"), 1003), None);
        assert_eq!(subordinate("alice:4294967295:2\n", Some("alice"), 1), None);
    }

    #[test]
    fn the_forbidding_setting_is_named_with_how_to_allow_it() {
        let debian = Knobs {
            unprivileged_userns_clone: Some("0".into()),
            ..Knobs::default()
        };
        assert!(diagnose(&debian).contains("kernel.unprivileged_userns_clone=1"));
        let limit = Knobs {
            max_user_namespaces: Some("0".into()),
            ..Knobs::default()
        };
        assert!(diagnose(&limit).contains("user.max_user_namespaces"));
        let ubuntu = Knobs {
            apparmor_restrict: Some("1".into()),
            ..Knobs::default()
        };
        let said = diagnose(&ubuntu);
        assert!(said.contains("AppArmor") && said.contains("userns,"));
        assert!(forbidding_setting(&ubuntu).is_some());
        let open = Knobs {
            unprivileged_userns_clone: Some("1".into()),
            max_user_namespaces: Some("63000".into()),
            apparmor_restrict: Some("0".into()),
        };
        assert!(forbidding_setting(&open).is_none());
        assert!(diagnose(&open).contains("no known setting"));
    }
}
