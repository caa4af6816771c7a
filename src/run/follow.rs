//! Following a spawned operation to its end: its events through the on-output hooks to the
//! formatter, Ctrl-C and a closed reader handled, into an `Outcome`.

use super::*;

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
pub(super) fn write_emit(emit: &Emit<'_>) -> Result<(), ()> {
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
