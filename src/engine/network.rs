//! A run's network: always a network namespace of its own, never the host's.
//!
//! With networking on (the API's default) the namespace is connected through a user-mode
//! network stack, the one helper program contree runs: pasta (Debian's `passt` package) or
//! else slirp4netns, found on `PATH`. The helper opens sockets on the host for what the
//! sandbox sends, so the sandbox gets outbound TCP/UDP and DNS while nothing it does can
//! change the host's interfaces, routes or firewall, and contree adds none of those to the
//! host either. `--no-network` gets loopback only.
//!
//! The helper is started by a small keeper process, PID 1 of a PID namespace of its own,
//! which dies with the supervisor (parent-death signal): when a PID namespace's first
//! process dies the kernel kills everything in it, so no helper outlives its run, not even
//! after a crash. (pasta of 2023 never quits on its own when its namespace is given by
//! descriptor, and the process that stays is a fork, without a parent-death signal.)
//!
//! The sandbox's init waits on a pipe (`Inside::wait`) until the helper has configured the
//! namespace's interface, so the command never starts before the network is up. The helper
//! starts right after the sandbox is cloned and works while the init sets up its mounts.
//!
//! This module never touches the host's network configuration.

mod inside;
mod keeper;
mod report;
mod routes;

pub use inside::{bind_resolv_conf, Inside};
use keeper::{helper_argv, Keeper};
use routes::{host_default_routes, read_routes, request_routes, route_socket, Routes};

use crate::backend::Finding;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The address the sandbox's resolv.conf names with pasta: pasta forwards DNS sent there to
/// the host's first resolver (`--dns-forward`), whatever that is (a loopback stub included).
const PASTA_DNS: &str = "169.254.1.1";
/// slirp4netns's built-in DNS forwarder (its default network is 10.0.2.0/24).
const SLIRP_DNS: &str = "10.0.2.3";

/// How long the helper may take to configure the namespace before the run fails. pasta
/// takes a few tens of milliseconds; this only bounds a helper that hangs.
const READY_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("networking needs pasta (Debian/Ubuntu: apt install passt) or slirp4netns; or run with --no-network")]
    NoHelper,
    /// Rootless, the helper cannot open the tun device, whose mode here shuts out users.
    #[error("networking as an ordinary user needs /dev/net/tun open to you ({0}; it is usually mode 0666, and root can make it so); or run with --no-network")]
    Tun(String),
    #[error("networking: cannot start {program}: {source}")]
    Start { program: String, source: io::Error },
    #[error("networking failed: {program} {how}{detail}; `--no-network` runs without network")]
    Failed {
        program: String,
        how: String,
        detail: String,
    },
}

/// The user-mode network stacks contree can use, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// pasta (from passt): fast, IPv4 and IPv6, copies the host's addresses and routes.
    Pasta,
    /// slirp4netns: 10.0.2.100/24 behind a NAT, IPv4 only.
    Slirp4netns,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Pasta => "pasta",
            Stack::Slirp4netns => "slirp4netns",
        }
    }

    /// The address the sandbox's resolv.conf names.
    fn nameserver(self) -> &'static str {
        match self {
            Stack::Pasta => PASTA_DNS,
            Stack::Slirp4netns => SLIRP_DNS,
        }
    }
}

/// A helper program found on `PATH`.
#[derive(Debug, Clone)]
pub struct Helper {
    pub stack: Stack,
    pub path: PathBuf,
}

/// The helper a networked run would use: pasta, else slirp4netns, from `PATH`.
pub fn find() -> Result<Helper, NetworkError> {
    // Rootless, both open /dev/net/tun as the user: a host whose node is root's alone
    // fails every networked run, said before anything starts.
    if crate::rootless::active() {
        tun_open_to_us()?;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for stack in [Stack::Pasta, Stack::Slirp4netns] {
        for dir in std::env::split_paths(&path).filter(|d| d.is_absolute()) {
            let candidate = dir.join(stack.name());
            if is_executable(&candidate) {
                return Ok(Helper {
                    stack,
                    path: avx2_build(&candidate).unwrap_or(candidate),
                });
            }
        }
    }
    Err(NetworkError::NoHelper)
}

/// passt's packages ship an AVX2 build next to each binary (`pasta.avx2`), which the plain
/// one executes first thing on a CPU that has AVX2: starting it directly saves an exec
/// (about a millisecond) on every run.
fn avx2_build(pasta: &Path) -> Option<PathBuf> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        let mut name = pasta.as_os_str().to_os_string();
        name.push(".avx2");
        let avx2 = PathBuf::from(name);
        return is_executable(&avx2).then_some(avx2);
    }
    let _ = pasta;
    None
}

