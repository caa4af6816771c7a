//! What every command works with: the backend, the session store and key, the output
//! format, the plugins. Built once from the global flags.

use crate::backend::Backend;
use crate::error::{CommandError, CommandResult};
use crate::format::Format;
use crate::paths::Paths;
use crate::session::{SessionError, SessionInfo, SessionStore};

pub struct Context {
    pub backend: Box<dyn Backend>,
    pub sessions: SessionStore,
    pub session_key: String,
    /// The output format for listing commands (`run` with a plugin's format: `Default`).
    pub format: Format,
    /// `-o` as typed: `run` picks its formatter by this name, built-in or a plugin's.
    pub output: String,
    /// The plugins of this invocation, loaded when a name asks for them.
    pub plugins: crate::plugin::Plugins,
    pub paths: Paths,
}

/// The two-line message the official client prints when no session exists, as it prints
/// it: scripts may look for it (`contree agent` is the manual for agents here too).
pub fn no_session() -> CommandError {
    CommandError::user(
        "No active session. Run `contree use IMAGE` to start one.\nAgents: read `contree agent` for workflow and set a session first.",
    )
    .plain()
    .hint("`eval $(contree use host)` starts a session on the built-in host image")
}

impl Context {
    pub fn session(&self) -> CommandResult<Option<SessionInfo>> {
        Ok(self.sessions.info(&self.session_key)?)
    }

    pub fn require_session(&self) -> CommandResult<SessionInfo> {
        self.session()?.ok_or_else(no_session)
    }
}

/// A session store error as the CLI reports it (see `error.rs`); for `map_err`.
pub fn session_err(e: SessionError) -> CommandError {
    e.into()
}

/// A backend error as the CLI reports it (see `error.rs`); for `map_err`.
pub fn backend_err(e: crate::backend::BackendError) -> CommandError {
    e.into()
}
