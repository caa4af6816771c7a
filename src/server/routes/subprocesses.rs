//! `/operations/{id}/subprocesses…`: the processes of a running instance. Spid 1 is the
//! main command; `POST` starts more (2, 3, …) in the same sandbox (the engine's `exec`).
//! Each one's result is folded from its events, so it reads the same while it runs, after
//! the operation ended, and after a restart of the server.

use super::*;
use crate::wire::ExecSpec;

/// `POST /operations/{id}/subprocesses`: an `ExecSpec` started in the operation's sandbox.
pub(super) async fn exec(
    Caller { st, ns }: Caller,
    Path(op): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    accepting(&st)?;
    let op = parse_uuid(&op, "operation")?;
    let spec: ExecSpec = json_body(body, st.opts.max_body).await?;
    let at = op.clone();
    let spid = blocking(&st, move |st| {
        own_op(st, &ns.name, &op)?;
        let row = st
            .engine
            .store()
            .op(&op)?
            .ok_or_else(|| ApiError::not_found(format!("operation {op} not found")))?;
        if row.kind != "instance" {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("operation {op} is an {}, not an instance", row.kind),
            ));
        }
        if matches!(row.status, Status::Pending | Status::Assigned) {
            return Err(too_early(format!(
                "operation {op} has not started its command yet"
            )));
        }
        Ok(st.engine.exec(&op, &spec)?)
    })
    .await;
    let spid = match spid {
        Err(e) if e.status.as_u16() == 425 => {
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(resp);
        }
        other => other?,
    };
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/v1/operations/{at}/subprocesses/{spid}"),
        )],
        Json(json!({ "spid": spid })),
    )
        .into_response())
}

/// 425 with `Retry-After`: ask again in a moment.
fn too_early(message: String) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(425).unwrap_or(StatusCode::CONFLICT),
        message,
    )
}

/// `GET /operations/{id}/subprocesses/{spid}`: an `InstanceResult` folded from the events
/// of `spid`. While it runs, `exit_code` and `signal` are -1 and the counters are zeros.
pub(super) async fn subprocess(
    Caller { st, ns }: Caller,
    Path((op, spid)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let op = parse_uuid(&op, "operation")?;
    let spid = parse_spid(&spid)?;
    blocking(&st, move |st| {
        own_op(st, &ns.name, &op)?;
        let folded = fold(&st.engine, &op, spid);
        let Some(pid) = folded.pid else {
            return Err(ApiError::not_found(format!(
                "operation {op} has no subprocess {spid}"
            )));
        };
        let exit = folded.exit.as_ref();
        let get =
            |key: &str, default: Value| exit.and_then(|e| e.get(key)).cloned().unwrap_or(default);
        Ok(Json(json!({
            "state": {
                "pid": pid,
                "exit_code": get("code", json!(-1)),
                "signal": get("signal", json!(-1)),
                "core_dump": get("core_dump", json!(false)),
                "timed_out": get("timed_out", json!(false)),
                "stopped": false,
                "continued": false,
            },
            "resources": wire::process_resources(exit.and_then(|e| e.get("resources"))),
            "stdout": folded.stdout.to_json(),
            "stderr": folded.stderr.to_json(),
        })))
    })
    .await
}

/// A spid of the path: 1 or more.
fn parse_spid(text: &str) -> ApiResult<u32> {
    text.parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::bad_request(format!("invalid spid '{text}'")))
}

/// At most this much of each stream goes into a result (the event stream has it all).
const RESULT_CAP: usize = 16 << 20;

/// One stream of a process's output as a result shows it.
#[derive(Default)]
pub(super) struct Collected {
    bytes: Vec<u8>,
    /// Cut at `truncate_output_at` (the log says so), or here at `RESULT_CAP`.
    truncated: bool,
}

impl Collected {
    pub(super) fn to_json(&self) -> Value {
        let (value, encoding) = wire::encode_bytes(&self.bytes);
        json!({ "value": value, "encoding": encoding, "truncated": self.truncated })
    }
}

