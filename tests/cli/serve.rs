//! `contree serve` over real HTTP on loopback: the wire rules (auth, namespaces, errors,
//! the event stream and its resume) with a tiny HTTP client, and the official Python
//! client (`contree-cli==0.9.4`, installed into a venv by `.ci/run`) driving `run` and the
//! inspection commands against it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Child;

use serde_json::{json, Value};

use crate::harness::{skip, Env, Output};

pub(crate) const TOKEN_A: &str = "token-alice-0123456789";
pub(crate) const TOKEN_B: &str = "token-bob-9876543210";

/// A `contree serve` on 127.0.0.1 with its own data dir and two tokens (alice, bob).
pub(crate) struct Server {
    pub(crate) env: Env,
    child: Child,
    port: u16,
}

impl Server {
    pub(crate) fn start() -> Server {
        Server::start_with(&[])
    }

    /// `start` with extra `contree serve` flags.
    pub(crate) fn start_with(extra: &[&str]) -> Server {
        let env = Env::new();
        let tokens = env.write(
            "tokens",
            format!("# test tokens\n{TOKEN_A} alice\n{TOKEN_B} bob\n"),
        );
        let tokens = tokens.to_string_lossy().into_owned();
        let mut args = vec!["--tokens", tokens.as_str()];
        args.extend_from_slice(extra);
        Server::start_in(env, &args)
    }

    /// `contree serve` in `env` with exactly these extra flags.
    pub(crate) fn start_in(env: Env, extra: &[&str]) -> Server {
        Server::start_in_with(env, extra, &[])
    }

    /// `start_in`, with these variables added to the server's environment.
    pub(crate) fn start_in_with(env: Env, extra: &[&str], vars: &[(&str, &str)]) -> Server {
        let mut cmd = env.cmd(["serve", "--listen", "127.0.0.1:0", "--max-body", "1048576"]);
        for a in extra {
            cmd = cmd.arg(a);
        }
        for (k, v) in vars {
            cmd = cmd.env(k, v);
        }
        let mut running = cmd.spawn();
        let stderr = running.child.stderr.take().expect("serve stderr");
        let mut lines = BufReader::new(stderr);
        let mut line = String::new();
        let port = loop {
            line.clear();
            if lines.read_line(&mut line).expect("read serve stderr") == 0 {
                panic!("contree serve exited before listening");
            }
            if let Some(addr) = line
                .trim()
                .strip_prefix("contree serve: listening on http://")
            {
                break addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("port in the listening line");
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = lines.read_to_end(&mut sink);
        });
        Server {
            env,
            child: running.child,
            port,
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Reply {
        self.request_with(method, path, token, &[], body)
    }

    /// One HTTP/1.1 request on a fresh connection (`Connection: close`).
    fn request_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut stream = connect(self.port);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send head");
        stream.write_all(body).expect("send body");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read reply");
        Reply::parse(&raw)
    }

    pub(crate) fn get(&self, path: &str, token: &str) -> Reply {
        self.request("GET", path, Some(token), b"")
    }

    pub(crate) fn post_json(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(token), body.to_string().as_bytes())
    }

    pub(crate) fn host_image(&self, token: &str) -> String {
        let reply = self.get("/v1/inspect/?tag=host", token);
        assert_eq!(reply.status, 302, "{}", reply.text());
        let location = reply.header("location").expect("Location");
        location
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    }

    /// Spawns a shell command as `token` and returns the operation id.
    pub(crate) fn spawn(&self, token: &str, command: &str) -> String {
        let image = self.host_image(token);
        let reply = self.post_json(
            "/v1/instances",
            token,
            &json!({"image": image, "command": command, "shell": true}),
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["uuid"].as_str().unwrap().to_string()
    }

    /// Reads the live event stream until the command has printed `needle`.
    fn wait_for_output(&self, op: &str, token: &str, needle: &str) {
        let mut stream = connect(self.port);
        write!(
            stream,
            "GET /v1/operations/{op}/events?follow=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            let n = stream.read(&mut buf).expect("read live stream");
            assert!(n > 0, "stream ended before {needle:?}: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// The full event log of a finished operation (waits with `follow=1`).
    pub(crate) fn events(&self, op: &str, token: &str, last_id: Option<u64>) -> Vec<Value> {
        let id = last_id.map(|i| i.to_string());
        let headers: Vec<(&str, &str)> = id
            .as_deref()
            .map(|i| vec![("Last-Event-Id", i)])
            .unwrap_or_default();
        let reply = self.request_with(
            "GET",
            &format!("/v1/operations/{op}/events?follow=1"),
            Some(token),
            &headers,
            b"",
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        parse_sse(&reply.text())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the graceful path.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// A connection whose reads fail after two minutes instead of hanging the test run.
fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .expect("read timeout");
    stream
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of headers");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Reply {
            status,
            headers,
            body,
        }
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.text()))
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..eol]).trim(), 16)
            .expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[eol + 2 + size + 2..];
    }
}

/// The `data:` JSON of each SSE frame, checking that `id:` and `event:` agree with it.
fn parse_sse(text: &str) -> Vec<Value> {
    let mut events = Vec::new();
    for frame in text.split("\n\n").filter(|f| !f.trim().is_empty()) {
        if frame.starts_with(':') {
            continue;
        }
        let field = |name: &str| {
            frame
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("frame without {name}: {frame}"))
        };
        let data: Value = serde_json::from_str(field("data:")).expect("frame data is JSON");
        assert_eq!(field("id:"), data["id"].to_string(), "{frame}");
        assert_eq!(field("event:"), data["type"].as_str().unwrap(), "{frame}");
        assert!(
            data["ts"].is_string() && data["data"].is_object(),
            "{frame}"
        );
        events.push(data);
    }
    events
}

pub(crate) fn stdout_of(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"]["value"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_missing_or_wrong_token_gets_401_and_nothing_else() {
    let server = Server::start();
    for token in [None, Some("wrong"), Some("token-alice-012345678")] {
        let reply = server.request("GET", "/v1/whoami", token, b"");
        assert_eq!(reply.status, 401, "{token:?}: {}", reply.text());
        assert!(!reply.text().contains(TOKEN_A));
    }
    let me = server.get("/v1/whoami", TOKEN_A).json();
    assert!(me["token_uuid"].is_string() && me["permissions"].is_object());
    assert!(me.get("operations_stat").is_some());
    assert!(
        !me.to_string().contains(TOKEN_A),
        "whoami must not echo the token"
    );
}

