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

use crate::backend::Finding;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::{json, Map, Value};
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

/// Descriptor numbers the helper gets (see `Keeper::exec_helper`).
const NETNS_FD: RawFd = 3;
const USERNS_FD: RawFd = 4;
const READY_FD: RawFd = 5;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("networking needs pasta (Debian/Ubuntu: apt install passt) or slirp4netns; or run with --no-network")]
    NoHelper,
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

/// The sandbox init's part, moved into the init with the rest of its spec.
pub enum Inside {
    /// `--no-network`: loopback only.
    Loopback,
    /// A user-mode stack: the command waits for `go`; `resolv` is bound over the image's
    /// /etc/resolv.conf.
    Stack { go: OwnedFd, resolv: PathBuf },
}

impl Inside {
    /// Descriptors the init must keep (see `sandbox::close_inherited_fds`).
    pub fn fds(&self) -> Vec<RawFd> {
        match self {
            Inside::Loopback => Vec::new(),
            Inside::Stack { go, .. } => vec![go.as_raw_fd()],
        }
    }

    /// In the init, before `pivot_root`: `lo` up (a new namespace starts with it down),
    /// and a detached copy of the generated resolv.conf to put in place once the root is
    /// the sandbox's (see `bind_resolv_conf`).
    pub fn before_pivot(&self) -> io::Result<Option<OwnedFd>> {
        loopback_up()?;
        match self {
            Inside::Loopback => Ok(None),
            Inside::Stack { resolv, .. } => open_tree_clone(resolv).map(Some),
        }
    }

