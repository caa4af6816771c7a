//! Starting an operation's supervisor, one of two ways: executing `contree __supervise`,
//! or, for the CLI's own run while it is single-threaded, forking this process, which takes
//! an exec and a fresh binary's start-up off every run's path. Either way the supervisor
//! takes over what the spawner hands it (`Handover`) at descriptors named here.

use super::eventlog::LogWriter;
use super::{attachlayer, claim, inspect, lock, scopeguard, supervisor, LocalEngine};
use crate::backend::{BackendError, Cause, Registered, StdinSource};
use crate::procfs::{process_start_time, single_threaded};
use crate::progress::Show;
use crate::wire::SpawnRequest;
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// In a freshly forked supervisor: the log as stdout and stderr, `stdin` (if any) as fd
/// 0, then `extra` at fds 3, 4, ... (the notify pipe, the live pipes), a process group of
/// its own, and nothing else open.
fn supervisor_fds(
    log: std::os::fd::RawFd,
    stdin: Option<std::os::fd::RawFd>,
    extra: &[std::os::fd::RawFd],
) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    // Out of the way first, so that no dup2 below overwrites a source still needed.
    let mut moved = Vec::with_capacity(extra.len() + 2);
    for fd in [Some(log), stdin]
        .into_iter()
        .flatten()
        .chain(extra.iter().copied())
    {
        moved.push(fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(1000))?);
    }
    let mut next = moved.iter().copied();
    let log = next.next().unwrap_or(log);
    if stdin.is_some() {
        nix::unistd::dup2(next.next().unwrap_or(0), 0)?;
    }
    nix::unistd::dup2(log, 1)?;
    nix::unistd::dup2(log, 2)?;
    for (i, fd) in next.enumerate() {
        let target = 3 + i as i32;
        nix::unistd::dup2(fd, target)?;
        fcntl(target, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    let first_free = 3 + extra.len() as u32;
    // SAFETY: closes descriptors this copy inherited and never uses (none is owned by
    // anything that will be dropped: the child leaves with _exit).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first_free, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// The environment variable that hands a supervisor the write end of its notify pipe, and
/// the descriptor it is put at (in the child only: a server starts supervisors from many
/// threads at once, and none may inherit another's pipe, which would keep it open).
pub(super) const NOTIFY_FD_ENV: &str = "CONTREE_NOTIFY_FD";
const NOTIFY_FD: std::os::fd::RawFd = 902;

/// The environment variable that hands an executed supervisor its operation's locked event
/// log (see `LogWriter::own`), and the descriptor it is put at: high, clear of the few the
/// supervisor inherits otherwise.
pub(super) const LOG_FD_ENV: &str = "CONTREE_LOG_FD";
const LOG_FD: std::os::fd::RawFd = 900;

/// Likewise for the claimed scratch dir of a foreground run (see `start`).
pub(super) const SCRATCH_FD_ENV: &str = "CONTREE_SCRATCH_FD";
const SCRATCH_FD: std::os::fd::RawFd = 901;

/// What a new supervisor takes over from its spawner: the operation's locked event log
/// (when the spawner recorded the operation) and its claimed scratch dir (a foreground
/// run's, claimed before the spawn so the run is visibly in flight from its first moment).
#[derive(Default)]
pub(super) struct Handover {
    pub(super) log: Option<std::fs::File>,
    pub(super) scratch: Option<claim::Claim>,
}

/// Where a supervisor's stdin comes from: what a `Backend` caller may choose, or a
/// descriptor of the caller's (`spawn_piped`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Stdin<'a> {
    /// Our own stdin.
    Inherit,
    Null,
    /// Read after the request's bytes; duplicated at spawn, so the caller keeps it.
    Fd(BorrowedFd<'a>),
}

impl From<StdinSource> for Stdin<'_> {
    fn from(source: StdinSource) -> Self {
        match source {
            StdinSource::Inherit => Stdin::Inherit,
            StdinSource::Null => Stdin::Null,
        }
    }
}

/// This process's stdout and stderr: where a followed run's output goes when the caller
/// passes it on unchanged (see `Backend::spawn_followed`).
pub(super) const OUTPUT: [std::os::fd::RawFd; 2] = [1, 2];

/// A followed run's pipes from its supervisor, which of its streams the supervisor writes
/// to our own stdout or stderr itself (those pipes then only end), and whether the rest
/// goes to them unchanged too (`Tail` then splices it).
pub(super) struct Live {
    pub(super) pipes: [OwnedFd; 2],
    pub(super) direct: [bool; 2],
    pub(super) pass: bool,
}

/// Pipes that carry a followed run's stdout and stderr to the CLI as they are recorded
/// (see `Tail`): big, so a chatty command rarely waits for it.
fn live_pipes() -> Result<[(OwnedFd, OwnedFd); 2], BackendError> {
    let pipe = || -> Result<(OwnedFd, OwnedFd), BackendError> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| BackendError::Io(Cause::sys("pipe", e)))?;
        let _ = nix::fcntl::fcntl(r.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| BackendError::Io(Cause::sys("pipe", e)))?;
        Ok((r, w))
    };
    Ok([pipe()?, pipe()?])
}

