//! The run pipeline: flags → spawn request → operation → live output → session update →
//! exit code. One path for every backend, attached or detached (see ARCHITECTURE.md).

mod finish;
mod follow;
pub mod request;
pub mod settle;

use finish::finish;
pub use follow::follow;
use follow::write_emit;

use crate::attach::{self, digest_files, Excludes};
use crate::backend::{BackendError, Registered, Spawn, StdinSource};
use crate::context::{no_session, Context};
use crate::error::{exit, CommandError, CommandResult, Kind};
use crate::format::formatter::{self, Emit, Formatter, Stream};
use crate::format::{print_records, Format, Record};
use crate::hooks::{self, Hooks, Plan, PENDING_UPLOAD};
use crate::outcome::Outcome;
use crate::session::PendingOp;
use crate::wire::{FileRef, SpawnRequest, Status};
use crate::{info, warn};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Seconds before the command is killed when no `-t` is given.
pub const DEFAULT_TIMEOUT: u64 = 120;

/// `run`'s flags, already parsed (the pipeline never sees clap types).
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    pub timeout: u64,
    /// Whether `-t` was given (hooks see `timeout = nil` otherwise).
    pub timeout_given: bool,
    pub cwd: String,
    pub env: Vec<String>,
    pub hostname: String,
    pub disposable: bool,
    pub interpreter: bool,
    pub shell: bool,
    pub files: Vec<String>,
    pub file_excludes: Vec<String>,
    pub truncate: u64,
    pub preserve_env: bool,
    pub detach: bool,
    pub use_image: Option<String>,
    pub no_network: bool,
    pub words: Vec<String>,
    /// `--hook FILE`s, in order.
    pub hooks: Vec<String>,
    /// `--no-hooks`.
    pub no_hooks: bool,
    /// `--memory`, `--pids`, `--cpus`, `--max-layer-bytes` (see `wire::limits`).
    pub limits: crate::wire::ResourcesLimits,
}

