//! `contree doctor`'s view of the hardening: a forked probe applies the very steps a sandbox
//! applies (the /proc, /sys and /dev mounts in a private mount namespace, the capability
//! cut, the seccomp filter), and the findings report what the kernel then shows for that
//! process in /proc: so they say what is in effect on this machine, not what is intended.

use super::{caps, mounts, Plan};
use crate::backend::Finding;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// What the probe saw.
struct Probe {
    /// The probe's own report lines (`mounts ...`, `calls ...`).
    lines: Vec<String>,
    /// /proc/PID/status and /proc/PID/mountinfo of the hardened probe.
    status: String,
    mountinfo: String,
}

/// Findings about the hardening, probed with a scratch mount point at `scratch` (an empty
/// directory; the probe mounts over it only in its own mount namespace).
pub fn findings(scratch: &Path) -> Vec<Finding> {
    let plan = match Plan::new(false) {
        Ok(plan) => plan,
        Err(e) => return vec![problem("seccomp", e.to_string())],
    };
    let probe = match run_probe(scratch, &plan) {
        Ok(probe) => probe,
        Err(e) => {
            return vec![problem(
                "hardening",
                format!("cannot probe the sandbox's hardening: {e}"),
            )]
        }
    };
    vec![
        seccomp(&probe, &plan),
        capabilities(&probe, &plan),
        proc_sys(&probe, scratch),
    ]
}

