//! The test harness: one `Env` per test owns a fresh data directory (`CONTREE_HOME`), a
//! session key and a scratch directory for host files, and runs the real `contree` binary
//! with a clean environment. It must never touch anything outside its own temp dirs.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub use crate::skip::skip;

/// The binary under test, built by cargo for this integration test target.
pub const CONTREE: &str = env!("CARGO_BIN_EXE_contree");

/// A command that takes longer than this is considered hung: it is killed and the test fails.
const HANG_LIMIT: Duration = Duration::from_secs(90);

/// A user's machine, reduced to what contree sees: its data dir, session and scratch dir.
pub struct Env {
    home: TempDir,
    work: TempDir,
    session: String,
}

/// A supervisor finishes after its run has been reported (it prepares the next run's spare
/// dirs, among other things): the data dir goes once none is left, or a late one would
/// make parts of it again after it was removed. One still there after ten seconds (a run a
/// test left sleeping) is killed, with its sandbox.
impl Drop for Env {
    fn drop(&mut self) {
        // A test may put a data dir in the scratch dir (XDG_DATA_HOME) too.
        settle(self.home());
        settle(self.work());
    }
}

/// Waits (ten seconds at most) for the supervisors of the data dir `home`, or of one below
/// it, to finish, then kills those left, so that the dir can go for good.
pub fn settle(home: &Path) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !supervisors_in(home).is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for pid in supervisors_in(home) {
        // SAFETY: kill(2) of a process of this test's data dir.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !supervisors_in(home).is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

impl Env {
    /// A fresh data dir in the system temp dir, session key `t`, no session yet.
    pub fn new() -> Env {
        Env::with_home_in(std::env::temp_dir())
    }

    /// Like `new`, with the data dir created inside `parent` (for tests about where it lives).
    pub fn with_home_in(parent: impl AsRef<Path>) -> Env {
        let home = tempfile::Builder::new()
            .prefix("contree-home-")
            .tempdir_in(parent)
            .expect("create CONTREE_HOME");
        let work = tempfile::Builder::new()
            .prefix("contree-work-")
            .tempdir()
            .expect("create scratch dir");
        Env {
            home,
            work,
            session: "t".to_string(),
        }
    }

    /// A fresh env whose session already stands on the built-in `host` image.
    pub fn host() -> Env {
        let env = Env::new();
        env.use_host();
        env
    }

    /// `contree use host`: start (or move) the session onto the built-in host image.
    pub fn use_host(&self) -> &Env {
        self.run(["use", "host"]).success();
        self
    }

    /// `$CONTREE_HOME` of this env.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// A scratch directory on the host for files to attach, scripts and archives.
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// Writes `content` to `rel` under the scratch dir (creating parents) and returns its path.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.work().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent dirs");
        }
        std::fs::write(&path, content).expect("write scratch file");
        path
    }

    /// `contree ARGS…` with stdin at EOF, waited for.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd(args).output()
    }

    /// A `contree ARGS…` invocation to adjust (stdin, env, cwd) before running it.
    pub fn cmd<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.program(CONTREE);
        cmd.command.args(args);
        cmd
    }

    /// `contree ARGS…` with a pseudo-terminal as stdin, stdout and stderr (util-linux
    /// `script`); its stdout has everything the terminal showed. `None` (the test reported
    /// skipped) where `script` is missing.
    pub fn run_on_terminal<I, S>(&self, args: I) -> Option<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Some(self.on_terminal(args)?.output())
    }

    /// `contree ARGS…` on a pseudo-terminal (see `run_on_terminal`), to start with
    /// `spawn_with_stdin_pipe` and type into. `None` where `script` is missing.
    pub fn on_terminal<I, S>(&self, args: I) -> Option<Cmd>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let Some(script) = find_program("script") else {
            skip("needs util-linux's `script` for a pseudo-terminal (apt-get install bsdutils)");
            return None;
        };
        let mut line = shell_quote(OsStr::new(CONTREE));
        for arg in args {
            line.push(' ');
            line.push_str(&shell_quote(arg.as_ref()));
        }
        Some(
            self.program(script)
                .env("TERM", "xterm")
                .arg("-qec")
                .arg(line)
                .arg("/dev/null"),
        )
    }

    /// Any program, run with this env's environment (data dir, session, PATH).
    pub fn program(&self, program: impl AsRef<OsStr>) -> Cmd {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.work())
            .env("CONTREE_HOME", self.home())
            .env("CONTREE_SESSION", &self.session)
            .current_dir(self.work());
        Cmd {
            command,
            stdin: None,
        }
    }

    /// `contree -o json ARGS…` parsed as one JSON record (the command must print exactly one).
    pub fn json<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<OsString> = vec!["-o".into(), "json".into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self.run(all).json()
    }

    /// The image the session currently stands on.
    pub fn session_image(&self) -> String {
        self.json(["use"])["current_image"]
            .as_str()
            .expect("current_image is a string")
            .to_string()
    }

    /// UUIDs of every operation of this data dir, newest first.
    pub fn all_ops(&self) -> Vec<String> {
        self.run(["ps", "-a", "-q"])
            .success()
            .stdout_text()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The newest operation's UUID.
    pub fn last_op(&self) -> String {
        self.all_ops()
            .into_iter()
            .next()
            .expect("at least one operation")
    }

    /// The status of operation `op` (`contree -o json show OP`).
    pub fn op_status(&self, op: &str) -> String {
        self.json(["show", op])["status"]
            .as_str()
            .expect("status is a string")
            .to_string()
    }

    /// Lines of /proc/mounts that mention this env's data dir.
    pub fn mounts_in_home(&self) -> Vec<String> {
        let home = self.home().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/mounts")
            .expect("read /proc/mounts")
            .lines()
            .filter(|l| l.contains(&home))
            .map(str::to_string)
            .collect()
    }
}

