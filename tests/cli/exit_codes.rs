//! One test per row of docs/exit-codes.md, each triggering that code the way a user would
//! and checking the message that comes with it. Row 70 (an internal error) has no test: no
//! input is meant to reach it. Row 78 needs an ordinary user: tests/cli/rootless.rs.

use std::io::Read;
use std::net::TcpListener;

use crate::harness::{skip, Env, CONTREE};

#[test]
fn run_and_wait_exit_with_the_commands_own_code() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "exit 42"])
        .code(42)
        .stderr_empty();
    let op = env.json(["run", "-d", "--", "sh", "-c", "exit 3"])["uuid"]
        .as_str()
        .expect("uuid")
        .to_string();
    env.run(["wait", &op]).code(3);
}

#[test]
fn code_0_is_success_and_a_started_detached_run() {
    let env = Env::host();
    env.run(["run", "--", "true"]).success().stderr_empty();
    env.run(["run", "-d", "-D", "--", "true"])
        .success()
        .stdout_contains("PENDING");
}

#[test]
fn code_1_is_a_user_error() {
    let env = Env::new();
    env.run(["run", "--", "true"]).code(1).stderr(
        "No active session. Run `contree use IMAGE` to start one.\n\
         Agents: read `contree agent` for workflow and set a session first.\n\
         hint: `eval $(contree use host)` starts a session on the built-in host image\n",
    );
    env.run(["use", "no-such-image"])
        .code(1)
        .stderr_contains("[ERROR] ")
        .stderr_contains("no-such-image");
    env.use_host();
    env.run(["run", "-C", "rel", "--", "pwd"])
        .code(1)
        .stderr("[ERROR] cwd 'rel' must be an absolute path\n");
}

#[test]
fn code_2_is_a_usage_error() {
    let env = Env::host();
    env.run(["run", "-o", "json", "--", "true"])
        .code(2)
        .stderr_contains("[ERROR] unknown option '-o' for `contree run`\n");
}

#[test]
fn code_69_is_a_sandbox_this_process_cannot_build_as_a_user_without_root() {
    let env = Env::new();
    // nobody:nogroup, no supplementary groups, and no capabilities left, on a host that
    // forbids ordinary users a user namespace (the failpoint: no kernel setting is touched).
    let out = env
        .program("setpriv")
        .arg("--reuid=65534")
        .arg("--regid=65534")
        .arg("--clear-groups")
        .arg(CONTREE)
        .arg("run")
        .arg("--")
        .arg("true")
        .env("CONTREE_FAILPOINTS", "userns-forbidden")
        .output();
    if out.stderr_text().contains("setpriv: ") || out.status.code() == Some(127) {
        skip(&format!("setpriv unusable here: {}", out.stderr_text()));
        return;
    }
    out.code(69)
        .stdout_empty()
        .stderr_contains("[ERROR] this system does not let ordinary users create user namespaces (Operation not permitted (os error 1)): ")
        .stderr_contains("hint: or run contree as root, or use a ConTree API");
}

#[test]
fn code_74_is_a_local_file_that_cannot_be_written() {
    let env = Env::host();
    let file = env.write("a-file", "x");
    let dest = file.join("inside");
    env.run(["cp", "/etc/hostname", dest.to_str().unwrap()])
        .code(74)
        .stderr_contains(&format!("[ERROR] {}: Not a directory", dest.display()));
}

/// A loopback port nothing listens on: bound, then freed.
fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local addr").port()
}

#[test]
fn code_75_is_an_api_that_cannot_be_reached() {
    let env = Env::new();
    let url = format!("http://127.0.0.1:{}", dead_port());
    env.run(["-u", &url, "--token", "t", "images"])
        .code(75)
        .stdout_empty()
        .stderr_contains(&format!(
            "[ERROR] cannot reach {url}: connection refused (nothing listens on that port)\n"
        ));
}

#[test]
fn code_77_is_a_hook_that_stops_the_run_even_a_missing_one() {
    let env = Env::host();
    env.run(["run", "--hook", "missing.lua", "--", "touch", "/spawned"])
        .code(77)
        .stdout_empty()
        .stderr_contains(&format!(
            "[ERROR] cannot read hook file '{}': No such file or directory",
            env.work().join("missing.lua").display()
        ))
        .stderr_contains(
            "hint: fix the hook, or skip every hook for one run with `contree run --no-hooks ...`",
        );
    assert_eq!(
        env.all_ops(),
        Vec::<String>::new(),
        "nothing may be spawned"
    );
}

#[test]
fn code_127_is_a_command_not_found_in_the_sandbox() {
    let env = Env::host();
    env.run(["run", "--", "no-such-command"])
        .code(127)
        .stderr_contains("exec no-such-command: No such file or directory");
}

#[test]
fn code_141_is_stdout_closed_by_its_reader() {
    let env = Env::host();
    let mut running = env.cmd(["run", "-t", "60", "--", "yes"]).spawn();
    let mut stdout = running.child.stdout.take().expect("stdout");
    let mut first = [0u8; 4];
    stdout.read_exact(&mut first).expect("first output");
    assert_eq!(&first, b"y\ny\n");
    drop(stdout);
    running.wait().code(141);
}

#[test]
fn code_255_is_a_command_killed_by_a_signal_or_the_timeout() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "kill -9 $$"]).code(255);
}
