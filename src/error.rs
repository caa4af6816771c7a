//! The one error type the CLI prints: a kind (which decides the exit code), a message naming
//! the thing it is about, and hints telling the user what to type next.
//!
//! Library modules return their own `thiserror` enums; they are turned into a
//! `CommandError` at the command layer, never printed from deep inside.

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
