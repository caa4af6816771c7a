//! The supervisor's poll loop while the command runs: the command's output, the CLI going
//! away, the init's status reports and the cancel and control signals, each descriptor
//! known by what it is (`Source`). It ends once the output and the status pipe have ended;
//! a timeout, a cancel or the layer guard kills the sandbox, which ends them.

use super::command::SpawnEvent;
use super::stream::{Out, Stream};
use super::subprocess::Subprocesses;
use super::{cancel_signals, control_signal, Run};
use crate::engine::sandbox::status::{InitStatus, Lines};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Why the loop could not watch the run.
#[derive(Debug, thiserror::Error)]
pub(super) enum WatchError {
    #[error("signalfd: {0}")]
    Signalfd(#[source] nix::Error),
    #[error("poll: {0}")]
    Poll(#[source] nix::Error),
}

/// A descriptor in the poll set, by what it is.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Stream `i`'s pipe from the command, or, while the reader's pipe is full, that pipe
    /// (polled for room).
    Output(usize),
    /// The CLI's pipe for stream `i` when the stream is delivered directly: nothing is
    /// written there, so only POLLERR (its reader, the CLI, is gone) wakes it.
    Reader(usize),
    /// The init's status pipe.
    Status,
    /// Cancel and control signals.
    Signals,
    /// Requests for subprocesses (see `subprocess`).
    Exec,
    /// Subprocess `k`'s stream `i`.
    Sub(usize, usize),
}

/// What the loop reads besides the output. Field order is drop order: the buffer, the
/// signalfd, then the status pipe, as when they were locals of one function.
pub(super) struct Watch {
    /// For the status pipe's reads.
    buf: Vec<u8>,
    signals: SignalFd,
    status: Option<OwnedFd>,
    lines: Lines,
    pub(super) subs: Subprocesses,
}

impl Watch {
    pub(super) fn new(status: OwnedFd, subs: Subprocesses) -> Result<Watch, WatchError> {
        let signals = SignalFd::with_flags(
            &cancel_signals(),
            SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
        )
        .map_err(WatchError::Signalfd)?;
        Ok(Watch {
            buf: vec![0u8; 1 << 20],
            signals,
            status: Some(status),
            lines: Lines::default(),
            subs,
        })
    }
}

/// What the init reported, and whether the run was stopped.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) cancelled: bool,
    pub(super) timed_out: bool,
    /// The command's pid inside the sandbox.
    pub(super) main_pid: Option<i32>,
    pub(super) exec_errno: Option<i32>,
    pub(super) setup_error: Option<String>,
    /// Exit code, signal and core dump.
    pub(super) exit: Option<(i32, i32, bool)>,
}

impl Seen {
    fn stopped(&self) -> bool {
        self.timed_out || self.cancelled
    }
}

/// The poll set for this turn, and what each of its descriptors is.
fn poll_set<'a>(streams: &'a [Stream; 2], watch: &'a Watch) -> (Vec<PollFd<'a>>, Vec<Source>) {
    let mut fds = Vec::with_capacity(4);
    let mut who = Vec::with_capacity(4);
    for (i, s) in streams.iter().enumerate() {
        match (&s.fd, &s.out) {
            // The reader's pipe is full: wait until it has room.
            (Some(_), Some(Out::Pipe(out))) if s.out_full => {
                fds.push(PollFd::new(out.as_fd(), PollFlags::POLLOUT));
                who.push(Source::Output(i));
            }
            (Some(fd), _) => {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                who.push(Source::Output(i));
            }
            _ => {}
        }
    }
    for (i, s) in streams.iter().enumerate() {
        if let (Some(_), Some(marker)) = (&s.fd, &s.marker) {
            fds.push(PollFd::new(marker.as_fd(), PollFlags::empty()));
            who.push(Source::Reader(i));
        }
    }
    if let Some(fd) = &watch.status {
        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        who.push(Source::Status);
    }
    fds.push(PollFd::new(watch.signals.as_fd(), PollFlags::POLLIN));
    who.push(Source::Signals);
    let (listener, pipes) = watch.subs.fds();
    if let Some(fd) = listener {
        fds.push(PollFd::new(fd, PollFlags::POLLIN));
        who.push(Source::Exec);
    }
    for (fd, k, i) in pipes {
        fds.push(PollFd::new(fd, PollFlags::POLLIN));
        who.push(Source::Sub(k, i));
    }
    (fds, who)
}

