//! The sandbox: new user, PID, mount, UTS, IPC, cgroup and network namespaces around an
//! already mounted root (or one its init mounts itself, in its user namespace), with a
//! small init as PID 1 that starts the command, forwards signals and reaps. The network
//! namespace is never the host's (see `network`). `harden` cuts what the command may do
//! inside (capabilities, seccomp, /proc, /sys and /dev).
//!
//! The supervisor calls `start` with everything prepared; this module never touches the
//! store. The init speaks to the supervisor over a status pipe with one line per fact
//! (`status`).

mod children;
pub(crate) mod control;
mod mounts;
pub(crate) mod status;
pub(crate) mod sys;

use super::harden;
use super::network::{self, Inside};
pub(crate) use mounts::setup_mounts;
pub use mounts::{mount_points_tmpfs, private_mount_namespace, unmount};
use nix::mount::{umount2, MntFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{self, ForkResult, Pid};
use status::Report;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// Everything the init needs to start the command.
pub struct Spec {
    pub root: PathBuf,
    pub hostname: String,
    /// Loopback only, or wait for the network helper (see `network::Inside`).
    pub network: Inside,
    pub command: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// `PATH` used to find a bare command name inside the sandbox.
    pub search_path: String,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// The command's stdin; `None` keeps the supervisor's fd 0.
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub status: OwnedFd,
    /// A user namespace for the sandbox (see `idmap`); `None` runs it in the host's.
    pub userns: Option<Userns>,
    /// The sandbox's cgroup: the init is born in it or joins it first thing (see `cgroup`).
    pub cgroup: Option<super::cgroup::Placement>,
}

/// A sandbox in a user namespace of its own: the init mounts its root itself, from
/// idmapped mounts the supervisor hands it, by paths relative to `points` (its working
/// directory while it mounts: the store's own directories may be closed to its uid).
#[derive(Debug, Clone)]
pub struct Userns {
    pub range: super::idmap::Range,
    /// The mount points dir (absolute): `store`, `root` and, for the host image, `hostfs`,
    /// `empty` and `host` in it.
    pub points: PathBuf,
    /// What the supervisor idmaps and the init attaches, in this order: a mount (absolute,
    /// as the supervisor sees it) and where it goes (relative to `points`): the store at
    /// `store`, `/` at `hostfs` for the host image, a size-limited layer filesystem at
    /// `layer` (over the supervisor's own mount there).
    pub idmapped: Vec<(PathBuf, PathBuf)>,
    /// The `host` image: the host view, a read-only overlay of `points/hostfs` over
    /// `points/empty`, mounted at `points/host`.
    pub host: bool,
    /// The root overlay's lower dirs (top first), upper and work dir, relative to `points`.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

static MAIN_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = MAIN_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// A started sandbox: its init's pid (in the supervisor's namespace) and the supervisor's
/// end of the init's control socket (see `control`).
pub struct Started {
    pub init: Pid,
    pub control: OwnedFd,
}

/// Starts the sandbox.
pub fn start(spec: Spec) -> io::Result<Started> {
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP
        | CloneFlags::CLONE_NEWNET;
    // The supervisor's end of the socket the idmapped mounts go through, and what to map.
    let mut handover = None;
    let mut init_sock = None;
    if let Some(u) = &spec.userns {
        flags |= CloneFlags::CLONE_NEWUSER;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let sources: Vec<PathBuf> = u.idmapped.iter().map(|(from, _)| from.clone()).collect();
        handover = Some((OwnedFd::from(ours), u.range, sources));
        init_sock = Some(OwnedFd::from(theirs));
    }
    let (control, init_control) = control::pair()?;
    let plan =
        harden::Plan::new(!flags.contains(CloneFlags::CLONE_NEWNET)).map_err(io::Error::other)?;
    let mut stack = vec![0u8; 1 << 20];
    let into = spec
        .cgroup
        .as_ref()
        .and_then(|c| c.into.as_ref())
        .map(|fd| fd.as_raw_fd());
    let mut spec = Some(spec);
    let mut child = Box::new(|| -> isize {
        let spec = spec.take().expect("clone callback runs once");
        let status = spec.status.as_raw_fd();
        match init(spec, init_sock.as_ref(), &init_control, &plan) {
            Ok(never) => match never {},
            Err(e) => {
                let msg = Report::SetupFailed(&e).line();
                // SAFETY: writing a buffer to a pipe fd we own.
                unsafe { libc::write(status, msg.as_ptr().cast(), msg.len()) };
                // SAFETY: leave without running destructors of the supervisor's state.
                unsafe { libc::_exit(120) }
            }
        }
    });
    let mut born = None;
    if let Some(dir) = into {
        match super::cgroup::clone_into(flags.bits(), dir, &mut *child) {
            Err(e) if super::cgroup::unsupported(&e) => {}
            cloned => born = Some(cloned),
        }
    }
    let pid = match born {
        Some(cloned) => {
            drop(child);
            cloned?
        }
        // SAFETY: the child gets a copy of our address space (no CLONE_VM) and runs `init`,
        // which only forks, mounts and execs; the supervisor is single-threaded here.
        None => unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }?,
    };
    drop(init_sock);
    drop(init_control);
    if let Some((sock, range, sources)) = handover {
        if let Err(e) = hand_over_mounts(pid, &sock, range, &sources) {
            let _ = signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot set up the sandbox's user namespace: {e}"),
            ));
        }
    }
    Ok(Started { init: pid, control })
}

