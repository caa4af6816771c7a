//! Operations: `ps`, `show`, `kill`, `wait`, `op events`, and operation references
//! (`HEAD`, `@-2`, a history id) resolved against the session.

use super::args::{KillFlags, OpCommand, PsFlags, ShowFlags, WaitFlags};
use crate::backend::{is_uuid, BackendError, EventStream, OpFilter};
use crate::context::{backend_err, Context};
use crate::error::{CommandError, CommandResult};
use crate::format::{print_records, record, record_order, Format, Record};
use crate::wire::{Operation, Status};
use crate::{info, warn};
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

pub fn dispatch(ctx: &Context, command: OpCommand) -> CommandResult<i32> {
    match command {
        OpCommand::List(f) => list(ctx, f),
        OpCommand::Show(f) => show(ctx, f),
        OpCommand::Cancel(f) => cancel(ctx, f),
        OpCommand::Wait(f) => wait(ctx, f),
        OpCommand::Events { ops } => events(ctx, &ops),
    }
}

/// Resolves `UUID_OR_REF` words (§3.8); all failures are reported together.
pub fn resolve_refs(ctx: &Context, words: &[String]) -> CommandResult<Vec<String>> {
    let mut ops = Vec::new();
    let mut failures = Vec::new();
    for token in words.iter().flat_map(|w| w.split_whitespace()) {
        if is_uuid(token) {
            ops.push(token.to_ascii_lowercase());
            continue;
        }
        match resolve_ref(ctx, token) {
            Ok(op) => ops.push(op),
            Err(reason) => failures.push((token.to_string(), reason)),
        }
    }
    if failures.is_empty() {
        return Ok(ops);
    }
    if failures.len() == 1 && failures[0].1.is_empty() {
        return Err(CommandError::user(format!(
            "Invalid operation reference: {}",
            failures[0].0
        )));
    }
    let parts: Vec<String> = failures
        .iter()
        .map(|(t, r)| {
            if r.is_empty() {
                t.clone()
            } else {
                format!("{t} [{t}: {r}]")
            }
        })
        .collect();
    Err(CommandError::user(format!(
        "Invalid operation reference(s): {}",
        parts.join(" ")
    )))
}

fn resolve_ref(ctx: &Context, token: &str) -> Result<String, String> {
    let back = |n: &str| n.parse::<i64>().map_err(|_| String::new());
    let (kind, n): (char, i64) = if matches!(token, "HEAD" | "@" | ":") {
        ('-', 0)
    } else if token == "HEAD~" {
        ('-', 1)
    } else if let Some(n) = token.strip_prefix("HEAD~").or(token.strip_prefix("HEAD-")) {
        ('-', back(n)?)
    } else if let Some(n) = token.strip_prefix("@-").or(token.strip_prefix(":-")) {
        ('-', back(n)?)
    } else if let Some(n) = token.strip_prefix("@+").or(token.strip_prefix(":+")) {
        ('+', back(n)?)
    } else if let Some(n) = token.strip_prefix('@').or(token.strip_prefix(':')) {
        ('=', back(n)?)
    } else if token.chars().all(|c| c.is_ascii_digit()) && !token.is_empty() {
        ('=', back(token)?)
    } else {
        return Err(String::new());
    };
    let info = ctx
        .session()
        .map_err(|e| e.message)?
        .ok_or_else(|| "no active session".to_string())?;
    let history = ctx
        .sessions
        .history(&ctx.session_key)
        .map_err(|e| e.to_string())?;
    let by_id = |id: i64| history.iter().find(|h| h.id == id);
    let mut entry = by_id(info.tip_id).ok_or("the session has no tip")?;
    match kind {
        '-' => {
            for i in 0..n {
                entry = entry.parent_id.and_then(by_id).ok_or_else(|| {
                    format!("Cannot go back {n} steps: only {i} ancestors available")
                })?;
            }
        }
        '+' => {
            for i in 0..n {
                entry = history
                    .iter()
                    .filter(|h| h.parent_id == Some(entry.id))
                    .max_by_key(|h| h.id)
                    .ok_or_else(|| {
                        format!("Cannot go forward {n} steps: only {i} descendants available")
                    })?;
            }
        }
        _ => {
            entry =
                by_id(n).ok_or_else(|| format!("History entry {n} not found in this session"))?;
        }
    }
    entry
        .operation
        .clone()
        .ok_or_else(|| format!("History entry {} has no operation UUID", entry.id))
}

