//! The per-operation supervisor: a process of its own (`contree __supervise`) that owns
//! one run from start to commit, so detached runs outlive the CLI and a killed CLI never
//! leaves a half-finished operation.
//!
//! It works in a private mount namespace: every mount it makes (host view, overlay root)
//! vanishes with it, so a crash leaves no mounts behind, only a scratch dir that `recover`
//! removes. SIGTERM (sent by `kill` / Ctrl-C) cancels the run.

use super::claim::Claim;
use super::eventlog::LogWriter;
use super::layers;
use super::network;
use super::recorder::Recorder;
use super::sandbox::status::{InitStatus, Lines};
use super::sandbox::{self, Spec};
use super::store::{ImageRow, Layout, Store};
use crate::wire::{self, SpawnRequest, Status};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod commit;
mod mount;
mod resources;
mod scratch;
mod stream;

pub(crate) use scratch::claim_scratch;
pub use stream::Live;
use stream::{Out, Stream};

/// The hidden subcommand that runs an operation's supervisor.
pub const SUPERVISE: &str = "__supervise";

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The signal that asks a supervisor to signal its command (see `signal_command`); the
/// signal to send comes as the queued value (sigqueue(3)).
pub fn control_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// Signals a supervisor handles: SIGTERM, SIGINT and SIGHUP cancel the run; the control
/// signal forwards one to the command. Whoever starts a supervisor blocks them first, so
/// none is lost (or kills it) before it reads them from its signalfd.
pub fn cancel_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    // SAFETY: sigaddset on our own set; the control signal is a valid realtime signal.
    unsafe {
        libc::sigaddset(
            &mut *(&mut set as *mut SigSet as *mut libc::sigset_t),
            control_signal(),
        )
    };
    set
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

#[derive(Debug)]
struct Outcome {
    status: Status,
    error: Option<String>,
    exit_code: Option<i32>,
    timed_out: bool,
}

/// Everything a supervisor needs to start the sandbox without reading the database: the
/// CLI already has it in hand, and the database is then opened while the command runs,
/// off the path of a short run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub op: String,
    pub request: SpawnRequest,
    pub image: ImageRow,
    /// File uuid → blob sha256, for the request's attachments.
    pub blobs: BTreeMap<String, String>,
    /// Set when the spawner did not record the operation (a foreground run): the
    /// supervisor then creates its row, while the sandbox starts, with this creation time.
    #[serde(default)]
    pub created_at: Option<String>,
    /// The host ids the sandbox's user namespace maps to; `None` runs the sandbox without
    /// one (where this machine cannot: see `idmap`).
    #[serde(default)]
    pub userns: Option<super::idmap::Range>,
    /// Memory, processes, CPU and the writable layer's size (see `limits`).
    #[serde(default)]
    pub limits: super::limits::Limits,
}

/// Appends a line to a supervisor's log (`supervisor.log` in the operation's dir), creating
/// it: a supervisor forked by the CLI has no log file until it has something to say.
pub fn diag(log: &Path, message: &str) {
    let line = format!("supervisor: {message}\n");
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
}

/// The job file the CLI writes next to the event log before starting the supervisor.
pub fn job_path(layout: &Layout, op: &str) -> PathBuf {
    layout.op_dir(op).join("job.json")
}