pub fn run(ctx: &Context, args: RunArgs) -> CommandResult<i32> {
    if matches!(ctx.format, Format::Table | Format::Csv | Format::Tsv) {
        return Err(CommandError::user(format!(
            "run prints one record: use -o default, json, json-pretty, plain or toml (not {})",
            ctx.format.name()
        )));
    }
    if args.words.is_empty() {
        return Err(
            CommandError::new(Kind::Usage, "nothing to run: no command was given")
                .hint("contree run [OPTIONS] -- COMMAND [ARGS...]"),
        );
    }
    // -e pairs are checked before anything else can fail later for them.
    let env_items = request::parse_env_items(&args.env)
        .map_err(|e| CommandError::user(format!("-e/--env: {e}")))?;
    // 0. The output formatter (built-in or a plugin's) is settled before anything runs.
    let mut formatter = crate::plugin::formatter(&ctx.output, &ctx.plugins)?;
    // 1. Every --file spec is checked before anything else happens (`SCHEME:` specs
    //    against the schemes plugins provide).
    let mut warnings = Vec::new();
    let specs = args
        .files
        .iter()
        .map(|s| attach::parse_spec_with(s, &ctx.plugins, &mut warnings))
        .collect::<Result<Vec<_>, _>>()?;
    for w in warnings {
        warn!("{w}");
    }
    // Hooks see the plan before anything is read; their edits come back as the same types.
    let mut hooks = load_hooks(ctx, &args)?;
    let mut plan = Plan {
        files: specs,
        excludes: args.file_excludes.clone(),
    };
    let parse = |s: &str, w: &mut Vec<String>| attach::parse_spec_with(s, &ctx.plugins, w);
    hooks.pre_attach(&mut plan, &parse)?;
    let Plan {
        files: specs,
        excludes,
    } = plan;
    let excludes = Excludes::new(&excludes)?;

    // 2. The image: --use switches the session first (and that sticks even if we fail later).
    let key = &ctx.session_key;
    let image = match &args.use_image {
        Some(reference) => {
            let uuid = ctx.backend.resolve_image(reference)?;
            ctx.sessions.set_image(key, &uuid, "use", reference, None)?;
            uuid
        }
        None => ctx.session()?.ok_or_else(no_session)?.current_image,
    };

    // 3-4. Expand and upload attachments.
    let attachments = attach::expand_with(&specs, &excludes, &ctx.plugins)?;
    let session_cwd = ctx.sessions.cwd(key)?;
    let run_cwd = if args.cwd.is_empty() {
        session_cwd.clone().unwrap_or_else(|| "/".into())
    } else {
        args.cwd.clone()
    };
    let mut files = BTreeMap::new();
    // 5. Pending files (from `file cp`) go under explicit ones.
    for (path, uuid, uid, gid, mode) in ctx.sessions.pending_files(key)? {
        files.insert(
            path,
            FileRef {
                uuid,
                uid,
                gid,
                mode,
            },
        );
    }
    // Hashed now, uploaded only after pre-spawn (a hook that aborts leaves nothing behind).
    let (hashed, blobs) = hash_attachments(ctx, &attachments, &run_cwd)?;
    for (path, file) in hashed {
        files.insert(path, file);
    }

    // 6. The spawn body.
    let session_env = ctx.sessions.env(key)?;
    let preserved = ctx.sessions.preserved_env(&image)?;
    let (mut req, mut merged_env) = request::build(request::Inputs {
        image: image.clone(),
        words: &args.words,
        shell: args.shell,
        session_env,
        env_items: &env_items,
        preserved_env: preserved,
        preserve_env: args.preserve_env,
        cwd_flag: &args.cwd,
        session_cwd,
        hostname: &args.hostname,
        timeout: args.timeout,
        truncate: args.truncate,
        disposable: args.disposable,
        network: !args.no_network,
        files,
        limits: args.limits.clone(),
    });

    // 7. Interpreter mode: the script's body becomes stdin of `/bin/sh -s`.
    let mut stdin = StdinSource::Inherit;
    if args.interpreter {
        if let Some((script, rest)) = args.words.split_first() {
            let body = std::fs::read(script)
                .map_err(|e| CommandError::user(format!("cannot read script '{script}': {e}")))?;
            let (command, argv, script_stdin) = request::interpreter(&body, rest);
            req.command = command;
            req.args = Some(argv);
            req.shell = true;
            if script_stdin.is_some() {
                req.stdin = script_stdin;
                stdin = StdinSource::Null;
            }
        }
    }
    // 8. A detached run cannot read a terminal that the user gets back at once.
    if args.detach && std::io::stdin().is_terminal() {
        stdin = StdinSource::Null;
    }

    // 9. Hooks see the complete request; then what it still attaches is uploaded.
    let sizes = blobs
        .iter()
        .map(|(sha, (_, size))| (sha.clone(), *size))
        .collect();
    hooks.pre_spawn(
        &mut req,
        &mut merged_env,
        &sizes,
        args.timeout_given,
        DEFAULT_TIMEOUT,
    )?;
    upload_pending(ctx, &mut req, &blobs)?;

    // 10. Spawn.
    let title = args.words.join(" ");
    crate::log::trace("request built");
    let op = if args.detach {
        // Remembered before it can end, so that `session wait` finds it even if we die.
        let pending = PendingOp {
            title: title.clone(),
            disposable: req.disposable,
            ..Default::default()
        };
        spawn_pending(ctx, Some(pending), |registered| {
            ctx.backend.spawn_registered(Spawn {
                req: &req,
                stdin,
                registered,
            })
        })?
    } else {
        // Output nothing inspects may go from the command to our stdout and stderr without
        // passing through us (see `Backend::spawn_followed`); what we wrote goes out first.
        let direct = output_untouched(formatter.as_ref(), &hooks);
        if direct {
            flush_std();
        }
        // On the session's pending list before it can finish: if we die, the next command
        // of the session applies it (see `settle`). A disposable run changes no session.
        let me = std::process::id() as i32;
        let pending = (!req.disposable).then(|| PendingOp {
            title: title.clone(),
            foreground: true,
            preserved_env: args.preserve_env.then(|| merged_env.clone()),
            cli: crate::procfs::process_start_time(me).map(|start| (me, start)),
            ..Default::default()
        });
        spawn_pending(ctx, pending, |registered| {
            let spawn = Spawn {
                req: &req,
                stdin,
                registered,
            };
            ctx.backend.spawn_followed(spawn, direct)
        })?
    };
    crate::log::trace("spawned");
    crate::failpoint::hit("run:spawned");

    if args.detach {
        return detach(ctx, &op, &req, &title, &image, req.disposable);
    }
    let info = formatter::RunInfo {
        op: op.clone(),
        request: serde_json::to_value(&req).unwrap_or_default(),
        backend: ctx.backend.name().to_string(),
    };
    let _ = write_emit(&formatter.begin(&info));
    let outcome = follow(ctx, &op, formatter.as_mut(), &mut hooks)?;
    let code = finish(
        ctx,
        &args,
        &req,
        &merged_env,
        &title,
        outcome,
        formatter.as_mut(),
        &mut hooks,
    )?;
    // A formatter that failed (a plugin's error or panic) left its output incomplete.
    if let Some(e) = formatter.error() {
        return Err(CommandError::user(e));
    }
    Ok(code)
}

/// The hooks of this run (none with `--no-hooks`); see `docs/hooks.md`.
fn load_hooks(ctx: &Context, args: &RunArgs) -> CommandResult<Hooks> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    Ok(Hooks::load(&hooks::Options {
        config_dir: &ctx.paths.config,
        data_dir: &ctx.paths.data,
        cwd: &cwd,
        flags: &args.hooks,
        disabled: args.no_hooks,
    })?)
}

