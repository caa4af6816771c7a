//! The one error type the CLI prints: a kind (which decides the exit code), a message naming
//! the thing it is about, and hints telling the user what to type next.
//!
//! Library modules return their own `thiserror` enums; they become a `CommandError` by the
//! `From` impls at the end of this file (so a command uses `?`), never printed from deep
//! inside. Which kind each module error is, and its hints, is decided there and only there.

use crate::attach::AttachError;
use crate::backend::BackendError;
use crate::hooks::HookError;
use crate::plugin::PluginError;
use crate::session::SessionError;
use std::fmt;

/// Exit codes. The official client uses 1 for every user error and 2 for usage errors; we
/// keep those and give the failures it never has (missing kernel feature, broken store,
/// internal bugs) codes of their own from `sysexits.h`, so scripts can tell them apart.
pub mod exit {
    pub const USER: i32 = 1;
    pub const USAGE: i32 = 2;
    /// The sandbox cannot be built on this machine (kernel feature, privileges).
    pub const UNAVAILABLE: i32 = 69;
    /// A bug or an inconsistent store.
    pub const INTERNAL: i32 = 70;
    /// Reading or writing the store or a local file failed.
    pub const IO: i32 = 74;
    /// A hook stopped the run before anything was uploaded or spawned: `contree.abort`, or
    /// a pre-attach / pre-spawn handler that failed (fail closed), or a hook file that did
    /// not load. (`sysexits.h` EX_NOPERM: the run was not permitted.)
    pub const HOOK_ABORT: i32 = 77;
    /// The ConTree API could not be reached (connection refused, name not resolved, TLS,
    /// timeout) or kept failing (5xx, busy) after the retries: trying again later may work.
    /// (`sysexits.h` EX_TEMPFAIL. 69, EX_UNAVAILABLE, stays for a sandbox that cannot be
    /// built here, which no retry fixes.)
    pub const UNREACHABLE: i32 = 75;
    /// A `run` whose process was killed by a signal or the timeout.
    pub const KILLED: i32 = 255;
    /// A `run` whose process the kernel's OOM killer ended at the memory limit: 128 +
    /// SIGKILL, as shells and container engines report it.
    pub const OOM_KILLED: i32 = 137;
    /// Rootless, the run asked for what needs root on this machine: a memory, pids or CPU
    /// limit, with no cgroup this user may write. (`sysexits.h` EX_CONFIG: this machine
    /// is not set up for it; unlike 69 the sandbox itself can be built.)
    pub const NEEDS_ROOT: i32 = 78;
    /// stdout was closed by its reader (`| head`).
    pub const BROKEN_PIPE: i32 = 141;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad input: a flag value, a file spec, an unknown image or operation.
    User,
    /// The command line itself is incomplete (like clap's own errors).
    Usage,
    /// The sandbox cannot be built here (no overlayfs or namespaces, not root).
    Unavailable,
    /// Local I/O on the store or a user file failed.
    Io,
    /// Something that should not happen.
    Internal,
    /// A hook stopped the run (see `exit::HOOK_ABORT`).
    HookAbort,
    /// The remote API could not be reached or kept failing (see `exit::UNREACHABLE`).
    Unreachable,
    /// Rootless, the run asked for what needs root here (see `exit::NEEDS_ROOT`).
    NeedsRoot,
}

#[derive(Debug)]
pub struct CommandError {
    pub kind: Kind,
    pub message: String,
    pub hints: Vec<String>,
    /// When set, printed as is (no `[ERROR]` prefix), as the official client does for a
    /// few messages such as "No active session".
    pub plain: bool,
}

impl Kind {
    /// For errors that are the user's unless the store or cache failed under them.
    fn io_or_user(io: bool) -> Kind {
        if io {
            Kind::Io
        } else {
            Kind::User
        }
    }
}