/// Maps the ids of the init's user namespace and sends it idmapped copies of `sources` (the
/// store, `/` for the host image...); the init waits for them before it does anything else.
fn hand_over_mounts(
    pid: Pid,
    sock: &OwnedFd,
    range: super::idmap::Range,
    sources: &[PathBuf],
) -> io::Result<()> {
    use super::idmap;
    idmap::write_maps(pid.as_raw(), range)?;
    let userns = idmap::userns_of(pid.as_raw())?;
    let mounts = sources
        .iter()
        .map(|source| {
            idmap::idmapped(source, &userns).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("idmapped mount of {}: {e}", source.display()),
                )
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let raw: Vec<RawFd> = mounts.iter().map(|m| m.as_raw_fd()).collect();
    idmap::send_fds(sock, &raw)
}

enum Never {}

fn init(
    mut spec: Spec,
    sock: Option<&OwnedFd>,
    control: &OwnedFd,
    plan: &harden::Plan,
) -> io::Result<Never> {
    // Said here, while `spec` (and so the status pipe) is still open: an error returned
    // from here on would close the pipe before the caller could say it.
    let joined = match spec.cgroup.take() {
        Some(cgroup) => cgroup.join(),
        None => Ok(()),
    };
    if let Err(e) = joined.and_then(|_| prepare(&spec, sock, control.as_raw_fd())) {
        let msg = Report::SetupFailed(&e).line();
        write_line(&spec.status, &msg);
        // SAFETY: leave without running destructors of the supervisor's state.
        unsafe { libc::_exit(120) }
    }

    // Find the program now, inside the new root, with the sandbox's PATH.
    let program = resolve_program(&spec.command, &spec.search_path);

    harden::init_process()?;
    let (err_r, err_w) = unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: init is single-threaded; the child only calls exec-related functions.
    match unsafe { unistd::fork() }? {
        ForkResult::Child => {
            drop(err_r);
            let errno = exec_process(&spec.process(), &program, plan);
            let bytes = (errno as i32).to_le_bytes();
            // SAFETY: reporting errno through the CLOEXEC pipe, then leaving.
            unsafe {
                libc::write(err_w.as_raw_fd(), bytes.as_ptr().cast(), 4);
                libc::_exit(127)
            }
        }
        ForkResult::Parent { child } => {
            drop(err_w);
            crate::log::trace("init: forked");
            MAIN_PID.store(child.as_raw(), Ordering::Relaxed);
            for sig in FORWARDED {
                // SAFETY: installing a handler that only calls kill.
                unsafe { signal::signal(sig, SigHandler::Handler(forward)) }?;
            }
            signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            let status = spec.status;
            // The command holds the output pipes now; ours would keep them open.
            drop(spec.stdout);
            drop(spec.stderr);
            drop(spec.stdin);
            write_line(
                &status,
                &Report::Started {
                    pid: child.as_raw(),
                }
                .line(),
            );
            let mut buf = [0u8; 4];
            if read_full(err_r.as_raw_fd(), &mut buf) == 4 {
                let errno = i32::from_le_bytes(buf);
                write_line(&status, &Report::ExecFailed { errno }.line());
            }
            drop(err_r);
            crate::log::trace("init: exec ok");
            let mut children = children::Children::new(child, &status, plan, &spec.search_path);
            let (code, sig, core) = children.serve(control);
            crate::log::trace("init: reaped");
            // Whatever the command left behind dies with it, subprocesses too.
            // SAFETY: kill(-1) from PID 1 signals every other process of the namespace.
            unsafe { libc::kill(-1, libc::SIGKILL) };
            children.reap_all();
            crate::log::trace("init: all gone");
            let exit = Report::Exited {
                code,
                signal: sig,
                core,
            };
            write_line(&status, &exit.line());
            // SAFETY: leaving the namespace's init ends the sandbox.
            unsafe { libc::_exit(0) }
        }
    }
}

/// Everything before the command is started: namespaces' contents, the root, the cwd.
fn prepare(spec: &Spec, sock: Option<&OwnedFd>, control: RawFd) -> io::Result<()> {
    // If the supervisor dies (even by SIGKILL) the whole sandbox goes with it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    close_inherited_fds(spec, sock.map(|s| s.as_raw_fd()), control)?;
    crate::log::trace("init: start");
    if let (Some(u), Some(sock)) = (&spec.userns, sock) {
        mount_root_in_userns(u, sock)?;
    }
    crate::log::trace("init: root mounted");
    let root = &spec.root;
    let resolv = spec.network.before_pivot()?;
    setup_mounts(
        &sys::Host,
        root,
        spec.userns.is_some() || crate::rootless::active(),
    )?;
    crate::log::trace("init: proc and dev");
    harden::mounts::apply(&sys::Host, root)?;
    crate::log::trace("init: mounts");
    unistd::sethostname(&spec.hostname)?;
    unistd::chdir(root)?;
    nix::unistd::pivot_root(".", ".")?;
    umount2(".", MntFlags::MNT_DETACH)?;
    unistd::chdir("/")?;
    network::bind_resolv_conf(resolv)?;
    crate::log::trace("init: pivoted");
    std::fs::create_dir_all(&spec.cwd)?;
    if spec.uid != 0 || spec.gid != 0 {
        let _ = std::os::unix::fs::chown(&spec.cwd, Some(spec.uid), Some(spec.gid));
    }
    // The command never starts before its network is up.
    spec.network.wait()
}

/// In the init, in its new user namespace: waits for the idmapped mounts, becomes root of
/// the namespace, and mounts the sandbox's root from them (see `Userns`).
fn mount_root_in_userns(u: &Userns, sock: &OwnedFd) -> io::Result<()> {
    use super::idmap;
    use super::overlay::Overlay;
    // Still host uid 0 here, the owner of the store's directories: the way in is open.
    unistd::chdir(&u.points)?;
    let mounts = idmap::recv_fds(sock.as_raw_fd(), u.idmapped.len())?;
    crate::log::trace("init: handed over");
    if mounts.len() != u.idmapped.len() {
        return Err(io::Error::other("the supervisor sent no mounts"));
    }
    // Root of the namespace from now on: what it creates through the idmapped mounts lands
    // on disk owned by 0 (host uid 0 is not mapped there, and could create nothing).
    let supervisor = unistd::getppid();
    // The raw calls: libc's wrappers synchronise with threads, which an init never has.
    // SAFETY: plain system calls with integer arguments.
    unsafe {
        if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
            || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // Changing credentials clears the parent-death signal: set again, and if the supervisor
    // died in between, go now.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if unistd::getppid() != supervisor {
        return Err(io::Error::other("the supervisor is gone"));
    }
    for (mount, (_, target)) in mounts.iter().zip(&u.idmapped) {
        idmap::attach(mount, target)?;
    }
    if u.host {
        Overlay {
            lowers: &[PathBuf::from("hostfs"), PathBuf::from("empty")],
            upper: None,
            userxattr: true,
        }
        .mount(Path::new("host"))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot mount the host view: {e}")))?;
    }
    Overlay {
        lowers: &u.lowers,
        upper: Some((&u.upper, &u.work)),
        userxattr: true,
    }
    .mount(Path::new("root"))
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot mount the overlay root ({} layers): {e}",
                u.lowers.len()
            ),
        )
    })
}