/// One invocation being prepared.
pub struct Cmd {
    command: Command,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    /// Feed these bytes on stdin, then close it.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.command.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.command.current_dir(dir);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.command.arg(arg);
        self
    }

    /// Starts the process with piped stdout/stderr (stdin piped if bytes were given, else
    /// /dev/null) without waiting, for tests that signal it or read it while it runs.
    pub fn spawn(self) -> Running {
        let stdin = if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        self.start(stdin)
    }

    /// Like `spawn`, with stdin an open pipe left to the test (`running.child.stdin`).
    pub fn spawn_with_stdin_pipe(mut self) -> Running {
        self.stdin = None;
        self.start(Stdio::piped())
    }

    fn start(mut self, stdin: Stdio) -> Running {
        let label = describe(&self.command);
        self.command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        if let Some(bytes) = self.stdin.take() {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            // A writer thread: the command may exit without reading everything (EPIPE is fine).
            thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        Running {
            child,
            label,
            started: Instant::now(),
            live: [None, None],
        }
    }

    /// Runs to completion (killing it after a generous hang limit) and captures everything.
    pub fn output(self) -> Output {
        self.spawn().wait()
    }
}

/// A started process.
pub struct Running {
    pub child: Child,
    label: String,
    started: Instant,
    /// stdout and stderr once read by a thread (see `reader`): what they gave so far.
    live: [Option<Reader>; 2],
}

/// A thread that reads one of the child's pipes to its end into `seen`.
struct Reader {
    seen: Arc<Mutex<Vec<u8>>>,
    thread: thread::JoinHandle<()>,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until the command has written `needle` to its stdout, failing the test once
    /// `limit` has passed. What was read stays part of `wait`'s output.
    #[track_caller]
    pub fn wait_for_stdout(&mut self, needle: &str, limit: Duration) {
        self.wait_for(0, needle, limit)
    }

    /// Waits until `needle` appeared `count` times on stdout (a prompt shown again).
    #[track_caller]
    pub fn wait_for_stdout_times(&mut self, needle: &str, count: usize, limit: Duration) {
        let seen = self.reader(0).seen.clone();
        let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        if !eventually(limit, || text().matches(needle).count() >= count) {
            panic!(
                "{}: {needle:?} not {count} times on stdout after {limit:?}; it wrote:\n{}",
                self.label,
                text()
            );
        }
    }

    /// `wait_for_stdout` for stderr.
    #[track_caller]
    pub fn wait_for_stderr(&mut self, needle: &str, limit: Duration) {
        self.wait_for(1, needle, limit)
    }

    #[track_caller]
    fn wait_for(&mut self, stream: usize, needle: &str, limit: Duration) {
        let seen = self.reader(stream).seen.clone();
        let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        if !eventually(limit, || text().contains(needle)) {
            let name = ["stdout", "stderr"][stream];
            panic!(
                "{}: no {needle:?} on {name} after {limit:?}; it wrote:\n{}",
                self.label,
                text()
            );
        }
    }

