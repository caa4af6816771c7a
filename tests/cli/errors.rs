//! Bad input gets a clear error naming the flag or value at fault, with a documented exit
//! code (docs/exit-codes.md), and nothing is started: options `run` does not know, bad
//! `-e` pairs (bad `--file` specs are in `attachments`), an API that cannot be reached or
//! refuses the token. Network tests talk to loopback or to `.invalid` names only.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use crate::harness::Env;

#[test]
fn an_unknown_option_before_the_command_is_a_usage_error_not_the_command() {
    let env = Env::host();
    // `-o` belongs to contree itself: given after `run` it used to become the command.
    env.run(["run", "-D", "-o", "junit", "--", "true"])
        .code(2)
        .stdout_empty()
        .stderr(
            "[ERROR] unknown option '-o' for `contree run`\n\
             hint: '-o' is an option of contree itself: give it before `run`, as in `contree -o FORMAT run ...`\n\
             hint: `contree run --help` lists what it accepts\n",
        );
    env.run(["run", "--timeot", "5", "--", "echo", "hi"])
        .code(2)
        .stdout_empty()
        .stderr(
            "[ERROR] unknown option '--timeot' for `contree run`\n\
             hint: did you mean '--timeout'?\n\
             hint: `contree run --help` lists what it accepts\n",
        );
    env.run(["run", "-x", "echo", "hi"])
        .code(2)
        .stderr_contains("[ERROR] unknown option '-x' for `contree run`\n")
        .stderr_contains("hint: a command whose name starts with '-' goes after `--`");
    assert_eq!(
        env.all_ops(),
        Vec::<String>::new(),
        "nothing may be spawned"
    );
}

#[test]
fn after_the_command_or_after_double_dash_every_word_is_the_commands() {
    let env = Env::host();
    env.run([
        "run",
        "-e",
        "A=1",
        "sh",
        "-c",
        "echo \"$A $0 $1\"",
        "-o",
        "--timeot",
    ])
    .success()
    .stdout("1 -o --timeot\n");
    env.run(["run", "--", "printf", "%s,", "-o", "-D", "--timeot"])
        .success()
        .stdout("-o,-D,--timeot,");
}

#[test]
fn other_commands_name_the_option_and_where_it_belongs() {
    let env = Env::new();
    env.run(["images", "-o", "json"])
        .code(2)
        .stdout_empty()
        .stderr(
            "[ERROR] unknown option '-o' for `contree images`\n\
             hint: '-o' is an option of contree itself: give it before `images`, as in `contree -o FORMAT images ...`\n\
             hint: `contree images --help` lists what it accepts\n",
        );
    env.run(["session", "branch", "--nope"])
        .code(2)
        .stderr_contains("[ERROR] unknown option '--nope' for `contree session branch`\n");
    env.run(["cat", "/a", "/b"])
        .code(2)
        .stderr_contains("[ERROR] unexpected argument '/b' for `contree cat`\n");
    env.run(["imgs"]).code(2).stdout_empty().stderr(
        "[ERROR] unknown command 'imgs' for `contree`\n\
             hint: did you mean 'i', 'images' or 'img'?\n\
             hint: `contree --help` lists what it accepts\n",
    );
}

#[test]
fn a_bad_option_value_names_the_option() {
    let env = Env::new();
    env.run(["run", "-t", "soon", "--", "true"])
        .code(2)
        .stdout_empty()
        .stderr_contains("[ERROR] invalid value 'soon' for '--timeout <TIMEOUT>'")
        .stderr_contains("hint: `contree run --help` lists what it accepts\n");
    env.run(["run", "--hostname"])
        .code(2)
        .stderr_contains("[ERROR] a value is required for '--hostname <HOSTNAME>'");
}

#[test]
fn an_env_flag_without_equals_or_without_a_name_is_refused() {
    let env = Env::host();
    env.run(["run", "-e", "NOEQ", "--", "touch", "/spawned"])
        .code(1)
        .stdout_empty()
        .stderr("[ERROR] -e/--env: 'NOEQ' is not KEY=VALUE (write 'NOEQ=' for an empty value)\n");
    env.run(["run", "-e", "A=1", "--env", "=x", "--", "touch", "/spawned"])
        .code(1)
        .stdout_empty()
        .stderr("[ERROR] -e/--env: '=x' has an empty KEY (expected KEY=VALUE)\n");
    assert_eq!(
        env.all_ops(),
        Vec::<String>::new(),
        "nothing may be spawned"
    );
}