/// What the events of one process say, as they are now.
#[derive(Default)]
pub(super) struct Folded {
    /// From its `spawn` event: none means no such process.
    pub(super) pid: Option<u64>,
    pub(super) stdout: Collected,
    pub(super) stderr: Collected,
    /// Its `exit` event's data, once it ended.
    pub(super) exit: Option<serde_json::Map<String, Value>>,
}

/// Folds the operation's events of process `spid`: its output (the first `RESULT_CAP`
/// bytes of each stream), its pid and its ending.
pub(super) fn fold(engine: &LocalEngine, op: &str, spid: u32) -> Folded {
    let mut folded = Folded::default();
    let Ok(mut events) = engine.events(op, false) else {
        return folded;
    };
    while let Ok(Some(item)) = events.next_event() {
        let event = &item.event;
        if event.spid != Some(spid) {
            continue;
        }
        let stream = match event.kind.as_str() {
            "spawn" => {
                folded.pid = event.data.get("pid").and_then(Value::as_u64);
                continue;
            }
            "exit" => {
                folded.exit = Some(event.data.clone());
                continue;
            }
            "truncated" => event.data.get("stream").and_then(Value::as_str),
            kind => Some(kind),
        };
        let buf = match stream {
            Some("stdout") => &mut folded.stdout,
            Some("stderr") => &mut folded.stderr,
            _ => continue,
        };
        if event.kind == "truncated" {
            buf.truncated = true;
            continue;
        }
        let room = RESULT_CAP.saturating_sub(buf.bytes.len());
        buf.truncated |= item.bytes.len() > room;
        buf.bytes
            .extend_from_slice(&item.bytes[..item.bytes.len().min(room)]);
    }
    folded
}

/// `DELETE .../subprocesses/{spid}?signal=NAME`: the signal (SIGKILL without one) goes to
/// the process group of `spid`. Its end shows in the event log as usual; for the main
/// process that ends the operation, which is not cancelled.
pub(super) async fn signal(
    Caller { st, ns }: Caller,
    Path((op, spid)): Path<(String, String)>,
    Query(q): Params,
) -> ApiResult<Response> {
    let op = parse_uuid(&op, "operation")?;
    let spid = parse_spid(&spid)?;
    let name = param(&q, "signal").unwrap_or("KILL");
    let sig = parse_signal(name)
        .ok_or_else(|| ApiError::bad_request(format!("unknown signal '{name}'")))?;
    blocking(&st, move |st| {
        own_op(st, &ns.name, &op)?;
        match st.engine.signal(&op, spid, sig) {
            Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
            Err(crate::backend::BackendError::Invalid(msg)) => {
                Err(ApiError::new(StatusCode::CONFLICT, msg))
            }
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// A signal given as a number (`15`) or a name with or without `SIG` (`TERM`, `SIGTERM`).
fn parse_signal(text: &str) -> Option<i32> {
    if let Ok(n) = text.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

pub(super) async fn stdin(
    Caller { st, ns }: Caller,
    Path((op, spid)): Path<(String, String)>,
    body: Body,
) -> ApiResult<StatusCode> {
    let op = parse_uuid(&op, "operation")?;
    let repr: StdinRepr = json_body(body, st.opts.max_body).await?;
    let bytes = repr
        .bytes()
        .map_err(|e| ApiError::bad_request(format!("stdin is not valid base64: {e}")))?;
    blocking(&st, move |st| {
        own_op(st, &ns.name, &op)?;
        if spid != "1" {
            return Err(ApiError::not_found(format!(
                "operation {op} has no subprocess {spid} with a stdin"
            )));
        }
        // Taken out of the map while writing, so a full pipe never blocks other requests.
        let Some(mut pipe) = lock(&st.stdin).remove(&op) else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("the stdin of operation {op} is closed"),
            ));
        };
        use std::io::Write;
        // A process that has exited reads nothing more: its input is dropped, as a
        // closed pipe would.
        let alive = pipe.write_all(&bytes).is_ok();
        if alive && repr.close != Some(true) {
            lock(&st.stdin).insert(op, pipe);
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