#[test]
fn a_run_streams_its_events_and_ends_with_completion() {
    let server = Server::start();
    let op = server.spawn(TOKEN_A, "echo one; echo two >&2; echo three");
    let events = server.events(&op, TOKEN_A, None);
    assert_eq!(events.last().unwrap()["type"], "completion");
    assert!(events.last().unwrap().get("spid").is_none());
    assert_eq!(stdout_of(&events), "one\nthree\n");
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    // Resuming after any event yields exactly the rest: nothing lost, nothing repeated.
    let cut = ids[ids.len() / 2];
    let rest = server.events(&op, TOKEN_A, Some(cut));
    assert_eq!(rest, events[ids.len() / 2 + 1..].to_vec());
    let since = server.get(&format!("/v1/operations/{op}/events?since={cut}"), TOKEN_A);
    assert_eq!(parse_sse(&since.text()), rest);

    let got = server.get(&format!("/v1/operations/{op}"), TOKEN_A).json();
    assert_eq!(got["status"], "SUCCESS");
    assert_eq!(
        got["metadata"]["command"],
        "echo one; echo two >&2; echo three"
    );
    assert!(got["metadata"]["image"].is_string());
    assert_eq!(got["metadata"]["result"]["stdout"]["value"], "one\nthree\n");
    assert_eq!(got["metadata"]["result"]["stderr"]["value"], "two\n");
    assert_eq!(got["metadata"]["result"]["state"]["exit_code"], 0);
}