fn summary_record(op: &Operation) -> Record {
    record(json!({
        "uuid": op.uuid,
        "kind": op.kind,
        "status": op.status.as_str(),
        "created_at": op.created_at,
        "duration": op.duration,
        "image_uuid": op.image_uuid,
        "result_image_uuid": op.result_image_uuid,
        "error": op.error,
    }))
}

pub fn list(ctx: &Context, flags: PsFlags) -> CommandResult<i32> {
    let statuses = match (&flags.status, flags.all) {
        (Some(s), _) => vec![Status::parse(s).ok_or_else(|| {
            CommandError::user(format!(
                "unknown status '{s}' (expected PENDING, ASSIGNED, EXECUTING, SUCCESS, FAILED, CANCELLED or P A E S F C)"
            ))
        })?],
        (None, true) => Vec::new(),
        (None, false) => vec![Status::Pending, Status::Assigned, Status::Executing],
    };
    if let Some(k) = &flags.kind {
        if k != "instance" && k != "image_import" {
            return Err(CommandError::user(format!(
                "unknown kind '{k}' (expected instance or image_import)"
            )));
        }
    }
    let (since, until) = super::when::bounds(flags.since.as_deref(), flags.until.as_deref())
        .map_err(CommandError::user)?;
    let filter = OpFilter {
        statuses,
        kind: flags.kind.clone(),
        limit: Some(flags.show_max + 1),
        since,
        until,
    };
    let mut ops = ctx.backend.operations(&filter).map_err(backend_err)?;
    if ops.len() > flags.show_max {
        ops.truncate(flags.show_max);
        warn!(
            "Showing the first {} operations; raise -M/--show-max to see more",
            flags.show_max
        );
    }
    if flags.quiet {
        let mut out = std::io::stdout().lock();
        for op in &ops {
            let _ = writeln!(out, "{}", op.uuid);
        }
        return Ok(0);
    }
    let records: Vec<Record> = ops.iter().map(summary_record).collect();
    print_records(ctx.format, &records)?;
    Ok(0)
}

/// The operation's recorded stdout and stderr, from its event log.
/// The operation's stdout and stderr as its log has them, and whether the log was cut
/// down to its `completion` (`output_pruned`: the store's retention, docs/store.md).
fn recorded_output(ctx: &Context, op: &str) -> CommandResult<(Vec<u8>, Vec<u8>, bool)> {
    let mut stream = ctx.backend.events(op, false).map_err(backend_err)?;
    let (mut out, mut err, mut pruned) = (Vec::new(), Vec::new(), false);
    while let Some(item) = stream.next_event().map_err(backend_err)? {
        match item.event.kind.as_str() {
            "stdout" => out.extend_from_slice(&item.bytes),
            "stderr" => err.extend_from_slice(&item.bytes),
            "completion" => {
                pruned = item.event.data.get("output_pruned") == Some(&Value::Bool(true));
            }
            _ => {}
        }
    }
    Ok((out, err, pruned))
}

fn exit_code_of(op: &Operation) -> Option<i64> {
    op.metadata
        .as_ref()?
        .pointer("/result/state/exit_code")?
        .as_i64()
}

pub fn show(ctx: &Context, flags: ShowFlags) -> CommandResult<i32> {
    let ops = resolve_refs(ctx, &flags.ops)?;
    let mut code = 0;
    for uuid in ops {
        let op = match ctx.backend.operation(&uuid) {
            Ok(op) => op,
            Err(e) => {
                crate::error!("Failed to fetch {uuid}: {e}");
                code = 1;
                continue;
            }
        };
        if flags.raw {
            println!("{}", serde_json::to_string(&op).unwrap_or_default());
            continue;
        }
        let (stdout, stderr, pruned) = recorded_output(ctx, &uuid)?;
        let mut rec = record(json!({
            "uuid": op.uuid,
            "status": op.status.as_str(),
            "exit_code": exit_code_of(&op),
            "duration": op.duration,
            "result_image_uuid": op.result_image_uuid,
            "kind": op.kind,
            "created_at": op.created_at,
            "image_size": op.image_size,
            "consumed_cpu": op.consumed_cpu,
            "consumed_memory": op.consumed_memory,
            "image_uuid": op.image_uuid,
            "image": op.result_image_uuid.clone().unwrap_or_default(),
            "tag": "",
        }));
        if ctx.format != Format::Default {
            let mut result = op
                .metadata
                .as_ref()
                .and_then(|m| m.get("result").cloned())
                .unwrap_or_else(|| json!({}));
            if let Some(r) = result.as_object_mut() {
                r.insert(
                    "stdout".into(),
                    String::from_utf8_lossy(&stdout).into_owned().into(),
                );
                r.insert(
                    "stderr".into(),
                    String::from_utf8_lossy(&stderr).into_owned().into(),
                );
            }
            rec.insert("result".into(), result);
        }
        rec.insert("error".into(), json!(op.error));
        if pruned {
            rec.insert("output_pruned".into(), true.into());
        }
        print_records(ctx.format, &[rec])?;
        if pruned && ctx.format == Format::Default {
            crate::info!(
                "the output of {uuid} was pruned: the store keeps finished operations' \
                 event logs for [store] events_max_age, up to events_max_bytes in all"
            );
        }
        if ctx.format == Format::Default {
            write_text(&mut std::io::stdout().lock(), &stdout);
            write_text(&mut std::io::stderr().lock(), &stderr);
        }
    }
    Ok(code)
}

