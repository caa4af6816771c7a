//! What a followed operation came to: the stage type between the event stream and what
//! reads the result (the on-exit hooks, the result record, the exit code). It lives apart
//! from `run` so that hooks can read it without depending on the pipeline that calls them.

use crate::wire::Status;
use serde_json::Value;

/// What the event stream told us about a finished operation.
#[derive(Debug, Default)]
pub struct Outcome {
    pub op: String,
    pub status: Option<Status>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub result_image: Option<String>,
    pub duration_ms: u64,
    pub image_size: u64,
    pub truncated: Vec<(String, u64, u64)>,
    pub interrupted: bool,
    pub broken_pipe: bool,
    /// The command ran to its end but its snapshot could not be kept (the engine's
    /// `completion` says so).
    pub snapshot_failed: bool,
    /// The operation failed before its command ended, on a store with no room left.
    pub store_full: bool,
    /// Output bytes the command wrote, per stream (before any hook).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// The kernel's OOM killer ended a process of the sandbox (the exit event says).
    pub oom: bool,
    /// The writable layer reached its size limit.
    pub layer_limit_hit: bool,
    /// The limits the run had, as the exit event gives them.
    pub limits: Option<Value>,
}
