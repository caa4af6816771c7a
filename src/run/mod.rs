//! The run pipeline: flags → spawn request → operation → live output → session update →
//! exit code. One path for every backend, attached or detached (see ARCHITECTURE.md).

pub mod request;
pub mod settle;

use crate::attach::{self, DigestCache, Excludes};
use crate::backend::{BackendError, StdinSource};
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
            "run prints one record: use -o default, json or json-pretty (not {})",
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
            ctx.backend.spawn_registered(&req, stdin, registered)
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
            ctx.backend.spawn_followed(&req, stdin, direct, registered)
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
    if attachments.is_empty() {
        return Ok(Default::default());
    }
    let cache = DigestCache::open(&ctx.paths.data.join("cache").join("digests.db"))?;
    let paths: Vec<&Path> = attachments.iter().map(|a| a.host_path.as_path()).collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let digests = cache.digest_all(&paths, threads, crate::progress::Show::OnTerminal)?;
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
    let (branch, kind) = detached_branch(op, disposable);
    crate::failpoint::hit("run:detached");
    ctx.sessions
        .add_side_branch(&ctx.session_key, &branch, image, kind, title, Some(op))?;
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
    spawn: impl FnOnce(&mut dyn FnMut(&str) -> Result<(), BackendError>) -> Result<String, BackendError>,
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
            detached_branch(op, p.disposable).0
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

