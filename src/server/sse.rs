//! `GET /v1/operations/{op}/events`: the operation's event log as Server-Sent Events.
//!
//! Each frame is `id: N`, `event: TYPE`, `data: <OperationEvent JSON>`. Without `follow`
//! the stream sends what the log holds and closes; with `follow=1` it stays open until the
//! log's `completion`. `Last-Event-Id` (or `?since=N`) resumes after event N. The log is
//! read on a blocking thread that feeds a bounded channel, so
//! a slow client slows only its own reader. A failure after the 200 is reported as the
//! spec says: a comment, then an `sse_error` frame.

use super::auth::Namespace;
use super::routes::{blocking, own_op, parse_uuid};
use super::{ApiError, Shared};
use crate::backend::Backend;
use crate::engine::eventlog;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const KEEPALIVE: Duration = Duration::from_secs(15);

/// How often a follower with nothing to send checks that its client is still there.
const CHECK_CLIENT: Duration = Duration::from_millis(250);

/// Event streams open at once; more get 503 with `Retry-After`.
const MAX_STREAMS: usize = 1024;
static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

pub async fn events(
    State(st): State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path(op): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let op = parse_uuid(&op, "operation")?;
    let param = |name: &str| {
        q.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let follow = param("follow").is_some_and(|v| matches!(v.as_str(), "" | "1" | "true" | "yes"));
    let since_text = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| param("since"));
    let since = match since_text.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("event id '{t}' is not a number")))?,
    };
    // Only that process's events (`completion`, spid 0, still ends the stream).
    let spid = match param("spid").as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(
            t.parse::<u32>()
                .map_err(|_| ApiError::bad_request(format!("spid '{t}' is not a number")))?,
        ),
    };
    let check = op.clone();
    blocking(&st, move |st| {
        own_op(st, &ns.name, &check)?;
        Ok(())
    })
    .await?;

    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let pump_state = st.clone();
    // A thread of its own, not one of tokio's blocking pool: long-lived followers must not
    // starve the short requests that the pool serves. Their number is bounded.
    let open = OPEN_STREAMS.fetch_add(1, Ordering::SeqCst);
    if open >= MAX_STREAMS {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many open event streams ({MAX_STREAMS}); retry later"),
        ));
    }
    let spawned = std::thread::Builder::new()
        .name("sse".into())
        .spawn(move || {
            pump(&pump_state, &op, follow, since, spid, &tx);
            OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::internal(format!(
            "cannot start a stream thread: {e}"
        )));
    }
    let stop = st.shutdown.clone();
    let stream = futures_util::stream::unfold((rx, stop), |(mut rx, mut stop)| async move {
        let next = tokio::select! {
            frame = rx.recv() => frame,
            _ = tokio::time::sleep(KEEPALIVE) => Some(": keepalive\n\n".to_string()),
            // On shutdown the stream just ends; the client resumes with Last-Event-Id.
            _ = stop.wait_for(|s| *s) => None,
        };
        next.map(|f| (Ok::<_, std::convert::Infallible>(f), (rx, stop)))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Follows the operation's events (the engine's follower, as every reader of a log does)
/// and sends frames until `completion`, or until the client is gone or the server stops,
/// which the follower's bounded waits give a chance to notice. The follower also recovers
/// an operation whose supervisor died, which appends the `completion` it never wrote.
fn pump(
    st: &Shared,
    op: &str,
    follow: bool,
    since: u64,
    spid: Option<u32>,
    tx: &tokio::sync::mpsc::Sender<String>,
) {
    let fail = |msg: String| {
        let _ = tx.blocking_send(format!(
            ": stream ended with error, retry since last event id\n\nevent: sse_error\ndata: {}\n\n",
            msg.replace('\n', " ")
        ));
    };
    let mut events = match st.engine.events(op, follow) {
        Ok(events) => events,
        Err(e) => return fail(e.to_string()),
    };
    loop {
        if follow {
            events.set_deadline(Some(Instant::now() + CHECK_CLIENT));
        }
        match events.next_event() {
            Ok(Some(item)) => {
                let done = item.event.kind == "completion";
                let wanted = spid.is_none_or(|n| item.event.spid.unwrap_or(0) == n);
                if item.event.id > since && wanted {
                    let event = eventlog::to_wire(item.event, &item.bytes);
                    let data = match serde_json::to_string(&event) {
                        Ok(d) => d,
                        Err(e) => return fail(e.to_string()),
                    };
                    let frame = format!(
                        "id: {}\nevent: {}\ndata: {}\n\n",
                        event.id, event.kind, data
                    );
                    if tx.blocking_send(frame).is_err() {
                        return;
                    }
                }
                if done {
                    return;
                }
            }
            Ok(None) if !follow => return,
            // Nothing new for a while: is anybody still listening?
            Ok(None) => {
                if tx.is_closed() || *st.shutdown.borrow() {
                    return;
                }
            }
            Err(e) => return fail(e.to_string()),
        }
    }
}