/// Entry point of `contree __supervise STORE DATA OP`. Returns the process exit code.
pub fn supervise(store_root: &Path, op: &str, data_dir: &Path) -> i32 {
    let started = Instant::now();
    crate::log::trace("supervisor start");
    let _ = cancel_signals().thread_block();
    let layout = Layout {
        root: store_root.to_path_buf(),
    };
    let job_file = job_path(&layout, op);
    let job: Job = match std::fs::read(&job_file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(job) => job,
        Err(e) => {
            eprintln!("supervisor: job {}: {e}", job_file.display());
            return 1;
        }
    };
    let _ = std::fs::remove_file(&job_file);
    // The command must never hold (or write) its log.
    let log = inherited_fd(super::launch::LOG_FD_ENV);
    let notify = std::env::var(super::launch::NOTIFY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .map(|fd| {
            // SAFETY: the CLI handed us this fd (the write end of its notify pipe) and
            // nobody else in this process uses it.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let _ = nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            fd
        });
    let scratch = inherited_fd(super::launch::SCRATCH_FD_ENV)
        .map(|file| Claim::adopt(file, &layout.scratch_dir(op)));
    supervise_job(layout, job, data_dir, log, scratch, notify, None, started)
}

/// A descriptor our spawner handed us, named by the environment variable `var`; made
/// close-on-exec, so the sandbox never inherits it.
fn inherited_fd(var: &str) -> Option<std::fs::File> {
    let fd = std::env::var(var).ok()?.parse::<i32>().ok()?;
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // SAFETY: the spawner handed us this descriptor and nobody else here uses it.
    Some(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Runs one operation from start to `completion`: the body of both the exec'd
/// `__supervise` process and the supervisor the CLI forks (which has the job in memory).
///
/// `log` is the operation's event log, locked, when the spawner created the operation (the
/// lock is what makes it ours: see `LogWriter::own`).
#[allow(clippy::too_many_arguments)]
pub fn supervise_job(
    layout: Layout,
    job: Job,
    data_dir: &Path,
    log: Option<std::fs::File>,
    scratch: Option<Claim>,
    notify: Option<OwnedFd>,
    live: Option<Live>,
    started: Instant,
) -> i32 {
    let op = job.op.clone();
    let log_path = layout.op_dir(&op).join("events");
    // A foreground run's spawner made no operation dir: it comes with the first event,
    // written once the sandbox is starting (see `Run::init`).
    let log = match log {
        Some(file) => LogWriter::adopt(file, &log_path),
        None if job.created_at.is_some() => Ok(LogWriter::deferred(&log_path)),
        None => LogWriter::open(&log_path),
    };
    let mut log = match log {
        Ok(l) => l,
        Err(e) => {
            diag(
                &layout.op_dir(&op).join("supervisor.log"),
                &format!("event log {}: {e}", log_path.display()),
            );
            return 1;
        }
    };
    if let Some(fd) = notify {
        log.notify_to(fd);
        if live.is_some() {
            log.live_follower();
        }
    }
    let mut run = Run {
        scratch: layout.scratch_dir(&op),
        scratch_claim: scratch,
        layout,
        attach: None,
        live,
        init: None,
        mounted: None,
        network: None,
        store: None,
        job,
        log: Recorder::new(log),
        data_dir: data_dir.to_path_buf(),
        res: resources::State::default(),
    };
    let outcome = run.execute();
    let outcome = match outcome {
        Ok(o) => o,
        Err(message) => Outcome {
            status: Status::Failed,
            error: Some(message),
            exit_code: None,
            timed_out: false,
        },
    };
    run.finish(outcome, started)
}

struct Run {
    layout: Layout,
    /// The sandbox's mounts, held until nothing needs them (see `execute`).
    mounted: Option<Mounted>,
    /// The network helper of a run that had one, stopped, reaped after `completion`.
    network: Option<network::Network>,
    /// Where the output of the run the CLI follows goes (see `Live` and `Stream::pump`).
    live: Option<Live>,
    /// The `init` event, written when the sandbox starts or before any other event:
    /// creating a deferred log (a directory and a file on the store's disk) then overlaps
    /// with the sandbox's own start-up.
    init: Option<Value>,
    /// The attachment layer under this run's upper dir, if the request has files.
    attach: Option<String>,
    /// Opened once the sandbox is running (see `Job`).
    store: Option<Store>,
    job: Job,
    log: Recorder,
    scratch: PathBuf,
    /// Held from `claim_scratch` until the scratch dir is back in the pool or gone.
    scratch_claim: Option<Claim>,
    data_dir: PathBuf,
    /// The run's cgroup, layer filesystem or guard, and what it consumed (see `resources`).
    res: resources::State,
}

struct Mounted {
    /// The sandbox's root: mounted here, or (with a user namespace) where the init mounts
    /// it, relative to the mount points.
    root: PathBuf,
    mounts: Vec<PathBuf>,
    /// What the init mounts itself inside its user namespace.
    userns: Option<sandbox::Userns>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            sandbox::unmount(m);
        }
    }
}

impl Run {
    fn event(&mut self, kind: &str, spid: Option<u32>, data: Value) {
        if let Some(init) = self.init.take() {
            self.event("init", Some(0), init);
        }
        let data = match data {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self.log.event(kind, spid, data);
    }

    /// The database, opened on first use and marking the operation EXECUTING.
    fn db(&mut self) -> Result<&Store, String> {
        if self.store.is_none() {
            let store = Store::open(&self.layout.root).map_err(|e| e.to_string())?;
            if self.job.created_at.is_some() {
                // The row of an operation nobody owns would be failed by the next recovery:
                // the log, and with it the operation's lock, comes first.
                if let Some(init) = self.init.take() {
                    self.event("init", Some(0), init);
                }
                self.log
                    .ensure_open()
                    .map_err(|e| format!("cannot create the event log: {e}"))?;
            }
            let pid = std::process::id() as i32;
            let start = super::process_start_time(pid).unwrap_or(0);
            match &self.job.created_at {
                Some(created) => store
                    .create_executing_op(
                        &self.job.op,
                        "instance",
                        created,
                        Some(&self.job.request.image),
                        Some(&self.job.request),
                        pid,
                        start,
                    )
                    .map_err(|e| e.to_string())?,
                None => {
                    let _ = store.mark_executing(&self.job.op, pid, start);
                }
            }
            self.store = Some(store);
        }
        self.store
            .as_ref()
            .ok_or_else(|| "store not open".to_string())
    }

    fn execute(&mut self) -> Result<Outcome, String> {
        let req = self.job.request.clone();
        let image = self.job.image.clone();
        let uts = nix::sys::utsname::uname().ok();
        self.init = Some(json!({
                "started_at": wire::now_ts(),
                "runtime_path": self.scratch.display().to_string(),
                "verbose": false,
                "init_pid": 1,
                "hostname": req.hostname,
                "kernel": uts.as_ref().map(|u| format!("{} {}", u.release().to_string_lossy(), u.version().to_string_lossy())),
                "machine": uts.as_ref().map(|u| u.machine().to_string_lossy().into_owned()),
                "boot_id": self.job.op,
        }));
        sandbox::private_mount_namespace()
            .map_err(|e| format!("cannot create a private mount namespace: {e} (contree needs root or CAP_SYS_ADMIN)"))?;
        crate::log::trace("mounting");
        let mounted = self.mount_root(&image)?;
        crate::log::trace("mounted");
        let outcome = self.run_command(&req, &image, &mounted);
        // Kept until the commit needs the upper dir (or, for a run with nothing to commit,
        // until after `completion`: unmounting waits for RCU grace periods).
        self.mounted = Some(mounted);
        outcome
    }

    fn run_command(
        &mut self,
        req: &SpawnRequest,
        image: &ImageRow,
        mounted: &Mounted,
    ) -> Result<Outcome, String> {
        let env = sandbox_env(req, image);
        let search_path = env
            .get("PATH")
            .cloned()
            .unwrap_or_else(|| DEFAULT_PATH.into());
        let (command, argv) = command_line(req);
        let cstr =
            |s: &str| CString::new(s).map_err(|_| format!("argument contains a NUL byte: {s:?}"));
        let env_c = env
            .iter()
            .map(|(k, v)| cstr(&format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let argv_c = argv
            .iter()
            .map(|a| cstr(a))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = req
            .cwd
            .clone()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "/".into());

        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (st_r, st_w) = pipe()?;
        for fd in [&out_r, &err_r] {
            // Bigger pipes mean fewer wake-ups for chatty commands.
            let _ = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        }
        // Fed by a thread started after the clone: no other thread may exist while the
        // sandbox is cloned from this process (see `recorder`).
        let mut stdin_feed = None;
        let mut stdin_source = None;
        let stdin = match &req.stdin {
            Some(repr) => {
                let bytes = repr
                    .bytes()
                    .map_err(|e| format!("stdin is not valid base64: {e}"))?;
                let keep_open = repr.close == Some(false);
                let (r, w) = pipe()?;
                stdin_source = Some((w, bytes, keep_open));
                Some(r)
            }
            None => None,
        };

        // The sandbox's resolv.conf goes on the mount points' tmpfs, next to its root. An
        // init in a user namespace finds it from there, its working directory (the store's
        // own directories are closed to it).
        let points = self.layout.root.join("mnt");
        let (mut inside, net) =
            network::prepare(req.network_enabled(), &points).map_err(|e| e.to_string())?;
        if let (Some(u), network::Inside::Stack { resolv, .. }) = (&mounted.userns, &mut inside) {
            // Root's inside, like the rest of the image's /etc (it is bound, not idmapped).
            let _ = std::os::unix::fs::chown(
                points.join("resolv.conf"),
                Some(u.range.uid),
                Some(u.range.gid),
            );
            *resolv = PathBuf::from("resolv.conf");
        }
        let timeout = req.timeout.filter(|t| *t > 0).map(Duration::from_secs);
        let cgroup = self.enter_cgroup();
        let spawned_at = Instant::now();
        let init = sandbox::start(Spec {
            root: mounted.root.clone(),
            hostname: req.hostname.clone(),
            network: inside,
            command: cstr(&command)?,
            argv: argv_c,
            env: env_c,
            search_path,
            cwd: cwd.clone(),
            uid: req.uid.unwrap_or(0),
            gid: req.gid.unwrap_or(0),
            stdin,
            stdout: out_w,
            stderr: err_w,
            status: st_w,
            userns: mounted.userns.clone(),
            cgroup,
        })
        .map_err(|e| format!("cannot create the sandbox namespaces: {e}"))?;
        crate::log::trace("cloned");
        // Started now, the helper configures the network while the init sets up its mounts.
        let mut net = match net.map(|plan| plan.start(init)).transpose() {
            Ok(net) => net,
            Err(e) => {
                let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
                let _ = wait_init(init);
                return Err(e.to_string());
            }
        };
        crate::failpoint::hit("supervisor:running");
        batch_scheduling();
        if let Some((w, bytes, keep_open)) = stdin_source {
            stdin_feed = Some(std::thread::spawn(move || feed_stdin(w, bytes, keep_open)));
        }
        self.log.start();
        // The event log, created (if deferred) while the sandbox sets itself up.
        if let Some(init) = self.init.take() {
            self.event("init", Some(0), init);
        }
        // While the sandbox sets itself up, get the database ready for the commit.
        if let Err(e) = self.db() {
            let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
            let _ = wait_init(init);
            return Err(format!("cannot open the store: {e}"));
        }
        if let Some(net) = net.as_mut() {
            match net.ready(init) {
                Ok(data) => self.event("network", Some(0), data),
                Err(e) => {
                    let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
                    let _ = wait_init(init);
                    return Err(e.to_string());
                }
            }
            crate::log::trace("network up");
        }

        let mut masked_env = Map::new();
        for (k, v) in req.env.iter().flatten() {
            let secret = [
                "TOKEN",
                "SECRET",
                "PASSWORD",
                "API_KEY",
                "CREDENTIALS",
                "AUTHORIZATION",
            ]
            .iter()
            .any(|s| k.to_ascii_uppercase().ends_with(s));
            masked_env.insert(
                k.clone(),
                Value::String(if secret { "<MASKED>".into() } else { v.clone() }),
            );
        }
        let cap = req.truncate_output_at.unwrap_or(1 << 20);
        let mut streams = [
            Stream::new("stdout", out_r, cap),
            Stream::new("stderr", err_r, cap),
        ];
        if let Some(live) = self.live.take() {
            for ((s, pipe), direct) in streams.iter_mut().zip(live.pipes).zip(live.direct) {
                match direct {
                    Some(fd) => {
                        s.out = Some(Out::direct(fd));
                        s.marker = Some(pipe);
                    }
                    None => s.out = Some(Out::Pipe(pipe)),
                }
            }
        }
        let mut status_r = Some(st_r);
        let mut status_lines = Lines::default();
        let sigfd = SignalFd::with_flags(
            &cancel_signals(),
            SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
        )
        .map_err(|e| format!("signalfd: {e}"))?;
        let mut cancelled = false;
        let mut timed_out = false;
        let mut main_pid: Option<i32> = None;
        let mut exec_errno: Option<i32> = None;
        let mut setup_error: Option<String> = None;
        let mut exit: Option<(i32, i32, bool)> = None;
        let mut buf = vec![0u8; 1 << 20];
        let kill_init = || {
            let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
        };

        while streams.iter().any(|s| s.fd.is_some()) || status_r.is_some() {
            let mut fds = Vec::with_capacity(4);
            let mut who = Vec::with_capacity(4);
            for (i, s) in streams.iter().enumerate() {
                match (&s.fd, &s.out) {
                    // The reader's pipe is full: wait until it has room.
                    (Some(_), Some(Out::Pipe(out))) if s.out_full => {
                        fds.push(PollFd::new(out.as_fd(), PollFlags::POLLOUT));
                        who.push(i);
                    }
                    (Some(fd), _) => {
                        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                        who.push(i);
                    }
                    _ => {}
                }
            }
            for (i, s) in streams.iter().enumerate() {
                if let (Some(_), Some(marker)) = (&s.fd, &s.marker) {
                    // Nothing is written there: POLLERR says its reader, the CLI, is gone.
                    fds.push(PollFd::new(marker.as_fd(), PollFlags::empty()));
                    who.push(10 + i);
                }
            }
            if let Some(fd) = &status_r {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                who.push(2);
            }
            fds.push(PollFd::new(sigfd.as_fd(), PollFlags::POLLIN));
            who.push(3);
            let wait = match timeout {
                Some(t) if !timed_out && !cancelled => {
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
                Err(e) => return Err(format!("poll: {e}")),
            }
            let ready: Vec<usize> = fds
                .iter()
                .zip(&who)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, w)| *w)
                .collect();
            drop(fds);
            for w in ready {
                match w {
                    0 | 1 => {
                        let s = &mut streams[w];
                        s.out_full = false;
                        s.pump(&mut self.log);
                    }
                    10 | 11 => streams[w - 10].cli_gone(),
                    2 => {
                        let fd = status_r.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
                        match nix::unistd::read(fd, &mut buf) {
                            Ok(0) | Err(_) => status_r = None,
                            Ok(n) => {
                                status_lines.push(&buf[..n]);
                                while let Some(line) = status_lines.next_line() {
                                    match InitStatus::parse(&line) {
                                        Some(InitStatus::Started { pid }) => {
                                            main_pid = Some(pid);
                                            self.event(
                                                "spawn",
                                                Some(1),
                                                json!({
                                                    "pid": main_pid.unwrap_or(2),
                                                    "command": req.command,
                                                    "args": req.args.clone().unwrap_or_default(),
                                                    "shell": req.shell,
                                                    "cwd": cwd,
                                                    "uid": req.uid.unwrap_or(0),
                                                    "gid": req.gid.unwrap_or(0),
                                                    "timeout": req.timeout,
                                                    "truncate_at": cap,
                                                    "env": masked_env,
                                                }),
                                            );
                                        }
                                        Some(InitStatus::ExecFailed { errno }) => {
                                            exec_errno = Some(errno)
                                        }
                                        Some(InitStatus::SetupFailed(message)) => {
                                            setup_error = Some(message.to_string())
                                        }
                                        Some(InitStatus::Exited { code, signal, core }) => {
                                            exit = Some((code, signal, core))
                                        }
                                        None => {}
                                    }
                                }
                            }
                        }
                    }
                    _ => {
                        while let Ok(Some(info)) = sigfd.read_signal() {
                            if info.ssi_signo as libc::c_int == control_signal() {
                                signal_command(init, info.ssi_int);
                            } else if !cancelled {
                                cancelled = true;
                                kill_init();
                            }
                        }
                    }
                }
            }
            if let Some(t) = timeout {
                if !timed_out && !cancelled && spawned_at.elapsed() >= t {
                    timed_out = true;
                    kill_init();
                }
            }
            if !timed_out && !cancelled && self.guard_tripped() {
                kill_init();
            }
        }
        crate::log::trace("output done");
        // The follower reads its pipes to the end before it takes `exit` and `completion`.
        for s in &mut streams {
            s.close_output();
        }
        let mut rusage = wait_init(init);
        self.read_usage(&mut rusage);
        // The helper goes with the sandbox; its keeper is reaped after `completion` (its
        // death waits for the helper's, which takes pasta milliseconds). One that failed
        // after the command started had the sandbox killed.
        let net_failed = net.as_mut().and_then(|n| n.late_failure());
        self.network = net;
        if let Some(feed) = stdin_feed {
            // The feeder ends on EOF or on EPIPE once the sandbox is gone.
            let _ = feed.join();
        }
        let duration_ms = spawned_at.elapsed().as_millis() as u64;
        for s in &streams {
            if s.dropped > 0 {
                self.event(
                    "truncated",
                    Some(1),
                    json!({"stream": s.name, "bytes_emitted": s.emitted, "bytes_dropped": s.dropped}),
                );
            }
        }
        if let Some(e) = net_failed {
            return Err(e.to_string());
        }
        if let Some(err) = setup_error {
            return Err(format!("sandbox setup failed: {err}"));
        }
        let (code, signal, core) = match (exec_errno, exit) {
            (Some(_), _) => (127, -1, false),
            (None, Some(e)) => e,
            // The init was killed (timeout, cancel) before it could report.
            (None, None) => (-1, libc::SIGKILL, false),
        };
        self.event(
            "exit",
            Some(1),
            json!({
                "pid": main_pid.unwrap_or(2),
                "code": code,
                "signal": signal,
                "core_dump": core,
                "timed_out": timed_out,
                "duration_ms": duration_ms,
                "resources": rusage,
                "oom": self.res.oom,
                "layer_limit_hit": self.res.layer_hit,
                "limits": self.limits_report(),
            }),
        );
        let reason = if timed_out {
            "timeout"
        } else if cancelled {
            "signal"
        } else if exec_errno.is_some() {
            "spawn_failed"
        } else {
            "job_complete"
        };
        self.event(
            "shutdown",
            Some(0),
            json!({"stopped_at": wire::now_ts(), "reason": reason}),
        );
        Ok(if cancelled {
            Outcome {
                status: Status::Cancelled,
                error: Some("cancelled".into()),
                exit_code: Some(code),
                timed_out: false,
            }
        } else if let Some(errno) = exec_errno {
            Outcome {
                status: Status::Failed,
                error: Some(format!(
                    "spawn failed: exec {}: {}",
                    command,
                    nix::errno::Errno::from_raw(errno).desc()
                )),
                exit_code: Some(127),
                timed_out: false,
            }
        } else if timed_out {
            Outcome {
                status: Status::Failed,
                error: Some(format!("timed out after {}s", req.timeout.unwrap_or(0))),
                exit_code: Some(-1),
                timed_out: true,
            }
        } else if let Some(ended) = self.limit_outcome(code, signal) {
            ended
        } else {
            Outcome {
                status: Status::Success,
                error: None,
                exit_code: Some(code),
                timed_out: false,
            }
        })
    }
}

/// Puts this thread, and the threads it starts from now on, under SCHED_BATCH. The
/// supervisor moves output in bulk: woken by every write of a chatty command, it would
/// preempt the command (on a small machine, the CPU they share) to move a few kilobytes at
/// a time. Under SCHED_BATCH a wake-up does not preempt, so the supervisor takes the pipe a
/// megabyte at a time; on a CPU that is idle it still runs at once. Called after the sandbox
/// is cloned: the command keeps the policy it had.
fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) on the calling thread (pid 0) with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        crate::log::trace("SCHED_BATCH refused; the supervisor keeps its policy");
    }
}