#[test]
fn stdin_left_open_is_fed_through_the_stdin_endpoint() {
    let server = Server::start();
    let image = server.host_image(TOKEN_A);
    let reply = server.post_json(
        "/v1/instances",
        TOKEN_A,
        &json!({"image": image, "command": "cat", "stdin": {"value": "first\n", "encoding": "ascii", "close": false}}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();
    let path = format!("/v1/operations/{op}/subprocesses/1/stdin");
    let more = json!({"value": "AHNlY29uZAo=", "encoding": "base64", "close": false});
    assert_eq!(server.post_json(&path, TOKEN_A, &more).status, 204);
    let eof = json!({"value": "", "encoding": "ascii", "close": true});
    assert_eq!(server.post_json(&path, TOKEN_A, &eof).status, 204);
    // Closed now: a further chunk is a conflict.
    assert_eq!(server.post_json(&path, TOKEN_A, &eof).status, 409);
    let events = server.events(&op, TOKEN_A, None);
    let out: Vec<u8> = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .flat_map(|e| {
            let d = &e["data"];
            let v = d["value"].as_str().unwrap();
            if d["encoding"] == "base64" {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(v).unwrap()
            } else {
                v.as_bytes().to_vec()
            }
        })
        .collect();
    assert_eq!(out, b"first\n\0second\n");
}

#[test]
fn namespaces_do_not_see_each_others_operations_files_and_tags() {
    let server = Server::start();
    let op = server.spawn(TOKEN_A, "echo secret > /alice.txt");
    server.events(&op, TOKEN_A, None);
    for path in [
        format!("/v1/operations/{op}"),
        format!("/v1/operations/{op}/events"),
    ] {
        assert_eq!(server.get(&path, TOKEN_B).status, 404, "{path}");
    }
    assert_eq!(
        server
            .request(
                "DELETE",
                &format!("/v1/operations/{op}"),
                Some(TOKEN_B),
                b""
            )
            .status,
        404
    );
    let ops = server.get("/v1/operations", TOKEN_B).json();
    assert_eq!(ops, json!([]));
    assert_eq!(
        server
            .get("/v1/operations", TOKEN_A)
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Alice's result image, tagged: bob sees neither the image nor the tag.
    let image = server.get(&format!("/v1/operations/{op}"), TOKEN_A).json()["result_image_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let tag = server.request(
        "PATCH",
        &format!("/v1/images/{image}/tag"),
        Some(TOKEN_A),
        br#"{"tag":"mine"}"#,
    );
    assert_eq!(tag.status, 200, "{}", tag.text());
    assert_eq!(server.get("/v1/inspect/?tag=mine", TOKEN_A).status, 302);
    assert_eq!(server.get("/v1/inspect/?tag=mine", TOKEN_B).status, 404);
    let listing = format!("/v1/inspect/{image}/list?path=/");
    assert_eq!(server.get(&listing, TOKEN_A).status, 200);
    assert_eq!(server.get(&listing, TOKEN_B).status, 404);
    let bob_images = server.get("/v1/images", TOKEN_B).json();
    let tags: Vec<&Value> = bob_images["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["tag"])
        .collect();
    assert_eq!(
        tags,
        vec![&json!("host")],
        "bob sees only the public base image"
    );
    // Without `?tag`, DELETE removes every tag the namespace gave the image, and only those.
    for extra in ["mine-too", "third"] {
        let body = format!(r#"{{"tag":"{extra}"}}"#);
        let tagged = server.request(
            "PATCH",
            &format!("/v1/images/{image}/tag"),
            Some(TOKEN_A),
            body.as_bytes(),
        );
        assert_eq!(tagged.status, 200, "{}", tagged.text());
    }
    let untag_all = format!("/v1/images/{image}/tag");
    assert_eq!(
        server
            .request("DELETE", &untag_all, Some(TOKEN_B), b"")
            .status,
        404
    );
    assert_eq!(
        server
            .request("DELETE", &untag_all, Some(TOKEN_A), b"")
            .status,
        204
    );
    for gone in ["mine", "mine-too", "third"] {
        let at = format!("/v1/inspect/?tag={gone}");
        assert_eq!(server.get(&at, TOKEN_A).status, 404, "{gone}");
    }
    assert_eq!(server.get(&listing, TOKEN_A).status, 200, "the image stays");
    let host = server.host_image(TOKEN_A);
    let untag_host = format!("/v1/images/{host}/tag");
    assert_eq!(
        server
            .request("DELETE", &untag_host, Some(TOKEN_A), b"")
            .status,
        204
    );
    assert_eq!(
        server.get("/v1/inspect/?tag=host", TOKEN_A).status,
        302,
        "shared tags stay"
    );

    // Files: the same content uploaded by alice is unknown to bob until he uploads it.
    let content = b"shared bytes";
    let sha = crate::harness::sha256_hex(content);
    let up = server.request("POST", "/v1/files", Some(TOKEN_A), content);
    assert_eq!(up.status, 201, "{}", up.text());
    assert_eq!(up.json()["sha256"], sha);
    assert_eq!(server.get(&format!("/v1/files/{sha}"), TOKEN_A).status, 200);
    assert_eq!(
        server
            .request("HEAD", &format!("/v1/files/{sha}"), Some(TOKEN_A), b"")
            .status,
        200
    );
    assert_eq!(server.get(&format!("/v1/files/{sha}"), TOKEN_B).status, 404);
    let host = server.host_image(TOKEN_B);
    let uuid = up.json()["uuid"].as_str().unwrap().to_string();
    let spawn = server.post_json(
        "/v1/instances",
        TOKEN_B,
        &json!({"image": host, "command": "true", "files": {"/f": {"uuid": uuid}}}),
    );
    assert_eq!(spawn.status, 404, "{}", spawn.text());
}

#[test]
fn malformed_requests_get_clear_4xx_errors() {
    let server = Server::start();
    let image = server.host_image(TOKEN_A);
    let cases: Vec<(&str, String, Vec<u8>, u16)> = vec![
        ("POST", "/v1/instances".into(), b"{not json".to_vec(), 400),
        (
            "POST",
            "/v1/instances".into(),
            json!({"image": image, "command": "true", "bogus": 1})
                .to_string()
                .into_bytes(),
            400,
        ),
        ("GET", "/v1/operations/not-a-uuid".into(), vec![], 400),
        (
            "GET",
            format!("/v1/inspect/{image}/list?path=relative"),
            vec![],
            400,
        ),
        (
            "GET",
            format!("/v1/inspect/{image}/list?path=/etc/../etc"),
            vec![],
            400,
        ),
        (
            "GET",
            format!("/v1/inspect/{image}/list?path=/no/such/dir"),
            vec![],
            404,
        ),
        (
            "GET",
            format!("/v1/inspect/{image}/download?path=/etc"),
            vec![],
            422,
        ),
        ("GET", "/v1/operations?limit=0".into(), vec![], 400),
        ("GET", "/v1/nothing-here".into(), vec![], 404),
        ("GET", "/v1/files/xyz".into(), vec![], 400),
        // A known path, a method it does not take: still the JSON error body.
        ("PUT", "/v1/images".into(), vec![], 405),
        ("GET", "/v1/instances".into(), vec![], 405),
    ];
    for (method, path, body, want) in cases {
        let reply = server.request(method, &path, Some(TOKEN_A), &body);
        assert_eq!(reply.status, want, "{method} {path}: {}", reply.text());
        assert!(
            reply.json()["error"].is_string(),
            "{method} {path}: error body {}",
            reply.text()
        );
    }
}

#[test]
fn a_body_bigger_than_the_limit_gets_413() {
    let server = Server::start();
    // Only the head is sent: the declared length alone is over --max-body, so the server
    // answers at once (no unread bytes left to reset the connection).
    let mut stream = connect(server.port);
    let head = format!(
        "POST /v1/instances HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {TOKEN_A}\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("send head");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let reply = Reply::parse(&raw);
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.json()["error"].is_string());
}

#[test]
fn a_restarted_server_sees_operations_that_finished_while_it_was_down() {
    let mut server = Server::start();
    let op = server.spawn(TOKEN_A, "sleep 1; echo done");
    // SIGTERM the server mid-run; the operation's supervisor carries on.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    server.child.wait().expect("server exits on SIGTERM");
    restart(&mut server);
    let events = server.events(&op, TOKEN_A, None);
    assert_eq!(stdout_of(&events), "done\n");
    assert_eq!(events.last().unwrap()["data"]["status"], "SUCCESS");
}

/// Starts a second server on the stopped `server`'s data dir and tokens.
fn restart(server: &mut Server) {
    let tokens = server.env.work().join("tokens");
    let mut running = server
        .env
        .cmd(["serve", "--listen", "127.0.0.1:0"])
        .arg("--tokens")
        .arg(&tokens)
        .spawn();
    let stderr = running.child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr);
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            lines.read_line(&mut line).unwrap() > 0,
            "second server died"
        );
    }
    std::thread::spawn(move || {
        let _ = lines.read_to_end(&mut Vec::new());
    });
    server.port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    server.child = running.child;
}

#[test]
fn waiting_operations_are_cancelled_at_shutdown_and_stay_so_after_a_restart() {
    let mut server = Server::start_with(&["--max-running", "1"]);
    let first = server.spawn(TOKEN_A, "echo ready=$((40+2)); sleep 1; echo done");
    server.wait_for_output(&first, TOKEN_A, "ready=42");
    let second = server.spawn(TOKEN_A, "echo never");
    let row = server
        .get(&format!("/v1/operations/{second}"), TOKEN_A)
        .json();
    assert_eq!(row["status"], "PENDING");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    server.child.wait().expect("server exits on SIGTERM");
    restart(&mut server);
    let events = server.events(&second, TOKEN_A, None);
    assert_eq!(stdout_of(&events), "");
    let last = &events.last().unwrap()["data"];
    assert_eq!(last["status"], "CANCELLED", "{last}");
    assert_eq!(last["error"], "the server shut down");
    // The running one went on without the server.
    let events = server.events(&first, TOKEN_A, None);
    assert_eq!(events.last().unwrap()["data"]["status"], "SUCCESS");
    assert!(stdout_of(&events).ends_with("done\n"));
}

// ---- the official client ----------------------------------------------------------------

/// The venv `.ci/run` makes with `contree-cli==0.9.4` (`CONTREE_OFFICIAL_PYTHON` overrides).
fn official_python() -> Option<PathBuf> {
    let path = std::env::var_os("CONTREE_OFFICIAL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/official-cli/bin/python")
        });
    path.exists().then_some(path)
}

/// The official client with its own config dir, authenticated to `server` as alice.
pub(crate) struct Official {
    python: PathBuf,
    env: Env,
}

impl Official {
    pub(crate) fn new(server: &Server) -> Option<Official> {
        let Some(python) = official_python() else {
            skip(
                "the official client's venv is missing (bash .ci/run creates target/official-cli)",
            );
            return None;
        };
        let official = Official {
            python,
            env: Env::new(),
        };
        official
            .run([
                "auth",
                "--token",
                TOKEN_A,
                "--url",
                &server.url(),
                "--type",
                "jwt",
                "-f",
            ])
            .success();
        official.run(["use", "host"]).success();
        Some(official)
    }

    fn cmd<const N: usize>(&self, args: [&str; N]) -> crate::harness::Cmd {
        let mut cmd = self
            .env
            .program(&self.python)
            .env("CONTREE_NO_UPDATE_CHECK", "1")
            .arg("-m")
            .arg("contree_cli");
        for a in args {
            cmd = cmd.arg(a);
        }
        cmd
    }

    pub(crate) fn run<const N: usize>(&self, args: [&str; N]) -> Output {
        self.cmd(args).output()
    }