/// The init is a copy of the supervisor and so holds every fd it had: the database, the
/// event log, the other ends of the pipes. Any of those kept open would, for one, stop the
/// command from ever seeing EOF on its stdin. Keep only what the sandbox uses.
fn close_inherited_fds(spec: &Spec, sock: Option<RawFd>, control: RawFd) -> io::Result<()> {
    let mut keep: Vec<RawFd> = vec![
        0,
        1,
        2,
        spec.stdout.as_raw_fd(),
        spec.stderr.as_raw_fd(),
        spec.status.as_raw_fd(),
        control,
    ];
    keep.extend(spec.stdin.as_ref().map(|f| f.as_raw_fd()));
    keep.extend(sock);
    keep.extend(spec.network.fds());
    keep.sort_unstable();
    keep.dedup();
    let mut next: RawFd = 0;
    for fd in keep.into_iter().chain([RawFd::MAX]) {
        if fd > next {
            let last = if fd == RawFd::MAX {
                u32::MAX
            } else {
                (fd - 1) as u32
            };
            // SAFETY: close_range closes fds this process inherited and will never use.
            let rc = unsafe { libc::syscall(libc::SYS_close_range, next as u32, last, 0u32) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        next = fd.saturating_add(1);
    }
    Ok(())
}

fn write_line(fd: &OwnedFd, line: &str) {
    // SAFETY: plain write to a pipe we own.
    unsafe { libc::write(fd.as_raw_fd(), line.as_ptr().cast(), line.len()) };
}

fn read_full(fd: RawFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the remaining part of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    got
}

pub(crate) fn resolve_program(command: &CString, search_path: &str) -> CString {
    let bytes = command.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') {
        return command.clone();
    }
    let name = String::from_utf8_lossy(bytes);
    for dir in search_path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name.as_ref());
        if let Ok(meta) = std::fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                if let Ok(c) = CString::new(candidate.into_os_string().into_encoded_bytes()) {
                    return c;
                }
            }
        }
    }
    command.clone()
}

