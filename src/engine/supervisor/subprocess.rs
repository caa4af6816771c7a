//! Subprocesses: more processes started in the running sandbox on request (`engine::exec`),
//! each with a spid of its own (2, 3, … in order; 1 is the main command). The supervisor
//! takes the request, makes the process's pipes and has the init fork and exec it inside
//! the sandbox (`sandbox::control`); its output and ending go into the event log tagged
//! with its spid (`spawn`, `stdout`, `stderr`, `truncated`, `exit`), as the main command's
//! do. When the main command ends, the sandbox ends: the init kills what still runs, and
//! each subprocess's `exit` says so, before the operation's commit.

use super::command::{command_line, sandbox_env, SpawnEvent};
use crate::engine::exec::{self, ExecReply, ExecRequest};
use crate::engine::recorder::Recorder;
use crate::engine::sandbox::control::{self, Request};
use crate::engine::store::ImageRow;
use crate::wire::{self, ExecSpec, SpawnRequest};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

/// The running sandbox's subprocesses, and the way requests come in.
pub(super) struct Subprocesses {
    /// Where requests come in; closed once the main command has ended.
    listener: Option<UnixListener>,
    /// The init's control socket.
    control: Option<OwnedFd>,
    /// The main command's request (image, environment, limits) and image.
    main: SpawnRequest,
    image: ImageRow,
    subs: Vec<Sub>,
    buf: Vec<u8>,
}

struct Sub {
    spid: u32,
    /// The main request with this process's command, environment and cwd.
    req: SpawnRequest,
    cwd: String,
    streams: [SubStream; 2],
    /// The client waiting to learn the spid, answered once the init has exec'd it.
    waiting: Option<UnixStream>,
    pid: Option<i32>,
    started: Instant,
    /// Exit code or -1, signal or -1, core dump.
    exit: Option<(i32, i32, bool)>,
    /// Its `exit` event is written (or it never started).
    done: bool,
}

struct SubStream {
    name: &'static str,
    fd: Option<OwnedFd>,
    cap: u64,
    emitted: u64,
    dropped: u64,
}

impl Subprocesses {
    pub(super) fn new(op: &str, control: OwnedFd, main: &SpawnRequest, image: &ImageRow) -> Self {
        Subprocesses {
            // No listener (the name is taken, say): the run goes on without exec.
            listener: exec::listen(op).ok(),
            control: Some(control),
            main: main.clone(),
            image: image.clone(),
            subs: Vec::new(),
            buf: vec![0u8; 1 << 16],
        }
    }

