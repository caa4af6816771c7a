//! The end of a run: what is said about it, the session moved (or not), the result record,
//! the on-exit hooks and the exit code.

use super::*;

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
pub(super) fn finish(
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
        crate::error!(
            "Operation {} ran, but its changes were not kept ({detail}); the session stays where it was",
            out.op
        );
    } else if status != Status::Success && out.store_full {
        let detail = out.error.as_deref().unwrap_or("failed");
        crate::error!(
            "Operation {} could not run: the store's disk is full ({detail}); free space under the store and try again",
            out.op
        );
    } else if status != Status::Success && (out.oom || out.layer_limit_hit) {
        // "killed: out of memory (limit 256 MiB)", "stopped: the writable layer grew…"
        let detail = out.error.as_deref().unwrap_or("hit a limit");
        crate::error!("Operation {} {detail}", out.op);
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
pub(super) fn limit_warnings(out: &Outcome) {
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
pub(super) fn result_record(ctx: &Context, req: &SpawnRequest, out: &Outcome) -> Record {
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
