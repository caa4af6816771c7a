//! `GET /v1/inspect/{image}/grep` on a real `contree serve`: an image made by a run, then
//! searched without a sandbox.

use serde_json::{json, Value};

use crate::serve::{Server, TOKEN_A, TOKEN_B};

/// Runs `command` as alice (its snapshot kept) and returns the image it made.
fn image_of(server: &Server, command: &str) -> String {
    let op = server.spawn(TOKEN_A, command);
    server.events(&op, TOKEN_A, None);
    let got = server.get(&format!("/v1/operations/{op}"), TOKEN_A).json();
    assert_eq!(got["status"], "SUCCESS", "{got}");
    got["result_image_uuid"].as_str().unwrap().to_string()
}

/// The files the tests search, under `/g` of an image on the host base.
const FILES: &str = "mkdir -p /g/etc /g/src /g/empty \
    && printf '# cfg\\nPermitRootLogin no\\nPort 22\\n' > /g/etc/sshd_config \
    && printf 'port=1\\n' > /g/etc/old.bak \
    && printf 'fn main() {\\n    let port = 8080;\\n}\\n' > /g/src/main.rs \
    && printf 'PORT=2\\n' > /g/src/.env \
    && printf 'x\\000Port 9\\n' > /g/src/blob.bin \
    && ln -s /g/etc/sshd_config /g/src/link";

/// A query string of `pairs`, percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

fn grep(server: &Server, image: &str, token: &str, pairs: &[(&str, &str)]) -> (u16, Value) {
    let reply = server.get(&format!("/v1/inspect/{image}/grep{}", query(pairs)), token);
    let body = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, body)
}

/// `path:line:text` per row, `-` for context rows.
fn rows(result: &Value) -> Vec<String> {
    result["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let sep = if m["type"] == "match" { ':' } else { '-' };
            format!(
                "{}{sep}{}{sep}{}",
                m["path"].as_str().unwrap(),
                m["line_number"],
                m["line_text"].as_str().unwrap().trim_end()
            )
        })
        .collect()
}