    /// The listener, then each open output pipe as (sub, stream).
    pub(super) fn fds(&self) -> (Option<BorrowedFd<'_>>, Vec<(BorrowedFd<'_>, usize, usize)>) {
        let mut pipes = Vec::new();
        for (k, sub) in self.subs.iter().enumerate() {
            for (i, s) in sub.streams.iter().enumerate() {
                if let Some(fd) = &s.fd {
                    pipes.push((fd.as_fd(), k, i));
                }
            }
        }
        (self.listener.as_ref().map(|l| l.as_fd()), pipes)
    }

    /// Some subprocess's output is still to be read.
    pub(super) fn reading(&self) -> bool {
        self.subs
            .iter()
            .any(|s| s.streams.iter().any(|st| st.fd.is_some()))
    }

    /// Takes the requests waiting on the listener.
    pub(super) fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if !exec::peer_is_us(&stream) {
                continue;
            }
            match exec::read_request(&stream) {
                Ok(ExecRequest::Exec(spec)) => self.start(spec, stream),
                Ok(ExecRequest::Signal { spid, signal }) => {
                    let answer = self.signal(spid, signal);
                    exec::reply(&stream, &answer);
                }
                Err(why) => exec::reply(&stream, &ExecReply::Invalid(why.to_string())),
            }
        }
    }

    fn signal(&mut self, spid: u32, signal: i32) -> ExecReply {
        let live = self
            .subs
            .iter()
            .any(|s| s.spid == spid && s.pid.is_some() && s.exit.is_none());
        let Some(control) = self.control.as_ref().filter(|_| live) else {
            return ExecReply::NoSuchSubprocess(spid);
        };
        match control::send(control, &Request::Signal { spid, signal }, &[]) {
            Ok(()) => ExecReply::Signalled,
            Err(_) => ExecReply::Ending,
        }
    }

    /// Starts `spec` (its reply waits for the init's report) or says why not.
    fn start(&mut self, spec: ExecSpec, client: UnixStream) {
        let Some(control) = self.control.as_ref() else {
            return exec::reply(&client, &ExecReply::Ending);
        };
        let req = self.request(spec);
        // 1 is the main command; each process the init is asked to start takes the next.
        let spid = self.subs.len() as u32 + 2;
        match prepare(&req, &self.image, spid) {
            Err(why) => exec::reply(&client, &ExecReply::Invalid(why.to_string())),
            Ok(prepared) => {
                let Prepared {
                    process,
                    cwd,
                    theirs,
                    ours,
                    stdin,
                } = prepared;
                let fds = theirs.each_ref().map(|f| f.as_raw_fd());
                if control::send(control, &Request::Spawn(process), &fds).is_err() {
                    return exec::reply(&client, &ExecReply::Ending);
                }
                drop(theirs);
                if let Some((pipe, bytes)) = stdin {
                    std::thread::spawn(move || {
                        let _ = std::fs::File::from(pipe).write_all(&bytes);
                    });
                }
                let cap = req.truncate_output_at.unwrap_or(wire::DEFAULT_TRUNCATE_AT);
                let [out, err] = ours;
                let stream = |name, fd| SubStream {
                    name,
                    fd: Some(fd),
                    cap,
                    emitted: 0,
                    dropped: 0,
                };
                self.subs.push(Sub {
                    spid,
                    req,
                    cwd,
                    streams: [stream("stdout", out), stream("stderr", err)],
                    waiting: Some(client),
                    pid: None,
                    started: Instant::now(),
                    exit: None,
                    done: false,
                });
            }
        }
    }

    /// The main request with `spec`'s process: its command, its environment over the main
    /// one's, its cwd, ids, stdin and cap where it gives them.
    fn request(&self, spec: ExecSpec) -> SpawnRequest {
        let mut req = self.main.clone();
        let mut env = req.env.take().unwrap_or_default();
        env.extend(spec.env.unwrap_or_default());
        req.env = Some(env);
        req.command = spec.command;
        req.args = spec.args;
        req.shell = spec.shell;
        if let Some(cwd) = spec.cwd.filter(|c| !c.is_empty()) {
            req.cwd = Some(cwd);
        }
        req.uid = spec.uid.or(req.uid);
        req.gid = spec.gid.or(req.gid);
        req.stdin = spec.stdin;
        req.truncate_output_at = spec.truncate_output_at.or(req.truncate_output_at);
        req
    }

    /// Moves what subprocess `k`'s stream `i` holds into the log (up to its cap).
    pub(super) fn pump(&mut self, k: usize, i: usize, log: &mut Recorder) {
        let sub = &mut self.subs[k];
        let s = &mut sub.streams[i];
        let Some(fd) = &s.fd else {
            return;
        };
        match nix::unistd::read(fd.as_raw_fd(), &mut self.buf) {
            Ok(0) => s.fd = None,
            Ok(n) => {
                let keep = (s.cap.saturating_sub(s.emitted) as usize).min(n);
                if keep > 0 {
                    log.stream_of(s.name, sub.spid, self.buf[..keep].to_vec());
                }
                s.emitted += keep as u64;
                s.dropped += (n - keep) as u64;
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(_) => s.fd = None,
        }
    }

    /// The init started subprocess `spid` as `pid`: its `spawn` event, and its spid to the
    /// client.
    pub(super) fn started(&mut self, spid: i32, pid: i32, log: &mut Recorder) {
        let Some(sub) = self.subs.iter_mut().find(|s| s.spid as i32 == spid) else {
            return;
        };
        sub.pid = Some(pid);
        let data = SpawnEvent::new(&sub.req, &sub.cwd).data(pid);
        log.event("spawn", Some(sub.spid), object(data));
        if let Some(client) = sub.waiting.take() {
            exec::reply(&client, &ExecReply::Started { spid: sub.spid });
        }
    }

    /// Its exec failed: the client is told why; nothing is recorded.
    pub(super) fn failed(&mut self, spid: i32, errno: i32) {
        let Some(sub) = self.subs.iter_mut().find(|s| s.spid as i32 == spid) else {
            return;
        };
        sub.done = true;
        let why = std::io::Error::from_raw_os_error(errno);
        let program = command_line(&sub.req).0;
        if let Some(client) = sub.waiting.take() {
            exec::reply(
                &client,
                &ExecReply::Invalid(format!("cannot run {program}: {why}")),
            );
        }
    }

    pub(super) fn exited(&mut self, spid: i32, code: i32, signal: i32, core: bool) {
        if let Some(sub) = self.subs.iter_mut().find(|s| s.spid as i32 == spid) {
            sub.exit = Some((code, signal, core));
        }
    }

    /// The main command has ended: nothing more starts, and who waits is told.
    pub(super) fn ending(&mut self) {
        self.listener = None;
        for sub in &mut self.subs {
            if let Some(client) = sub.waiting.take() {
                exec::reply(&client, &ExecReply::Ending);
            }
        }
    }

    /// Writes the `exit` event of each subprocess that has ended and whose output is all
    /// read (after its `truncated` events).
    pub(super) fn flush(&mut self, log: &mut Recorder) {
        for sub in &mut self.subs {
            let drained = sub.streams.iter().all(|s| s.fd.is_none());
            if let (false, Some(exit), true) = (sub.done, sub.exit, drained) {
                sub.record_exit(exit, log);
            }
        }
    }

    /// The sandbox is gone: a subprocess whose end the init could not report was killed
    /// with it.
    pub(super) fn finish(&mut self, log: &mut Recorder) {
        self.ending();
        self.control = None;
        for sub in &mut self.subs {
            if !sub.done && sub.pid.is_some() {
                let exit = sub.exit.unwrap_or((-1, libc::SIGKILL, false));
                sub.record_exit(exit, log);
            }
        }
    }
}