    /// `-o json` records, one per line.
    fn json_lines<const N: usize>(&self, args: [&str; N]) -> Vec<Value> {
        let mut cmd = self
            .env
            .program(&self.python)
            .env("CONTREE_NO_UPDATE_CHECK", "1")
            .arg("-m")
            .arg("contree_cli")
            .arg("-o")
            .arg("json");
        for a in args {
            cmd = cmd.arg(a);
        }
        cmd.output().success().json_lines()
    }
}

#[test]
fn official_client_runs_direct_shell_and_stdin() {
    let server = Server::start();
    let Some(cli) = Official::new(&server) else {
        return;
    };
    cli.run(["run", "--", "echo", "hi"])
        .success()
        .stdout("hi\n");
    cli.run(["run", "-s", "echo out; echo err >&2; exit 3"])
        .code(3)
        .stdout("out\n")
        .stderr_contains("err\n");
    cli.cmd(["run", "--", "wc", "-c"])
        .stdin(vec![b'x'; 300_000])
        .output()
        .success()
        .stdout_contains("300000");
    cli.run([
        "run",
        "-e",
        "FOO=bar",
        "-C",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $FOO; pwd",
    ])
    .success()
    .stdout("bar\n/tmp\n");
}

#[test]
fn official_client_attaches_files_and_directories() {
    let server = Server::start();
    let Some(cli) = Official::new(&server) else {
        return;
    };
    let file = cli.env.write("f1.txt", "F1\n");
    cli.env.write("tree/sub/x.txt", "X\n");
    let tree = cli.env.work().join("tree");
    let f_spec = format!("{}:/w/f1.txt", file.display());
    let d_spec = format!("{}:/w/tree", tree.display());
    cli.cmd(["run"])
        .arg("-F")
        .arg(&f_spec)
        .arg("-F")
        .arg(&d_spec)
        .arg("--")
        .arg("cat")
        .arg("/w/f1.txt")
        .arg("/w/tree/sub/x.txt")
        .output()
        .success()
        .stdout("F1\nX\n");
}

#[test]
fn official_client_snapshots_tags_and_inspects() {
    let server = Server::start();
    let Some(cli) = Official::new(&server) else {
        return;
    };
    cli.run(["run", "-D", "--", "sh", "-c", "echo gone > /disposable.txt"])
        .success();
    cli.run(["run", "--", "sh", "-c", "echo kept > /kept.txt"])
        .success();
    cli.run(["cat", "/kept.txt"]).success().stdout("kept\n");
    cli.run(["cat", "/disposable.txt"])
        .check("fails", |o| !o.status.success());
    cli.run(["ls", "/"])
        .success()
        .stdout_contains("kept.txt")
        .stdout_lacks("disposable.txt");
    let dest = cli.env.work().join("copied.txt");
    cli.cmd(["cp", "/kept.txt"]).arg(&dest).output().success();
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "kept\n");
    cli.run(["tag", "snap-1"]).success();
    let images = cli.json_lines(["images"]);
    assert!(
        images.iter().any(|i| i["tag"] == "snap-1"),
        "tag listed: {images:?}"
    );
    cli.run(["use", "snap-1"]).success();
    cli.run(["run", "--", "cat", "/kept.txt"])
        .success()
        .stdout("kept\n");
    // grep goes through /inspect/{uuid}/grep: the same lines and exit codes as ours.
    cli.run(["run", "--", "sh", "-c", "printf 'alpha\\nbeta\\n' > /a.txt"])
        .success();
    cli.run(["grep", "beta", "/a.txt"])
        .success()
        .stdout_contains("/a.txt:2:beta");
    cli.run(["grep", "-B1", "beta", "/a.txt"])
        .success()
        .stdout_contains("alpha");
    cli.run(["grep", "nothing-here", "/a.txt"]).code(1);
}

#[test]
fn official_client_detaches_waits_lists_shows_and_kills() {
    let server = Server::start();
    let Some(cli) = Official::new(&server) else {
        return;
    };
    cli.run(["run", "-d", "--", "sh", "-c", "echo detached"])
        .success();
    cli.run(["session", "wait"]).success();
    let ops = cli.json_lines(["ps", "-a"]);
    assert!(
        !ops.is_empty() && ops.iter().all(|o| o["status"] == "SUCCESS"),
        "{ops:?}"
    );
    let op = ops[0]["uuid"].as_str().unwrap().to_string();
    cli.cmd(["show"])
        .arg(&op)
        .output()
        .success()
        .stdout_contains("detached");

    cli.run(["run", "-d", "--", "sh", "-c", "echo started; sleep 60"])
        .success();
    let running = cli.json_lines(["ps"]);
    assert_eq!(running.len(), 1, "{running:?}");
    let sleeper = running[0]["uuid"].as_str().unwrap().to_string();
    server.wait_for_output(&sleeper, TOKEN_A, "started");
    cli.cmd(["kill"]).arg(&sleeper).output().success();
    let shown = server.events(&sleeper, TOKEN_A, None);
    assert_eq!(shown.last().unwrap()["data"]["status"], "CANCELLED");
    // Bob's client sees none of it.
    let reply = server.get("/v1/operations", TOKEN_B);
    assert_eq!(reply.json(), json!([]));
}

// ---- our own CLI in remote mode ---------------------------------------------------------