/// Whether this process may open /dev/net/tun for reading and writing (access(2), which
/// a user namespace's root passes only for nodes it owns or their mode grants).
fn tun_open_to_us() -> Result<(), NetworkError> {
    use nix::unistd::{access, AccessFlags};
    access("/dev/net/tun", AccessFlags::R_OK | AccessFlags::W_OK).map_err(|e| {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata("/dev/net/tun")
            .map(|m| format!("mode {:04o}", m.permissions().mode() & 0o7777))
            .unwrap_or_else(|_| "missing".into());
        NetworkError::Tun(format!("{mode}: {}", io::Error::from(e)))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `contree doctor`'s line about networking: which stack networked runs get here.
pub fn doctor() -> Finding {
    let mut f = Finding {
        check: "network",
        ..Default::default()
    };
    match find() {
        Ok(helper) => {
            f.detail = format!(
                "{} ({}): each run has a network namespace of its own, outbound through {}; --no-network: loopback only",
                helper.stack.name(),
                helper.path.display(),
                helper.stack.name()
            );
        }
        Err(e) => {
            f.detail =
                "unavailable: runs with networking fail (exit 69); --no-network runs work".into();
            f.problems.push(e.to_string());
        }
    }
    f
}

/// What the supervisor prepares before cloning the sandbox (see `prepare`).
pub struct Plan {
    helper: Helper,
    go: OwnedFd,
}

/// Before the sandbox is cloned: the init's part, and with networking on the helper to
/// start once the sandbox exists. Writes the sandbox's resolv.conf into `dir` (the
/// supervisor's private tmpfs).
pub fn prepare(enabled: bool, dir: &Path) -> Result<(Inside, Option<Plan>), NetworkError> {
    if !enabled {
        return Ok((Inside::Loopback, None));
    }
    let helper = find()?;
    let failed = |e: io::Error| NetworkError::Start {
        program: helper.stack.name().into(),
        source: e,
    };
    let resolv = dir.join("resolv.conf");
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(&resolv, resolv_conf(&host, helper.stack.nameserver())).map_err(failed)?;
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failed(io::Error::from(e)))?;
    Ok((
        Inside::Stack { go: go_r, resolv },
        Some(Plan { helper, go: go_w }),
    ))
}

/// The sandbox's resolv.conf: the stack's DNS forwarder, and the host's search domains and
/// options (its nameservers may be loopback addresses, unreachable from the sandbox).
fn resolv_conf(host: &str, nameserver: &str) -> String {
    let mut out =
        format!("# Written by contree for this run: the network stack's DNS forwarder.\nnameserver {nameserver}\n");
    for line in host.lines() {
        let word = line.split_whitespace().next().unwrap_or("");
        if matches!(word, "search" | "domain" | "options") {
            out.push_str(line.trim());
            out.push('\n');
        }
    }
    out
}

/// The running helper of one sandbox, owned by the supervisor. Dropping it ends the helper.
pub struct Network {
    helper: Helper,
    keeper: Option<Pid>,
    /// The keeper's one-line report: `ok`, or how the helper failed. Taken by `watcher`
    /// when the command starts before it comes.
    report: Option<OwnedFd>,
    /// The helper's stderr, read when it fails.
    errors: OwnedFd,
    /// Written to once the interface is configured: the init then starts the command.
    go: Option<OwnedFd>,
    /// The default routes pasta will add (it adds them last): once they are there, the
    /// namespace is configured, while pasta may still be preparing its buffers.
    expect: Routes,
    /// Waits for a report that comes after the command started; kills the sandbox if the
    /// helper failed after all, and returns how.
    watcher: Option<std::thread::JoinHandle<Option<String>>>,
}

impl Plan {
    /// Right after the sandbox's clone: starts the helper against the init's namespace,
    /// without waiting for it (see `Network::ready`). Must be called while the supervisor
    /// has no other thread (the keeper is a copy of it).
    pub fn start(self, init: Pid) -> Result<Network, NetworkError> {
        let helper = self.helper;
        let program = helper.stack.name().to_string();
        let failed = |e: io::Error| NetworkError::Start {
            program: program.clone(),
            source: e,
        };
        let open = |p: &str| -> io::Result<OwnedFd> {
            let f = std::fs::File::open(p)?;
            Ok(OwnedFd::from(f))
        };
        let netns = open(&format!("/proc/{init}/ns/net")).map_err(failed)?;
        // With a user namespace of its own the sandbox owns its network namespace; the
        // helper then joins that user namespace and holds no capability on the host.
        let userns = if same_namespace(init, "user") {
            None
        } else {
            Some(open(&format!("/proc/{init}/ns/user")).map_err(failed)?)
        };
        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(failed)?;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failed(io::Error::from(e)))
        };
        let (report_r, report_w) = pipe()?;
        let (errors_r, errors_w) = pipe()?;
        let ready = match helper.stack {
            Stack::Slirp4netns => Some(pipe()?),
            Stack::Pasta => None,
        };
        let argv = helper_argv(helper.stack, userns.is_some());
        let path = CString::new(helper.path.as_os_str().as_bytes())
            .map_err(|_| failed(io::Error::other("path contains NUL")))?;
        let keeper = Keeper {
            stack: helper.stack,
            path,
            argv,
            netns,
            userns,
            devnull,
            errors: errors_w,
            report: report_w,
            ready,
        };
        let pid = keeper.spawn().map_err(failed)?;
        nix::fcntl::fcntl(
            errors_r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| failed(io::Error::from(e)))?;
        let expect = match helper.stack {
            Stack::Pasta => host_default_routes(),
            // slirp4netns says when it is ready (`--ready-fd`).
            Stack::Slirp4netns => Routes::default(),
        };
        Ok(Network {
            helper,
            keeper: Some(pid),
            report: Some(report_r),
            errors: errors_r,
            go: Some(self.go),
            expect,
            watcher: None,
        })
    }
}

