//! `contree`: run commands in snapshotting sandboxes.
//!
//! The binary (`main.rs`) only calls `cli::main`. The modules, in pipeline order: `cli`
//! (flags), `run` (the pipeline), `attach` (file specs), `backend` (the seam), `engine`
//! (the embedded local engine), `session` (where the user is in the image tree), `format`
//! (records and run formatters), `outcome` (what a run came to), `wire` (the /v1 types).

pub(crate) mod api;
pub mod attach;
pub(crate) mod backend;
pub(crate) mod build;
pub mod cli;
pub(crate) mod config;
pub(crate) mod context;
pub(crate) mod db;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod export;
pub(crate) mod failpoint;
pub(crate) mod format;
pub(crate) mod hooks;
pub(crate) mod imagepath;
pub(crate) mod interrupt;
pub(crate) mod log;
pub(crate) mod outcome;
pub(crate) mod paths;
pub(crate) mod plugin;
pub(crate) mod privileges;
pub(crate) mod procfs;
pub(crate) mod progress;
pub(crate) mod rootless;
pub(crate) mod run;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod sha256;
pub(crate) mod shell;
pub(crate) mod skill;
pub(crate) mod staging;
pub(crate) mod wire;
