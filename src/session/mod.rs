//! Sessions: the user's position in a tree of images (run-behaviour.md §3).
//!
//! A session is a history of entries forming a tree, named branches pointing at entries and
//! an active branch. This module is the data layer only: one SQLite file per profile, shared
//! safely by concurrent `contree` processes. It never talks to a backend, never resolves
//! image references and never prints; the CLI decides what to show.

mod key;
mod store;
mod target;

#[cfg(test)]
mod tests;

pub use store::SessionStore;
use target::Target;

use serde::Serialize;
use std::collections::BTreeMap;

/// The branch a detached run gets at spawn time, and its entry's kind (§2.14).
pub fn side_branch(op: &str, disposable: bool) -> (String, &'static str) {
    if disposable {
        (format!("disposable-{op}"), "run-disposable")
    } else {
        (format!("detached-{op}"), "run-detached")
    }
}

/// One history entry. Ids are global to the database (shared by all sessions of a profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub id: i64,
    pub session_key: String,
    pub image: String,
    pub parent_id: Option<i64>,
    /// `use`, `run`, `run-detached`, `run-disposable`, `cd`, `file`, `session use`.
    pub kind: String,
    pub title: String,
    pub operation: Option<String>,
    /// ISO-8601 UTC, second precision, `Z` suffix.
    pub created_at: String,
}

/// What `contree use` / `contree session` show about a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    pub session_key: String,
    pub active_branch: String,
    pub current_image: String,
    pub last_kind: String,
    pub last_title: String,
    pub updated_at: String,
    pub tip_id: i64,
}

/// A run still to be applied to its session: a detached run, applied by `session wait`
/// (run-behaviour.md §2.14), or a foreground run from the moment it is spawned until its
/// CLI applies it. A foreground run whose CLI died (killed, its terminal closed) is applied
/// by the next command of the session (see `run::settle`), so a run that completed always
/// reaches its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PendingOp {
    pub op: String,
    pub title: String,
    pub disposable: bool,
    pub branch: String,
    /// A foreground run (applied like one: whatever the command's exit code).
    pub foreground: bool,
    /// With `--preserve-env`: the env merged for the run, remembered for its result image.
    pub preserved_env: Option<BTreeMap<String, String>>,
    /// The CLI that follows a foreground run (pid, process start time): while it lives,
    /// the run is its to apply.
    pub cli: Option<(i32, u64)>,
}

/// What `SessionStore::apply_pending` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The op was not on the list: someone applied it already.
    NotPending,
    /// Taken off the list; it had no result to record.
    Taken,
    /// Taken off the list, its result recorded as this entry.
    Recorded(HistoryEntry),
}

/// What sessions reference in the image store (see `SessionStore::references`).
#[derive(Debug, Clone, Default)]
pub struct References {
    /// Image uuid → one session whose history holds it.
    pub images: std::collections::HashMap<String, String>,
    /// Uuids of files staged for a next run.
    pub files: std::collections::HashSet<String>,
    /// Detached operations not applied yet (their result image is not in any history).
    pub ops: std::collections::HashSet<String>,
}

/// A file staged for the next run: `(instance_path, file_uuid, uid, gid, mode)`, mode as
/// octal text (`"0644"`) the way the wire wants it.
pub type PendingFile = (String, String, u32, u32, String);

/// Errors of the session store. The texts are what the user sees (they match the official
/// client where it has one).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("Branch '{0}' already exists")]
    BranchExists(String),
    #[error("Branch '{0}' does not exist")]
    BranchNotFound(String),
    #[error("Source branch '{0}' does not exist")]
    SourceBranchNotFound(String),
    #[error("Cannot delete the active branch")]
    DeleteActiveBranch,
    #[error("Navigation target must not be 0")]
    ZeroTarget,
    #[error("Cannot go back {steps} steps: only {available} ancestors available")]
    TooFarBack { steps: u64, available: u64 },
    #[error("Cannot go forward {steps} steps: only {available} descendants available")]
    TooFarForward { steps: u64, available: u64 },
    #[error("History entry {0} not found in this session")]
    EntryNotFound(i64),
    #[error("invalid rollback target '{0}'")]
    InvalidTarget(String),
    #[error("No active session. Run `contree use IMAGE` to start one.")]
    NoSession,
    #[error("{}", sqlite_message(.0))]
    Sqlite(#[from] rusqlite::Error),
    #[error("session store error: cannot create {path}: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The environment an image preserves (`--preserve-env`) does not read back as JSON.
    #[error("session store error: corrupt preserved env of image {image}: {source}")]
    PreservedEnv {
        image: String,
        source: serde_json::Error,
    },
}

impl SessionError {
    /// Whether the store itself failed (its database, directory or files), rather than
    /// what was asked of it.
    pub fn is_store_failure(&self) -> bool {
        matches!(
            self,
            SessionError::Sqlite(_)
                | SessionError::CreateDir { .. }
                | SessionError::PreservedEnv { .. }
        )
    }
}

/// A session database error in words; a full disk says what was not kept.
fn sqlite_message(e: &rusqlite::Error) -> String {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        format!("session store error: {e}: the session was not changed; free space on the disk of the data directory and try again")
    } else {
        format!("session store error: {e}")
    }
}