/// The branch a detached run gets at spawn time, and its entry's kind (§2.14).
fn detached_branch(op: &str, disposable: bool) -> (String, &'static str) {
    if disposable {
        (format!("disposable-{op}"), "run-disposable")
    } else {
        (format!("detached-{op}"), "run-detached")
    }
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

/// Follows the operation's events to `completion`, handing each output chunk to the
/// formatter and writing what it returns. Ctrl-C cancels the operation (its sandbox is
/// killed) and keeps following until the log ends, so nothing is left running.
pub fn follow(
    ctx: &Context,
    op: &str,
    formatter: &mut dyn Formatter,
    hooks: &mut Hooks,
) -> CommandResult<Outcome> {
    let mut out = Outcome {
        op: op.to_string(),
        ..Default::default()
    };
    if output_untouched(formatter, hooks) {
        // The backend may write the output itself (see `spawn_followed`): whatever std
        // buffered goes out first, so the order holds.
        flush_std();
    }
    let mut stream = ctx.backend.events(op, true)?;
    let mut sigint_sent = false;
    if formatter.live() {
        stream.watch_reader();
    }
    loop {
        let item = match stream.next_event() {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(BackendError::OutputClosed) => {
                if !out.broken_pipe {
                    out.broken_pipe = true;
                    let _ = ctx.backend.cancel(op);
                }
                continue;
            }
            Err(BackendError::Interrupted) => {
                // §2.9.4: on a backend that asks first, the first Ctrl-C sends the command
                // SIGINT and the run goes on; a second one (or a failed signal) cancels.
                if ctx.backend.interrupt_first() && !sigint_sent && !out.interrupted {
                    sigint_sent = true;
                    if ctx.backend.signal(op, 1, libc::SIGINT).is_ok() {
                        info!("Sent SIGINT to operation {op}; waiting for it to exit (Ctrl-C again to force-cancel)");
                        continue;
                    }
                }
                if !out.interrupted {
                    out.interrupted = true;
                    let _ = ctx.backend.cancel(op);
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let ev = &item.event;
        let num = |k: &str| ev.data.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let text = |k: &str| ev.data.get(k).and_then(|v| v.as_str()).map(String::from);
        match ev.kind.as_str() {
            "stdout" | "stderr" => {
                let stream = if ev.kind == "stdout" {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                let len = item.bytes.len() as u64 + item.passed;
                match stream {
                    Stream::Stdout => out.stdout_bytes += len,
                    Stream::Stderr => out.stderr_bytes += len,
                }
                if !out.broken_pipe {
                    // Without an on-output handler the bytes go straight to the formatter.
                    let filtered;
                    let bytes: &[u8] = if hooks.has_output() {
                        filtered = hooks.on_output(stream, &item.bytes);
                        &filtered
                    } else {
                        &item.bytes
                    };
                    if !bytes.is_empty() && write_emit(&formatter.chunk(stream, bytes)).is_err() {
                        out.broken_pipe = true;
                        let _ = ctx.backend.cancel(op);
                    }
                }
            }
            "exit" if ev.spid == Some(1) => {
                out.exit_code = ev
                    .data
                    .get("code")
                    .and_then(|c| c.as_i64())
                    .map(|c| c as i32);
                out.timed_out = ev
                    .data
                    .get("timed_out")
                    .and_then(|t| t.as_bool())
                    .unwrap_or(false);
                let flag = |k: &str| ev.data.get(k).and_then(|v| v.as_bool()) == Some(true);
                out.oom = flag("oom");
                out.layer_limit_hit = flag("layer_limit_hit");
                out.limits = ev.data.get("limits").cloned();
            }
            "truncated" => {
                out.truncated.push((
                    text("stream").unwrap_or_default(),
                    num("bytes_emitted"),
                    num("bytes_dropped"),
                ));
            }
            "completion" => {
                crate::log::trace("completion seen");
                out.status = text("status").as_deref().and_then(Status::parse);
                out.error = text("error");
                out.result_image = text("result_image_uuid");
                out.duration_ms = num("duration_ms");
                out.image_size = num("image_size_bytes");
                out.snapshot_failed = ev.data.get("snapshot_failed") == Some(&Value::Bool(true));
                out.store_full = ev.data.get("store_full") == Some(&Value::Bool(true));
            }
            _ => {}
        }
    }
    if out.status.is_none() {
        return Err(CommandError::new(
            Kind::Internal,
            format!("operation {op} event log ended without completion"),
        ));
    }
    // What on-output handlers held back (a possible secret cut by the chunk's end).
    if hooks.has_output() && !out.broken_pipe {
        for (stream, bytes) in hooks.flush_output() {
            let _ = write_emit(&formatter.chunk(stream, &bytes));
        }
    }
    Ok(out)
}

/// Writes a formatter's bytes; an error only when our stdout's reader is gone.
fn write_emit(emit: &Emit<'_>) -> Result<(), ()> {
    if !emit.stdout.is_empty() {
        let mut lock = std::io::stdout().lock();
        // Big chunks skip std's line buffering, which scans each one for its last newline
        // (a measurable share of a gigabyte of output): flush what it holds, then write to
        // the descriptor directly.
        let result = if emit.stdout.len() >= 64 * 1024 {
            lock.flush().and_then(|_| {
                // SAFETY: fd 1 stays open for the whole process; ManuallyDrop never closes it.
                let mut raw = std::mem::ManuallyDrop::new(unsafe {
                    <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(1)
                });
                raw.write_all(&emit.stdout)
            })
        } else {
            lock.write_all(&emit.stdout).and_then(|_| lock.flush())
        };
        if let Err(e) = result {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Err(());
            }
        }
    }
    if !emit.stderr.is_empty() {
        let mut lock = std::io::stderr().lock();
        let _ = lock.write_all(&emit.stderr).and_then(|_| lock.flush());
    }
    Ok(())
}

/// The exit code rule of `run` (§2.12): the process's own code when known (killed → 255),
/// else 1 for a failed or cancelled operation, else 0.
pub fn exit_code(out: &Outcome) -> i32 {
    match out.exit_code {
        Some(code) if code < 0 && out.oom => exit::OOM_KILLED,
        Some(code) if code < 0 => exit::KILLED,
        Some(code) => code & 0xff,
        None if out.status != Some(Status::Success) => 1,
        None => 0,
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    ctx: &Context,
    args: &RunArgs,
    req: &SpawnRequest,
    merged_env: &BTreeMap<String, String>,
    title: &str,
    out: Outcome,
    formatter: &mut dyn Formatter,
    hooks: &mut Hooks,
) -> CommandResult<i32> {
    let status = out.status.unwrap_or(Status::Failed);
    // With the reader gone (`| head`) the run was cut short on purpose: stay quiet.
    let quiet = out.broken_pipe;
    for (stream, emitted, dropped) in out.truncated.iter().filter(|_| !quiet) {
        warn!("{stream} cut at {emitted} bytes ({dropped} more dropped); raise -T/--truncate to keep more");
    }
    if !quiet {
        limit_warnings(&out);
    }
    if quiet {
    } else if out.timed_out {
        let secs = req.timeout.unwrap_or(args.timeout);
        warn!("Operation {} timed out after {secs}s", out.op);
    } else if out.snapshot_failed {
        let detail = out.error.as_deref().unwrap_or("snapshot failed");
        crate::log::emit(
            crate::log::Level::Error,
            &format!(
                "Operation {} ran, but its changes were not kept ({detail}); the session stays where it was",
                out.op
            ),
        );
    } else if status != Status::Success && out.store_full {
        let detail = out.error.as_deref().unwrap_or("failed");
        crate::log::emit(
            crate::log::Level::Error,
            &format!(
                "Operation {} could not run: the store's disk is full ({detail}); free space under the store and try again",
                out.op
            ),
        );
    } else if status != Status::Success && (out.oom || out.layer_limit_hit) {
        // "killed: out of memory (limit 256 MiB)", "stopped: the writable layer grew…"
        let detail = out.error.as_deref().unwrap_or("hit a limit");
        crate::log::emit(
            crate::log::Level::Error,
            &format!("Operation {} {detail}", out.op),
        );
        let flag = if out.oom {
            "--memory SIZE (config.toml: [limits] memory)"
        } else {
            "--max-layer-bytes SIZE (config.toml: [limits] max_layer_bytes)"
        };
        eprintln!("hint: {flag} sets the limit; see docs/sandbox.md, Limits");
    } else if status != Status::Success && !out.interrupted {
        let detail = out.error.as_deref().filter(|e| !e.is_empty());
        crate::log::emit(
            crate::log::Level::Critical,
            &match detail {
                Some(e) => format!("Operation {} ended with status {status}: {e}", out.op),
                None => format!("Operation {} ended with status {status}", out.op),
            },
        );
    }
    crate::failpoint::hit("run:completed");
    // Session bookkeeping (§2.13): a successful snapshot moves the session, and the run
    // leaves the pending list (a later command may have applied it already if we were
    // stopped for long: then it is not applied twice).
    if !req.disposable {
        let result = out
            .result_image
            .as_deref()
            .filter(|_| status == Status::Success)
            .map(|image| (image, title));
        ctx.sessions.apply_pending(
            &ctx.session_key,
            &out.op,
            result,
            args.preserve_env.then_some(merged_env),
            None,
        )?;
    }
    crate::log::trace("session updated");
    if !out.broken_pipe {
        let result = formatter::RunResult {
            record: result_record(ctx, req, &out),
        };
        let _ = write_emit(&formatter.finish(&result));
    }
    hooks.on_exit(&out, req);
    if out.broken_pipe {
        return Ok(exit::BROKEN_PIPE);
    }
    if out.interrupted {
        info!("Cancelled operation {}", out.op);
        return Err(CommandError::user("User interrupted"));
    }
    // A run whose changes were lost never looks like a success.
    if out.snapshot_failed && exit_code(&out) == 0 {
        return Ok(exit::IO);
    }
    if out.store_full && out.exit_code.is_none() {
        return Ok(exit::IO);
    }
    Ok(exit_code(&out))
}

/// What a run that went on after a limit should know: a process the OOM killer ended, a
/// full writable layer, limits this host could not enforce.
fn limit_warnings(out: &Outcome) {
    let limits = out.limits.as_ref();
    if out.oom && out.status == Some(Status::Success) {
        let limit = limits
            .and_then(|l| l.get("max_memory_bytes"))
            .and_then(|m| m.as_u64())
            .map(|m| format!(" (limit {})", crate::wire::limits::human(m)))
            .unwrap_or_default();
        warn!(
            "Operation {}: a process was killed: out of memory{limit}",
            out.op
        );
    }
    if out.layer_limit_hit && out.status == Some(Status::Success) {
        let limit = limits
            .and_then(|l| l.get("max_layer_bytes"))
            .and_then(|m| m.as_u64())
            .map(crate::wire::limits::human)
            .unwrap_or_else(|| "its size".into());
        warn!(
            "Operation {}: the writable layer reached its limit of {limit} (max_layer_bytes): writes past it failed with \"No space left on device\"",
            out.op
        );
    }
    let unenforced: Vec<&str> = limits
        .and_then(|l| l.get("unenforced"))
        .and_then(|u| u.as_array())
        .map(|u| u.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if !unenforced.is_empty() {
        warn!(
            "Operation {}: not enforced on this host: {} (see `contree doctor`)",
            out.op,
            unenforced.join("; ")
        );
    }
}

/// The official run record (§2.11); `stdout`/`stderr` stay empty for the formatter.
fn result_record(ctx: &Context, req: &SpawnRequest, out: &Outcome) -> Record {
    let mut metadata = serde_json::to_value(req).unwrap_or_default();
    if let Some(m) = metadata.as_object_mut() {
        m.remove("stdin");
        m.insert(
            "result".into(),
            json!({
                "stdout": {"value": "", "encoding": "ascii"},
                "stderr": {"value": "", "encoding": "ascii"},
                "state": {
                    "exit_code": out.exit_code,
                    "timed_out": out.timed_out,
                    "oom": out.oom,
                    "layer_limit_hit": out.layer_limit_hit,
                },
                "limits": out.limits,
            }),
        );
    }
    let mut rec = Record::new();
    rec.insert("uuid".into(), out.op.clone().into());
    rec.insert("kind".into(), "instance".into());
    rec.insert(
        "status".into(),
        out.status.map(|s| s.as_str()).unwrap_or("FAILED").into(),
    );
    rec.insert("duration".into(), json!(out.duration_ms as f64 / 1000.0));
    rec.insert("image_size".into(), out.image_size.into());
    rec.insert("result_image_uuid".into(), json!(out.result_image));
    rec.insert("metadata".into(), metadata);
    rec.insert(
        "result".into(),
        json!({"image": out.result_image, "tag": null}),
    );
    rec.insert("exit_code".into(), json!(out.exit_code));
    rec.insert(
        "image".into(),
        out.result_image.clone().unwrap_or_default().into(),
    );
    rec.insert("tag".into(), "".into());
    rec.insert("stdout".into(), "".into());
    rec.insert("stderr".into(), "".into());
    rec.insert("backend".into(), ctx.backend.name().into());
    rec.insert("error".into(), out.error.clone().unwrap_or_default().into());
    rec
}