/// What a forked supervisor finds of its spawner's in its copy of the memory, to put in
/// place (see `supervisor_fds`).
struct Inherited<'a> {
    log: &'a std::fs::File,
    log_path: &'a std::path::Path,
    stdin: Option<std::os::fd::RawFd>,
    notify: &'a OwnedFd,
    live_pipes: Option<&'a [(OwnedFd, OwnedFd); 2]>,
    direct: [Option<std::os::fd::RawFd>; 2],
    handover: &'a Handover,
}

/// Whether the supervisor may write a stream to `fd`, the CLI's own stdout or stderr,
/// itself: a pipe (it waits for room without blocking), a regular file or a character
/// device that is not a terminal (/dev/null). Not a terminal: the CLI's own handling of it
/// stays, and a terminal can stop taking output (flow control) for as long as its user
/// likes. Not a socket: its writes can block.
fn direct_output(fd: std::os::fd::RawFd) -> bool {
    let Ok(st) = nix::sys::stat::fstat(fd) else {
        return false;
    };
    match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO | libc::S_IFREG => true,
        libc::S_IFCHR => !nix::unistd::isatty(fd).unwrap_or(true),
        _ => false,
    }
}

impl LocalEngine {
    /// On a store with no room left, a database error is what it most likely is: SQLite
    /// may say only "disk I/O error" where a write found the disk full.
    pub(super) fn full_store(&self, e: BackendError) -> BackendError {
        match e {
            BackendError::Io(Cause::Db(super::store::StoreError::Db(db)))
                if super::store::no_room(&self.store.layout().root) =>
            {
                BackendError::Io(Cause::Db(super::store::StoreError::Full {
                    what: "the run".into(),
                    source: std::io::Error::other(db),
                }))
            }
            other => other,
        }
    }

