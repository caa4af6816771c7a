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
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(60))
}

pub struct SseStream {
    rx: Receiver<Result<EventItem, BackendError>>,
    done: bool,
    /// See `EventStream::set_deadline`.
    deadline: Option<std::time::Instant>,
}

impl SseStream {
    pub fn open(api: Api, op: String, follow: bool) -> Result<SseStream, BackendError> {
        // Fail early (404, 401) on the caller's thread.
        let first = connect(&api, &op, follow, 0)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(256);
        std::thread::spawn(move || pump(api, op, follow, first, tx));
        Ok(SseStream {
            rx,
            done: false,
            deadline: None,
        })
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

#[derive(Debug, PartialEq, Eq)]
enum Frames {
    Completed,
    Ended,
    ReceiverGone,
}

/// Reads one connection's frames (the WHATWG "text/event-stream" format: `field: value`
/// lines, a blank line ends an event, `:` starts a comment), sending each new event.
fn read_frames(
    r: impl std::io::Read,
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
    fn set_deadline(&mut self, deadline: Option<std::time::Instant>) {
        self.deadline = deadline;
    }

    fn next_event(&mut self) -> Result<Option<EventItem>, BackendError> {
        if self.done {
            return Ok(None);
        }
        loop {
            // Checked before each event too: a chatty command never lets the wait time out.
            if crate::interrupt::take() {
                return Err(BackendError::Interrupted);
            }
            let mut wait = Duration::from_millis(100);
            if let Some(deadline) = self.deadline {
                wait = wait.min(deadline.saturating_duration_since(std::time::Instant::now()));
            }
            match self.rx.recv_timeout(wait) {
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
                Err(RecvTimeoutError::Timeout) => {
                    if self
                        .deadline
                        .is_some_and(|t| std::time::Instant::now() >= t)
                    {
                        return Ok(None);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Read};

    /// Hands `text` out `step` bytes at a time, as a network may, then ends (or fails).
    struct Pieces {
        text: Vec<u8>,
        at: usize,
        step: usize,
        fail_at_end: bool,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.text.len() {
                if self.fail_at_end {
                    return Err(io::Error::from(io::ErrorKind::ConnectionReset));
                }
                return Ok(0);
            }
            let n = self.step.min(buf.len()).min(self.text.len() - self.at);
            buf[..n].copy_from_slice(&self.text[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn pieces(text: &str, step: usize) -> Pieces {
        Pieces {
            text: text.as_bytes().to_vec(),
            at: 0,
            step,
            fail_at_end: false,
        }
    }

    /// What one connection hands over, resuming after event `last`.
    fn read(r: impl Read, last: u64) -> (Frames, Vec<EventItem>, u64) {
        let (tx, rx) = std::sync::mpsc::sync_channel(256);
        let mut last = last;
        let frames = read_frames(r, &mut last, &tx);
        drop(tx);
        let items = rx
            .into_iter()
            .map(|r| r.expect("no error is sent"))
            .collect();
        (frames, items, last)
    }

    fn event(id: u64, kind: &str, data: &str) -> String {
        format!(r#"{{"id":{id},"ts":"2026-05-01T12:00:00Z","type":"{kind}","data":{data}}}"#)
    }

    fn frame(id: u64, kind: &str, data: &str) -> String {
        format!("data: {}\n\n", event(id, kind, data))
    }

    fn kinds(items: &[EventItem]) -> Vec<&str> {
        items.iter().map(|i| i.event.kind.as_str()).collect()
    }

    fn output(items: &[EventItem]) -> String {
        String::from_utf8(items.iter().flat_map(|i| i.bytes.clone()).collect()).unwrap()
    }

    /// What a reader of the stream sees of `text` read `step` bytes at a time: how the
    /// connection ended, the command's output, and the event a resume would start after.
    fn seen(text: &str, step: usize, last: u64) -> (Frames, String, u64) {
        let (frames, items, last) = read(pieces(text, step), last);
        (frames, output(&items), last)
    }

    fn run_log() -> String {
        [
            frame(1, "stdout", r#"{"value":"hello ","encoding":"ascii"}"#),
            frame(2, "stdout", r#"{"value":"d29ybGQK","encoding":"base64"}"#),
            frame(3, "exit", r#"{"exit_code":0}"#),
            frame(4, "completion", r#"{"status":"SUCCESS"}"#),
        ]
        .concat()
    }

    fn completed(out: &str, last: u64) -> (Frames, String, u64) {
        (Frames::Completed, out.to_string(), last)
    }

    fn ended(out: &str, last: u64) -> (Frames, String, u64) {
        (Frames::Ended, out.to_string(), last)
    }

    #[test]
    fn events_split_across_reads_arrive_whole_and_in_order() {
        for step in [1, 2, 7, 4096] {
            assert_eq!(seen(&run_log(), step, 0), completed("hello world\n", 4));
            let (_, items, _) = read(pieces(&run_log(), step), 0);
            assert_eq!(kinds(&items), ["stdout", "stdout", "exit", "completion"]);
        }
    }

    #[test]
    fn output_events_carry_their_bytes_and_not_the_encoded_value() {
        let (_, items, _) = read(pieces(&run_log(), 4096), 0);
        let stdout = &items[1].event.data;
        assert!(!stdout.contains_key("value") && !stdout.contains_key("encoding"));
        assert_eq!(items[1].bytes, b"world\n");
        assert_eq!(items[1].passed, 0);
        // Other events keep their data as sent.
        assert_eq!(items[2].event.data["exit_code"], 0);
        assert!(items[2].bytes.is_empty());
    }

    #[test]
    fn an_event_spread_over_several_data_lines_arrives_as_one() {
        let text = concat!(
            "event: stdout\n",
            "data: {\"id\": 1, \"ts\": \"t\",\n",
            "data:\"type\": \"stdout\",\n",
            "data: \"data\": {\"value\": \"a\\nb\"}}\n",
            "\n",
        );
        assert_eq!(seen(text, 3, 0), ended("a\nb", 1));
    }

    #[test]
    fn comments_retry_unknown_fields_and_data_that_is_not_an_event_are_skipped() {
        for noise in [
            ": keepalive\n\nretry: 3000\n: another\nfoo: bar\nevent: message\n",
            "data: not json\n\ndata: {}\n\n",
        ] {
            let text = format!("{noise}{}", frame(1, "stdout", r#"{"value":"x"}"#));
            for step in [5, 4096] {
                assert_eq!(seen(&text, step, 0), ended("x", 1), "{noise:?} by {step}");
            }
        }
    }

    #[test]
    fn crlf_line_ends_read_like_lf() {
        let text = run_log().replace('\n', "\r\n");
        assert_eq!(seen(&text, 3, 0), completed("hello world\n", 4));
    }

    #[test]
    fn the_id_field_wins_and_events_seen_before_a_resume_are_not_repeated() {
        // A resumed connection replays from the start; only what follows `last` is new.
        let (_, items, _) = read(pieces(&run_log(), 4096), 2);
        assert_eq!(kinds(&items), ["exit", "completion"]);
        assert_eq!(seen(&run_log(), 4096, 1), completed("world\n", 4));
        // `id:` overrides the id inside the JSON.
        let text = format!("id: 9\n{}", frame(1, "stdout", r#"{"value":"y"}"#));
        assert_eq!(seen(&text, 4096, 5), ended("y", 9));
    }

    #[test]
    fn a_stream_that_ends_mid_event_hands_over_only_whole_events() {
        let whole = frame(1, "stdout", r#"{"value":"kept"}"#);
        let half = format!("data: {}", event(2, "stdout", r#"{"value":"lost"}"#));
        for fail_at_end in [false, true] {
            let r = Pieces {
                fail_at_end,
                ..pieces(&format!("{whole}{half}"), 16)
            };
            let (frames, items, last) = read(r, 0);
            // A resume asks for event 2 again.
            assert_eq!((frames, output(&items), last), ended("kept", 1));
        }
    }

    #[test]
    fn nothing_after_completion_is_read() {
        let text = format!("{}{}", run_log(), frame(5, "stdout", r#"{"value":"late"}"#));
        assert_eq!(seen(&text, 4096, 0), completed("hello world\n", 4));
    }

    #[test]
    fn an_sse_error_event_ends_the_connection() {
        let text = format!(
            "{}event: sse_error\ndata: {{\"error\": \"gone\"}}\n\n{}",
            frame(1, "stdout", r#"{"value":"a"}"#),
            frame(2, "stdout", r#"{"value":"b"}"#)
        );
        assert_eq!(seen(&text, 4096, 0), ended("a", 1));
    }

    #[test]
    fn a_reader_that_went_away_stops_the_connection() {
        let (tx, rx) = std::sync::mpsc::sync_channel(256);
        drop(rx);
        let mut last = 0;
        let frames = read_frames(pieces(&run_log(), 4096), &mut last, &tx);
        assert_eq!(frames, Frames::ReceiverGone);
    }
}