impl Sub {
    fn record_exit(&mut self, (code, signal, core): (i32, i32, bool), log: &mut Recorder) {
        for s in &self.streams {
            if s.dropped > 0 {
                let data = json!({"stream": s.name, "bytes_emitted": s.emitted, "bytes_dropped": s.dropped});
                log.event("truncated", Some(self.spid), object(data));
            }
        }
        let duration_ms = self.started.elapsed().as_millis() as u64;
        // What one process consumed is not measured apart from the sandbox's: zeros.
        let mut resources = json!({});
        super::command::event_resources(&mut resources, duration_ms);
        let data = json!({
            "pid": self.pid.unwrap_or(0),
            "code": code,
            "signal": signal,
            "core_dump": core,
            "timed_out": false,
            "duration_ms": duration_ms,
            "resources": resources,
        });
        log.event("exit", Some(self.spid), object(data));
        self.done = true;
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A subprocess ready to be started: what the init gets, and our ends of its pipes.
struct Prepared {
    process: control::Process,
    cwd: String,
    /// Its stdin, stdout and stderr, for the init.
    theirs: [OwnedFd; 3],
    /// Our ends of its stdout and stderr.
    ours: [OwnedFd; 2],
    /// The write end of its stdin and what to write there.
    stdin: Option<(OwnedFd, Vec<u8>)>,
}

/// Why a subprocess's request cannot be started (the client is told, 400).
#[derive(Debug, thiserror::Error)]
enum PrepareError {
    #[error("command is empty")]
    Empty,
    #[error("a subprocess's stdin is sent whole with the request (close: false is not supported)")]
    StdinLeftOpen,
    #[error("stdin is not valid base64: {0}")]
    Stdin(#[from] base64::DecodeError),
    #[error("the command, its arguments, environment or cwd contain a NUL byte")]
    Nul,
    #[error("pipe: {0}")]
    Pipe(#[from] nix::errno::Errno),
}

fn prepare(req: &SpawnRequest, image: &ImageRow, spid: u32) -> Result<Prepared, PrepareError> {
    if req.command.is_empty() {
        return Err(PrepareError::Empty);
    }
    let bytes = match &req.stdin {
        Some(s) if s.close == Some(false) => return Err(PrepareError::StdinLeftOpen),
        Some(s) => s.bytes()?,
        None => Vec::new(),
    };
    let env = sandbox_env(req, image);
    let (command, argv) = command_line(req);
    let cwd = req
        .cwd
        .clone()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "/".into());
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if argv
        .iter()
        .chain(&env)
        .chain([&command, &cwd])
        .any(|s| s.contains('\0'))
    {
        return Err(PrepareError::Nul);
    }
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let search_path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or_default()
        .to_string();
    Ok(Prepared {
        process: control::Process {
            spid,
            command,
            argv,
            env,
            search_path,
            cwd: cwd.clone(),
            uid: req.uid.unwrap_or(0),
            gid: req.gid.unwrap_or(0),
        },
        cwd,
        theirs: [in_r, out_w, err_w],
        ours: [out_r, err_r],
        // No stdin: the pipe closes at once (the process reads EOF).
        stdin: (!bytes.is_empty()).then_some((in_w, bytes)),
    })
}