/// Our CLI with its own home, authenticated to `server` as bob.
pub(crate) fn our_client(server: &Server) -> Env {
    let env = Env::new();
    env.run([
        "auth",
        "--token",
        TOKEN_B,
        "--url",
        &server.url(),
        "--type",
        "jwt",
        "-f",
    ])
    .success()
    .stderr_contains("auth accepted");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(env.home().join("auth.ini"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "auth.ini is private");
    env
}

#[test]
fn our_cli_runs_and_inspects_through_serve() {
    let server = Server::start();
    let env = our_client(&server);
    env.use_host();
    env.run(["run", "--", "echo", "hi"])
        .success()
        .stdout("hi\n");
    let record = env.json(["run", "--", "true"]);
    assert_eq!(record["backend"], "remote");
    env.run(["run", "-s", "echo out; echo err >&2; exit 3"])
        .code(3)
        .stdout("out\n")
        .stderr_contains("err\n");
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    env.cmd(["run", "--", "sha256sum"])
        .stdin(input.clone())
        .output()
        .success()
        .stdout(&format!("{}  -\n", crate::harness::sha256_hex(&input)));
    let file = env.write("in.txt", "attached\n");
    env.cmd(["run", "-F"])
        .arg(format!("{}:/in.txt", file.display()))
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg("cp /in.txt /kept.txt")
        .output()
        .success();
    env.run(["cat", "/kept.txt"]).success().stdout("attached\n");
    env.run(["ls", "/"]).success().stdout_contains("kept.txt");
    env.run(["tag", "bobs"]).success();
    env.run(["images"]).success().stdout_contains("bobs");
    // The server keeps bob's tag away from alice.
    assert_eq!(server.get("/v1/inspect/?tag=bobs", TOKEN_A).status, 404);
    assert_eq!(server.get("/v1/inspect/?tag=bobs", TOKEN_B).status, 302);
}

#[test]
fn a_profile_that_does_not_exist_is_an_error_and_no_profile_means_local() {
    let server = Server::start();
    let env = our_client(&server);
    env.run(["-p", "nope", "images"])
        .check("fails", |o| !o.status.success())
        .stderr_contains("Profile 'nope' does not exist");
    // A fresh home without auth.ini uses the embedded engine.
    let local = Env::host();
    assert_eq!(local.json(["run", "--", "true"])["backend"], "local");
}

#[test]
fn an_event_stream_cut_mid_run_resumes_with_nothing_lost_or_repeated() {
    let server = Server::start();
    // The command waits for a line on stdin, so the test decides when it goes on.
    let image = server.host_image(TOKEN_A);
    let reply = server.post_json(
        "/v1/instances",
        TOKEN_A,
        &json!({"image": image, "command": "echo before; read x; echo after $x", "shell": true,
                "stdin": {"value": "", "encoding": "ascii", "close": false}}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();

    // Read the live stream until `before` arrives, then drop the connection.
    let mut stream = connect(server.port);
    write!(
        stream,
        "GET /v1/operations/{op}/events?follow=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n\r\n"
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("before") {
        let n = stream.read(&mut buf).expect("read live stream");
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(stream);
    let first: Vec<u64> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|i| i.trim().parse().unwrap())
        .collect();
    let last = *first.last().expect("some events before the cut");

    let path = format!("/v1/operations/{op}/subprocesses/1/stdin");
    let go = json!({"value": "go\n", "encoding": "ascii", "close": true});
    assert_eq!(server.post_json(&path, TOKEN_A, &go).status, 204);
    let rest = server.events(&op, TOKEN_A, Some(last));
    let all = server.events(&op, TOKEN_A, None);
    let mut ids = first.clone();
    ids.extend(rest.iter().map(|e| e["id"].as_u64().unwrap()));
    let all_ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, all_ids, "resumed stream = the whole log, once");
    assert_eq!(stdout_of(&all), "before\nafter go\n");
}

#[test]
fn fifty_concurrent_runs_all_complete() {
    let server = std::sync::Arc::new(Server::start());
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let server = server.clone();
            std::thread::spawn(move || {
                let op = server.spawn(TOKEN_A, &format!("echo run-{i}"));
                let events = server.events(&op, TOKEN_A, None);
                (i, stdout_of(&events), events.clone())
            })
        })
        .collect();
    for h in handles {
        let (i, out, events) = h.join().expect("client thread");
        assert_eq!(out, format!("run-{i}\n"), "{events:#?}");
        assert_eq!(events.last().unwrap()["data"]["status"], "SUCCESS");
    }
    let ops = server.get("/v1/operations?limit=1000", TOKEN_A).json();
    assert_eq!(ops.as_array().unwrap().len(), 50);
    let page = server
        .get("/v1/operations?limit=20&offset=40", TOKEN_A)
        .json();
    assert_eq!(page.as_array().unwrap().len(), 10);
}

#[test]
fn signalling_the_main_process_ends_it_and_uploaded_files_are_listed() {
    let server = Server::start();
    // The shell traps SIGINT and reports it: the signal reaches the command itself.
    let op = server.spawn(
        TOKEN_A,
        "trap 'echo got INT; exit 7' INT; echo ready=$((40+2)); sleep 60 & wait",
    );
    // (The needle is not in the command's text, which the spawn event also carries.)
    server.wait_for_output(&op, TOKEN_A, "ready=42");
    let unknown = server.request(
        "DELETE",
        &format!("/v1/operations/{op}/subprocesses/1?signal=NOPE"),
        Some(TOKEN_A),
        b"",
    );
    assert_eq!(unknown.status, 400, "{}", unknown.text());
    let reply = server.request(
        "DELETE",
        &format!("/v1/operations/{op}/subprocesses/1?signal=SIGINT"),
        Some(TOKEN_A),
        b"",
    );
    assert_eq!(reply.status, 204, "{}", reply.text());
    let events = server.events(&op, TOKEN_A, None);
    let exit = events
        .iter()
        .find(|e| e["type"] == "exit")
        .expect("an exit event");
    assert_eq!(exit["data"]["code"], 7, "{exit}");
    // Ended by its command, not cancelled.
    assert_eq!(events.last().unwrap()["data"]["status"], "SUCCESS");
    let again = server.request(
        "DELETE",
        &format!("/v1/operations/{op}"),
        Some(TOKEN_A),
        b"",
    );
    assert_eq!(again.status, 409, "{}", again.text());

    let up = server.request("POST", "/v1/files", Some(TOKEN_A), b"listed");
    assert_eq!(up.status, 201);
    let files = server.get("/v1/files", TOKEN_A).json();
    assert_eq!(files["files"][0]["sha256"], up.json()["sha256"]);
    assert_eq!(server.get("/v1/files", TOKEN_B).json()["files"], json!([]));
}

#[test]
fn official_client_runs_an_interpreter_script() {
    let server = Server::start();
    let Some(cli) = Official::new(&server) else {
        return;
    };
    let script = cli
        .env
        .write("script.sh", "#!/bin/sh\necho from-script \"$1\"\n");
    cli.cmd(["run", "-I"])
        .arg(&script)
        .arg("arg1")
        .output()
        .success()
        .stdout("from-script arg1\n");
}

#[test]
fn auth_lists_switches_and_removes_profiles() {
    let server = Server::start();
    let env = our_client(&server);
    // `auth` saving profile `name` for `token` on this server.
    let login = |token: &str, name: &str| {
        env.run([
            "auth",
            "--token",
            token,
            "--url",
            &server.url(),
            "--type",
            "jwt",
            "-p",
            name,
            "-f",
        ])
    };
    login(TOKEN_A, "alice").success();
    env.run(["auth", "ls"])
        .success()
        .stdout_contains("* alice")
        .stdout_contains("  default")
        .stdout_lacks(TOKEN_A);
    env.run(["auth", "switch", "default"]).success();
    let listed = env
        .run(["auth", "ls"])
        .success()
        .stdout_contains("* default")
        .stdout_text();
    // Listing never asks the servers, so -O/--offline lists the same.
    env.run(["auth", "list", "-O"]).success().stdout(&listed);
    env.run(["auth", "list", "--offline"])
        .success()
        .stdout(&listed);
    // Not a terminal: no question; -f, -y and --force are taken.
    env.run(["auth", "rm", "alice"]).success();
    env.run(["auth", "ls"]).success().stdout_lacks("alice");
    for force in ["-f", "-y", "--force"] {
        login(TOKEN_A, "carol").success();
        env.run(["auth", "remove", force, "carol"]).success();
        env.run(["auth", "ls"]).success().stdout_lacks("carol");
    }
    // A wrong token is refused before anything is saved.
    login("wrong", "bad").check("fails", |o| !o.status.success());
    env.run(["auth", "ls"]).success().stdout_lacks("bad");
}

#[test]
fn our_cli_resumes_the_event_stream_after_each_connection_ends() {
    let server = Server::start();
    let env = our_client(&server);
    env.use_host();
    // Every stream connection is cut after 0.3 s; the output still arrives once, in order.
    env.cmd([
        "run",
        "-s",
        "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.2; done",
    ])
    .env("CONTREE_STREAM_SPAN", "0.3")
    .output()
    .success()
    .stdout("line-1\nline-2\nline-3\nline-4\nline-5\nline-6\n");
}

#[test]
fn a_directory_of_an_image_downloads_as_a_tar_archive() {
    let server = Server::start();
    let op = server.spawn(
        TOKEN_A,
        "mkdir -p /data/sub && echo A > /data/a.txt && echo B > /data/sub/b.txt && ln -s a.txt /data/link",
    );
    server.events(&op, TOKEN_A, None);
    let image = server.get(&format!("/v1/operations/{op}"), TOKEN_A).json()["result_image_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = server.get(&format!("/v1/inspect/{image}/archive?path=/data"), TOKEN_A);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/x-tar"));
    let mut archive = tar::Archive::new(&reply.body[..]);
    let mut got = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mut text = String::new();
        if entry.header().entry_type().is_file() {
            entry.read_to_string(&mut text).unwrap();
        }
        if let Ok(Some(link)) = entry.link_name() {
            text = format!("-> {}", link.display());
        }
        got.push(format!("{path} {text}").trim().to_string());
    }
    got.sort();
    assert_eq!(got, vec!["a.txt A", "link -> a.txt", "sub", "sub/b.txt B"]);
    assert_eq!(
        server
            .get(&format!("/v1/inspect/{image}/archive?path=/nope"), TOKEN_A)
            .status,
        404
    );
    assert_eq!(
        server
            .get(&format!("/v1/inspect/{image}/archive?path=/data"), TOKEN_B)
            .status,
        404
    );
}