fn feed_stdin(w: OwnedFd, bytes: Vec<u8>, keep_open: bool) {
    let mut out = std::fs::File::from(w);
    if out.write_all(&bytes).is_err() {
        return;
    }
    if keep_open {
        let mut input = std::io::stdin().lock();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    }
}

fn wait_init(init: Pid) -> Value {
    let mut status = 0;
    // SAFETY: rusage is plain data filled in by wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child with valid out-pointers.
        let rc = unsafe { libc::wait4(init.as_raw(), &mut status, 0, &mut ru) };
        if rc >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    json!({
        "user_cpu_time": secs(ru.ru_utime),
        "system_cpu_time": secs(ru.ru_stime),
        "max_rss": ru.ru_maxrss,
        "shared_memory": ru.ru_ixrss,
        "unshared_memory": ru.ru_idrss,
        "page_faults": ru.ru_minflt,
        "page_faults_io": ru.ru_majflt,
        "swaps": ru.ru_nswap,
        "block_input": ru.ru_inblock,
        "block_output": ru.ru_oublock,
        "signals": ru.ru_nsignals,
        "voluntary_switches": ru.ru_nvcsw,
        "involuntary_switches": ru.ru_nivcsw,
        "elapsed_time": 0,
        "monotonic_time": 0,
    })
}

