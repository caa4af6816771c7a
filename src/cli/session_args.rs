//! The `session` subcommands as clap sees them (run-behaviour.md §3.6).

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// The session's history as a tree (records with -o json)
    Show(HistoryFlags),
    /// All sessions, newest first
    #[command(visible_alias = "ls")]
    List {
        /// Only keys containing this text
        #[arg(long)]
        filter: Option<String>,
    },
    /// Switch to the image of another session (found by key suffix)
    Use { name: String },
    /// List branches, create NAME at the tip (of --from B), delete (-U) or prune
    #[command(visible_alias = "br")]
    Branch(BranchFlags),
    /// Make branch NAME the active one
    #[command(visible_alias = "co")]
    Checkout { name: String },
    /// Move the active branch: -N back (default -1), +N forward, N = history id N
    #[command(visible_alias = "rb")]
    Rollback {
        /// -N, +N or a history id (`rollback -- -2` and `rollback -2` both work)
        #[arg(allow_negative_numbers = true)]
        target: Option<String>,
    },
    /// Wait for detached runs and apply the finished ones to the session
    Wait {
        #[arg(value_name = "UUID_OR_REF")]
        ops: Vec<String>,
    },
    /// Delete sessions and their history
    #[command(visible_aliases = ["rm", "del"])]
    Delete {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        /// Do not ask
        #[arg(short = 'f', long, visible_alias = "yes", short_alias = 'y')]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct HistoryFlags {
    /// Another session (by key suffix) instead of the current one
    pub name: Option<String>,
    /// All entries, not only the last 20
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only entries of this kind (`run` also matches run-detached, run-disposable)
    #[arg(short = 'k', long)]
    pub kind: Option<String>,
    /// The last N entries (after the other filters)
    #[arg(short = 'l', long = "last", visible_alias = "limit", value_name = "N")]
    pub limit: Option<usize>,
    /// Only entries created since (30m, 2h, 1d, HH:MM, a date or datetime)
    #[arg(long)]
    pub since: Option<String>,
    /// Only entries created until (same forms as --since)
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Debug, Args)]
pub struct BranchFlags {
    /// The branch to create (or, with -U, delete)
    pub name: Option<String>,
    /// Create at the tip of this branch instead of the active one
    #[arg(long)]
    pub from: Option<String>,
    /// Delete NAME
    #[arg(short = 'U', long = "delete", visible_alias = "rm")]
    pub delete: bool,
    /// Delete every inactive detached-*/disposable-* branch
    #[arg(long)]
    pub prune: bool,
}
