//! The command line, as clap sees it. Mirrors the official client's surface; conversion to
//! the pipeline's own types happens in the command modules. Over 600 lines on purpose: every
//! command's flags in one file, so the surface (and its likeness to the official client's)
//! is read and reviewed in one place.

use crate::wire::limits::{self, LimitError};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "contree",
    about = "Run commands in snapshotting sandboxes",
    long_about = "Run commands in snapshotting sandboxes.\n\nEvery `contree run` executes a command in an isolated instance made from an image and, unless --disposable, snapshots the result into a new image the session moves to. Without a profile everything runs on this machine (the embedded engine).",
    disable_version_flag = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Print the version and exit
    #[arg(short = 'v', long = "version", action = clap::ArgAction::SetTrue)]
    pub version: bool,
    /// Profile for this invocation
    #[arg(short = 'p', long = "profile", env = "CONTREE_PROFILE")]
    pub profile: Option<String>,
    /// Override the profile's token for this call
    #[arg(long)]
    pub token: Option<String>,
    /// Override the profile's URL for this call
    #[arg(short = 'u', long)]
    pub url: Option<String>,
    /// Override the profile's project for this call
    #[arg(short = 'P', long)]
    pub project: Option<String>,
    /// Path of auth.ini
    #[arg(short = 'c', long)]
    pub config: Option<String>,
    /// debug, info, warning, error or critical
    #[arg(short = 'L', long = "log-level", default_value = "info")]
    pub log_level: String,
    /// Output format: default, table, json, json-pretty, csv, tsv, plain, toml; `run` also takes a
    /// plugin's format (`contree plugins list`)
    #[arg(
        short = 'o',
        short_alias = 'f',
        long = "format",
        visible_alias = "output",
        default_value = "default"
    )]
    pub format: String,
    /// Load this plugin, or every *.so in this directory, besides the ones found (repeatable)
    #[arg(long = "plugin", value_name = "PATH", global = true)]
    pub plugins: Vec<String>,
    /// Session key (default: $CONTREE_SESSION, else derived from the terminal)
    #[arg(short = 'S', long = "session")]
    pub session: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a sandbox made from the session's image
    #[command(visible_alias = "r")]
    Run(RunFlags),
    /// Start or switch the session to IMAGE (prints the export line), or show it
    #[command(visible_alias = "ci")]
    Use(UseFlags),
    /// List or import images
    #[command(visible_aliases = ["i", "img"])]
    Images(ImagesFlags),
    /// Tag an image (the session's image when only TAG is given), or remove a tag
    #[command(visible_alias = "t")]
    Tag(TagFlags),
    /// List operations (running ones unless -a)
    Ps(PsFlags),
    /// Show operations and their output
    Show(ShowFlags),
    /// Cancel operations
    Kill(KillFlags),
    /// Wait for operations to finish
    Wait(WaitFlags),
    /// Run one more command in a running operation's sandbox (e.g. one started with run -d)
    Exec(ExecFlags),
    /// Operations: ls, show, cancel, wait, events
    #[command(visible_alias = "op")]
    Operation {
        #[command(subcommand)]
        command: OpCommand,
    },
    /// The current session
    #[command(visible_alias = "s")]
    Session {
        #[command(subcommand)]
        command: Option<SessionCommand>,
    },
    /// Plugins: the ones found and what they provide (see docs/plugins.md)
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Lua hooks: list them, trust a project's (see docs/hooks.md)
    Hooks {
        #[command(subcommand)]
        command: HooksCommand,
    },
    /// List a directory of the session's image (no sandbox is started)
    Ls {
        /// Path inside the image (relative to the session's cd)
        path: Option<String>,
    },
    /// Print a file of the session's image (no sandbox is started)
    Cat { path: String },
    /// Search file contents of the session's image (no sandbox is started); exit 1: no
    /// match, 2: stopped before finding any
    Grep(GrepFlags),
    /// Copy a file or directory of the session's image to this machine
    Cp { path: String, dest: String },
    /// Write the session image's root filesystem (or the subtree at PATH) as a tar archive:
    /// tar.gz unless --decompress or a FILE ending in .tar; stdout must not be a terminal
    Export(ExportFlags),
    /// Stage files for the next run: copy one in (cp), edit one of the image (edit), list
    /// them (ls). Staged files belong to the session's current branch
    #[command(visible_alias = "f")]
    File {
        #[command(subcommand)]
        command: FileCommand,
    },
    /// Print or change the session's working directory
    Cd { path: Option<String> },
    /// Print, set (KEY=VALUE) or unset (-U KEY) the session's environment
    Env {
        items: Vec<String>,
        /// Unset the given keys (`-u` works too)
        #[arg(short = 'U', short_alias = 'u', long = "delete", visible_alias = "rm")]
        delete: bool,
    },
    /// Build an image from a Dockerfile, step by step, with a per-context cache (see
    /// docs/build.md); the result becomes the session's image
    #[command(visible_alias = "bd")]
    Build(BuildFlags),
    /// Free layers, blobs and images nothing references (tags, sessions, running operations)
    Gc {
        /// Only print what would be freed
        #[arg(short = 'n', long = "dry-run")]
        dry_run: bool,
    },
    /// Check the local store (database, images, layers, blobs, scratch, event logs) and
    /// the sessions' references into it
    Doctor {
        /// Repair what can be repaired without losing anything (abandoned scratch, orphan
        /// files, operations whose supervisor died, event logs without completion)
        #[arg(long)]
        repair: bool,
    },
    /// Print a shell completion script: bash, zsh or fish
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) generated from these definitions (`contree man` is the
    /// manual for agents: `contree agent`)
    Manpage,
    /// An interactive shell on the session: a bare line runs as `run --shell`, a line
    /// starting with `contree` runs that command; built-ins cd, pwd, history, help,
    /// exit/quit. Without a terminal, lines are read from stdin (and runs get no stdin)
    #[command(visible_alias = "sh")]
    Shell,
    /// The built-in manual for coding agents: the workflow, sessions, execution modes,
    /// files, images, output, profiles, which commands change state, and this
    /// implementation's additions
    #[command(visible_alias = "man")]
    Agent {
        /// Topic (default: all); `contree agent topics` lists them
        topic: Option<String>,
    },
    /// Install, list, upgrade or remove ConTree's skill files for coding agents (Claude
    /// Code, Codex)
    Skill {
        #[command(subcommand)]
        command: SkillCommand,
    },
    /// Serve the local engine as a ConTree /v1 API (see docs/serve.md)
    Serve(ServeFlags),
    /// Save a profile for a ConTree /v1 API (checked with /v1/whoami first)
    Auth(AuthFlags),
    /// Internal: supervise one operation of the local engine
    #[command(name = "__supervise", hide = true)]
    Supervise {
        store: String,
        data: String,
        op: String,
    },
}