/// The process's environment: a default PATH, with `shell` also HOME and HOSTNAME, then
/// the image's preserved variables (`--preserve-env`), then the request's.
///
/// The API text says image variables reach only shell commands, but clients omit `env`
/// when it equals what the image preserved and expect it to apply, so preserved variables
/// are applied in both modes.
pub fn sandbox_env(req: &SpawnRequest, image: &ImageRow) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
    if req.shell {
        let home = if req.uid.unwrap_or(0) == 0 {
            "/root"
        } else {
            "/"
        };
        env.insert("HOME".to_string(), home.to_string());
        env.insert("HOSTNAME".to_string(), req.hostname.clone());
    }
    for (k, v) in &image.env {
        env.insert(k.clone(), v.clone());
    }
    for (k, v) in req.env.iter().flatten() {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// The program and argv: a shell expression runs as `/bin/sh -c EXPR`, except the
/// interpreter form (`shell` with args `-s …`), which runs `/bin/sh -s …` reading stdin.
pub fn command_line(req: &SpawnRequest) -> (String, Vec<String>) {
    let args = req.args.clone().unwrap_or_default();
    if req.shell {
        if args.first().is_some_and(|a| a == "-s") {
            let mut argv = vec![req.command.clone()];
            argv.extend(args);
            return (req.command.clone(), argv);
        }
        return (
            "/bin/sh".to_string(),
            vec!["/bin/sh".to_string(), "-c".to_string(), req.command.clone()],
        );
    }
    let mut argv = vec![req.command.clone()];
    argv.extend(args);
    (req.command.clone(), argv)
}