    /// The thread reading stdout (0) or stderr (1), started on first use.
    fn reader(&mut self, stream: usize) -> &Reader {
        let child = &mut self.child;
        self.live[stream].get_or_insert_with(|| {
            let pipe: Option<Box<dyn Read + Send>> = match stream {
                0 => child.stdout.take().map(|p| Box::new(p) as _),
                _ => child.stderr.take().map(|p| Box::new(p) as _),
            };
            let seen = Arc::new(Mutex::new(Vec::new()));
            let into = seen.clone();
            let thread = thread::spawn(move || {
                // A test may have taken the pipe to read it itself: then nothing is left.
                let Some(mut pipe) = pipe else { return };
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    into.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            Reader { seen, thread }
        })
    }

    /// Waits for the exit, with the hang limit, collecting both streams.
    pub fn wait(mut self) -> Output {
        self.reader(0);
        self.reader(1);
        let status = wait_with_limit(&mut self.child, self.started, &self.label);
        let [out, err] = self.live.map(|r| {
            let r = r.expect("reader started above");
            r.thread.join().expect("pipe reader");
            let bytes = std::mem::take(&mut *r.seen.lock().unwrap());
            bytes
        });
        Output {
            label: self.label,
            status,
            stdout: out,
            stderr: err,
            elapsed: self.started.elapsed(),
        }
    }
}

fn wait_with_limit(child: &mut Child, started: Instant, label: &str) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if started.elapsed() > HANG_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{label} still running after {HANG_LIMIT:?}; killed it");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// `program` found on PATH.
pub fn find_program(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `arg` in single quotes for `sh -c`.
fn shell_quote(arg: &OsStr) -> String {
    format!("'{}'", arg.to_string_lossy().replace('\'', r"'\''"))
}

fn describe(command: &Command) -> String {
    let mut s = command.get_program().to_string_lossy().into_owned();
    if s == CONTREE {
        s = "contree".to_string();
    }
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"$;|&".contains(c)) {
            let _ = write!(s, " '{}'", arg.replace('\'', r"'\''"));
        } else {
            let _ = write!(s, " {arg}");
        }
    }
    s
}

/// What a finished command left behind, with fluent assertions that print everything on failure.
pub struct Output {
    label: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Output {
    #[track_caller]
    fn fail(&self, what: &str) -> ! {
        panic!(
            "\n$ {}\n{what}\n--- exit: {}\n--- stdout ({} bytes):\n{}\n--- stderr:\n{}\n---",
            self.label,
            self.code_text(),
            self.stdout.len(),
            show_bytes(&self.stdout),
            show_bytes(&self.stderr),
        )
    }

    fn code_text(&self) -> String {
        match self.status.code() {
            Some(code) => code.to_string(),
            None => format!("{:?}", self.status),
        }
    }

    #[track_caller]
    pub fn success(self) -> Output {
        self.code(0)
    }

    #[track_caller]
    pub fn code(self, expected: i32) -> Output {
        if self.status.code() != Some(expected) {
            self.fail(&format!("expected exit code {expected}"));
        }
        self
    }

    /// stdout is exactly this text.
    #[track_caller]
    pub fn stdout(self, expected: &str) -> Output {
        self.stdout_bytes(expected.as_bytes())
    }

    #[track_caller]
    pub fn stdout_bytes(self, expected: &[u8]) -> Output {
        if self.stdout != expected {
            self.fail(&format!("expected stdout:\n{}", show_bytes(expected)));
        }
        self
    }

    #[track_caller]
    pub fn stdout_contains(self, needle: &str) -> Output {
        if !self.stdout_text().contains(needle) {
            self.fail(&format!("expected stdout to contain {needle:?}"));
        }
        self
    }

    #[track_caller]
    pub fn stdout_lacks(self, needle: &str) -> Output {
        if self.stdout_text().contains(needle) {
            self.fail(&format!("expected stdout not to contain {needle:?}"));
        }
        self
    }

    /// stderr is exactly this text.
    #[track_caller]
    pub fn stderr(self, expected: &str) -> Output {
        if self.stderr != expected.as_bytes() {
            self.fail(&format!("expected stderr:\n{expected}"));
        }
        self
    }

    #[track_caller]
    pub fn stderr_contains(self, needle: &str) -> Output {
        if !self.stderr_text().contains(needle) {
            self.fail(&format!("expected stderr to contain {needle:?}"));
        }
        self
    }

    #[track_caller]
    pub fn stdout_empty(self) -> Output {
        self.stdout("")
    }

    #[track_caller]
    pub fn stderr_empty(self) -> Output {
        self.stderr("")
    }

    /// Checks anything else, with the full report on failure.
    #[track_caller]
    pub fn check(self, what: &str, ok: impl FnOnce(&Output) -> bool) -> Output {
        if !ok(&self) {
            self.fail(what);
        }
        self
    }

    #[track_caller]
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    #[track_caller]
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout as exactly one JSON record on one line.
    #[track_caller]
    pub fn json(&self) -> Value {
        let text = self.stdout_text();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() != 1 {
            self.fail("expected exactly one JSON line on stdout");
        }
        serde_json::from_str(lines[0])
            .unwrap_or_else(|e| self.fail(&format!("stdout is not JSON: {e}")))
    }

    /// stdout as JSON lines (one record per line).
    #[track_caller]
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout_text()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| self.fail(&format!("line {l:?} is not JSON: {e}")))
            })
            .collect()
    }
}

