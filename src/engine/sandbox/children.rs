//! The init's life once the main command runs: it reaps every process of the sandbox (it
//! is their PID 1), reports the ones the supervisor started as subprocesses, and takes the
//! supervisor's requests (`control`) until the main command ends, which ends the sandbox.

use super::control::{self, Request};
use super::status::Report;
use super::{exec_process, read_full, resolve_program, write_line, Process};
use crate::engine::harden;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{self, ForkResult, Pid};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// The init's children that the supervisor knows of.
pub(super) struct Children<'a> {
    main: Pid,
    /// Subprocesses by pid: their spid.
    subs: HashMap<Pid, u32>,
    status: &'a OwnedFd,
    plan: &'a harden::Plan,
    search_path: &'a str,
}

/// How a process ended: exit code or -1, signal or -1, core dump.
type Ending = (i32, i32, bool);

fn ending(status: WaitStatus) -> Option<(Pid, Ending)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, (code, -1, false))),
        WaitStatus::Signaled(pid, sig, core) => Some((pid, (-1, sig as i32, core))),
        _ => None,
    }
}

impl<'a> Children<'a> {
    pub(super) fn new(
        main: Pid,
        status: &'a OwnedFd,
        plan: &'a harden::Plan,
        search_path: &'a str,
    ) -> Self {
        Children {
            main,
            subs: HashMap::new(),
            status,
            plan,
            search_path,
        }
    }

    /// Reaps and serves requests until the main command ends; returns how it ended.
    pub(super) fn serve(&mut self, control: &OwnedFd) -> Ending {
        let mut chld = SigSet::empty();
        chld.add(Signal::SIGCHLD);
        let blocked = chld.thread_block();
        let signals = blocked.and_then(|_| {
            SignalFd::with_flags(&chld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        });
        let Ok(signals) = signals else {
            // No signalfd: reap only (no subprocesses can be started).
            return self.reap_blocking();
        };
        let mut buf = vec![0u8; control::MAX_REQUEST];
        let mut control = Some(control);
        loop {
            if let Some(end) = self.reap(WaitPidFlag::WNOHANG) {
                return end;
            }
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if let Some(c) = control {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return self.reap_blocking(),
            }
            let asked = fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty());
            drop(fds);
            while let Ok(Some(_)) = signals.read_signal() {}
            if let (true, Some(c)) = (asked, control) {
                match control::recv(c.as_raw_fd(), &mut buf) {
                    Ok(Some((request, fds))) => self.handle(request, fds),
                    // The supervisor's end is gone: nothing more will be asked.
                    Ok(None) | Err(_) => control = None,
                }
            }
        }
    }

    /// Reaps what has ended (waiting for one with no `WNOHANG`); the main command's ending
    /// once it is among them.
    fn reap(&mut self, flags: WaitPidFlag) -> Option<Ending> {
        loop {
            match waitpid(None, Some(flags)) {
                Ok(WaitStatus::StillAlive) => return None,
                Ok(status) => {
                    let Some((pid, end)) = ending(status) else {
                        continue;
                    };
                    if pid == self.main {
                        return Some(end);
                    }
                    self.report_sub(pid, end);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return Some((-1, -1, false)),
            }
        }
    }

    fn reap_blocking(&mut self) -> Ending {
        loop {
            if let Some(end) = self.reap(WaitPidFlag::empty()) {
                return end;
            }
        }
    }

    /// After the main command: every process is being killed; each subprocess's end is
    /// reported as it is reaped.
    pub(super) fn reap_all(&mut self) {
        while let Ok(status) = waitpid(None, None) {
            if let Some((pid, end)) = ending(status) {
                self.report_sub(pid, end);
            }
        }
    }

    fn report_sub(&mut self, pid: Pid, (code, signal, core): Ending) {
        if let Some(spid) = self.subs.remove(&pid) {
            let line = Report::SubExited {
                spid: spid as i32,
                code,
                signal,
                core,
            };
            write_line(self.status, &line.line());
        }
    }

    fn handle(&mut self, request: Request, fds: Vec<OwnedFd>) {
        match request {
            Request::Spawn(p) => {
                let spid = p.spid as i32;
                match self.spawn(p, fds) {
                    Ok(pid) => {
                        let line = Report::SubStarted {
                            spid,
                            pid: pid.as_raw(),
                        };
                        write_line(self.status, &line.line());
                    }
                    Err(errno) => {
                        let line = Report::SubFailed { spid, errno };
                        write_line(self.status, &line.line());
                    }
                }
            }
            Request::Signal { spid, signal } => {
                if let Some((pid, _)) = self.subs.iter().find(|(_, s)| **s == spid) {
                    // Its own session, so its own process group (see `exec_process`).
                    // SAFETY: kill(2) on a process group of this sandbox.
                    unsafe { libc::kill(-pid.as_raw(), signal) };
                }
            }
        }
    }

    /// Forks and execs subprocess `p` with `fds` as its stdin, stdout and stderr; the errno
    /// of a failed exec (0: it could not be started at all).
    fn spawn(&mut self, p: control::Process, fds: Vec<OwnedFd>) -> Result<Pid, i32> {
        let [stdin, stdout, stderr] = <[OwnedFd; 3]>::try_from(fds).map_err(|_| 0)?;
        let c = |s: &str| CString::new(s).map_err(|_| libc::EINVAL);
        let argv = p.argv.iter().map(|a| c(a)).collect::<Result<Vec<_>, _>>()?;
        let env = p.env.iter().map(|e| c(e)).collect::<Result<Vec<_>, _>>()?;
        let search = if p.search_path.is_empty() {
            self.search_path
        } else {
            &p.search_path
        };
        let program = resolve_program(&c(&p.command)?, search);
        let (err_r, err_w) = unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e as i32)?;
        let process = Process {
            stdin: Some(stdin.as_raw_fd()),
            stdout: stdout.as_raw_fd(),
            stderr: stderr.as_raw_fd(),
            argv: &argv,
            env: &env,
            cwd: &p.cwd,
            uid: p.uid,
            gid: p.gid,
            status: self.status.as_raw_fd(),
        };
        let _ = std::fs::create_dir_all(&p.cwd);
        // SAFETY: the init is single-threaded; the child only execs.
        match unsafe { unistd::fork() } {
            Err(e) => Err(e as i32),
            Ok(ForkResult::Child) => {
                drop(err_r);
                // The init blocks SIGCHLD for its signalfd; the child starts clean.
                let _ = nix::sys::signal::sigprocmask(
                    SigmaskHow::SIG_SETMASK,
                    Some(&SigSet::empty()),
                    None,
                );
                let errno = exec_process(&process, &program, self.plan);
                let bytes = (errno as i32).to_le_bytes();
                // SAFETY: reporting errno through the CLOEXEC pipe, then leaving.
                unsafe {
                    libc::write(err_w.as_raw_fd(), bytes.as_ptr().cast(), 4);
                    libc::_exit(127)
                }
            }
            Ok(ForkResult::Parent { child }) => {
                drop(err_w);
                drop((stdin, stdout, stderr));
                let mut buf = [0u8; 4];
                if read_full(err_r.as_raw_fd(), &mut buf) == 4 {
                    // Reaped by the loop like any orphan; never reported as started.
                    return Err(i32::from_le_bytes(buf).max(1));
                }
                self.subs.insert(child, p.spid);
                Ok(child)
            }
        }
    }
}
