//! The keeper of a run's network helper: PID 1 of a PID namespace of its own, so the
//! helper dies with it, and the helper's exec (its command line and descriptors).

use super::{Stack, PASTA_DNS};
use nix::unistd::Pid;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Descriptor numbers the helper gets (see `Keeper::exec_helper`).
const NETNS_FD: RawFd = 3;
const USERNS_FD: RawFd = 4;
const READY_FD: RawFd = 5;

/// The helper's command line. Both get the sandbox's namespace as an inherited descriptor:
/// a path under /proc/PID would need ptrace rights over the sandbox's init.
pub(super) fn helper_argv(stack: Stack, userns: bool) -> Vec<CString> {
    let mut args: Vec<String> = match stack {
        Stack::Pasta => [
            "pasta",
            // pasta as root otherwise switches to `nobody` first and can no longer join the
            // namespace; it drops its capabilities and sandboxes itself either way.
            "--runas",
            "0:0",
            "--quiet",
            "--config-net",
            "--netns",
            "/proc/self/fd/3",
            // The namespace is only given by descriptor: nothing to watch for its removal
            // (the keeper ends pasta).
            "--no-netns-quit",
            // No port of the host leads into the sandbox, and the sandbox's loopback does
            // not lead to the host's: the defaults (`auto`) would forward both ways.
            "-t",
            "none",
            "-u",
            "none",
            "-T",
            "none",
            "-U",
            "none",
            "--dns-forward",
            PASTA_DNS,
        ]
        .map(String::from)
        .to_vec(),
        Stack::Slirp4netns => [
            "slirp4netns",
            "--configure",
            "--mtu=65520",
            "--ready-fd=5",
            // As root it would keep every capability: a mount namespace of its own, all
            // capabilities but CAP_NET_BIND_SERVICE dropped, and a seccomp filter.
            "--enable-sandbox",
            "--enable-seccomp",
            "--netns-type=path",
        ]
        .map(String::from)
        .to_vec(),
    };
    if userns {
        match stack {
            Stack::Pasta => args.extend(["--userns".into(), format!("/proc/self/fd/{USERNS_FD}")]),
            Stack::Slirp4netns => args.push(format!("--userns-path=/proc/self/fd/{USERNS_FD}")),
        }
    }
    if stack == Stack::Slirp4netns {
        args.extend([format!("/proc/self/fd/{NETNS_FD}"), "tap0".into()]);
    }
    args.into_iter()
        .map(|a| CString::new(a).expect("no NUL in helper arguments"))
        .collect()
}

/// The keeper: PID 1 of a PID namespace of its own, with the supervisor's parent-death
/// signal. It starts the helper, reports when the helper is ready (or how it failed), then
/// waits; its death (with the supervisor, or when the run is over) kills the helper.
pub(super) struct Keeper {
    pub(super) stack: Stack,
    pub(super) path: CString,
    pub(super) argv: Vec<CString>,
    pub(super) netns: OwnedFd,
    pub(super) userns: Option<OwnedFd>,
    pub(super) devnull: OwnedFd,
    pub(super) errors: OwnedFd,
    pub(super) report: OwnedFd,
    /// slirp4netns's `--ready-fd` pipe (read end, write end).
    pub(super) ready: Option<(OwnedFd, OwnedFd)>,
}

impl Keeper {
    pub(super) fn spawn(self) -> io::Result<Pid> {
        let mut stack = vec![0u8; 256 << 10];
        let mut me = Some(self);
        let child = Box::new(|| -> isize {
            let keeper = me.take().expect("clone callback runs once");
            keeper.run()
        });
        // SAFETY: the child gets a copy of our address space (no CLONE_VM) and only forks,
        // execs and waits; the supervisor has no other thread at this point.
        let pid = unsafe {
            nix::sched::clone(
                child,
                &mut stack,
                nix::sched::CloneFlags::CLONE_NEWPID,
                Some(libc::SIGCHLD),
            )
        }?;
        // Our copies of the keeper's descriptors close here (`me` is dropped).
        drop(me);
        Ok(pid)
    }

