//! `contree`: run commands in snapshotting sandboxes.
//!
//! The binary (`main.rs`) only calls `cli::main`. The modules, in pipeline order: `cli`
//! (flags), `run` (the pipeline), `attach` (file specs), `backend` (the seam), `engine`
//! (the embedded local engine), `session` (where the user is in the image tree), `format`
//! (records and run formatters), `outcome` (what a run came to), `wire` (the /v1 types).

pub mod api;
pub mod attach;
pub mod backend;
pub mod cli;
pub mod config;
pub mod context;
pub mod db;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod format;
pub mod hooks;
pub mod interrupt;
pub mod log;
pub mod outcome;
pub mod paths;
pub mod plugin;
pub mod privileges;
pub mod progress;
pub mod run;
pub mod server;
pub mod session;
pub mod sha256;
pub mod wire;