impl Run {
    /// Runs the loop until the command's output and the init's status pipe have ended.
    pub(super) fn watch(
        &mut self,
        init: Pid,
        streams: &mut [Stream; 2],
        watch: &mut Watch,
        timeout: Option<Duration>,
        spawned_at: Instant,
        spawn: &SpawnEvent,
    ) -> Result<Seen, WatchError> {
        let mut seen = Seen::default();
        let kill_init = || {
            let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
        };
        while streams.iter().any(|s| s.fd.is_some())
            || watch.status.is_some()
            || watch.subs.reading()
        {
            let (mut fds, who) = poll_set(streams, watch);
            let wait = match timeout {
                Some(t) if !seen.stopped() => {
                    let left = t.saturating_sub(spawned_at.elapsed());
                    PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                        .unwrap_or(PollTimeout::MAX)
                }
                _ => PollTimeout::NONE,
            };
            let wait = self.guard_wait(wait);
            match poll(&mut fds, wait) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(WatchError::Poll(e)),
            }
            let ready: Vec<Source> = fds
                .iter()
                .zip(&who)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, w)| *w)
                .collect();
            drop(fds);
            for source in ready {
                match source {
                    Source::Output(i) => {
                        let s = &mut streams[i];
                        s.out_full = false;
                        s.pump(&mut self.log);
                    }
                    Source::Reader(i) => streams[i].cli_gone(),
                    Source::Status => self.read_status(watch, &mut seen, spawn),
                    Source::Exec => watch.subs.accept(),
                    Source::Sub(k, i) => watch.subs.pump(k, i, &mut self.log),
                    Source::Signals => {
                        while let Ok(Some(info)) = watch.signals.read_signal() {
                            if info.ssi_signo as libc::c_int == control_signal() {
                                signal_command(init, info.ssi_int);
                            } else if !seen.cancelled {
                                seen.cancelled = true;
                                kill_init();
                            }
                        }
                    }
                }
            }
            if let Some(t) = timeout {
                if !seen.stopped() && spawned_at.elapsed() >= t {
                    seen.timed_out = true;
                    kill_init();
                }
            }
            if !seen.stopped() && self.guard_tripped() {
                kill_init();
            }
            watch.subs.flush(&mut self.log);
        }
        watch.subs.finish(&mut self.log);
        Ok(seen)
    }

    /// Takes what the init wrote and acts on each whole line; the pipe ends with the init.
    fn read_status(&mut self, watch: &mut Watch, seen: &mut Seen, spawn: &SpawnEvent) {
        let fd = watch.status.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        let n = match nix::unistd::read(fd, &mut watch.buf) {
            Ok(0) | Err(_) => {
                watch.status = None;
                return;
            }
            Ok(n) => n,
        };
        watch.lines.push(&watch.buf[..n]);
        while let Some(line) = watch.lines.next_line() {
            match InitStatus::parse(&line) {
                Some(InitStatus::Started { pid }) => {
                    seen.main_pid = Some(pid);
                    self.event("spawn", Some(1), spawn.data(pid));
                }
                Some(InitStatus::ExecFailed { errno }) => seen.exec_errno = Some(errno),
                Some(InitStatus::SetupFailed(message)) => {
                    seen.setup_error = Some(message.to_string())
                }
                Some(InitStatus::Exited { code, signal, core }) => {
                    seen.exit = Some((code, signal, core));
                    watch.subs.ending();
                }
                Some(InitStatus::SubStarted { spid, pid }) => {
                    watch.subs.started(spid, pid, &mut self.log)
                }
                Some(InitStatus::SubFailed { spid, errno }) => watch.subs.failed(spid, errno),
                Some(InitStatus::SubExited {
                    spid,
                    code,
                    signal,
                    core,
                }) => watch.subs.exited(spid, code, signal, core),
                None => {}
            }
        }
    }
}

/// Sends `sig` to the process group of the sandbox's main process (it runs in a session of
/// its own), found as the init's child; without /proc's `children` list, to the init, which
/// forwards the common ones.
fn signal_command(init: Pid, sig: libc::c_int) {
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"));
    let main = children
        .ok()
        .and_then(|c| c.split_whitespace().next()?.parse::<i32>().ok());
    // SAFETY: kill(2) with a pid (group) from our own sandbox.
    unsafe {
        match main {
            Some(pid) => libc::kill(-pid, sig),
            None => libc::kill(init.as_raw(), sig),
        }
    };
}