#[derive(Debug, Args)]
pub struct AuthFlags {
    /// The API token [env: CONTREE_TOKEN]
    #[arg(long = "token")]
    pub token: Option<String>,
    /// The API URL [env: CONTREE_URL]
    #[arg(short = 'u', long = "url")]
    pub url: Option<String>,
    /// Token type
    #[arg(long = "type", default_value = "iam", value_parser = ["iam", "jwt"])]
    pub kind: String,
    /// Project (IAM) [env: CONTREE_PROJECT]
    #[arg(short = 'P', long = "project")]
    pub project: Option<String>,
    /// Profile name [default: default]
    #[arg(short = 'p', long = "profile")]
    pub profile: Option<String>,
    /// Overwrite without asking
    #[arg(short = 'f', short_alias = 'y', long = "force")]
    pub force: bool,
    #[command(subcommand)]
    pub action: Option<AuthAction>,
}

#[derive(Debug, Subcommand)]
pub enum AuthAction {
    /// List the saved profiles (* marks the active one; tokens are not shown)
    #[command(visible_aliases = ["ls", "profiles"])]
    List {
        /// Do not contact the servers (this listing never does: it reads auth.ini only)
        #[arg(short = 'O', long)]
        offline: bool,
    },
    /// Make NAME the active profile
    Switch { name: String },
    /// Remove the profile NAME (asks first when stdin is a terminal)
    #[command(visible_aliases = ["rm", "del"])]
    Remove {
        name: String,
        /// Do not ask
        #[arg(short = 'f', short_alias = 'y', long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct ServeFlags {
    /// Address to listen on (port 0 picks a free port; the bound address is printed)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// File of `TOKEN NAMESPACE` lines [default: DATA/serve.tokens, created with one token]
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<String>,
    /// Largest accepted JSON request body, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20)]
    pub max_body: usize,
    /// Largest accepted file upload, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_upload: u64,
    /// Operations running at once; more spawns wait in PENDING for a slot
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_running: usize,
    /// Spawns waiting for a slot; more get 429 with Retry-After
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_pending: usize,
    /// Finished operations' event logs older than this are cut to their completion
    /// (a number of seconds, or with s, m, h or d)
    #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse_age)]
    pub events_max_age: std::time::Duration,
    /// The most all finished operations' event logs may take; the oldest are cut first
    #[arg(long, value_name = "BYTES", default_value_t = 10 << 30)]
    pub events_max_bytes: u64,
}

#[derive(Debug, Args)]
pub struct RunFlags {
    /// Seconds before the command is killed [default: 120]
    #[arg(short = 't', long, value_name = "TIMEOUT")]
    pub timeout: Option<u64>,
    /// Working directory inside the instance (created if missing)
    #[arg(short = 'C', long, default_value = "")]
    pub cwd: String,
    /// KEY=VALUE for the environment (one pair per flag; KEY= for an empty value)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Hostname inside the instance
    #[arg(short = 'H', long, default_value = "linuxkit")]
    pub hostname: String,
    /// Keep nothing: no snapshot, the session stays where it is
    #[arg(short = 'D', long)]
    pub disposable: bool,
    /// Shebang mode: `#!/usr/bin/env -S contree run -I` (the script runs in the sandbox)
    #[arg(short = 'I', long)]
    pub interpreter: bool,
    /// Run the words as one shell expression
    #[arg(short = 's', long)]
    pub shell: bool,
    /// Attach HOST[:/inst][:uUID][:gGID][:mMODE] (file or directory)
    #[arg(short = 'F', long = "file", value_name = "SPEC")]
    pub files: Vec<String>,
    /// Extra exclude globs for directory attachments
    #[arg(long = "file-excludes", num_args = 1.., value_name = "GLOB")]
    pub file_excludes: Vec<String>,
    /// Bytes of output kept (and printed) per stream
    #[arg(short = 'T', long, default_value_t = 65536)]
    pub truncate: u64,
    /// Keep the environment in the resulting image
    #[arg(long = "preserve-env")]
    pub preserve_env: bool,
    /// Return right after starting
    #[arg(short = 'd', long, visible_alias = "no-wait")]
    pub detach: bool,
    /// Switch the session to IMAGE first
    #[arg(long = "use", value_name = "IMAGE")]
    pub use_image: Option<String>,
    /// No network: the instance gets only a loopback interface
    #[arg(long = "no-network")]
    pub no_network: bool,
    /// Also run this Lua hook file (repeatable; after the config's and the project's)
    #[arg(long = "hook", value_name = "FILE")]
    pub hooks: Vec<String>,
    /// Run no hooks at all for this invocation
    #[arg(long = "no-hooks")]
    pub no_hooks: bool,
    /// Memory for everything in the sandbox (RAM and swap): bytes, or a number with K, M,
    /// G or T (KiB … TiB), like 512M or 1.5G; `none` for no limit [default: config.toml's
    /// [limits] memory, else half the host's RAM]. Past it the kernel kills (exit 137).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Processes and threads the command may have at once (forks past it fail); `none` for
    /// no limit [default: config.toml's [limits] pids, else 4096]
    #[arg(long, value_name = "N", value_parser = parse_pids)]
    pub pids: Option<u64>,
    /// CPU time per second, in CPUs (0.5 = half of one, 2 = two); `none` for no limit
    /// [default: config.toml's [limits] cpus, else none]
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    pub cpus: Option<f64>,
    /// Size of the writable layer (same units as --memory): writes past it fail with
    /// ENOSPC inside [default: config.toml's [limits] max_layer_bytes, else 12G]
    #[arg(long = "max-layer-bytes", value_name = "SIZE", value_parser = parse_layer)]
    pub max_layer_bytes: Option<u64>,
    /// The command and its arguments: from the first word that is not an option of `run`
    /// (or after `--`); later words are the command's own, even when they start with `-`.
    /// An unknown option before the command is a usage error, not the command.
    #[arg(trailing_var_arg = true, num_args = 0.., value_name = "COMMAND")]
    pub words: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BuildFlags {
    /// The build context: the directory COPY and ADD read from
    #[arg(default_value = ".")]
    pub context: String,
    /// The Dockerfile [default: CONTEXT/Dockerfile]
    #[arg(long, value_name = "PATH")]
    pub dockerfile: Option<String>,
    /// Tag the built image
    #[arg(long, value_name = "NAME[:TAG]")]
    pub tag: Option<String>,
    /// KEY=VALUE for an ARG of the Dockerfile (repeatable)
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Run every step again instead of reusing the images of earlier builds
    #[arg(long)]
    pub no_cache: bool,
    /// Seconds each RUN step may take before it is killed
    #[arg(short = 't', long, value_name = "TIMEOUT", default_value_t = 600)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct UseFlags {
    /// Image UUID, tag:NAME or NAME
    pub image: Option<String>,
    /// Start a new session (a fresh key) on IMAGE
    #[arg(short = 'N', long)]
    pub new: bool,
}

#[derive(Debug, Args)]
pub struct ImagesFlags {
    #[command(subcommand)]
    pub command: Option<ImagesCommand>,
    #[command(flatten)]
    pub list: ImagesList,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ImagesList {
    /// Only tags starting with this
    #[arg(long)]
    pub prefix: Option<String>,
    /// Untagged images too
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only this image
    #[arg(short = 'i', long)]
    pub uuid: Option<String>,
    /// At most this many rows
    #[arg(long, default_value_t = 3000)]
    pub limit: usize,
    /// Only images created since: 30m, 2h, 1d, HH:MM, a date or an ISO datetime
    #[arg(long)]
    pub since: Option<String>,
    /// Only images created until (same forms as --since)
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List images
    #[command(visible_alias = "ls")]
    List(ImagesList),
    /// Remove images (their tags too); refused for an image a session or a running
    /// operation uses. Layers no other image needs are freed.
    #[command(visible_aliases = ["remove", "del"])]
    Rm {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Import a root filesystem directory, a tar / tar.gz archive, an OCI image layout
    /// (directory or tar), a `docker save` archive, or pull from a registry
    Import {
        /// Local paths or registry references (`docker://reg/path:tag`, `user/img:tag`);
        /// braces expand as in a shell: `alpine:{3.19,3.20}` is two
        #[arg(required = true, value_name = "REF")]
        refs: Vec<String>,
        /// Tag for the new image (a pull defaults to the reference without its registry);
        /// only with a single reference
        #[arg(long)]
        tag: Option<String>,
        /// Seconds a registry pull may take before it fails (a server's default otherwise)
        #[arg(short = 't', long, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: Option<u64>,
        /// Registry user name (basic auth, or for the registry's token service)
        #[arg(long)]
        username: Option<String>,
        /// Registry password
        #[arg(long)]
        password: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct TagFlags {
    /// IMAGE TAG, or TAG alone for the session's image
    #[arg(num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// Remove the tag instead
    #[arg(short = 'U', long = "delete", visible_alias = "rm")]
    pub delete: bool,
}

#[derive(Debug, Args, Clone)]
pub struct PsFlags {
    /// All operations, not only running ones
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only this status (PENDING…CANCELLED or P A E S F C)
    #[arg(long)]
    pub status: Option<String>,
    /// instance or image_import
    #[arg(short = 'k', long)]
    pub kind: Option<String>,
    /// Only operations created since: 30m, 2h, 1d (ago), +/-N with s m h d M y, HH:MM[:SS]
    /// (today, UTC), a date or an ISO datetime
    #[arg(long)]
    pub since: Option<String>,
    /// Only operations created until (same forms as --since)
    #[arg(long)]
    pub until: Option<String>,
    /// UUIDs only
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// At most this many rows
    #[arg(short = 'M', long = "show-max", default_value_t = 1000)]
    pub show_max: usize,
}

#[derive(Debug, Args, Clone)]
pub struct ShowFlags {
    #[arg(required = true, value_name = "UUID_OR_REF")]
    pub ops: Vec<String>,
    /// The stored operation as one JSON object
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args, Clone)]
pub struct KillFlags {
    #[arg(value_name = "UUID_OR_REF")]
    pub ops: Vec<String>,
    /// Every active operation
    #[arg(short = 'a', long)]
    pub all: bool,
}

#[derive(Debug, Args, Clone)]
pub struct GrepFlags {
    /// Regex to search for (Rust regex syntax)
    pub pattern: String,
    /// Files or directories inside the image (default: the session's cd; `/` for all)
    pub paths: Vec<String>,
    /// Only files matching this glob (ripgrep's -g; `!` excludes; repeatable)
    #[arg(long = "glob", value_name = "GLOB")]
    pub globs: Vec<String>,
    /// Stop after this many matches per file
    #[arg(long = "max-count", value_name = "NUM")]
    pub max_count: Option<u64>,
    /// Stop after this many matches in all (the server's default: 1000)
    #[arg(long = "max-total", value_name = "NUM")]
    pub max_total: Option<u64>,
    /// Case sensitivity
    #[arg(long, value_parser = ["sensitive", "insensitive", "smart"], default_value = "sensitive")]
    pub case: String,
    /// Lines of context before each match (at most 50)
    #[arg(
        short = 'B',
        long = "before-context",
        visible_alias = "before",
        value_name = "NUM"
    )]
    pub before: Option<u64>,
    /// Lines of context after each match (at most 50)
    #[arg(
        short = 'A',
        long = "after-context",
        visible_alias = "after",
        value_name = "NUM"
    )]
    pub after: Option<u64>,
    /// Lines of context before and after (-A/-B win)
    #[arg(short = 'C', long = "context", value_name = "NUM")]
    pub context: Option<u64>,
    /// Print the API's JSON result as it is
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ExportFlags {
    /// Path inside the image (default: `/`, the whole root filesystem; a relative path is
    /// taken from the session's cd)
    pub path: Option<String>,
    /// Write the archive to FILE instead of stdout (a name ending in .tar means plain tar)
    #[arg(short = 'F', long = "file", value_name = "FILE")]
    pub file: Option<String>,
    /// Plain tar instead of tar.gz
    #[arg(long)]
    pub decompress: bool,
}

#[derive(Debug, Subcommand)]
pub enum FileCommand {
    /// Upload a local file now and stage it at DEST for the next run
    Cp {
        /// The local file
        src: String,
        /// Where the next run sees it (relative: from the session's cd; ending in `/`: a
        /// directory, the file keeps its name)
        dest: String,
    },
    /// Edit a file of the session's image in $VISUAL / $EDITOR (else vi) and stage the
    /// edited copy for the next run (nothing is staged when it is unchanged)
    #[command(visible_alias = "e")]
    Edit {
        /// Path inside the image (relative: from the session's cd)
        path: String,
        /// Editor command (default: $VISUAL, else $EDITOR, else vi)
        #[arg(short = 'E', long)]
        editor: Option<String>,
    },
    /// The files uploaded (newest first), and where the next run of the current branch
    /// puts those staged for it
    #[command(visible_alias = "list")]
    Ls(FileLsFlags),
}

#[derive(Debug, Args, Clone)]
pub struct FileLsFlags {
    /// Only files uploaded since (a time, or an interval ago: 30m, 2h, 1d)
    #[arg(long)]
    pub since: Option<String>,
    /// Only files uploaded until (same forms)
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many files (a warning says when there are more)
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only the uuid and sha256 of each file
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Only the files staged for the next run
    #[arg(long)]
    pub staged: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ExecFlags {
    /// The running operation
    #[arg(value_name = "UUID_OR_REF")]
    pub op: String,
    /// Run the words as one shell expression (`sh -c`)
    #[arg(short = 's', long)]
    pub shell: bool,
    /// Set an environment variable (repeatable), over the operation's own
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Working directory (default: the operation's)
    #[arg(short = 'w', long = "cwd", value_name = "DIR")]
    pub cwd: Option<String>,
    /// Keep at most this many bytes of each output stream in the operation's log
    #[arg(short = 'T', long = "truncate-output-at", value_name = "BYTES")]
    pub truncate_output_at: Option<u64>,
    /// The command and its arguments
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct WaitFlags {
    /// Operations to wait for. `contree wait` with none (and no -a) waits for this
    /// session's pending runs and applies them, as `contree session wait` does
    #[arg(value_name = "UUID_OR_REF")]
    pub ops: Vec<String>,
    /// Every active operation
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Give up after this many seconds (with UUIDs or -a)
    #[arg(short = 't', long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum OpCommand {
    #[command(visible_alias = "ls")]
    List(PsFlags),
    #[command(visible_alias = "sh")]
    Show(ShowFlags),
    #[command(visible_aliases = ["kill", "k"])]
    Cancel(KillFlags),
    #[command(visible_alias = "w")]
    Wait(WaitFlags),
    #[command(visible_alias = "ev")]
    Events {
        #[arg(required = true, value_name = "UUID_OR_REF")]
        ops: Vec<String>,
    },
}

pub use super::session_args::SessionCommand;

#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// The hook files a run from here would consider: origin, trust, events
    #[command(visible_alias = "ls")]
    List {
        /// Include this file as `run --hook FILE` would
        #[arg(long = "hook", value_name = "FILE")]
        hooks: Vec<String>,
    },
    /// Trust the project hooks (.contree/hooks/*.lua) of DIR or the nearest one above it,
    /// as they are now; any later change makes them untrusted again
    Trust {
        /// A directory in the project (default: the current one)
        dir: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SkillCommand {
    /// Install the skill into agent homes (autodetected when no SPEC is given)
    #[command(visible_alias = "i")]
    Install(SkillFlags),
    /// The remembered installs: where, which version, whether outdated or changed
    #[command(visible_alias = "ls")]
    List,
    /// Remove installed skill files (every remembered install when no SPEC is given)
    #[command(visible_aliases = ["r", "rm", "del"])]
    Remove(SkillFlags),
    /// Bring installed skill files up to this version (every remembered install when no
    /// SPEC is given)
    #[command(visible_aliases = ["u", "update"])]
    Upgrade(SkillFlags),
}

#[derive(Debug, Args)]
pub struct SkillFlags {
    /// `claude:~` (~/.claude/skills), `codex:~` (~/.agents/skills), `claude:` or `codex:`
    /// (the same under the current directory), `KIND:DIR` (under the project DIR), a skill
    /// directory, or a project root (every kind under it)
    #[arg(value_name = "SPEC")]
    pub specs: Vec<String>,
    /// Overwrite (or remove) files that were changed since they were installed, or that
    /// another tool put there
    #[arg(short = 'f', short_alias = 'y', long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Every plugin file found: name, version, ABI, what it provides, or why it failed
    #[command(visible_alias = "ls")]
    List,
}

// The limit flags' value parsers: clap shows the error's text after `invalid value`.

/// `--memory`: a size of at least `limits::MIN_MEMORY`, or `none` (sent as 0).
fn parse_memory(text: &str) -> Result<u64, LimitError> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(0);
    }
    let size = limits::parse_size(text)?;
    limits::validate(&crate::wire::ResourcesLimits {
        max_memory_bytes: Some(size),
        ..Default::default()
    })?;
    Ok(size)
}

/// `--pids`: a whole number of at least 1, or `none` (sent as 0).
fn parse_pids(text: &str) -> Result<u64, LimitError> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(0);
    }
    limits::parse_pids(text)
}

/// `--cpus`: at least 0.01, or `none` (sent as 0).
fn parse_cpus(text: &str) -> Result<f64, LimitError> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(0.0);
    }
    limits::parse_cpus(text)
}

/// `--max-layer-bytes`: a size of at least `limits::MIN_LAYER`.
fn parse_layer(text: &str) -> Result<u64, LimitError> {
    let size = limits::parse_size(text)?;
    limits::validate(&crate::wire::ResourcesLimits {
        max_layer_bytes: Some(size),
        ..Default::default()
    })?;
    Ok(size)
}

/// An age, for clap.
fn parse_age(text: &str) -> Result<std::time::Duration, crate::config::ValueError> {
    crate::config::parse_age(text)
}