/// Whether process `pid` is in the same `kind` namespace (`user`, `net`) as we are.
fn same_namespace(pid: Pid, kind: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{kind}"));
    let ours = std::fs::metadata(format!("/proc/self/ns/{kind}"));
    match (theirs, ours) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => true,
    }
}

impl Network {
    /// Waits until the helper has configured the sandbox's interface (its addresses and
    /// routes are in place), lets the init start the command, and returns the `network`
    /// event's data (the API's EventDataNetwork).
    ///
    /// pasta configures the namespace first and then spends most of its start-up (tens of
    /// milliseconds) preparing its buffers: the command starts once pasta's routes are
    /// there, and what it sends meanwhile waits in the tap device's queue until pasta
    /// reads it. If pasta fails after all, the sandbox is killed (see `late_failure`).
    pub fn ready(&mut self, init: Pid) -> Result<Value, NetworkError> {
        let routes = if self.expect == Routes::default() {
            None
        } else {
            // Without the watch, the keeper's report alone says when.
            route_socket(init).ok()
        };
        match self.wait(routes.as_ref())? {
            Some(report) if report != "ok" => return Err(self.failure(&report)),
            Some(_) => {}
            None => self.watch_report(init),
        }
        if let Some(go) = self.go.take() {
            // SAFETY: writing one byte to a pipe we own; the init reads it.
            unsafe { libc::write(go.as_raw_fd(), b"1".as_ptr().cast(), 1) };
        }
        crate::log::trace("network configured, command released");
        Ok(report::event(init, self.helper.stack))
    }