fn show_bytes(bytes: &[u8]) -> String {
    const MAX: usize = 4000;
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => format!("{:?}", String::from_utf8_lossy(bytes)),
    };
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}… ({} bytes more)", &text[..cut], text.len() - cut)
    } else {
        text
    }
}

/// Lower-case hex SHA-256, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token unlikely to appear anywhere else, to find a test's own processes in /proc.
pub fn unique_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!("{}{:09}", std::process::id(), nanos)
}

/// The parent of process `pid`, from /proc.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The supervisor of the sandbox that runs sleeper `pid`: the parent of the sandbox's init,
/// whose child the sleeper is.
pub fn supervisor_of(sleeper: i32) -> i32 {
    parent_of(sleeper)
        .and_then(parent_of)
        .expect("the sleeper's init and supervisor")
}

/// Supervisors (`contree-super`) of this env's store that still run: one finishing an
/// earlier run also ends abandoned operations after it (see the engine's recovery).
pub fn supervisors_of(env: &Env) -> Vec<i32> {
    supervisors_in(env.home())
}

/// The supervisors of the data dir `home` that still run.
pub fn supervisors_in(home: &Path) -> Vec<i32> {
    // Named by `CONTREE_HOME`, or by an XDG variable under it.
    let home = home.display().to_string();
    processes()
        .into_iter()
        .filter(|(_, dir)| {
            // Forked ones rename themselves; a server's are `contree __supervise …`.
            let forked = std::fs::read_to_string(dir.join("comm"))
                .is_ok_and(|c| c.trim() == "contree-super");
            let execed = std::fs::read(dir.join("cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"__supervise".as_slice()));
            (forked || execed)
                && std::fs::read(dir.join("environ")).is_ok_and(|e| {
                    e.split(|&b| b == 0).any(|v| {
                        let v = String::from_utf8_lossy(v);
                        v.split_once('=')
                            .is_some_and(|(_, val)| val.starts_with(&home))
                    })
                })
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process of the host (all PID namespaces): its pid and its /proc dir.
pub fn processes() -> Vec<(i32, PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<i32>().ok()?, e.path())))
        .collect()
}

/// PIDs of `sleep` processes whose argument contains `token` (sandboxed ones included: the
/// host sees every PID namespace). Tests start sleepers like `sleep 30.<token>` to find
/// exactly their own processes; the contree CLI's own command line is not a match.
pub fn sleepers(token: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for (pid, dir) in processes() {
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_sleep = argv
            .first()
            .is_some_and(|a| a == "sleep" || a.ends_with("/sleep"));
        if is_sleep && argv[1..].iter().any(|a| a.contains(token)) {
            found.push(pid);
        }
    }
    found
}

/// Polls `cond` until it holds, failing the test with `what` once `limit` has passed.
#[track_caller]
pub fn wait_until(limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    if !eventually(limit, cond) {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

/// Polls `cond` every few milliseconds until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The host's statically linked busybox (Debian's busybox-static), if installed.
pub fn static_busybox() -> Option<PathBuf> {
    let path = PathBuf::from("/bin/busybox");
    let bytes = std::fs::read(&path).ok()?;
    if is_static_elf(&bytes) {
        Some(path)
    } else {
        None
    }
}

/// True for a 64-bit little-endian ELF without a PT_INTERP program header (no dynamic loader).
fn is_static_elf(b: &[u8]) -> bool {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != PT_INTERP
    })
}

/// Builds a minimal root filesystem under `dir`: `/bin/busybox` plus one symlink per applet
/// (`busybox --list`), the way a distro's busybox image is laid out.
pub fn busybox_rootfs(busybox: &Path, dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("create rootfs/bin");
    std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet symlink");
    }
    root
}