    /// In the init, just before the command starts: waits until the supervisor says the
    /// helper has configured the interface.
    pub fn wait(&self) -> io::Result<()> {
        let Inside::Stack { go, .. } = self else {
            return Ok(());
        };
        let mut byte = [0u8; 1];
        loop {
            // SAFETY: reading one byte into a stack buffer from a pipe we own.
            let n = unsafe { libc::read(go.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            match n {
                1 => return Ok(()),
                0 => {
                    return Err(io::Error::other(
                        "the network was never configured (the supervisor went away)",
                    ))
                }
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }
}

/// In the init, after `pivot_root`: mounts the generated resolv.conf over /etc/resolv.conf,
/// following the image's own symlinks inside the new root. An image without one (or with a
/// dangling link) keeps what it has: nothing is created in its layers for this.
pub fn bind_resolv_conf(tree: Option<OwnedFd>) -> io::Result<()> {
    let Some(tree) = tree else {
        return Ok(());
    };
    if !std::fs::metadata("/etc/resolv.conf").is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    let target = c"/etc/resolv.conf";
    // SAFETY: move_mount(2) of the detached tree `tree` onto a NUL-terminated path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_SYMLINKS,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mounting /etc/resolv.conf: {e}"),
        ));
    }
    Ok(())
}

/// A detached bind mount of `path` (open_tree(2) with OPEN_TREE_CLONE): it stays usable
/// after `pivot_root` leaves the supervisor's mounts behind.
fn open_tree_clone(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: open_tree(2) with a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    // SAFETY: a fresh fd from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Brings `lo` up in a fresh network namespace (it starts down).
fn loopback_up() -> io::Result<()> {
    // SAFETY: an ordinary socket used only for interface ioctls, closed by OwnedFd.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sock is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the flags member of ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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

/// Default routes, by family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Routes {
    v4: bool,
    v6: bool,
}

impl Routes {
    fn covers(self, want: Routes) -> bool {
        (self.v4 || !want.v4) && (self.v6 || !want.v6)
    }
}

/// Which default routes pasta copies into the sandbox: those of the host (ours), by family.
fn host_default_routes() -> Routes {
    let v4 =
        std::fs::read_to_string("/proc/self/net/route").is_ok_and(|t| ipv4_gateway(&t).is_some());
    let v6 = std::fs::read_to_string("/proc/self/net/ipv6_route")
        .is_ok_and(|t| ipv6_gateway(&t).is_some());
    Routes { v4, v6 }
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

/// A netlink socket in the sandbox's network namespace, subscribed to route changes
/// (made on a thread that joins the namespace: a socket stays in the one it was made in).
fn route_socket(init: Pid) -> io::Result<OwnedFd> {
    let ns = std::fs::File::open(format!("/proc/{init}/ns/net"))?;
    std::thread::spawn(move || -> io::Result<OwnedFd> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        // SAFETY: socket(2) with constant arguments; the fd is owned right below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = (libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_ROUTE) as u32;
        // SAFETY: bind(2) with a valid sockaddr_nl and its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("route watch thread panicked")))
}

/// Asks for every route (RTM_GETROUTE dump): routes added before the subscription come
/// in the dump, later ones as notifications.
fn request_routes(sock: &OwnedFd) -> io::Result<()> {
    // struct nlmsghdr (16 bytes) + struct rtmsg (12 bytes, all zero: any family).
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&28u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: send(2) of a buffer we own to the kernel (the socket's default peer).
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n != req.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads what the route socket has and adds the default routes it names to `seen`.
fn read_routes(sock: &OwnedFd, mut seen: Routes) -> Routes {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: recv(2) into a buffer we own, of its size.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return seen;
        }
        seen = default_routes(&buf[..n as usize], seen);
    }
}

/// Adds the default unicast routes among the netlink messages in `msgs` to `seen`.
fn default_routes(msgs: &[u8], mut seen: Routes) -> Routes {
    let mut at = 0;
    while at + 16 <= msgs.len() {
        let len = u32::from_ne_bytes(msgs[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(msgs[at + 4..at + 6].try_into().expect("2 bytes"));
        if len < 16 || at + len > msgs.len() {
            break;
        }
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type.
        if kind == libc::RTM_NEWROUTE && len >= 28 {
            let rtm = &msgs[at + 16..at + 28];
            if rtm[1] == 0 && rtm[7] == libc::RTN_UNICAST {
                match rtm[0] as i32 {
                    libc::AF_INET => seen.v4 = true,
                    libc::AF_INET6 => seen.v6 = true,
                    _ => {}
                }
            }
        }
        // Messages are aligned to 4 bytes (NLMSG_ALIGN).
        at += (len + 3) & !3;
    }
    seen
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

/// The helper's command line. Both get the sandbox's namespace as an inherited descriptor:
/// a path under /proc/PID would need ptrace rights over the sandbox's init.
fn helper_argv(stack: Stack, userns: bool) -> Vec<CString> {
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
        Ok(event(init, self.helper.stack))
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

/// The keeper: PID 1 of a PID namespace of its own, with the supervisor's parent-death
/// signal. It starts the helper, reports when the helper is ready (or how it failed), then
/// waits; its death (with the supervisor, or when the run is over) kills the helper.
struct Keeper {
    stack: Stack,
    path: CString,
    argv: Vec<CString>,
    netns: OwnedFd,
    userns: Option<OwnedFd>,
    devnull: OwnedFd,
    errors: OwnedFd,
    report: OwnedFd,
    /// slirp4netns's `--ready-fd` pipe (read end, write end).
    ready: Option<(OwnedFd, OwnedFd)>,
}

impl Keeper {
    fn spawn(self) -> io::Result<Pid> {
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

/// The `network` event's data: every interface's counters (as the namespace's
/// /proc/net/dev says, right after set-up) and what was configured.
fn event(init: Pid, stack: Stack) -> Value {
    let mut data = Map::new();
    match std::fs::read_to_string(format!("/proc/{init}/net/dev")) {
        Ok(text) => {
            data.insert("interfaces".into(), Value::Array(interfaces(&text)));
        }
        Err(e) => {
            data.insert("interfaces".into(), Value::Array(Vec::new()));
            data.insert("error".into(), Value::String(e.to_string()));
        }
    }
    data.insert("configured".into(), configured(init, stack));
    Value::Object(data)
}

/// /proc/net/dev's rows as the API's NetworkInterface objects.
fn interfaces(proc_net_dev: &str) -> Vec<Value> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let n: Vec<i64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            (n.len() >= 12).then(|| {
                json!({
                    "name": name.trim(),
                    "rx_bytes": n[0], "rx_packets": n[1], "rx_errs": n[2], "rx_drop": n[3],
                    "tx_bytes": n[8], "tx_packets": n[9], "tx_errs": n[10], "tx_drop": n[11],
                })
            })
        })
        .collect()
}

/// What the helper configured in the namespace: addresses (read from inside it), default
/// gateways, and the nameserver the sandbox's resolv.conf names.
fn configured(init: Pid, stack: Stack) -> Value {
    let mut c = Map::new();
    let (ip4, ip6) = addresses(init);
    if let Some(a) = ip4 {
        c.insert("ip4".into(), Value::String(a));
    }
    if let Some(gw) = std::fs::read_to_string(format!("/proc/{init}/net/route"))
        .ok()
        .and_then(|t| ipv4_gateway(&t))
    {
        c.insert("ip4_gw".into(), Value::String(gw));
    }
    if let Some(a) = ip6 {
        c.insert("ip6".into(), Value::String(a));
    }
    if let Some(gw) = std::fs::read_to_string(format!("/proc/{init}/net/ipv6_route"))
        .ok()
        .and_then(|t| ipv6_gateway(&t))
    {
        c.insert("ip6_gw".into(), Value::String(gw));
    }
    c.insert(
        "nameserver".into(),
        Value::String(stack.nameserver().to_string()),
    );
    Value::Object(c)
}

/// The first global IPv4 and IPv6 address (with prefix length) of the namespace's
/// interfaces other than `lo`, from getifaddrs(3) in a thread that joins the namespace.
fn addresses(init: Pid) -> (Option<String>, Option<String>) {
    let Ok(ns) = std::fs::File::open(format!("/proc/{init}/ns/net")) else {
        return (None, None);
    };
    std::thread::spawn(move || {
        // A thread's network namespace is its own: the supervisor's other threads stay.
        if nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return (None, None);
        }
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
        if unsafe { libc::getifaddrs(&mut list) } != 0 {
            return (None, None);
        }
        let (mut ip4, mut ip6) = (None, None);
        let mut cur = list;
        while !cur.is_null() {
            // SAFETY: `cur` walks the list getifaddrs returned; each node is valid.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            // SAFETY: ifa_name is a NUL-terminated string.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            if name.to_bytes() == b"lo" || ifa.ifa_addr.is_null() {
                continue;
            }
            // SAFETY: sa_family says which sockaddr the pointers hold.
            unsafe {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET if ip4.is_none() => {
                        let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        let addr = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                        let prefix = if ifa.ifa_netmask.is_null() {
                            32
                        } else {
                            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                            u32::from_be(m.sin_addr.s_addr).count_ones()
                        };
                        ip4 = Some(format!("{addr}/{prefix}"));
                    }
                    libc::AF_INET6 if ip6.is_none() => {
                        let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        let addr = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                        // Link-local addresses are not what was configured.
                        if addr.segments()[0] & 0xffc0 == 0xfe80 {
                            continue;
                        }
                        let prefix = if ifa.ifa_netmask.is_null() {
                            128
                        } else {
                            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                            m.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum()
                        };
                        ip6 = Some(format!("{addr}/{prefix}"));
                    }
                    _ => {}
                }
            }
        }
        // SAFETY: freeing the list getifaddrs allocated, once.
        unsafe { libc::freeifaddrs(list) };
        (ip4, ip6)
    })
    .join()
    .unwrap_or((None, None))
}

/// The default route's gateway in /proc/net/route, which prints the address's bytes as a
/// native-endian u32.
fn ipv4_gateway(route: &str) -> Option<String> {
    route.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[1] != "00000000" || f[7] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        (gw != 0).then(|| std::net::Ipv4Addr::from(gw.to_ne_bytes()).to_string())
    })
}

/// The default route's next hop in /proc/net/ipv6_route.
fn ipv6_gateway(route: &str) -> Option<String> {
    route.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[0] != "0".repeat(32) || f[1] != "00" {
            return None;
        }
        let hop = u128::from_str_radix(f[4], 16).ok()?;
        (hop != 0).then(|| std::net::Ipv6Addr::from(hop).to_string())
    })
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