fn write_text(out: &mut dyn Write, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let _ = out.write_all(bytes);
    if !bytes.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

pub fn cancel(ctx: &Context, flags: KillFlags) -> CommandResult<i32> {
    let mut ops = resolve_refs(ctx, &flags.ops)?;
    if flags.all {
        if !ops.is_empty() {
            warn!("--all cancels every active operation; the UUIDs given are included");
        }
        let active = active_ops(ctx)?;
        if active.is_empty() && ops.is_empty() {
            info!("No active operations to cancel");
            return Ok(0);
        }
        ops.extend(active.into_iter().map(|o| o.uuid));
        ops.dedup();
    } else if ops.is_empty() {
        return Err(CommandError::user(
            "Provide at least one UUID, or use --all",
        ));
    }
    let mut code = 0;
    for op in ops {
        match ctx.backend.cancel(&op) {
            Ok(()) => info!("Cancelled operation {op}"),
            Err(e) => {
                crate::error!("Failed to cancel {op}: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// Every operation that has not finished yet.
fn active_ops(ctx: &Context) -> CommandResult<Vec<Operation>> {
    ctx.backend
        .operations(&OpFilter {
            statuses: vec![Status::Pending, Status::Assigned, Status::Executing],
            ..Default::default()
        })
        .map_err(backend_err)
}

pub fn wait(ctx: &Context, flags: WaitFlags) -> CommandResult<i32> {
    let mut pending = resolve_refs(ctx, &flags.ops)?;
    if flags.all {
        let active = active_ops(ctx)?;
        pending.extend(active.into_iter().map(|o| o.uuid));
    }
    if pending.is_empty() {
        return Err(CommandError::user(
            "Provide at least one UUID, or use --all",
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(flags.timeout);
    let mut code = 0;
    let record = |op: &Operation, timed_out: bool| {
        let mut rec = Record::new();
        rec.insert("uuid".into(), op.uuid.clone().into());
        rec.insert("status".into(), op.status.as_str().into());
        rec.insert("exit_code".into(), json!(exit_code_of(op)));
        rec.insert("timed_out".into(), timed_out.into());
        rec.insert("duration".into(), json!(op.duration));
        rec.insert("result_image_uuid".into(), json!(op.result_image_uuid));
        rec.insert("error".into(), json!(op.error));
        record_order(rec, &[], &["error"])
    };
    let mut waiting: Vec<Waiter> = pending.into_iter().map(Waiter::new).collect();
    // Each round waits on the first operation for up to `slice` and only looks at the
    // others, so that each is printed once it has finished, in the order they finish.
    let mut slice = Duration::from_millis(50);
    let mut interrupted = false;
    loop {
        let mut still = Vec::new();
        for (i, mut waiter) in waiting.into_iter().enumerate() {
            let until = if i == 0 && !interrupted {
                (Instant::now() + slice).min(deadline)
            } else {
                Instant::now()
            };
            match waiter.wait(ctx, Some(until))? {
                Waited::Done(op) => {
                    if op.status != Status::Success {
                        code = code.max(1);
                    }
                    if let Some(c) = exit_code_of(&op).filter(|c| *c > 0) {
                        code = code.max(c as i32);
                    }
                    print_records(ctx.format, &[record(&op, false)])?;
                }
                Waited::Pending => still.push(waiter),
                Waited::Interrupted => {
                    interrupted = true;
                    still.push(waiter);
                }
            }
        }
        waiting = still;
        if waiting.is_empty() {
            return Ok(code);
        }
        if interrupted || Instant::now() >= deadline {
            break;
        }
        slice = (slice * 2).min(Duration::from_millis(500));
    }
    for waiter in &waiting {
        let op = ctx.backend.operation(&waiter.op).map_err(backend_err)?;
        print_records(ctx.format, &[record(&op, true)])?;
    }
    warn!(
        "Timeout: {} operation(s) did not finish in {}s",
        waiting.len(),
        flags.timeout
    );
    Ok(code.max(1))
}

/// Where waiting for an operation got to (see `Waiter::wait`).
pub(super) enum Waited {
    /// It has finished: its record.
    Done(Box<Operation>),
    /// Not yet (the time given is up).
    Pending,
    /// Ctrl-C.
    Interrupted,
}

/// Waits for one operation by following its events (the backend's follower, woken as the
/// operation's log grows) to `completion`, then reads its record.
pub(super) struct Waiter<'a> {
    op: String,
    events: Option<Box<dyn EventStream + 'a>>,
    /// `completion` has been seen: the record follows at once.
    completed: bool,
}

impl<'a> Waiter<'a> {
    pub(super) fn new(op: String) -> Self {
        Waiter {
            op,
            events: None,
            completed: false,
        }
    }

    /// Waits until the operation has finished, or `until` (if any) has passed.
    pub(super) fn wait(
        &mut self,
        ctx: &'a Context,
        until: Option<Instant>,
    ) -> CommandResult<Waited> {
        let past = || until.is_some_and(|t| Instant::now() >= t);
        let mut pause = Duration::from_millis(1);
        let mut ended = false;
        loop {
            if self.completed || self.events.is_none() {
                let op = ctx.backend.operation(&self.op).map_err(backend_err)?;
                if op.status.is_terminal() {
                    return Ok(Waited::Done(Box::new(op)));
                }
                if self.completed || ended {
                    // The log's `completion` comes just before the record's ending; a
                    // stream that ended without one is opened again. A moment more, then.
                    if past() {
                        return Ok(Waited::Pending);
                    }
                    if crate::interrupt::take() {
                        return Ok(Waited::Interrupted);
                    }
                    let left = until.map_or(pause, |t| t.saturating_duration_since(Instant::now()));
                    std::thread::sleep(pause.min(left));
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                if self.completed {
                    continue;
                }
                self.events = Some(ctx.backend.events(&self.op, true).map_err(backend_err)?);
                ended = false;
            }
            let events = self.events.as_mut().expect("opened above");
            events.set_deadline(until);
            match events.next_event() {
                Ok(Some(item)) => self.completed |= item.event.kind == "completion",
                Ok(None) if self.completed => {}
                Ok(None) if past() => return Ok(Waited::Pending),
                // Ended without `completion` (a remote stream that gave up): look again.
                Ok(None) => {
                    self.events = None;
                    ended = true;
                }
                Err(BackendError::Interrupted) => return Ok(Waited::Interrupted),
                Err(e) => return Err(backend_err(e)),
            }
        }
    }
}

pub fn events(ctx: &Context, words: &[String]) -> CommandResult<i32> {
    let ops = resolve_refs(ctx, words)?;
    let mut records = Vec::new();
    for op in ops {
        let mut stream = ctx.backend.events(&op, false).map_err(backend_err)?;
        while let Some(item) = stream.next_event().map_err(backend_err)? {
            let mut event = item.event;
            if matches!(event.kind.as_str(), "stdout" | "stderr" | "stdin")
                && !event.data.contains_key("value")
            {
                let (value, encoding) = crate::wire::encode_bytes(&item.bytes);
                event.data.insert("value".into(), value.into());
                event.data.insert("encoding".into(), encoding.into());
            }
            let mut rec = Record::new();
            rec.insert("uuid".into(), op.clone().into());
            rec.insert("id".into(), event.id.into());
            rec.insert("ts".into(), event.ts.into());
            rec.insert("type".into(), event.kind.into());
            rec.insert("spid".into(), json!(event.spid));
            rec.insert("data".into(), Value::Object(event.data));
            records.push(rec);
        }
    }
    print_records(ctx.format, &records)?;
    Ok(0)
}
