//! The per-operation supervisor: a process of its own (`contree __supervise`) that owns
//! one run from start to commit, so detached runs outlive the CLI and a killed CLI never
//! leaves a half-finished operation.
//!
//! It works in a private mount namespace: every mount it makes (host view, overlay root)
//! vanishes with it, so a crash leaves no mounts behind, only a scratch dir that `recover`
//! removes. SIGTERM (sent by `kill` / Ctrl-C) cancels the run.
//!
//! A run goes through `mount` (the root), `command` (the sandbox, with `watch` following
//! the init's reports and the output `stream`s), then `commit` (the snapshot, `completion`,
//! the row); `scratch` keeps the upper and work dirs, `resources` the limits.

use super::claim::Claim;
use super::eventlog::LogWriter;
use super::layers;
use super::network;
use super::recorder::Recorder;
use super::sandbox;
use super::store::{ImageRow, Layout, Store, StoreError};
use crate::wire::{self, SpawnRequest, Status};
use nix::sys::signal::{SigSet, Signal};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod command;
mod commit;
mod mount;
mod resources;
mod scratch;
mod stream;
mod subprocess;
mod watch;

use command::SandboxError;
use mount::MountError;
pub(crate) use scratch::{claim_scratch, ScratchError};
pub use stream::Live;

/// The hidden subcommand that runs an operation's supervisor.
pub const SUPERVISE: &str = "__supervise";

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

/// Why a run failed before its command could end on its own: its text is the operation's
/// `error`.
#[derive(Debug, thiserror::Error)]
enum SupervisorError {
    #[error("cannot create a private mount namespace: {0} (contree needs root or CAP_SYS_ADMIN)")]
    Namespace(#[source] std::io::Error),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// Why the supervisor could not reach the database (or record the operation in it).
#[derive(Debug, thiserror::Error)]
enum DbError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the event log: {0}")]
    EventLog(#[source] std::io::Error),
    #[error("store not open")]
    NotOpen,
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
    let read = || -> Result<Job, Box<dyn std::error::Error>> {
        Ok(serde_json::from_slice(&std::fs::read(&job_file)?)?)
    };
    let job = match read() {
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
        Err(e) => Outcome {
            status: Status::Failed,
            error: Some(e.to_string()),
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
    /// Directories of the upper dir made for the rootless host views, deepest first:
    /// removed at commit where the run left them empty (see `mount::mount_rootless_host`).
    made: Vec<PathBuf>,
}

impl Mounted {
    /// Removes the directories made for the views that the run left empty, so that a run
    /// that changed nothing still makes no layer.
    fn drop_unused_dirs(&mut self) {
        for dir in self.made.drain(..) {
            let _ = std::fs::remove_dir(dir);
        }
    }
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
    fn db(&mut self) -> Result<&Store, DbError> {
        if self.store.is_none() {
            let store = Store::open(&self.layout.root)?;
            if self.job.created_at.is_some() {
                // The row of an operation nobody owns would be failed by the next recovery:
                // the log, and with it the operation's lock, comes first.
                if let Some(init) = self.init.take() {
                    self.event("init", Some(0), init);
                }
                self.log.ensure_open().map_err(DbError::EventLog)?;
            }
            let pid = std::process::id() as i32;
            let start = crate::procfs::process_start_time(pid).unwrap_or(0);
            match &self.job.created_at {
                Some(created) => store.create_executing_op(
                    &self.job.op,
                    "instance",
                    created,
                    Some(&self.job.request.image),
                    Some(&self.job.request),
                    pid,
                    start,
                )?,
                None => {
                    let _ = store.mark_executing(&self.job.op, pid, start);
                }
            }
            self.store = Some(store);
        }
        self.store.as_ref().ok_or(DbError::NotOpen)
    }

    fn execute(&mut self) -> Result<Outcome, SupervisorError> {
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
        sandbox::private_mount_namespace().map_err(SupervisorError::Namespace)?;
        crate::log::trace("mounting");
        let mounted = self.mount_root(&image)?;
        crate::log::trace("mounted");
        let outcome = self.run_command(&req, &image, &mounted);
        // Kept until the commit needs the upper dir (or, for a run with nothing to commit,
        // until after `completion`: unmounting waits for RCU grace periods).
        self.mounted = Some(mounted);
        Ok(outcome?)
    }
}
