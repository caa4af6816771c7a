//! The operation's SSE event stream, read on a thread that reconnects with `Last-Event-Id`
//! after a break (probing the operation first, as §2.9.1 describes) and hands events over
//! a channel, so the caller can notice Ctrl-C while it waits.

use super::Api;
use crate::backend::{BackendError, EventItem, EventStream};
use crate::wire::Event;
use std::io::BufRead;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

/// Failed probes in a row before the stream gives up.
const MAX_RECONNECTS: u32 = 8;

/// How long one event-stream connection is kept before it is resumed on a new one
/// (`$CONTREE_STREAM_SPAN` seconds overrides the 60 s, for tests of the resume path).
fn stream_span() -> Duration {
    std::env::var("CONTREE_STREAM_SPAN")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(60))
}

pub struct SseStream {
    rx: Receiver<Result<EventItem, BackendError>>,
    done: bool,
}

impl SseStream {
    pub fn open(api: Api, op: String, follow: bool) -> Result<SseStream, BackendError> {
        // Fail early (404, 401) on the caller's thread.
        let first = connect(&api, &op, follow, 0)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(256);
        std::thread::spawn(move || pump(api, op, follow, first, tx));
        Ok(SseStream { rx, done: false })
    }
}

fn connect(
    api: &Api,
    op: &str,
    follow: bool,
    last: u64,
) -> Result<reqwest::blocking::Response, BackendError> {
    let path = format!(
        "/operations/{op}/events{}",
        if follow { "?follow=1" } else { "" }
    );
    api.call(
        || {
            // A connection is used for at most this long, then resumed by id: a silent
            // dead connection (the server sends keepalives every 15 s) cannot hang a run.
            let mut rb = api
                .request(reqwest::Method::GET, &path)
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .timeout(stream_span());
            if last > 0 {
                rb = rb.header("Last-Event-Id", last.to_string());
            }
            rb
        },
        true,
    )
}

/// Reads frames until `completion`; after a break, probes the operation: still running →
/// reconnect with `Last-Event-Id`; finished → one drain without `follow`, which must end
/// with `completion` (§2.9.1).
fn pump(
    api: Api,
    op: String,
    follow: bool,
    first: reqwest::blocking::Response,
    tx: SyncSender<Result<EventItem, BackendError>>,
) {
    let mut last = 0u64;
    let mut response = Some(first);
    let mut draining = !follow;
    let mut failures = 0;
    loop {
        let r = match response.take() {
            Some(r) => r,
            None => match connect(&api, &op, !draining, last) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            },
        };
        let before = last;
        match read_frames(r, &mut last, &tx) {
            Frames::Completed | Frames::ReceiverGone => return,
            Frames::Ended => {}
        }
        if !follow {
            // The log as it is was asked for: no completion yet is fine.
            return;
        }
        if draining {
            let _ = tx.send(Err(BackendError::Unreachable(format!(
                "operation {op} event log ended without completion"
            ))));
            return;
        }
        match api.get_json::<crate::wire::Operation>(&format!("/operations/{op}")) {
            Ok(o) if o.status.is_terminal() => draining = true,
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        if last == before {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

enum Frames {
    Completed,
    Ended,
    ReceiverGone,
}

fn read_frames(
    r: reqwest::blocking::Response,
    last: &mut u64,
    tx: &SyncSender<Result<EventItem, BackendError>>,
) -> Frames {
    let reader = std::io::BufReader::new(r);
    let (mut kind, mut data, mut id) = (String::new(), String::new(), None::<u64>);
    for line in reader.split(b'\n') {
        let Ok(line) = line else { return Frames::Ended };
        let line = String::from_utf8_lossy(&line);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if line.is_empty() {
            if !data.is_empty() {
                if kind == "sse_error" {
                    return Frames::Ended;
                }
                if let Ok(mut event) = serde_json::from_str::<Event>(&data) {
                    let event_id = id.unwrap_or(event.id);
                    if event_id > *last {
                        *last = event_id;
                        let bytes = event.stream_bytes().unwrap_or_default();
                        if matches!(event.kind.as_str(), "stdout" | "stderr" | "stdin") {
                            // As the local engine hands them: the bytes beside the header.
                            event.data.remove("value");
                            event.data.remove("encoding");
                            event.data.remove("truncated");
                        }
                        let completed = event.kind == "completion";
                        if tx
                            .send(Ok(EventItem {
                                event,
                                bytes,
                                passed: 0,
                            }))
                            .is_err()
                        {
                            return Frames::ReceiverGone;
                        }
                        if completed {
                            return Frames::Completed;
                        }
                    }
                }
            }
            kind.clear();
            data.clear();
            id = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.trim().parse().ok(),
            "event" => kind = value.to_string(),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    Frames::Ended
}

impl EventStream for SseStream {
    fn next_event(&mut self) -> Result<Option<EventItem>, BackendError> {
        if self.done {
            return Ok(None);
        }
        loop {
            // Checked before each event too: a chatty command never lets the wait time out.
            if crate::interrupt::take() {
                return Err(BackendError::Interrupted);
            }
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(item)) => {
                    if item.event.kind == "completion" {
                        self.done = true;
                    }
                    return Ok(Some(item));
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
    }
}