/// One process to exec in the sandbox: the main command, or a subprocess (`control`).
pub(crate) struct Process<'a> {
    /// Its stdin; `None` keeps the init's fd 0.
    pub stdin: Option<RawFd>,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub argv: &'a [CString],
    pub env: &'a [CString],
    pub cwd: &'a str,
    pub uid: u32,
    pub gid: u32,
    /// The init's status pipe, for a hardening step that fails.
    pub status: RawFd,
}

impl Spec {
    fn process(&self) -> Process<'_> {
        Process {
            stdin: self.stdin.as_ref().map(|f| f.as_raw_fd()),
            stdout: self.stdout.as_raw_fd(),
            stderr: self.stderr.as_raw_fd(),
            argv: &self.argv,
            env: &self.env,
            cwd: &self.cwd,
            uid: self.uid,
            gid: self.gid,
            status: self.status.as_raw_fd(),
        }
    }
}

/// In a forked child of the init: stdio, credentials, cwd, a clean signal state, the
/// hardening `plan`, exec. Returns only on failure, with the errno (a hardening step that
/// fails ends the process with a `setupfail` line instead).
pub(crate) fn exec_process(
    p: &Process<'_>,
    program: &CString,
    plan: &harden::Plan,
) -> nix::errno::Errno {
    let fail = |e: nix::errno::Errno| e;
    let _ = unistd::setsid();
    if let Some(stdin) = p.stdin {
        if let Err(e) = unistd::dup2(stdin, 0) {
            return fail(e);
        }
    }
    for (fd, target) in [(p.stdout, 1), (p.stderr, 2)] {
        if let Err(e) = unistd::dup2(fd, target) {
            return fail(e);
        }
    }
    // Rust ignores SIGPIPE and the supervisor blocks signals; exec keeps both, so undo them.
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: restoring default dispositions before exec.
            let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
        }
    }
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    if let Err(e) = plan.before_credentials() {
        setup_failed(p.status, e);
    }
    match unistd::setgroups(&[]) {
        // Rootless with the user's own id only, the kernel denies setgroups (the gid map
        // could not be written otherwise): the process keeps the user's own groups, as
        // the user outside has them.
        Err(nix::errno::Errno::EPERM) if crate::rootless::active() => {}
        Err(e) => return fail(e),
        Ok(()) => {}
    }
    let gid = unistd::Gid::from_raw(p.gid);
    let uid = unistd::Uid::from_raw(p.uid);
    if let Err(e) = unistd::setresgid(gid, gid, gid) {
        return fail(e);
    }
    if let Err(e) = unistd::setresuid(uid, uid, uid) {
        return fail(e);
    }
    if let Err(e) = unistd::chdir(p.cwd) {
        return fail(e);
    }
    if let Err(e) = plan.before_exec() {
        setup_failed(p.status, e);
    }
    match unistd::execve(program, p.argv, p.env) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Reports a failed hardening step to the supervisor and ends the command's process.
fn setup_failed(status: RawFd, e: harden::StepError) -> ! {
    let line = Report::SetupFailed(&e).line();
    // SAFETY: plain write to the status pipe.
    unsafe { libc::write(status, line.as_ptr().cast(), line.len()) };
    // SAFETY: leaving the forked process without running the init's destructors.
    unsafe { libc::_exit(120) }
}
