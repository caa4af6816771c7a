//! Tests of the API client: the retry policy, and `Api` against a server on loopback.

use super::retry::*;
use super::*;
use reqwest::StatusCode;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn answered(code: u16, retry_after: Option<f64>) -> Tried {
    Tried::Answered {
        status: StatusCode::from_u16(code).unwrap(),
        retry_after,
    }
}

/// What `send` would do over `attempts`, one after the other.
fn plan(replayable: bool, attempts: impl IntoIterator<Item = Tried>) -> Vec<Next> {
    let mut retries = Retries::new(replayable);
    attempts.into_iter().map(|t| retries.next(t)).collect()
}

#[test]
fn answers_that_trying_again_would_not_change_are_returned_at_once() {
    for code in [200, 201, 204, 304, 400, 401, 403, 404, 409, 413, 422] {
        for replayable in [true, false] {
            assert_eq!(
                plan(replayable, [answered(code, Some(1.0))]),
                [Next::Return],
                "{code}"
            );
        }
    }
}

#[test]
fn server_errors_are_retried_only_when_the_request_may_be_sent_again() {
    for code in [500, 502, 503, 504, 410] {
        assert_eq!(
            plan(true, [answered(code, None)]),
            [Next::Retry { secs: 0.1, left: 5 }],
            "{code}"
        );
        // A spawn the server may have acted on is never replayed: the error is the answer.
        assert_eq!(
            plan(false, [answered(code, None)]),
            [Next::Return],
            "{code}"
        );
    }
}

#[test]
fn too_early_and_busy_are_retried_even_for_a_spawn() {
    assert_eq!(
        plan(false, [answered(425, None)]),
        [Next::Retry { secs: 0.1, left: 5 }]
    );
    assert_eq!(
        plan(false, [answered(429, None)]),
        [Next::WaitBusy {
            secs: 1.0,
            first: true
        }]
    );
}