#[test]
fn official_client_exports_a_subtree_as_tar_gz() {
    let server = Server::start();
    let Some(cli) = Official::new(&server) else {
        return;
    };
    cli.run([
        "run",
        "--",
        "sh",
        "-c",
        "mkdir -p /data/sub && echo A > /data/sub/a",
    ])
    .success();
    let gz = cli.env.work().join("out.tar.gz");
    cli.cmd(["export", "-F"])
        .arg(&gz)
        .arg("/data")
        .output()
        .success();
    let file = std::fs::File::open(&gz).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["sub", "sub/a"]);
}

/// One step of a scenario: the arguments, stdin, and whether stdout is compared (output
/// that names uuids or times is compared by exit code only).
struct Step {
    args: &'static [&'static str],
    stdin: &'static str,
    compare_stdout: bool,
}

const fn step(args: &'static [&'static str]) -> Step {
    Step {
        args,
        stdin: "",
        compare_stdout: true,
    }
}

/// A session's worth of commands, run once on the local engine and once through `contree
/// serve` with a profile: every step must end the same way (exit code, stdout, and the
/// shape of stderr's first line).
#[test]
fn the_same_session_gives_the_same_results_locally_and_through_serve() {
    let steps = [
        step(&["run", "--", "echo", "hi"]),
        step(&["run", "-s", "echo out; echo err >&2; exit 7"]),
        Step {
            args: &["run", "--", "wc", "-c"],
            stdin: "twelve bytes",
            compare_stdout: true,
        },
        step(&[
            "run",
            "-e",
            "A=1",
            "-e",
            "B=two words",
            "--",
            "sh",
            "-c",
            "echo $A $B",
        ]),
        step(&["run", "-C", "/tmp", "--", "pwd"]),
        step(&["run", "-H", "box", "--", "hostname"]),
        step(&["run", "-T", "5", "--", "echo", "1234567890"]),
        step(&["run", "-t", "1", "--", "sleep", "5"]),
        step(&["run", "-D", "--", "sh", "-c", "echo gone > /disposable"]),
        step(&["run", "--", "cat", "/disposable"]),
        step(&["run", "--", "sh", "-c", "mkdir -p /w && echo kept > /w/f"]),
        step(&["cat", "/w/f"]),
        step(&["ls", "/w"]),
        step(&["cd", "/w"]),
        step(&["run", "--", "pwd"]),
        step(&["env", "K=V"]),
        step(&["run", "-s", "echo $K"]),
        step(&["run", "-s", "exit 0"]),
        step(&["tag", "parity"]),
        step(&["run", "--use", "parity", "--", "cat", "/w/f"]),
        Step {
            args: &["run", "-d", "--", "sh", "-c", "echo detached"],
            stdin: "",
            compare_stdout: false,
        },
        step(&["wait"]),
    ];
    let server = Server::start();
    let remote = our_client(&server);
    remote.use_host();
    let local = Env::host();
    for s in &steps {
        let run = |env: &Env| env.cmd(s.args.iter().copied()).stdin(s.stdin).output();
        let (l, r) = (run(&local), run(&remote));
        let what = s.args.join(" ");
        assert_eq!(
            l.status.code(),
            r.status.code(),
            "{what}: exit codes differ\nlocal stderr: {}\nremote stderr: {}",
            l.stderr_text(),
            r.stderr_text()
        );
        if s.compare_stdout && !what.starts_with("wait") {
            assert_eq!(l.stdout_text(), r.stdout_text(), "{what}: stdout differs");
        }
    }
}