    /// Waits up to `READY_LIMIT` for the keeper's report (returned) or, with `routes`, for
    /// the expected default routes to appear in the sandbox (`None`).
    fn wait(&self, routes: Option<&OwnedFd>) -> Result<Option<String>, NetworkError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let report = self.report.as_ref().expect("the report is read once");
        let deadline = Instant::now() + READY_LIMIT;
        let mut line = Vec::new();
        let mut seen = Routes::default();
        if let Some(sock) = routes {
            if request_routes(sock).is_err() {
                return self.wait(None);
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Some(format!(
                    "was not ready after {}s",
                    READY_LIMIT.as_secs()
                )));
            }
            let mut fds = vec![PollFd::new(report.as_fd(), PollFlags::POLLIN)];
            if let Some(sock) = routes {
                fds.push(PollFd::new(sock.as_fd(), PollFlags::POLLIN));
            }
            let wait = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, wait) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Ok(Some(format!("could not be watched: {e}"))),
            }
            let routes_ready = fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty());
            let report_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            drop(fds);
            if report_ready {
                let mut buf = [0u8; 64];
                match nix::unistd::read(report.as_raw_fd(), &mut buf) {
                    Ok(0) => return Ok(Some("ended before it was ready".into())),
                    Ok(n) => {
                        line.extend_from_slice(&buf[..n]);
                        if let Some(end) = line.iter().position(|&b| b == b'\n') {
                            return Ok(Some(String::from_utf8_lossy(&line[..end]).into_owned()));
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Ok(Some(format!("could not be watched: {e}"))),
                }
            }
            if let (true, Some(sock)) = (routes_ready, routes) {
                seen = read_routes(sock, seen);
                if seen.covers(self.expect) {
                    return Ok(None);
                }
            }
        }
    }

    /// The keeper's report is still to come and the command starts now: a thread waits
    /// for it, and kills the sandbox if the helper failed after all.
    fn watch_report(&mut self, init: Pid) {
        let Some(report) = self.report.take() else {
            return;
        };
        // A pidfd, so a sandbox already reaped (and its pid reused) is never signalled.
        // SAFETY: pidfd_open(2) on our own child; returns a new fd or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, init.as_raw(), 0) };
        // SAFETY: a fresh fd from the kernel, owned by nobody else.
        let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
        self.watcher = Some(std::thread::spawn(move || {
            let mut text = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = nix::unistd::read(report.as_raw_fd(), &mut buf) {
                text.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&text).lines().next()?.to_string();
            if line == "ok" {
                return None;
            }
            if let Some(pidfd) = &pidfd {
                // SAFETY: pidfd_send_signal(2) with a pidfd we own and no siginfo.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
            Some(line)
        }));
    }

    /// After the sandbox ended: ends the helper, and says whether it had failed after the
    /// command started (the sandbox was then killed).
    pub fn late_failure(&mut self) -> Option<NetworkError> {
        self.stop();
        let how = self.watcher.take()?.join().ok()??;
        Some(self.failure(&how))
    }

    /// The error for a helper that failed (`how`, from the keeper's report), with the last
    /// lines it wrote on stderr.
    fn failure(&mut self, how: &str) -> NetworkError {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = nix::unistd::read(self.errors.as_raw_fd(), &mut buf) {
            text.extend_from_slice(&buf[..n]);
            if text.len() > 64 * 1024 {
                break;
            }
        }
        let text = String::from_utf8_lossy(&text);
        // pasta tries syslog first and says so on every line when there is none.
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("Failed to send") && !l.contains("syslog"))
            .collect();
        let tail = &lines[lines.len().saturating_sub(3)..];
        self.stop();
        NetworkError::Failed {
            program: self.helper.stack.name().into(),
            how: how.to_string(),
            detail: if tail.is_empty() {
                String::new()
            } else {
                format!(": {}", tail.join("; "))
            },
        }
    }

    /// Ends the helper (its keeper, and with it the keeper's PID namespace) without
    /// waiting; `Drop` reaps the keeper.
    pub fn stop(&mut self) {
        if let Some(pid) = self.keeper {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop();
        if let Some(pid) = self.keeper.take() {
            // The keeper's death waits for every process of its namespace: once it is
            // reaped, the helper is gone too.
            while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(pid, None) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_names_the_forwarder_and_keeps_search_and_options() {
        let host =
            "# comment\nnameserver 127.0.0.53\nsearch example.test\noptions edns0 trust-ad\n";
        let out = resolv_conf(host, PASTA_DNS);
        assert!(out.contains("nameserver 169.254.1.1\n"));
        assert!(!out.contains("127.0.0.53"));
        assert!(out.contains("search example.test\n"));
        assert!(out.contains("options edns0 trust-ad\n"));
    }
}