#[test]
fn grep_finds_lines_with_offsets_context_roots_globs_and_a_total() {
    let server = Server::start();
    let image = image_of(&server, FILES);

    let (status, got) = grep(
        &server,
        &image,
        TOKEN_A,
        &[
            ("pattern", "(?i)^port"),
            ("pattern", "Root"),
            ("path", "/g"),
        ],
    );
    assert_eq!(status, 200, "{got}");
    // Hidden files are searched; the binary file and the symlink are not.
    assert_eq!(
        rows(&got),
        [
            "/g/etc/old.bak:1:port=1",
            "/g/etc/sshd_config:2:PermitRootLogin no",
            "/g/etc/sshd_config:3:Port 22",
            "/g/src/.env:1:PORT=2",
        ]
    );
    assert_eq!(got["path"], "/g");
    assert_eq!(got["patterns"], json!(["(?i)^port", "Root"]));
    assert_eq!(got["truncated"], false);
    let permit = &got["matches"][1];
    assert_eq!(permit["absolute_offset"], 6);
    assert_eq!(permit["line_text"], "PermitRootLogin no\n");
    assert_eq!(permit["line_bytes"], 19);
    assert_eq!(
        permit["submatches"],
        json!([{"text": "Root", "start": 6, "end": 10}])
    );

    // Context, two roots in the order given, a glob, case insensitive.
    let (status, got) = grep(
        &server,
        &image,
        TOKEN_A,
        &[
            ("pattern", "port"),
            ("case", "insensitive"),
            ("path", "/g/src"),
            ("path", "/g/etc"),
            ("glob", "!*.bak"),
            ("before", "1"),
            ("after", "1"),
        ],
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        rows(&got),
        [
            "/g/src/.env:1:PORT=2",
            "/g/src/main.rs-1-fn main() {",
            "/g/src/main.rs:2:    let port = 8080;",
            "/g/src/main.rs-3-}",
            "/g/etc/sshd_config-2-PermitRootLogin no",
            "/g/etc/sshd_config:3:Port 22",
        ]
    );
    assert_eq!(got["path"], "/g/src");
    assert_eq!(got["matches"][1]["type"], "context");
    assert_eq!(got["matches"][1]["submatches"], json!([]));

    // The total is shared by the roots; stopping early says so.
    let (status, got) = grep(
        &server,
        &image,
        TOKEN_A,
        &[
            ("pattern", "(?i)port"),
            ("path", "/g/src"),
            ("path", "/g/etc"),
            ("max_total", "3"),
        ],
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        rows(&got),
        [
            "/g/src/.env:1:PORT=2",
            "/g/src/main.rs:2:    let port = 8080;",
            "/g/etc/old.bak:1:port=1",
        ]
    );
    assert_eq!(got["truncated"], true);

    // A symlink named as the root is resolved inside the image.
    let (status, got) = grep(
        &server,
        &image,
        TOKEN_A,
        &[("pattern", "Port"), ("path", "/g/src/link")],
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(rows(&got), ["/g/etc/sshd_config:3:Port 22"]);
}

#[test]
fn grep_refuses_bad_requests_and_what_the_namespace_cannot_see() {
    let server = Server::start();
    let image = image_of(&server, FILES);
    let too_many: Vec<(&str, &str)> = std::iter::repeat_n(("pattern", "a"), 17).collect();
    let bad: [(&[(&str, &str)], &str); 7] = [
        (&[("pattern", "(unclosed")], "invalid regex"),
        (&too_many, "at most 16 patterns"),
        (&[("path", "/g")], "at least one pattern"),
        (&[("pattern", "a"), ("case", "upper")], "case must be"),
        (&[("pattern", "a"), ("max_total", "10001")], "max_total"),
        (&[("pattern", "a"), ("before", "x")], "before"),
        (&[("pattern", "a"), ("path", "g/etc")], "must be absolute"),
    ];
    for (pairs, words) in bad {
        let (status, got) = grep(&server, &image, TOKEN_A, pairs);
        assert_eq!(status, 400, "{pairs:?}: {got}");
        assert_eq!(got["status"], 400);
        let message = got["error"].as_str().unwrap();
        assert!(message.contains(words), "{pairs:?}: {message}");
    }
    let (status, got) = grep(
        &server,
        &image,
        TOKEN_A,
        &[("pattern", "a"), ("path", "/g/etc"), ("path", "/g/nowhere")],
    );
    assert_eq!(status, 404, "{got}");
    assert!(
        got["error"].as_str().unwrap().contains("/g/nowhere"),
        "{got}"
    );
    // Bob does not see alice's image: not found, however the request is.
    let (status, got) = grep(
        &server,
        &image,
        TOKEN_B,
        &[("pattern", "Port"), ("path", "/g")],
    );
    assert_eq!(status, 404, "{got}");
    assert!(!got.to_string().contains("Port 22"));
    let (status, _) = grep(
        &server,
        &image,
        TOKEN_A,
        &[("pattern", "Port"), ("path", "/g")],
    );
    assert_eq!(status, 200);
}

/// `contree grep` on the session's image: locally, and through a profile on `serve`, the
/// same lines and exit codes.
fn cli_greps(env: &crate::harness::Env) {
    env.run(["run", "--", "sh", "-c", FILES]).success();
    env.run(["grep", "Port", "/g/etc"])
        .success()
        .stdout("/g/etc/sshd_config:3:Port 22\n");
    // Case folding, context, a glob, and the session's cd as the default root.
    env.run(["cd", "/g"]).success();
    env.run(["grep", "--case", "insensitive", "-B1", "--glob", "!*.bak", "^port"])
        .success()
        .stdout("/g/etc/sshd_config-2-PermitRootLogin no\n/g/etc/sshd_config:3:Port 22\n--\n/g/src/.env:1:PORT=2\n");
    let rows = env
        .run(["-o", "json", "grep", "let port", "src"])
        .success()
        .json_lines();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["path"], "/g/src/main.rs");
    assert_eq!(rows[0]["line_number"], 2);
    // No match: 1; a bad regex: an error.
    env.run(["grep", "nowhere-to-be-found", "/g"])
        .code(1)
        .stdout_empty();
    env.run(["grep", "(", "/g"])
        .code(1)
        .stderr_contains("regex");
}

#[test]
fn cli_grep_searches_the_session_image_locally() {
    cli_greps(&crate::harness::Env::host());
}

#[test]
fn cli_grep_searches_the_session_image_through_serve() {
    let server = Server::start();
    let env = crate::serve::our_client(&server);
    env.use_host();
    cli_greps(&env);
}