fn problem(check: &'static str, text: String) -> Finding {
    Finding {
        check,
        detail: "the sandbox's hardening is not in effect here".into(),
        problems: vec![text],
        ..Default::default()
    }
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn seccomp(probe: &Probe, plan: &Plan) -> Finding {
    let mut f = Finding {
        check: "seccomp",
        detail: format!(
            "filter active: {} system calls refused with EPERM, clone3 ENOSYS, other architectures killed",
            plan.denied_calls()
        ),
        ..Default::default()
    };
    if field(&probe.status, "Seccomp") != Some("2") {
        f.problems
            .push("the probe runs without a seccomp filter (Seccomp is not 2)".into());
    }
    let calls = probe.lines.iter().find_map(|l| l.strip_prefix("calls "));
    let expected = format!("keyctl {} clone3 {}", libc::EPERM, libc::ENOSYS);
    if calls != Some(expected.as_str()) {
        f.problems.push(format!(
            "keyctl and clone3 answer {} instead of EPERM and ENOSYS",
            calls.unwrap_or("nothing")
        ));
    }
    f
}

fn capabilities(probe: &Probe, plan: &Plan) -> Finding {
    let names = caps::names(plan.kept());
    let mut f = Finding {
        check: "capabilities",
        detail: format!(
            "{} kept ({}; net_raw only in a run's own network namespace), no_new_privs, none inheritable or ambient",
            names.len(),
            names.join(" ")
        ),
        ..Default::default()
    };
    let hex = |name| u64::from_str_radix(field(&probe.status, name).unwrap_or("?"), 16).ok();
    for (name, want) in [
        ("CapBnd", plan.kept()),
        ("CapEff", plan.kept()),
        ("CapInh", 0),
        ("CapAmb", 0),
    ] {
        if hex(name) != Some(want) {
            f.problems.push(format!(
                "{name} of the probe is {}, not {want:016x}",
                field(&probe.status, name).unwrap_or("unknown")
            ));
        }
    }
    if field(&probe.status, "NoNewPrivs") != Some("1") {
        f.problems
            .push("no_new_privs is not set on the probe".into());
    }
    f
}

fn proc_sys(probe: &Probe, scratch: &Path) -> Finding {
    let mounted = probe
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("mounts "))
        .unwrap_or("");
    let mut parts = mounted.splitn(3, ' ');
    let (read_only, masked, sys) = (
        parts.next().unwrap_or("0"),
        parts.next().unwrap_or("0"),
        parts.next().unwrap_or("?"),
    );
    let sys_text = if sys == "sysfs" {
        "a read-only sysfs".to_string()
    } else {
        format!("empty (sysfs cannot be mounted here: {sys})")
    };
    let mut f = Finding {
        check: "/proc, /sys",
        detail: format!(
            "/proc: {read_only} knobs read-only, {masked} entries masked; /sys: {sys_text}; /dev read-only, nodev on the root"
        ),
        ..Default::default()
    };
    let root = scratch.to_string_lossy();
    let options = |point: &str| {
        let want = format!("{root}{point}");
        probe.mountinfo.lines().find_map(|l| {
            let mut it = l.split(' ');
            (it.nth(4)? == want).then(|| it.next().unwrap_or("").to_string())
        })
    };
    for (point, flag) in [("/proc/sys", "ro"), ("/dev", "ro"), ("", "nodev")] {
        let opts = options(point);
        if !opts.is_some_and(|o| o.split(',').any(|x| x == flag)) {
            let shown = if point.is_empty() { "/" } else { point };
            f.problems
                .push(format!("{shown} is not mounted {flag} in the probe"));
        }
    }
    f
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

fn run_probe(scratch: &Path, plan: &Plan) -> io::Result<Probe> {
    std::fs::create_dir_all(scratch)?;
    let (report_r, report_w) = pipe()?;
    let (hold_r, hold_w) = pipe()?;
    let (report_r_raw, hold_w_raw) = (report_r.as_raw_fd(), hold_w.as_raw_fd());
    let body = |report_w: &OwnedFd, hold_r: &OwnedFd| -> ! {
        // SAFETY: closing the child's copies of the parent's ends (the hold pipe's EOF
        // must come from the parent alone).
        unsafe {
            libc::close(report_r_raw);
            libc::close(hold_w_raw);
        }
        let line = match probe_child(scratch, plan) {
            Ok(text) => text,
            Err(e) => format!("error {e}\n"),
        };
        write_all(report_w, line.as_bytes());
        // SAFETY: closing our copy of the report pipe so that the parent sees its end.
        unsafe { libc::close(report_w.as_raw_fd()) };
        // Stay hardened until the parent has read /proc/PID.
        let mut b = [0u8; 1];
        // SAFETY: a blocking read on our own pipe; EOF when the parent is done.
        unsafe { libc::read(hold_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        // SAFETY: leave the fork without running the CLI's destructors.
        unsafe { libc::_exit(0) }
    };
    // Rootless, /proc can only be mounted by a process of a PID namespace of ours, as the
    // sandbox's init is.
    let forked = if crate::rootless::active() {
        let mut stack = vec![0u8; 256 * 1024];
        let cb = Box::new(|| -> isize { body(&report_w, &hold_r) });
        // SAFETY: the child gets a copy of our memory (no CLONE_VM) and runs `body`.
        unsafe {
            nix::sched::clone(
                cb,
                &mut stack,
                nix::sched::CloneFlags::CLONE_NEWPID,
                Some(libc::SIGCHLD),
            )
        }
        .map(|child| ForkResult::Parent { child })
    } else {
        // SAFETY: the CLI is single-threaded here; the child only mounts, hardens itself
        // and waits, then leaves with _exit.
        unsafe { fork() }
    };
    match forked? {
        ForkResult::Child => body(&report_w, &hold_r),
        ForkResult::Parent { child } => {
            drop(report_w);
            drop(hold_r);
            let result = read_probe(child, report_r);
            drop(hold_w);
            if result.is_err() {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = waitpid(child, None);
            result
        }
    }
}

fn read_probe(child: Pid, report: OwnedFd) -> io::Result<Probe> {
    // A probe that hangs must not hang doctor.
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&report),
        nix::poll::PollFlags::POLLIN,
    )];
    let ten_s = nix::poll::PollTimeout::try_from(Duration::from_secs(10)).expect("fits");
    if nix::poll::poll(&mut fds, ten_s)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the probe did not answer",
        ));
    }
    let mut lines = Vec::new();
    for line in BufReader::new(std::fs::File::from(report)).lines() {
        let line = line?;
        if let Some(e) = line.strip_prefix("error ") {
            return Err(io::Error::other(e.to_string()));
        }
        lines.push(line);
    }
    let proc_dir = format!("/proc/{child}");
    Ok(Probe {
        lines,
        status: std::fs::read_to_string(format!("{proc_dir}/status"))?,
        mountinfo: std::fs::read_to_string(format!("{proc_dir}/mountinfo"))?,
    })
}

/// In the forked child: the sandbox's mounts on a scratch root, then the command's steps.
fn probe_child(scratch: &Path, plan: &Plan) -> io::Result<String> {
    crate::engine::sandbox::private_mount_namespace()?;
    crate::engine::sandbox::mount_points_tmpfs(scratch)?;
    let host = crate::engine::sandbox::sys::Host;
    crate::engine::sandbox::setup_mounts(&host, scratch, crate::rootless::active())?;
    let report = mounts::apply(&host, scratch)?;
    let sys = match &report.sys_fallback {
        None => "sysfs".to_string(),
        Some(e) => e.to_string(),
    };
    plan.before_credentials()
        .and_then(|_| plan.before_exec())
        .map_err(|e| io::Error::other(e.to_string()))?;
    // SAFETY: harmless queries; the filter answers them.
    let keyctl = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) };
    let keyctl = if keyctl < 0 { errno() } else { 0 };
    // SAFETY: clone3 with a NULL argument never creates anything.
    let clone3 = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
    let clone3 = if clone3 < 0 { errno() } else { 0 };
    Ok(format!(
        "mounts {} {} {sys}\ncalls keyctl {keyctl} clone3 {clone3}\n",
        report.read_only.len(),
        report.masked.len(),
    ))
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writing from a live buffer to our own pipe.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}