    #[test]
    fn gateways_are_read_from_proc() {
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(ipv4_gateway(route).as_deref(), Some("192.0.2.1"));
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n";
        assert_eq!(ipv6_gateway(v6).as_deref(), Some("fd00::1"));
    }

    #[test]
    fn default_routes_are_found_in_netlink_messages() {
        let msg = |family: u8, dst_len: u8| {
            let mut m = vec![0u8; 28];
            m[0..4].copy_from_slice(&28u32.to_ne_bytes());
            m[4..6].copy_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
            m[16] = family;
            m[17] = dst_len;
            m[20] = libc::RT_TABLE_MAIN;
            m[23] = libc::RTN_UNICAST;
            m
        };
        let subnet = msg(libc::AF_INET as u8, 24);
        assert_eq!(
            default_routes(&subnet, Routes::default()),
            Routes::default()
        );
        let mut both = msg(libc::AF_INET as u8, 0);
        both.extend(msg(libc::AF_INET6 as u8, 0));
        let seen = default_routes(&both, Routes::default());
        assert!(seen.covers(Routes { v4: true, v6: true }));
        assert!(!Routes {
            v4: true,
            v6: false
        }
        .covers(Routes { v4: true, v6: true }));
    }

    #[test]
    fn interface_counters_follow_the_api() {
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n";
        let v = interfaces(dev);
        assert_eq!(v[0]["name"], "lo");
        assert_eq!(v[0]["rx_bytes"], 100);
        assert_eq!(v[0]["tx_packets"], 2);
    }

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