/// Hashes the attachments (with the local digest cache) into `files` entries without
/// uploading anything: each entry's uuid is `sha256:<hex>` until `upload_pending`. Also
/// returns, per sha256, a host file with that content and its size. Relative instance paths
/// are taken relative to the run's working directory.
#[allow(clippy::type_complexity)]
fn hash_attachments(
    ctx: &Context,
    attachments: &[attach::Attachment],
    cwd: &str,
) -> CommandResult<(Vec<(String, FileRef)>, BTreeMap<String, (PathBuf, u64)>)> {
    let paths: Vec<&Path> = attachments.iter().map(|a| a.host_path.as_path()).collect();
    let digests = digest_files(&ctx.paths.data, &paths)?;
    let mut blobs = BTreeMap::new();
    let mut out = Vec::with_capacity(attachments.len());
    for (a, sha) in attachments.iter().zip(digests) {
        let path = if a.instance_path.starts_with('/') {
            a.instance_path.clone()
        } else {
            format!(
                "{}/{}",
                cwd.trim_end_matches('/'),
                a.instance_path.trim_start_matches("./")
            )
        };
        out.push((
            path,
            FileRef {
                uuid: format!("{PENDING_UPLOAD}{sha}"),
                uid: a.uid,
                gid: a.gid,
                mode: attach::mode_string(a.mode),
            },
        ));
        blobs
            .entry(sha)
            .or_insert_with(|| (a.host_path.clone(), a.size));
    }
    Ok((out, blobs))
}

/// Uploads the content of every `files` entry still pending (once per sha256) and puts the
/// blob's uuid in its place.
fn upload_pending(
    ctx: &Context,
    req: &mut SpawnRequest,
    blobs: &BTreeMap<String, (PathBuf, u64)>,
) -> CommandResult {
    let Some(files) = req.files.as_mut() else {
        return Ok(());
    };
    // Each distinct content once, all in one call (a remote backend uploads in parallel).
    let mut wanted: Vec<(PathBuf, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (path, file) in files.iter() {
        let Some(sha) = file.uuid.strip_prefix(PENDING_UPLOAD) else {
            continue;
        };
        if !seen.insert(sha) {
            continue;
        }
        let (host, _) = blobs.get(sha).ok_or_else(|| {
            CommandError::new(
                Kind::Internal,
                format!("file '{path}': no attachment has sha256 {sha}"),
            )
        })?;
        wanted.push((host.clone(), sha.to_string()));
    }
    let answers = ctx.backend.put_files(&wanted)?;
    let mut uploaded: BTreeMap<String, String> = BTreeMap::new();
    for ((host, sha), (uuid, reused)) in wanted.into_iter().zip(answers) {
        if reused {
            crate::debug!("File reused: {} -> {uuid}", host.display());
        }
        uploaded.insert(sha, uuid);
    }
    for file in files.values_mut() {
        if let Some(sha) = file.uuid.strip_prefix(PENDING_UPLOAD) {
            if let Some(uuid) = uploaded.get(sha) {
                file.uuid = uuid.clone();
            }
        }
    }
    Ok(())
}

fn detach(
    ctx: &Context,
    op: &str,
    req: &SpawnRequest,
    title: &str,
    image: &str,
    disposable: bool,
) -> CommandResult<i32> {
    crate::failpoint::hit("run:detached");
    ctx.sessions
        .add_side_branch(&ctx.session_key, op, disposable, image, title)?;
    let mut rec = Record::new();
    rec.insert("uuid".into(), op.into());
    rec.insert("status".into(), "PENDING".into());
    if let Ok(Value::Object(echo)) = serde_json::to_value(req) {
        for (k, v) in echo {
            if k != "stdin" {
                rec.insert(k, v);
            }
        }
    }
    rec.insert("backend".into(), ctx.backend.name().into());
    print_records(ctx.format, &[rec])?;
    Ok(0)
}

/// Spawns with `spawn`, which tells its callback the operation's id before the operation
/// can end: `pending` (if any) goes on the session's pending list under that id then, and
/// comes off again if the spawn fails after all.
fn spawn_pending(
    ctx: &Context,
    pending: Option<PendingOp>,
    spawn: impl FnOnce(Registered<'_>) -> Result<String, BackendError>,
) -> CommandResult<String> {
    let mut registered = None;
    let spawned = spawn(&mut |op: &str| {
        let Some(p) = &pending else {
            return Ok(());
        };
        registered = Some(op.to_string());
        let branch = if p.foreground {
            String::new()
        } else {
            crate::session::side_branch(op, p.disposable).0
        };
        let pending = PendingOp {
            op: op.to_string(),
            branch,
            ..p.clone()
        };
        Ok(ctx.sessions.add_pending_op(&ctx.session_key, &pending)?)
    });
    spawned.map_err(|e| {
        if let Some(op) = registered {
            let _ = ctx.sessions.remove_pending_op(&ctx.session_key, &op);
        }
        e.into()
    })
}

/// Whether the output goes out exactly as the command wrote it (a formatter that passes it
/// through, no on-output hook): it may then bypass the formatter, and even this process.
fn output_untouched(formatter: &dyn Formatter, hooks: &Hooks) -> bool {
    formatter.passes_through() && !hooks.has_output()
}

fn flush_std() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}