    /// The keeper's body; never returns.
    fn run(self) -> ! {
        // SAFETY: prctl(2) with plain integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let _ = nix::sys::prctl::set_name(c"contree-net");
        // Its children must stay waitable, whatever the supervisor did with SIGCHLD.
        // SAFETY: restoring a default disposition.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
        let mut keep: Vec<RawFd> = vec![
            self.netns.as_raw_fd(),
            self.devnull.as_raw_fd(),
            self.errors.as_raw_fd(),
            self.report.as_raw_fd(),
        ];
        keep.extend(self.userns.as_ref().map(|f| f.as_raw_fd()));
        if let Some((r, w)) = &self.ready {
            keep.extend([r.as_raw_fd(), w.as_raw_fd()]);
        }
        close_all_but(&keep);
        // SAFETY: the keeper is single-threaded; the child only sets up descriptors and
        // signals, then execs.
        let helper = match unsafe { libc::fork() } {
            0 => self.exec_helper(),
            -1 => self.report_and_exit(&format!(
                "could not be started: {}",
                io::Error::last_os_error()
            )),
            pid => pid,
        };
        // Only the helper may hold these now: slirp4netns's ready pipe then ends (EOF)
        // when it dies before it is ready.
        let Keeper {
            stack,
            report,
            ready,
            ..
        } = self;
        let ready_r = ready.map(|(r, w)| {
            drop(w);
            r
        });
        let outcome = match stack {
            // pasta's first process exits 0 once the namespace is configured (its daemon
            // goes on, a child of this keeper from then on).
            Stack::Pasta => match wait_status(helper) {
                (Some(0), _) => "ok".to_string(),
                status => describe(status),
            },
            Stack::Slirp4netns => {
                let mut byte = [0u8; 1];
                let fd = ready_r.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
                // SAFETY: reading one byte into a stack buffer.
                let n = loop {
                    let n = unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) };
                    if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        break n;
                    }
                };
                if n == 1 {
                    "ok".to_string()
                } else {
                    describe(wait_status(helper))
                }
            }
        };
        let line = format!("{outcome}\n");
        // SAFETY: a write to the report pipe. A supervisor that is already gone (EPIPE:
        // it died before our parent-death signal was set) means this run is over.
        let n = unsafe { libc::write(report.as_raw_fd(), line.as_ptr().cast(), line.len()) };
        if n < 0 || outcome != "ok" {
            // SAFETY: leaving without running the supervisor's destructors.
            unsafe { libc::_exit(1) };
        }
        drop(report);
        drop(ready_r);
        // Reap whatever ends (pasta's daemon is reparented here) until nothing is left.
        // SAFETY: waitpid(2) for any child, no status wanted.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0
            || io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {}
        // SAFETY: as above.
        unsafe { libc::_exit(0) }
    }

    fn report_and_exit(&self, outcome: &str) -> ! {
        let line = format!("{outcome}\n");
        // SAFETY: a write to the report pipe, then leaving.
        unsafe {
            libc::write(self.report.as_raw_fd(), line.as_ptr().cast(), line.len());
            libc::_exit(1)
        }
    }

    /// In the helper's process: descriptors 0-2 and the fixed numbers of `helper_argv`,
    /// default signal handling, an empty environment, exec. Never returns.
    fn exec_helper(&self) -> ! {
        let mut wanted: Vec<(RawFd, RawFd)> = vec![
            (self.devnull.as_raw_fd(), 0),
            (self.devnull.as_raw_fd(), 1),
            (self.errors.as_raw_fd(), 2),
            (self.netns.as_raw_fd(), NETNS_FD),
        ];
        if let Some(u) = &self.userns {
            wanted.push((u.as_raw_fd(), USERNS_FD));
        }
        if let Some((_, w)) = &self.ready {
            wanted.push((w.as_raw_fd(), READY_FD));
        }
        // SAFETY: only descriptor, signal and exec calls on values we own, in a child of a
        // single-threaded process.
        unsafe {
            // Out of the way first, so no dup2 below overwrites a source still needed.
            let high: Vec<(RawFd, RawFd)> = wanted
                .iter()
                .map(|&(fd, at)| (libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64), at))
                .collect();
            for (fd, at) in high {
                if fd < 0 || libc::dup2(fd, at) < 0 {
                    libc::_exit(126);
                }
            }
            libc::syscall(libc::SYS_close_range, (READY_FD + 1) as u32, u32::MAX, 0u32);
            for sig in 1..libc::SIGRTMIN() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
            argv.push(std::ptr::null());
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            libc::execve(self.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let msg = format!(
                "exec {}: {}\n",
                self.path.to_string_lossy(),
                io::Error::last_os_error()
            );
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    }
}

/// Closes every descriptor but `keep`.
fn close_all_but(keep: &[RawFd]) {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    keep.dedup();
    let mut next: u32 = 0;
    for fd in keep.into_iter().map(|f| f as u32).chain([u32::MAX]) {
        if fd > next {
            let last = if fd == u32::MAX { u32::MAX } else { fd - 1 };
            // SAFETY: close_range(2) on descriptors this copy of the supervisor never uses.
            unsafe { libc::syscall(libc::SYS_close_range, next, last, 0u32) };
        }
        next = fd.saturating_add(1);
    }
}

/// Waits for child `pid`: (exit code, signal).
fn wait_status(pid: libc::pid_t) -> (Option<i32>, Option<i32>) {
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) for our own child with a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return (None, None);
        }
    }
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

fn describe(status: (Option<i32>, Option<i32>)) -> String {
    match status {
        (Some(code), _) => format!("exited with status {code}"),
        (_, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended before it was ready".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_get_the_namespace_by_descriptor_and_no_port_forwarding() {
        let pasta: Vec<String> = helper_argv(Stack::Pasta, false)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = pasta.join(" ");
        assert!(joined.contains("--netns /proc/self/fd/3"));
        assert!(joined.contains("-t none -u none -T none -U none"));
        assert!(!joined.contains("--userns"));
        let slirp: Vec<String> = helper_argv(Stack::Slirp4netns, true)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(slirp.last().map(String::as_str), Some("tap0"));
        assert!(slirp.contains(&"--userns-path=/proc/self/fd/4".to_string()));
    }
}