#[test]
fn spawns_beyond_the_running_limit_wait_in_pending_for_a_slot() {
    let server = Server::start_with(&["--max-running", "1", "--max-pending", "1"]);
    let first = server.spawn(TOKEN_A, "echo ready=$((40+2)); sleep 60");
    server.wait_for_output(&first, TOKEN_A, "ready=42");
    let image = server.host_image(TOKEN_B);
    let body = json!({"image": image, "command": "echo second", "shell": true});
    let waiting = server.post_json("/v1/instances", TOKEN_B, &body);
    assert_eq!(waiting.status, 201, "{}", waiting.text());
    let second = waiting.json()["uuid"].as_str().unwrap().to_string();
    let status = |op: &str, token: &str| {
        server.get(&format!("/v1/operations/{op}"), token).json()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status(&second, TOKEN_B), "PENDING");
    // Signalling a command that has not started is refused.
    let early = server.request(
        "DELETE",
        &format!("/v1/operations/{second}/subprocesses/1?signal=TERM"),
        Some(TOKEN_B),
        b"",
    );
    assert_eq!(early.status, 409, "{}", early.text());
    // The queue is bounded too.
    let refused = server.post_json("/v1/instances", TOKEN_B, &body);
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    // What is checked is that nothing happens: the dispatcher looks at the queue every 50 ms,
    // so a wrong one would have started the operation within these six rounds. No event
    // marks "looked and left it waiting", hence a fixed wait here.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        status(&second, TOKEN_B),
        "PENDING",
        "started without a slot"
    );
    let cancel = server.request(
        "DELETE",
        &format!("/v1/operations/{first}"),
        Some(TOKEN_A),
        b"",
    );
    assert_eq!(cancel.status, 202);
    // The slot frees: the waiting operation runs to the end.
    let events = server.events(&second, TOKEN_B, None);
    assert_eq!(events.last().unwrap()["data"]["status"], "SUCCESS");
    assert!(
        events.iter().any(|e| e["type"] == "stdout"),
        "no output: {events:?}"
    );

    // A waiting operation that is cancelled never starts.
    let third = server.spawn(TOKEN_A, "echo ready=$((40+2)); sleep 60");
    server.wait_for_output(&third, TOKEN_A, "ready=42");
    let queued = server.post_json("/v1/instances", TOKEN_B, &body);
    let fourth = queued.json()["uuid"].as_str().unwrap().to_string();
    let gone = server.request(
        "DELETE",
        &format!("/v1/operations/{fourth}"),
        Some(TOKEN_B),
        b"",
    );
    assert_eq!(gone.status, 202, "{}", gone.text());
    let events = server.events(&fourth, TOKEN_B, None);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["completion"], "{events:?}");
    assert_eq!(events[0]["data"]["status"], "CANCELLED");
}

#[test]
fn remote_ctrl_c_interrupts_the_command_first_then_cancels() {
    use nix::sys::signal::{kill, Signal};
    let server = Server::start();
    let env = our_client(&server);
    env.use_host();
    // A command that stops on SIGINT: the first Ctrl-C reaches it and the run ends with its
    // own exit code.
    let mut running = env
        .cmd([
            "run",
            "-s",
            "trap 'echo got INT; exit 7' INT; echo started; sleep 60 & wait",
        ])
        .spawn();
    let limit = std::time::Duration::from_secs(20);
    running.wait_for_stdout("started", limit);
    let cli = nix::unistd::Pid::from_raw(running.pid());
    kill(cli, Signal::SIGINT).expect("Ctrl-C");
    running.wait_for_stdout("got INT", limit);
    let out = running.wait().code(7);
    out.stderr_contains("[INFO] Sent SIGINT to operation ")
        .stderr_contains("; waiting for it to exit (Ctrl-C again to force-cancel)");

    // A command that ignores it: the second Ctrl-C cancels the operation.
    let mut running = env
        .cmd(["run", "-s", "trap '' INT; echo started; sleep 60"])
        .spawn();
    running.wait_for_stdout("started", limit);
    let cli = nix::unistd::Pid::from_raw(running.pid());
    kill(cli, Signal::SIGINT).expect("first Ctrl-C");
    // The second Ctrl-C must reach a CLI that has acted on the first one (two signals sent
    // back to back may arrive as one).
    running.wait_for_stderr("[INFO] Sent SIGINT to operation ", limit);
    kill(cli, Signal::SIGINT).expect("second Ctrl-C");
    running
        .wait()
        .code(1)
        .stderr_contains("[INFO] Sent SIGINT to operation ")
        .stderr_contains("[INFO] Cancelled operation ")
        .stderr_contains("[ERROR] User interrupted");
}

#[test]
fn tokens_can_come_from_the_config_file_which_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let config = env.home().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\npath = []\n\n[[serve.tokens]]\ntoken = \"{TOKEN_A}\"\nnamespace = \"alice\"\n\n[[serve.tokens]]\ntoken = \"{TOKEN_B}\"\nnamespace = \"bob\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.run(["serve", "--listen", "127.0.0.1:0"])
        .code(1)
        .stderr_contains("holds serve tokens but others may read it (mode 644)");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start_in(env, &[]);
    let who = server.get("/v1/whoami", TOKEN_B).json();
    assert_eq!(who["namespace"], "bob");
    assert_eq!(
        server.get("/v1/whoami", TOKEN_A).json()["namespace"],
        "alice"
    );
    let nobody = server.request("GET", "/v1/whoami", Some("not-a-token"), b"");
    assert_eq!(nobody.status, 401);
}

#[test]
fn finished_event_logs_are_cut_to_their_completion_by_size_and_by_age() {
    let server = Server::start_with(&["--events-max-bytes", "150000"]);
    let types = |op: &str| -> Vec<String> {
        server
            .events(op, TOKEN_A, None)
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    };
    let older = server.spawn(TOKEN_A, "head -c 100000 /dev/zero | tr '\\0' x");
    assert!(types(&older).contains(&"stdout".to_string()));
    let newer = server.spawn(TOKEN_A, "head -c 100000 /dev/zero | tr '\\0' y");
    assert!(types(&newer).contains(&"stdout".to_string()));
    // Together over the bound: the older log goes down to its completion, the newer stays.
    assert!(
        crate::harness::eventually(std::time::Duration::from_secs(10), || types(&older)
            == ["completion"]),
        "the older log was not cut: {:?}",
        types(&older)
    );
    assert!(types(&newer).contains(&"stdout".to_string()));
    let row = server
        .get(&format!("/v1/operations/{older}"), TOKEN_A)
        .json();
    assert_eq!(row["status"], "SUCCESS", "{row}");
    let last = server.events(&older, TOKEN_A, None);
    assert_eq!(last[0]["data"]["status"], "SUCCESS");

    let server = Server::start_with(&["--events-max-age", "1s"]);
    let op = server.spawn(TOKEN_A, "echo aged");
    assert!(
        crate::harness::eventually(std::time::Duration::from_secs(10), || {
            server
                .events(&op, TOKEN_A, None)
                .iter()
                .all(|e| e["type"] == "completion")
        }),
        "an old log was not cut"
    );
}