#[test]
fn the_session_environment_takes_the_same_pairs_and_sets_none_of_a_bad_list() {
    let env = Env::host();
    env.run(["env", "A=1", "NOEQ"])
        .code(1)
        .stdout_empty()
        .stderr(
            "[ERROR] 'NOEQ' is not KEY=VALUE (write 'NOEQ=' for an empty value)\n\
             hint: `contree env` lists the variables; `contree env -U NOEQ` unsets one\n",
        );
    env.run(["env", "=x"])
        .code(1)
        .stderr("[ERROR] '=x' has an empty KEY (expected KEY=VALUE)\n");
    env.run(["env", "-U", "A=1"])
        .code(1)
        .stderr("[ERROR] 'A=1' is not a variable name (expected KEY, without '=')\n");
    env.run(["env"])
        .success()
        .stdout("No session environment variables set.\n");
}

/// A loopback port nothing listens on: bound, then freed.
fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local addr").port()
}

/// A loopback HTTP server giving every request this reply (status line and JSON body).
fn answering(status: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            // The request head first, so the client is not reset while still sending.
            let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// `contree auth --url URL --token T --type jwt`.
fn auth(env: &Env, url: &str) -> crate::harness::Output {
    env.run(["auth", "--url", url, "--token", "t0ken", "--type", "jwt"])
}

#[test]
fn auth_against_a_dead_server_says_it_cannot_be_reached_not_that_the_token_was_refused() {
    let env = Env::new();
    let url = format!("http://127.0.0.1:{}", dead_port());
    auth(&env, &url)
        .code(75)
        .stdout_empty()
        .stderr_contains(&format!(
            "[ERROR] cannot reach {url}: connection refused (nothing listens on that port)\n\
             hint: the profile was not saved; check --url, or whether the server is running\n"
        ))
        .check("no word of a refused token", |o| {
            !o.stderr_text().contains("not accepted")
        });
    env.run(["auth", "list"]).success().stdout_empty();
}

#[test]
fn a_host_name_that_does_not_resolve_is_named() {
    let env = Env::new();
    auth(&env, "http://contree-test.invalid/")
        .code(75)
        .stderr_contains(
            "[ERROR] cannot reach http://contree-test.invalid:80: the host name 'contree-test.invalid' cannot be resolved (",
        );
}

#[test]
fn https_to_a_server_that_speaks_plain_http_is_a_tls_failure() {
    let env = Env::new();
    let url = answering("200 OK", "{}");
    let https = url.replace("http://", "https://");
    auth(&env, &https).code(75).stderr_contains(&format!(
        "[ERROR] cannot reach {https}: the TLS handshake failed: "
    ));
}

#[test]
fn a_refused_token_is_a_user_error_that_says_so() {
    let env = Env::new();
    let url = answering("401 Unauthorized", r#"{"error": "invalid token"}"#);
    auth(&env, &url)
        .code(1)
        .stderr(
            "[ERROR] the token was not accepted: HTTP 401: invalid token (check the profile's token: `contree auth`)\n\
             hint: the profile was not saved; check --token (and --type, --project)\n",
        );
    env.run(["auth", "list"]).success().stdout_empty();
}

#[test]
fn a_server_that_is_not_a_contree_api_is_told_apart_from_a_bad_token() {
    let env = Env::new();
    let url = answering("404 Not Found", r#"{"error": "no such path"}"#);
    auth(&env, &url).code(1).stderr(&format!(
        "[ERROR] {url} does not answer /v1/whoami like a ConTree API: HTTP 404: no such path\n\
         hint: the profile was not saved; check --url\n"
    ));
}

#[test]
fn a_server_that_never_answers_ends_in_an_error_not_a_hang() {
    // Accepts connections and holds them, silent: a URL pointing at the wrong port.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let env = Env::new();
    env.cmd(["auth", "--url", &url, "--token", "t0ken", "--type", "jwt"])
        .env("CONTREE_API_TIMEOUT", "1")
        .output()
        .code(75)
        .stderr_contains(&format!(
            "[ERROR] cannot reach {url}: no answer in time (waited 1 s; $CONTREE_API_TIMEOUT sets how long)\n"
        ));
}

#[test]
fn an_unknown_option_is_a_usage_error_for_every_command_never_a_word() {
    let env = Env::new();
    for args in [
        &["run", "--bogus"][..],
        &["run", "-t", "5", "--bogus", "echo", "x"],
        &["ps", "--bogus"],
        &["op", "sh", "--bogus", "x"],
        &["wait", "--bogus"],
        &["session", "show", "--bogus"],
        &["session", "rollback", "--bogus"],
        &["images", "import", "--bogus", "alpine"],
        &["auth", "list", "--bogus"],
        &["auth", "remove", "--bogus", "x"],
    ] {
        let out = env.run(args.iter().copied()).code(2).stdout_empty();
        let err = out.stderr_text();
        assert!(err.contains("unknown option '--bogus'"), "{args:?}: {err}");
    }
    // A number is still a rollback target, not an option.
    env.run(["session", "rollback", "-2"])
        .check("not a usage error", |o| o.status.code() != Some(2));
}
