//! Running the command: the sandbox started around it, its output and the init's reports
//! followed to the end (`watch`), then the `exit` and `shutdown` events. The steps keep the
//! order of the run's start-up path: what can overlap with the sandbox's own set-up (the
//! network helper, the event log, the database) is done after the clone.

use super::stream::{Out, Stream};
use super::subprocess::Subprocesses;
use super::watch::{Seen, Watch, WatchError};
use super::{DbError, Mounted, Outcome, Run};
use crate::engine::network;
use crate::engine::sandbox::{self, Spec};
use crate::engine::store::ImageRow;
use crate::wire::{self, SpawnRequest, Status};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why the command could not be run (its own failure is the outcome, not an error).
#[derive(Debug, thiserror::Error)]
pub(super) enum SandboxError {
    #[error("argument contains a NUL byte: {0:?}")]
    NulByte(String),
    #[error("pipe: {0}")]
    Pipe(#[source] nix::Error),
    #[error("stdin is not valid base64: {0}")]
    Stdin(#[source] base64::DecodeError),
    #[error("cannot create the sandbox namespaces: {0}")]
    Namespaces(#[source] std::io::Error),
    /// The init reported that it could not set up the sandbox (in its own words).
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    #[error("cannot open the store: {0}")]
    Store(#[source] DbError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Watch(#[from] WatchError),
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What is said about the command outside the sandbox: the program as the request names
/// it (`/bin/sh` for a shell expression) and its working directory.
struct CommandLine {
    program: String,
    cwd: String,
}

/// What the init execs, made before anything is started: a request it cannot be made from
/// fails with nothing to undo.
struct Exec {
    argv: Vec<CString>,
    env: Vec<CString>,
    /// `PATH` inside the sandbox, where the init finds a bare program name.
    search_path: String,
}

impl CommandLine {
    fn new(req: &SpawnRequest, image: &ImageRow) -> Result<(CommandLine, Exec), SandboxError> {
        let env = sandbox_env(req, image);
        let search_path = env
            .get("PATH")
            .cloned()
            .unwrap_or_else(|| DEFAULT_PATH.into());
        let (program, argv) = command_line(req);
        let env_c = env
            .iter()
            .map(|(k, v)| c_string(&format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let argv_c = argv
            .iter()
            .map(|a| c_string(a))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = req
            .cwd
            .clone()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "/".into());
        let exec = Exec {
            argv: argv_c,
            env: env_c,
            search_path,
        };
        Ok((CommandLine { program, cwd }, exec))
    }
}

fn c_string(s: &str) -> Result<CString, SandboxError> {
    CString::new(s).map_err(|_| SandboxError::NulByte(s.to_string()))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SandboxError::Pipe)
}

/// The sandbox's ends of the pipes: the command's stdio and the init's status pipe.
struct SandboxIo {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    status: OwnedFd,
}

/// The request's stdin, for the thread that writes it into the command's stdin pipe.
struct StdinFeed {
    pipe: OwnedFd,
    bytes: Vec<u8>,
    keep_open: bool,
}

/// The command's stdin pipe (its read end for the sandbox), when the request has a stdin.
/// It is fed by a thread started after the clone: no other thread may exist while the
/// sandbox is cloned from this process (see `recorder`).
fn stdin_pipe(req: &SpawnRequest) -> Result<(Option<OwnedFd>, Option<StdinFeed>), SandboxError> {
    let Some(repr) = &req.stdin else {
        return Ok((None, None));
    };
    let bytes = repr.bytes().map_err(SandboxError::Stdin)?;
    let keep_open = repr.close == Some(false);
    let (r, w) = pipe()?;
    let feed = StdinFeed {
        pipe: w,
        bytes,
        keep_open,
    };
    Ok((Some(r), Some(feed)))
}

/// The `spawn` event but for the pid, made before the command starts.
pub(super) struct SpawnEvent<'a> {
    req: &'a SpawnRequest,
    cwd: &'a str,
    /// The request's environment, with secrets masked.
    env: Map<String, Value>,
    /// How much of each stream is recorded; the rest is counted and dropped.
    truncate_at: u64,
}

impl<'a> SpawnEvent<'a> {
    pub(super) fn new(req: &'a SpawnRequest, cwd: &'a str) -> Self {
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
        let cap = req.truncate_output_at.unwrap_or(wire::DEFAULT_TRUNCATE_AT);
        SpawnEvent {
            req,
            cwd,
            env: masked_env,
            truncate_at: cap,
        }
    }

    pub(super) fn data(&self, pid: i32) -> Value {
        let req = self.req;
        json!({
            "pid": pid,
            "command": req.command,
            "args": req.args.clone().unwrap_or_default(),
            "shell": req.shell,
            "cwd": self.cwd,
            "uid": req.uid.unwrap_or(0),
            "gid": req.gid.unwrap_or(0),
            "timeout": req.timeout,
            "truncate_at": self.truncate_at,
            "env": self.env,
        })
    }
}

impl Run {
    pub(super) fn run_command(
        &mut self,
        req: &SpawnRequest,
        image: &ImageRow,
        mounted: &Mounted,
    ) -> Result<Outcome, SandboxError> {
        let (cmd, exec) = CommandLine::new(req, image)?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (st_r, st_w) = pipe()?;
        for fd in [&out_r, &err_r] {
            // Bigger pipes mean fewer wake-ups for chatty commands.
            let _ = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        }
        let (stdin, stdin_feed) = stdin_pipe(req)?;
        let io = SandboxIo {
            stdin,
            stdout: out_w,
            stderr: err_w,
            status: st_w,
        };
        let timeout = req.timeout.filter(|t| *t > 0).map(Duration::from_secs);
        let (started, mut net, spawned_at) = self.start_sandbox(req, mounted, &cmd, exec, io)?;
        let init = started.init;
        let stdin_feed = self.while_it_starts(init, &mut net, stdin_feed)?;
        let spawn = SpawnEvent::new(req, &cmd.cwd);
        let mut streams = self.output_streams(out_r, err_r, spawn.truncate_at);
        let subs = Subprocesses::new(&self.job.op, started.control, req, image);
        let mut watch = Watch::new(st_r, subs)?;
        let mut seen = self.watch(init, &mut streams, &mut watch, timeout, spawned_at, &spawn)?;
        let (rusage, duration_ms) =
            self.command_over(init, &mut streams, net, stdin_feed, spawned_at)?;
        if let Some(err) = seen.setup_error.take() {
            return Err(SandboxError::Setup(err));
        }
        Ok(self.exited(req, &cmd.program, &seen, rusage, duration_ms))
    }

    /// Starts the sandbox, then its network helper (which configures the network while
    /// the init sets up its mounts). Returns the sandbox, the helper and when the command
    /// was started.
    fn start_sandbox(
        &mut self,
        req: &SpawnRequest,
        mounted: &Mounted,
        cmd: &CommandLine,
        exec: Exec,
        io: SandboxIo,
    ) -> Result<(sandbox::Started, Option<network::Network>, Instant), SandboxError> {
        // The sandbox's resolv.conf goes on the mount points' tmpfs, next to its root. An
        // init in a user namespace finds it from there, its working directory (the store's
        // own directories are closed to it).
        let points = self.layout.root.join("mnt");
        let (mut inside, net) = network::prepare(req.network_enabled(), &points)?;
        if let (Some(u), network::Inside::Stack { resolv, .. }) = (&mounted.userns, &mut inside) {
            // Root's inside, like the rest of the image's /etc (it is bound, not idmapped).
            let _ = std::os::unix::fs::chown(
                points.join("resolv.conf"),
                Some(u.range.uid),
                Some(u.range.gid),
            );
            *resolv = PathBuf::from("resolv.conf");
        }
        let cgroup = self.enter_cgroup();
        let spawned_at = Instant::now();
        let started = sandbox::start(Spec {
            root: mounted.root.clone(),
            hostname: req.hostname.clone(),
            network: inside,
            command: c_string(&cmd.program)?,
            argv: exec.argv,
            env: exec.env,
            search_path: exec.search_path,
            cwd: cmd.cwd.clone(),
            uid: req.uid.unwrap_or(0),
            gid: req.gid.unwrap_or(0),
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            status: io.status,
            userns: mounted.userns.clone(),
            cgroup,
        })
        .map_err(SandboxError::Namespaces)?;
        crate::log::trace("cloned");
        match net.map(|plan| plan.start(started.init)).transpose() {
            Ok(net) => Ok((started, net, spawned_at)),
            Err(e) => {
                let _ = nix::sys::signal::kill(started.init, Signal::SIGKILL);
                let _ = wait_init(started.init);
                Err(e.into())
            }
        }
    }

    /// What the supervisor does while the sandbox sets itself up; a failure kills the
    /// sandbox.
    fn while_it_starts(
        &mut self,
        init: Pid,
        net: &mut Option<network::Network>,
        stdin: Option<StdinFeed>,
    ) -> Result<Option<JoinHandle<()>>, SandboxError> {
        crate::failpoint::hit("supervisor:running");
        batch_scheduling();
        let stdin_feed =
            stdin.map(|f| std::thread::spawn(move || feed_stdin(f.pipe, f.bytes, f.keep_open)));
        self.log.start();
        // The event log, created (if deferred) while the sandbox sets itself up.
        if let Some(init) = self.init.take() {
            self.event("init", Some(0), init);
        }
        // While the sandbox sets itself up, get the database ready for the commit.
        if let Err(e) = self.db() {
            let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
            let _ = wait_init(init);
            return Err(SandboxError::Store(e));
        }
        if let Some(net) = net.as_mut() {
            match net.ready(init) {
                Ok(data) => self.event("network", Some(0), data),
                Err(e) => {
                    let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
                    let _ = wait_init(init);
                    return Err(e.into());
                }
            }
            crate::log::trace("network up");
        }
        Ok(stdin_feed)
    }

    /// The two output streams, with where a followed run's output goes besides the log
    /// (see `Live`).
    fn output_streams(&mut self, stdout: OwnedFd, stderr: OwnedFd, cap: u64) -> [Stream; 2] {
        let mut streams = [
            Stream::new("stdout", stdout, cap),
            Stream::new("stderr", stderr, cap),
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
        streams
    }

    /// The command's output has ended: the follower's pipes closed, the sandbox reaped,
    /// the stdin feeder joined, the output past the cap reported. Returns what the sandbox
    /// consumed and how long it ran, or why the run failed after all (its network did).
    fn command_over(
        &mut self,
        init: Pid,
        streams: &mut [Stream; 2],
        mut net: Option<network::Network>,
        stdin_feed: Option<JoinHandle<()>>,
        spawned_at: Instant,
    ) -> Result<(Value, u64), SandboxError> {
        crate::log::trace("output done");
        // The follower reads its pipes to the end before it takes `exit` and `completion`.
        for s in streams.iter_mut() {
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
        for s in streams.iter() {
            if s.dropped > 0 {
                self.event(
                    "truncated",
                    Some(1),
                    json!({"stream": s.name, "bytes_emitted": s.emitted, "bytes_dropped": s.dropped}),
                );
            }
        }
        if let Some(e) = net_failed {
            return Err(e.into());
        }
        Ok((rusage, duration_ms))
    }

    /// The `exit` and `shutdown` events, and the outcome of the run.
    fn exited(
        &mut self,
        req: &SpawnRequest,
        program: &str,
        seen: &Seen,
        mut rusage: Value,
        duration_ms: u64,
    ) -> Outcome {
        let (code, signal, core) = match (seen.exec_errno, seen.exit) {
            (Some(_), _) => (127, -1, false),
            (None, Some(e)) => e,
            // The init was killed (timeout, cancel) before it could report.
            (None, None) => (-1, libc::SIGKILL, false),
        };
        let pid = seen.main_pid.unwrap_or(2);
        event_resources(&mut rusage, duration_ms);
        self.ended(
            rusage.clone(),
            json!({"pid": pid, "signal": signal, "core_dump": core}),
        );
        self.event(
            "exit",
            Some(1),
            json!({
                "pid": pid,
                "code": code,
                "signal": signal,
                "core_dump": core,
                "timed_out": seen.timed_out,
                "duration_ms": duration_ms,
                "resources": rusage,
                "oom": self.res.oom,
                "layer_limit_hit": self.res.layer_hit,
                "limits": self.limits_report(),
            }),
        );
        let reason = if seen.timed_out {
            "timeout"
        } else if seen.cancelled {
            "signal"
        } else if seen.exec_errno.is_some() {
            "spawn_failed"
        } else {
            "job_complete"
        };
        self.event(
            "shutdown",
            Some(0),
            json!({"stopped_at": wire::now_ts(), "reason": reason}),
        );
        self.outcome(req, program, seen, code, signal)
    }

    fn outcome(
        &self,
        req: &SpawnRequest,
        program: &str,
        seen: &Seen,
        code: i32,
        signal: i32,
    ) -> Outcome {
        if seen.cancelled {
            Outcome {
                status: Status::Cancelled,
                error: Some("cancelled".into()),
                exit_code: Some(code),
                timed_out: false,
            }
        } else if let Some(errno) = seen.exec_errno {
            Outcome {
                status: Status::Failed,
                error: Some(format!(
                    "spawn failed: exec {}: {}",
                    program,
                    nix::errno::Errno::from_raw(errno).desc()
                )),
                exit_code: Some(127),
                timed_out: false,
            }
        } else if seen.timed_out {
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
        }
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

/// Writes the request's stdin to the command, then (with `close: false`) the supervisor's
/// own stdin until it ends.
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

/// Waits for the init to end; what the sandbox consumed, as the `exit` event's `resources`.
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

/// The exit event's `resources` completed: the wall time, and each counter also by the
/// name the API's `EventResources` gives it (microseconds, KiB), beside getrusage's names
/// that `InstanceResult.resources` uses.
pub(super) fn event_resources(rusage: &mut Value, duration_ms: u64) {
    let Some(r) = rusage.as_object_mut() else {
        return;
    };
    let elapsed = duration_ms as f64 / 1e3;
    r.insert("elapsed_time".into(), json!(elapsed));
    r.insert("monotonic_time".into(), json!(elapsed));
    let micros = |v: Option<&Value>| (v.and_then(Value::as_f64).unwrap_or(0.0) * 1e6) as u64;
    let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let api = [
        ("user_time_us", micros(r.get("user_cpu_time"))),
        ("sys_time_us", micros(r.get("system_cpu_time"))),
        ("max_rss_kb", count(r.get("max_rss"))),
        ("minor_faults", count(r.get("page_faults"))),
        ("major_faults", count(r.get("page_faults_io"))),
        ("voluntary_ctx_switches", count(r.get("voluntary_switches"))),
        (
            "involuntary_ctx_switches",
            count(r.get("involuntary_switches")),
        ),
        ("block_input_ops", count(r.get("block_input"))),
        ("block_output_ops", count(r.get("block_output"))),
        ("signals_received", count(r.get("signals"))),
        ("ipc_msgs_sent", 0),
        ("ipc_msgs_received", 0),
    ];
    for (key, n) in api {
        r.insert(key.into(), n.into());
    }
}

/// The process's environment: a default PATH, with `shell` also HOME and HOSTNAME, then
/// the image's preserved variables (`--preserve-env`), then the request's.
///
/// The API text says image variables reach only shell commands, but clients omit `env`
/// when it equals what the image preserved and expect it to apply, so preserved variables
/// are applied in both modes.
pub(super) fn sandbox_env(req: &SpawnRequest, image: &ImageRow) -> BTreeMap<String, String> {
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
pub(super) fn command_line(req: &SpawnRequest) -> (String, Vec<String>) {
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