impl CommandError {
    pub fn user(message: impl Into<String>) -> Self {
        Self::new(Kind::User, message)
    }
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        CommandError {
            kind,
            message: message.into(),
            hints: Vec::new(),
            plain: false,
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }
    pub fn plain(mut self) -> Self {
        self.plain = true;
        self
    }
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::User => exit::USER,
            Kind::Usage => exit::USAGE,
            Kind::Unavailable => exit::UNAVAILABLE,
            Kind::Io => exit::IO,
            Kind::Internal => exit::INTERNAL,
            Kind::HookAbort => exit::HOOK_ABORT,
            Kind::Unreachable => exit::UNREACHABLE,
            Kind::NeedsRoot => exit::NEEDS_ROOT,
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CommandError {}

pub type CommandResult<T = ()> = Result<T, CommandError>;

// The errors of the library modules as the CLI reports them: the kind each one is (hence
// its exit code) and the hints it gets are decided here, by variant, and nowhere else.

impl From<BackendError> for CommandError {
    fn from(e: BackendError) -> Self {
        use BackendError as B;
        match e {
            B::NotFound(m) | B::Invalid(m) => CommandError::user(m),
            B::Denied(m) | B::Unsupported(m) | B::NotRunning(m) => CommandError::user(m),
            B::Unavailable(m) => CommandError::new(Kind::Unavailable, m),
            B::NeedsRoot(m) => CommandError::new(Kind::NeedsRoot, m)
                .hint("run without that limit (`0` for none), as root, or in a cgroup delegated to you with that controller; see docs/rootless.md, Limits"),
            B::Unreachable(m) => CommandError::new(Kind::Unreachable, m),
            B::Store(m) => CommandError::new(Kind::Io, m),
            B::Io(cause) => {
                let full = disk_full_suspected(&cause);
                let e = CommandError::new(Kind::Io, cause);
                if full {
                    e.hint("the store's disk may be full: free space under the store and try again")
                } else {
                    e
                }
            }
            B::Interrupted => CommandError::user("User interrupted"),
            B::OutputClosed => CommandError::user("output closed"),
        }
    }
}

/// A database write that failed the way SQLite fails on a full disk: SQLITE_FULL, or an
/// I/O error (a WAL or shared-memory write may say only "disk I/O error").
fn disk_full_suspected(cause: &crate::backend::Cause) -> bool {
    use crate::engine::store::StoreError;
    use rusqlite::ErrorCode;
    match cause {
        crate::backend::Cause::Db(StoreError::Db(rusqlite::Error::SqliteFailure(e, _))) => {
            matches!(e.code, ErrorCode::DiskFull | ErrorCode::SystemIoFailure)
        }
        _ => false,
    }
}

/// The session store's own failures (its database, directory or files) are I/O; the rest
/// is what the user asked for.
impl From<SessionError> for CommandError {
    fn from(e: SessionError) -> Self {
        let kind = Kind::io_or_user(e.is_store_failure());
        CommandError::new(kind, e.to_string())
    }
}

/// Bad input, but I/O on the attachment cache; a host path that is neither file nor
/// directory is said without a prefix, as the official client does.
impl From<AttachError> for CommandError {
    fn from(e: AttachError) -> Self {
        let kind = Kind::io_or_user(e.is_cache_io());
        let plain = matches!(e, AttachError::NotFileOrDir { .. });
        let err = CommandError::new(kind, e.to_string());
        if plain {
            err.plain()
        } else {
            err
        }
    }
}

/// A plugin error, with hints on what to do next.
impl From<PluginError> for CommandError {
    fn from(e: PluginError) -> Self {
        let mut err = CommandError::user(e.to_string());
        match &e {
            PluginError::UnknownFormatter { failed, .. } => {
                for f in failed {
                    err = err.hint(format!("not loaded: {f}"));
                }
                err = err
                    .hint("`contree plugins list` shows every plugin found and what it provides");
            }
            PluginError::Clash { .. } => {
                err = err.hint("remove one of the two files, or take it off the plugin path");
            }
            PluginError::Failed { .. } | PluginError::Panicked { .. } => {}
            _ => {
                err = err.hint("`contree plugins list` shows every plugin found and its state");
            }
        }
        err
    }
}

impl From<crate::api::profile::ProfileError> for CommandError {
    fn from(e: crate::api::profile::ProfileError) -> Self {
        let kind = Kind::io_or_user(matches!(e, crate::api::profile::ProfileError::Io { .. }));
        CommandError::new(kind, e.to_string())
    }
}

impl From<crate::server::ServeError> for CommandError {
    fn from(e: crate::server::ServeError) -> Self {
        use crate::server::ServeError as S;
        let kind = match e {
            // A --listen address that is taken or not ours to bind: pick another.
            S::Config(_) | S::Listen { .. } => Kind::User,
            S::Io(_) => Kind::Io,
            S::Engine(_) => Kind::Unavailable,
        };
        CommandError::new(kind, e.to_string())
    }
}

/// A hook error during a run: aborts and failing hooks exit with `exit::HOOK_ABORT`, and so
/// does a hook file that cannot be read: a policy that cannot apply stops the run (fail
/// closed), whether its file has a typo or is missing.
impl From<crate::rootless::RootlessError> for CommandError {
    fn from(e: crate::rootless::RootlessError) -> Self {
        use crate::rootless::RootlessError as R;
        let hint = match &e {
            R::Forbidden { .. } => "or run contree as root, or use a ConTree API: `contree auth --url URL --token TOKEN --type jwt`",
            R::Maps(_) | R::Helper { .. } | R::Fork(_) => {
                "check /etc/subuid and /etc/subgid (see docs/rootless.md), or remove your lines there to run with your own id only"
            }
        };
        CommandError::new(Kind::Unavailable, e.to_string()).hint(hint)
    }
}

impl From<HookError> for CommandError {
    fn from(e: HookError) -> Self {
        let hint = "fix the hook, or skip every hook for one run with `contree run --no-hooks ...`";
        match e {
            HookError::Abort(_) => CommandError::new(Kind::HookAbort, e.to_string()),
            HookError::Failed(_)
            | HookError::Payload { .. }
            | HookError::Returned { .. }
            | HookError::BadReturn { .. }
            | HookError::Load(_)
            | HookError::Read { .. } => {
                CommandError::new(Kind::HookAbort, e.to_string()).hint(hint)
            }
            HookError::Runtime(_) | HookError::Trust(_) | HookError::NoProject(_) => {
                CommandError::user(e.to_string())
            }
            HookError::Save { .. } => CommandError::new(Kind::Io, e.to_string()),
        }
    }
}

/// A hook error outside a run (`contree hooks list|trust`): nothing was stopped, so it is a
/// user error, or an I/O one when the trust store cannot be written.
pub fn hook_management_error(e: HookError) -> CommandError {
    match e {
        HookError::Save { .. } => CommandError::new(Kind::Io, e.to_string()),
        _ => CommandError::user(e.to_string()),
    }
}

/// Writing the archive (a file, stdout) is I/O; a terminal as stdout is the user's to fix.
impl From<crate::export::ExportError> for CommandError {
    fn from(e: crate::export::ExportError) -> Self {
        use crate::export::ExportError as E;
        match e {
            E::Terminal => CommandError::user(e.to_string())
                .hint("pipe it (`contree export | tar -tzf -`) or write a file: `contree export -F rootfs.tar.gz`"),
            E::File { .. } | E::Stdout(_) => CommandError::new(Kind::Io, e.to_string()),
            E::Backend(e) => e.into(),
        }
    }
}

/// A shell line that cannot be read (quoting, a built-in's arguments) is the user's to fix;
/// the history file is I/O.
impl From<crate::shell::ShellError> for CommandError {
    fn from(e: crate::shell::ShellError) -> Self {
        use crate::shell::ShellError as S;
        match e {
            S::History { .. } => CommandError::new(Kind::Io, e.to_string()),
            S::Nested => CommandError::user(e.to_string()).hint("`exit` leaves this shell"),
            S::UnclosedQuote(_)
            | S::TrailingBackslash
            | S::NotANumber { .. }
            | S::Arguments { .. } => CommandError::new(Kind::Usage, e.to_string())
                .hint("`help` shows what the shell takes"),
        }
    }
}

/// A local file that is missing or not a file, and an editor that failed, are the user's;
/// the scratch copy and a broken read of the image's file are I/O.
impl From<crate::staging::StageError> for CommandError {
    fn from(e: crate::staging::StageError) -> Self {
        use crate::staging::StageError as S;
        match e {
            S::Source { .. } | S::NotAFile(_) => CommandError::user(e.to_string()),
            S::EditorStart { .. } | S::EditorFailed { .. } => CommandError::user(e.to_string())
                .hint("choose the editor with `-E CMD`, $VISUAL or $EDITOR"),
            S::ReadImage { .. } | S::Scratch { .. } => CommandError::new(Kind::Io, e.to_string()),
            S::Backend(e) => e.into(),
            S::Session(e) => e.into(),
        }
    }
}

/// A build's errors: the Dockerfile or a step as written is the user's; the store's and
/// the backend's keep their own kinds. (A failed step exits with its own code: `cli/build`.)
impl From<crate::build::BuildError> for CommandError {
    fn from(e: crate::build::BuildError) -> Self {
        use crate::build::BuildError as B;
        match e {
            B::Backend(e) => e.into(),
            B::Session(e) => e.into(),
            B::Attach(e) => e.into(),
            B::Io { .. } => CommandError::new(Kind::Io, e.to_string()),
            B::Read { .. } => CommandError::user(e.to_string())
                .hint("give the Dockerfile with --dockerfile PATH, or put one in the context"),
            B::Interrupted => CommandError::user("User interrupted"),
            B::Parse { .. } | B::Step { .. } | B::Failed { .. } | B::Source(_) => {
                CommandError::user(e.to_string())
            }
        }
    }
}

/// An unknown manual topic is a usage error, as clap's unknown values are.
impl From<crate::cli::agent::AgentError> for CommandError {
    fn from(e: crate::cli::agent::AgentError) -> Self {
        CommandError::new(Kind::Usage, e.to_string())
            .hint("`contree agent topics` says what each topic covers")
    }
}

/// Skill files: the user's to fix (a spec, changed files), or I/O on them and the list.
impl From<crate::skill::SkillError> for CommandError {
    fn from(e: crate::skill::SkillError) -> Self {
        use crate::skill::SkillError as S;
        let message = e.to_string();
        if e.needs_force() {
            return CommandError::user(message)
                .hint("keep a copy of what you changed, then add -f to overwrite it");
        }
        match e {
            S::Changed { .. } | S::Foreign { .. } => CommandError::user(message),
            S::NothingDetected { .. } => CommandError::user(message).hint(
                "name one: `contree skill install claude:~` (or codex:~, codex: for this project, or a directory)",
            ),
            S::UnknownKind { .. } | S::NotInstalled { .. } => CommandError::user(message),
            S::Io { .. } | S::Registry { .. } => CommandError::new(Kind::Io, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cause;
    use crate::engine::store::StoreError;

    fn db(code: std::os::raw::c_int) -> BackendError {
        let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        BackendError::Io(Cause::Db(StoreError::Db(e)))
    }

    #[test]
    fn a_database_write_failing_as_on_a_full_disk_says_so() {
        for code in [rusqlite::ffi::SQLITE_FULL, rusqlite::ffi::SQLITE_IOERR] {
            let e = CommandError::from(db(code));
            assert_eq!(e.kind, Kind::Io);
            assert!(
                e.hints.iter().any(|h| h.contains("disk may be full")),
                "{code}"
            );
        }
        let busy = CommandError::from(db(rusqlite::ffi::SQLITE_BUSY));
        assert!(busy.hints.is_empty());
    }
}