    /// Starts an operation. With `lazy_row` the supervisor records it (while its sandbox
    /// starts) instead of us, before it: only for a caller that follows it to the end.
    pub(super) fn start(
        &self,
        req: &SpawnRequest,
        stdin: Stdin<'_>,
        lazy_row: bool,
        direct: bool,
        registered: Registered<'_>,
    ) -> Result<String, BackendError> {
        let _hold = self.hold_gc_off()?;
        // However this ends, the run is in flight or gone by then.
        let _in_flight = scopeguard(|| drop(lock(&self.starting).take()));
        let (image, blobs, attached) = self.store.reading(|| self.validate(req))?;
        // Before the supervisor mounts it: it builds a missing mask, but knows only the
        // data dir.
        self.ensure_host_mask(&image)?;
        let limits = self.run_limits(req)?;
        crate::log::trace("validated");
        // A caller that follows the run waits for its sandbox anyway: a big attachment layer
        // is built here, where a progress bar reaches the user's terminal, and the
        // supervisor finds it built.
        if lazy_row && crate::progress::shows(Show::OnTerminal, attached) {
            if let Some(files) = req.files.as_ref() {
                let view = inspect::View::new(self.store.layout(), &image.layers);
                attachlayer::ensure_with(
                    self.store.layout(),
                    &view,
                    files,
                    &blobs,
                    Show::OnTerminal,
                )?;
            }
        }
        let op = uuid::Uuid::new_v4().to_string();
        let dir = self.store.op_dir(&op);
        registered(&op)?;
        // With a lazy row the supervisor also makes the operation's dir and event log,
        // while its sandbox starts (`LogWriter::deferred`); `Tail` waits for them. Its
        // scratch dir is claimed here, so that the run is in flight from the first moment
        // (see `unrecorded`).
        let handover = if lazy_row {
            Handover {
                log: None,
                scratch: Some(supervisor::claim_scratch(self.store.layout(), &op)?),
            }
        } else {
            let lock = self.new_op_dir(&op)?;
            self.store
                .create_op(&op, "instance", Some(&req.image), Some(req))?;
            Handover {
                log: Some(lock),
                scratch: None,
            }
        };
        crate::log::trace("op created");
        let job = supervisor::Job {
            op: op.clone(),
            request: req.clone(),
            image,
            blobs,
            created_at: lazy_row.then(crate::wire::now_ts),
            userns: self.userns(),
            limits,
        };
        let started = if self.fork && single_threaded() {
            self.fork_supervisor(&job, stdin, lazy_row, direct, &handover)
        } else {
            self.spawn_supervisor(&job, stdin, &handover)
        };
        // The supervisor holds the operation now; our copies of its locks just close.
        drop(handover);
        if let Err(e) = started {
            if !lazy_row {
                let _ = self.store.delete_op(&op);
            }
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(op)
    }

    /// An operation's dir with an empty event log, locked: the operation is ours until we
    /// hand the lock to its supervisor or finish it (see `LogWriter::own`).
    pub(super) fn new_op_dir(&self, op: &str) -> Result<std::fs::File, BackendError> {
        let dir = self.store.op_dir(op);
        std::fs::create_dir_all(&dir)
            .and_then(|_| LogWriter::own(&dir.join("events")))
            .map_err(|e| BackendError::Io(Cause::file(&dir, e)))
    }

    /// Starts the supervisor by executing `contree __supervise` (see `fork_supervisor` for
    /// the other way). `log`, the operation's locked event log when we created it, is
    /// handed over at `LOG_FD`.
    pub(super) fn spawn_supervisor(
        &self,
        job: &supervisor::Job,
        stdin: Stdin<'_>,
        handover: &Handover,
    ) -> Result<(), BackendError> {
        let op = job.op.as_str();
        let job_file = supervisor::job_path(self.store.layout(), op);
        if let Some(dir) = job_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| BackendError::Io(Cause::file(dir, e)))?;
        }
        let bytes = serde_json::to_vec(job).map_err(|e| BackendError::Io(e.into()))?;
        std::fs::write(&job_file, bytes)
            .map_err(|e| BackendError::Io(Cause::file(&job_file, e)))?;
        let exe = std::env::current_exe().map_err(|e| {
            BackendError::Unavailable(Cause::io("cannot find the contree binary", e))
        })?;
        let log_path = self.store.op_dir(op).join("supervisor.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| BackendError::Io(Cause::file(&log_path, e)))?;
        let log2 = log.try_clone().map_err(|e| BackendError::Io(e.into()))?;
        // A pipe the supervisor pokes after every event: cheaper than inotify, whose fd
        // costs an RCU grace period (milliseconds) to close.
        let (notify_r, notify_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| BackendError::Io(Cause::sys("pipe", e)))?;
        let notify_fd = notify_w.as_raw_fd();
        let mut cmd = Command::new(exe);
        cmd.env(NOTIFY_FD_ENV, NOTIFY_FD.to_string());
        cmd.arg(supervisor::SUPERVISE)
            .arg(&self.store.root)
            .arg(&self.data_dir)
            .arg(op)
            .stdout(log)
            .stderr(log2)
            .stdin(match stdin {
                Stdin::Inherit => Stdio::inherit(),
                Stdin::Null => Stdio::null(),
                Stdin::Fd(fd) => fd
                    .try_clone_to_owned()
                    .map(Stdio::from)
                    .map_err(|e| BackendError::Io(Cause::io("stdin pipe", e)))?,
            });
        // A process group of its own keeps the terminal's Ctrl-C away from the supervisor
        // (the CLI decides what Ctrl-C means). The cancel signals are blocked before exec
        // (posix_spawn would reset the mask), so a `kill` right after the spawn cancels
        // the run instead of killing a supervisor that has not set up its signalfd yet.
        cmd.process_group(0);
        let log_fd = handover.log.as_ref().map(|f| f.as_raw_fd());
        let scratch_fd = handover.scratch.as_ref().map(|c| c.file().as_raw_fd());
        if log_fd.is_some() {
            cmd.env(LOG_FD_ENV, LOG_FD.to_string());
        }
        if scratch_fd.is_some() {
            cmd.env(SCRATCH_FD_ENV, SCRATCH_FD.to_string());
        }
        // SAFETY: fcntl, dup2 and pthread_sigmask are async-signal-safe. The copies are
        // made in the child only, so no other program this process starts meanwhile (a
        // server starts them from many threads) inherits them.
        unsafe {
            cmd.pre_exec(move || {
                let handed = [
                    (Some(notify_fd), NOTIFY_FD),
                    (log_fd, LOG_FD),
                    (scratch_fd, SCRATCH_FD),
                ];
                // Out of the way first: in a process with many descriptors one we hand over
                // may sit where another goes. The copies close at exec; dup2 clears
                // close-on-exec on what it puts in place.
                let mut moved = [None; 3];
                for (slot, (fd, _)) in moved.iter_mut().zip(handed) {
                    if let Some(fd) = fd {
                        let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 1000);
                        if copy < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        *slot = Some(copy);
                    }
                }
                for (copy, (_, at)) in moved.into_iter().zip(handed) {
                    if let Some(copy) = copy {
                        if libc::dup2(copy, at) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                supervisor::cancel_signals()
                    .thread_block()
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| BackendError::Unavailable(Cause::io("cannot start the supervisor", e)))?;
        let pid = child.id() as i32;
        if let Some(start) = process_start_time(pid) {
            let _ = self.store.set_supervisor(op, pid, start);
        }
        drop(notify_w);
        lock(&self.children).push((op.to_string(), Pid::from_raw(pid)));
        lock(&self.notify).insert(op.to_string(), notify_r);
        Ok(())
    }

    /// Starts the supervisor as a forked copy of this process, with the job in memory.
    ///
    /// The child gets a process group of its own, the log as stdout and stderr, the run's
    /// stdin as fd 0 and the notify pipe as fd 3; every other descriptor is closed. Our
    /// store connection is closed first: SQLite keeps per-process lock state that a forked
    /// copy would get wrong. The cancel signals stay blocked across the fork, as in the
    /// exec'd supervisor. The child never returns: it leaves with `_exit`, so nothing it
    /// inherited (buffers, connections, the CLI's state) is flushed or dropped twice.
    fn fork_supervisor(
        &self,
        job: &supervisor::Job,
        stdin: Stdin<'_>,
        live: bool,
        output: bool,
        handover: &Handover,
    ) -> Result<(), BackendError> {
        let op = job.op.as_str();
        // The supervisor's stdout and stderr: its log only when tracing (it writes its
        // rare diagnostics with `supervisor::diag`, which creates the log on first use: one
        // file fewer to create on every run's path).
        let log_path = self.store.op_dir(op).join("supervisor.log");
        let log = if crate::log::tracing() {
            std::fs::create_dir_all(self.store.op_dir(op))
                .and_then(|_| std::fs::File::create(&log_path))
        } else {
            std::fs::OpenOptions::new().write(true).open("/dev/null")
        }
        .map_err(|e| BackendError::Io(Cause::file(&log_path, e)))?;
        let (notify_r, notify_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| BackendError::Io(Cause::sys("pipe", e)))?;
        // The streams the supervisor delivers itself (see `supervisor::Live`).
        let direct = if live && output {
            OUTPUT.map(|fd| direct_output(fd).then_some(fd))
        } else {
            [None, None]
        };
        let live_pipes = if live { Some(live_pipes()?) } else { None };
        let devnull = match stdin {
            Stdin::Null => Some(
                std::fs::File::open("/dev/null")
                    .map_err(|e| BackendError::Io(Cause::file("/dev/null", e)))?,
            ),
            _ => None,
        };
        let stdin_fd = match (&stdin, &devnull) {
            (_, Some(f)) => Some(f.as_raw_fd()),
            (Stdin::Fd(fd), None) => Some(fd.as_raw_fd()),
            _ => None,
        };
        self.store.close();
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let mut old = nix::sys::signal::SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_BLOCK,
            Some(&supervisor::cancel_signals()),
            Some(&mut old),
        )
        .map_err(|e| BackendError::Unavailable(Cause::sys("sigprocmask", e)))?;
        let started = std::time::Instant::now();
        // SAFETY: the CLI is single-threaded here (see `forking`); the child only runs the
        // supervisor and leaves with _exit.
        let forked = unsafe { nix::unistd::fork() };
        match forked {
            Ok(nix::unistd::ForkResult::Child) => {
                let inherited = Inherited {
                    log: &log,
                    log_path: &log_path,
                    stdin: stdin_fd,
                    notify: &notify_w,
                    live_pipes: live_pipes.as_ref(),
                    direct,
                    handover,
                };
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.forked_supervisor(job, &inherited, started)
                }))
                .unwrap_or(101);
                // SAFETY: leaving the forked copy without running anything inherited.
                unsafe { libc::_exit(code) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let _ = nix::sys::signal::pthread_sigmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&old),
                    None,
                );
                crate::log::trace("child forked");
                drop(notify_w);
                if let Some([(out, _), (err, _)]) = live_pipes {
                    lock(&self.live).insert(
                        op.to_string(),
                        Live {
                            pipes: [out, err],
                            direct: direct.map(|d| d.is_some()),
                            pass: output,
                        },
                    );
                }
                lock(&self.children).push((op.to_string(), child));
                lock(&self.notify).insert(op.to_string(), notify_r);
                Ok(())
            }
            Err(e) => {
                let _ = nix::sys::signal::pthread_sigmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&old),
                    None,
                );
                Err(BackendError::Unavailable(Cause::sys(
                    "cannot start the supervisor",
                    e,
                )))
            }
        }
    }

    /// The forked supervisor's life: the descriptors it inherited put in place, its job,
    /// then (for a CLI that skipped it) the recovery. Returns its exit code.
    fn forked_supervisor(
        &self,
        job: &supervisor::Job,
        inherited: &Inherited<'_>,
        started: std::time::Instant,
    ) -> i32 {
        let mut extra = vec![inherited.notify.as_raw_fd()];
        if let Some([(_, out), (_, err)]) = inherited.live_pipes {
            extra.extend([out.as_raw_fd(), err.as_raw_fd()]);
            extra.extend(inherited.direct.iter().flatten());
        }
        // What the supervisor takes over comes along, last.
        let mut pass = |fd: std::os::fd::RawFd| {
            extra.push(fd);
            2 + extra.len() as i32
        };
        let log_at = inherited.handover.log.as_ref().map(|f| pass(f.as_raw_fd()));
        let scratch_at = inherited
            .handover
            .scratch
            .as_ref()
            .map(|c| pass(c.file().as_raw_fd()));
        if let Err(e) = supervisor_fds(inherited.log.as_raw_fd(), inherited.stdin, &extra) {
            supervisor::diag(inherited.log_path, &format!("file descriptors: {e}"));
            return 1;
        }
        let panic_log = inherited.log_path.to_path_buf();
        std::panic::set_hook(Box::new(move |info| {
            supervisor::diag(&panic_log, &info.to_string());
        }));
        // SAFETY: supervisor_fds put the notify pipe's write end at fd 3, the
        // live pipes' write ends at 4 and 5, and the direct outputs after them.
        let owned = |fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let notify = owned(3);
        let mut next = 6;
        let live = inherited.live_pipes.map(|_| supervisor::Live {
            pipes: [owned(4), owned(5)],
            direct: inherited.direct.map(|d| {
                d.map(|_| {
                    next += 1;
                    owned(next - 1)
                })
            }),
        });
        crate::log::trace("supervisor start");
        // Tells it apart from its CLI in `ps -o comm` and top.
        let _ = nix::sys::prctl::set_name(c"contree-super");
        // SAFETY: supervisor_fds put them there.
        let file = |fd| unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let scratch =
            scratch_at.map(|fd| claim::Claim::adopt(file(fd), &self.store.scratch_dir(&job.op)));
        let code = supervisor::supervise_job(
            self.store.layout().clone(),
            job.clone(),
            &self.data_dir,
            log_at.map(file),
            scratch,
            Some(notify),
            live,
            started,
        );
        if self.recover_later && self.scratch_in_use() {
            self.recover();
        }
        crate::log::trace("recovered");
        // Its CLI has the result: the store's bounds are kept here, off the run's path.
        self.upkeep();
        code
    }
}