#[test]
fn a_large_upload_shows_a_progress_bar_on_a_terminal_only() {
    let server = Server::start();
    let bob = our_client(&server);
    bob.use_host();
    let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 253) as u8).collect();
    let path = bob.write("big.bin", &big);
    let spec = format!("{}:/big", path.display());
    let sum = crate::harness::sha256_hex(&big);
    // Not a terminal: no bar, nothing but the output.
    bob.run(["run", "-D", "-F", &spec, "--", "sha256sum", "/big"])
        .success()
        .stdout(&format!("{sum}  /big\n"))
        .stderr_empty();
    // A terminal (util-linux `script` gives the command a pty): the bar is drawn on stderr.
    let changed = [&big[..], b"changed"].concat();
    bob.write("big.bin", &changed);
    let Some(out) = bob.run_on_terminal(["run", "-D", "-F", &spec, "--", "sha256sum", "/big"])
    else {
        return;
    };
    let text = out.success().stdout_text();
    assert!(
        text.contains("uploading 1 file(s) [") && text.contains("MiB"),
        "no progress bar: {text:?}"
    );
    let sum = crate::harness::sha256_hex(&changed);
    assert!(text.contains(&format!("{sum}  /big")), "{text:?}");
}

#[test]
fn a_file_mode_in_python_s_oct_form_keeps_its_permission_bits() {
    let server = Server::start();
    let up = server.request("POST", "/v1/files", Some(TOKEN_A), b"#!/bin/sh\necho ran\n");
    assert_eq!(up.status, 201, "{}", up.text());
    let uuid = up.json()["uuid"].as_str().unwrap().to_string();
    let host = server.host_image(TOKEN_A);
    let spawn = server.post_json(
        "/v1/instances",
        TOKEN_A,
        &json!({
            "image": host,
            "command": "stat -c %a /t/run.sh && /t/run.sh",
            "shell": true,
            "files": {"/t/run.sh": {"uuid": uuid, "mode": "0o100750"}},
        }),
    );
    assert!(spawn.status < 300, "{}", spawn.text());
    let op = spawn.json()["uuid"].as_str().unwrap().to_string();
    let events = server.events(&op, TOKEN_A, None);
    assert_eq!(stdout_of(&events), "750\nran\n");
    // Not octal at all is still refused, with the usual JSON error.
    let bad = server.post_json(
        "/v1/instances",
        TOKEN_A,
        &json!({"image": host, "command": "true", "files": {"/f": {"uuid": uuid, "mode": "0o"}}}),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("is not octal"), "{}", bad.text());
}

#[test]
fn output_cut_at_truncate_output_at_says_truncated_in_the_result() {
    let server = Server::start();
    let host = server.host_image(TOKEN_A);
    let reply = server.post_json(
        "/v1/instances",
        TOKEN_A,
        &json!({
            "image": host,
            "command": "head -c 5000 /dev/zero | tr '\\0' x; echo short >&2",
            "shell": true,
            "truncate_output_at": 1000,
        }),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();
    server.events(&op, TOKEN_A, None);
    let got = server.get(&format!("/v1/operations/{op}"), TOKEN_A).json();
    let result = &got["metadata"]["result"];
    assert_eq!(result["stdout"]["truncated"], true, "{result}");
    assert_eq!(result["stdout"]["value"].as_str().unwrap().len(), 1000);
    assert_eq!(result["stderr"]["truncated"], false, "{result}");
    assert_eq!(result["stderr"]["value"], "short\n");
}

#[test]
fn ps_since_and_until_reach_the_server_and_the_official_client_gets_them_too() {
    let server = Server::start();
    let env = our_client(&server);
    env.use_host();
    env.run(["run", "--", "true"]).success();
    let op = env.last_op();
    env.run(["ps", "-a", "-q", "--since", "1h"])
        .success()
        .stdout(&format!("{op}\n"));
    env.run(["ps", "-a", "-q", "--until", "1h"])
        .success()
        .stdout_empty();
    // The API filters by itself (our client would also filter what it is sent).
    let listed = |query: &str| {
        server
            .get(&format!("/v1/operations?{query}"), TOKEN_B)
            .json()
            .as_array()
            .expect("a list")
            .len()
    };
    assert_eq!(listed("since=2000-01-01T00:00:00Z"), 1);
    assert_eq!(listed("until=2000-01-01T00:00:00"), 0);
    assert_eq!(listed("since=2999-01-01"), 0);
    let bad = server.get("/v1/operations?since=soon", TOKEN_B);
    assert_eq!(bad.status, 400, "{}", bad.text());
    // -o toml through the API too.
    let text = env
        .run(["-o", "toml", "run", "--", "echo", "remote"])
        .success()
        .stdout_text();
    let doc: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(doc["results"][0]["stdout"].as_str(), Some("remote\n"));
    assert_eq!(doc["results"][0]["backend"].as_str(), Some("remote"));

    let Some(official) = Official::new(&server) else {
        return;
    };
    official.run(["run", "--", "true"]).success();
    let theirs = official.run(["ps", "-a", "-q", "--since", "1h"]).success();
    assert_eq!(
        theirs.stdout_text().lines().count(),
        1,
        "{}",
        theirs.stdout_text()
    );
    official
        .run(["ps", "-a", "-q", "--until", "1h"])
        .success()
        .stdout_empty();
}

#[test]
fn truncate_output_at_above_the_apis_10_mib_is_refused_through_the_api_and_kept_locally() {
    let server = Server::start();
    let image = server.host_image(TOKEN_A);
    let over = json!({"image": image, "command": "true", "shell": true,
        "truncate_output_at": 10_485_761});
    let reply = server.post_json("/v1/instances", TOKEN_A, &over);
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("10 MiB"), "{}", reply.text());
    let at_cap = json!({"image": image, "command": "true", "shell": true,
        "truncate_output_at": 10_485_760});
    let reply = server.post_json("/v1/instances", TOKEN_A, &at_cap);
    assert!(reply.status < 300, "{}", reply.text());

    // A client with a profile says so before asking.
    let bob = our_client(&server);
    bob.use_host();
    bob.run(["run", "-D", "-T", "20000000", "--", "true"])
        .code(1)
        .stderr_contains("with a profile, -T can be at most 10485760");

    // The local store keeps more: its logs are bounded by retention instead.
    let local = Env::host();
    let out = local
        .run([
            "run",
            "-D",
            "-T",
            "12582912",
            "--",
            "head",
            "-c",
            "12M",
            "/dev/zero",
        ])
        .success();
    assert_eq!(out.stdout_text().len(), 12 << 20);
}