#[test]
fn the_delays_grow_and_the_sixth_failure_is_the_error() {
    let got = plan(true, std::iter::repeat_n(answered(503, None), 7));
    let retries: Vec<(f64, usize)> = got
        .iter()
        .filter_map(|n| match n {
            Next::Retry { secs, left } => Some((*secs, *left)),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [(0.1, 5), (0.2, 4), (0.5, 3), (1.0, 2), (2.0, 1)]);
    assert_eq!(got[5], Next::GiveUp);
}

#[test]
fn a_retry_after_no_sleep_can_take_is_ignored() {
    assert_eq!(retry_after_secs("2.5"), Some(2.5));
    assert_eq!(retry_after_secs(" 3 "), Some(3.0));
    for bad in ["-1", "NaN", "inf", "-inf", "soon", ""] {
        assert_eq!(retry_after_secs(bad), None, "{bad}");
    }
}

#[test]
fn retry_after_replaces_the_delay_up_to_30_seconds() {
    assert_eq!(
        plan(true, [answered(503, Some(3.0)), answered(503, Some(120.0))]),
        [
            Next::Retry { secs: 3.0, left: 5 },
            Next::Retry {
                secs: 30.0,
                left: 4
            }
        ]
    );
}

#[test]
fn a_busy_server_is_waited_for_600_times_before_it_counts_as_failing() {
    let got = plan(true, std::iter::repeat_n(answered(429, Some(0.01)), 600));
    assert_eq!(
        got[0],
        Next::WaitBusy {
            secs: 0.1,
            first: true
        }
    );
    assert!(got[1..].iter().all(|n| *n
        == Next::WaitBusy {
            secs: 0.1,
            first: false
        }));
    let mut retries = Retries::new(true);
    for _ in 0..600 {
        retries.next(answered(429, Some(100.0)));
    }
    assert_eq!(
        retries.next(answered(429, Some(100.0))),
        Next::Retry {
            secs: 30.0,
            left: 5
        }
    );
    // The busy waits do not use up the tries a failing server gets.
    assert_eq!(
        retries.next(answered(503, None)),
        Next::Retry { secs: 0.2, left: 4 }
    );
}

#[test]
fn busy_waits_are_clamped_between_a_tenth_and_30_seconds() {
    let secs = |after| match plan(false, [answered(429, after)])[0] {
        Next::WaitBusy { secs, .. } => secs,
        other => panic!("{other:?}"),
    };
    assert_eq!(secs(None), 1.0);
    assert_eq!(secs(Some(0.0)), 0.1);
    assert_eq!(secs(Some(5.0)), 5.0);
    assert_eq!(secs(Some(3600.0)), 30.0);
}

#[test]
fn connection_failures_are_retried_and_broken_exchanges_only_when_replayable() {
    let retry = Next::Retry { secs: 0.1, left: 5 };
    assert_eq!(plan(false, [Tried::NoConnection]), [retry]);
    assert_eq!(plan(true, [Tried::NoConnection]), [retry]);
    assert_eq!(plan(true, [Tried::Broken]), [retry]);
    assert_eq!(plan(false, [Tried::Broken]), [Next::GiveUp]);
}

#[test]
fn an_answer_that_never_comes_is_not_waited_for_again() {
    for replayable in [true, false] {
        assert_eq!(plan(replayable, [Tried::TimedOut]), [Next::GiveUp]);
    }
    // Even after other failures, with tries left.
    assert_eq!(
        plan(true, [Tried::NoConnection, Tried::TimedOut])[1],
        Next::GiveUp
    );
}

#[test]
fn tries_are_counted_across_causes() {
    let got = plan(
        true,
        [
            Tried::NoConnection,
            answered(502, None),
            Tried::Broken,
            answered(410, None),
            answered(500, None),
            Tried::NoConnection,
        ],
    );
    assert_eq!(got[4], Next::Retry { secs: 2.0, left: 1 });
    assert_eq!(got[5], Next::GiveUp);
}

/// A server on 127.0.0.1 answering one request per connection with the next of
/// `answers` (status, body); returns its URL and how many requests it saw.
fn server(answers: Vec<(u16, &'static str)>) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for (code, body) in answers {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(conn);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut request_body = vec![0; length];
            let _ = reader.read_exact(&mut request_body);
            count.fetch_add(1, Ordering::SeqCst);
            let mut conn = reader.into_inner();
            let _ = write!(
                conn,
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

fn api(url: &str) -> Api {
    Api::new(&Profile {
        name: "test".into(),
        url: url.into(),
        token: "t".into(),
        kind: "api".into(),
        project: None,
    })
    .unwrap()
}

#[test]
fn a_read_is_retried_until_the_server_answers() {
    let (url, seen) = server(vec![(503, ""), (502, ""), (200, r#"{"ok":true}"#)]);
    let got: serde_json::Value = api(&url).get_json("/whoami").unwrap();
    assert_eq!(got["ok"], true);
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[test]
fn a_spawn_that_meets_a_server_error_is_sent_once() {
    let (url, seen) = server(vec![(503, r#"{"error":"boom"}"#), (200, "{}")]);
    let api = api(&url);
    let err = api
        .call(|| api.request(reqwest::Method::POST, "/instances"), false)
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Unreachable(m) if m == "HTTP 503: boom"),
        "{err:?}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[test]
fn error_answers_name_the_status_and_the_servers_message() {
    let (url, _) = server(vec![
        (404, r#"{"error":"operation x not found"}"#),
        (401, r#"{"error":{"code":1}}"#),
        (400, "plain words"),
    ]);
    let api = api(&url);
    let get = || {
        api.get_json::<serde_json::Value>("/operations/x")
            .unwrap_err()
    };
    let e = get();
    assert!(
        matches!(&e, BackendError::NotFound(m) if m.to_string() == "HTTP 404: operation x not found"),
        "{e:?}"
    );
    let e = get();
    assert!(
        matches!(&e, BackendError::Denied(m)
            if m == "HTTP 401: {\"code\":1} (check the profile's token: `contree auth`)"),
        "{e:?}"
    );
    let e = get();
    assert!(
        matches!(&e, BackendError::Invalid(m) if m.to_string() == "HTTP 400: plain words"),
        "{e:?}"
    );
}

#[test]
fn grep_sends_repeated_keys_and_reads_the_grep_result() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        let body = r#"{"path":"/etc","patterns":["^a b","x"],"truncated":true,"matches":[
            {"path":"/etc/f","line_number":2,"absolute_offset":4,"line_text":"a b\n",
             "line_bytes":4,"submatches":[{"text":"a b","start":0,"end":3}],"type":"match"}]}"#;
        let mut conn = reader.into_inner();
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        request_line
    });
    let remote = RemoteBackend::new(&Profile {
        name: "test".into(),
        url,
        token: "t".into(),
        kind: "api".into(),
        project: None,
    })
    .unwrap();
    let req = crate::wire::GrepRequest {
        patterns: vec!["^a b".into(), "x".into()],
        paths: vec!["/etc".into(), "/srv".into()],
        globs: vec!["!*.bak".into()],
        max_total: Some(5),
        case: Some("smart".into()),
        ..Default::default()
    };
    let got = remote.grep("0123", &req).unwrap();
    assert!(got.truncated);
    assert_eq!(got.matches[0].kind, crate::wire::GrepLineKind::Match);
    assert_eq!(got.matches[0].submatches[0].end, 3);
    assert_eq!(
        served.join().unwrap().trim_end(),
        "GET /v1/inspect/0123/grep?pattern=%5Ea%20b&pattern=x&path=/etc&path=/srv\
         &glob=%21%2A.bak&max_total=5&case=smart HTTP/1.1"
    );
}
