//! `-t/--timeout` kills the whole sandbox and reports it; `-T/--truncate` caps what is
//! printed and recorded per stream, and says how much was dropped.

use std::time::Duration;

use crate::harness::{eventually, sleepers, unique_token, Env};

#[test]
fn a_timeout_kills_the_command_and_exits_255() {
    let env = Env::host();
    let out = env
        .run(["run", "-t", "1", "--", "sh", "-c", "echo started; sleep 30"])
        .code(255)
        .stdout("started\n");
    let op = env.last_op();
    let out = out.stderr(&format!("[WARNING] Operation {op} timed out after 1s\n"));
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
    let record = env.json(["show", &op]);
    assert_eq!(record["exit_code"], -1);
    assert_eq!(record["result"]["state"]["timed_out"], true);
}

#[test]
fn a_timeout_kills_background_children_too() {
    let env = Env::host();
    let token = unique_token();
    let script = format!("sleep 60.{token} & sleep 61.{token} & wait");
    env.run(["run", "--timeout", "1", "--", "sh", "-c", &script])
        .code(255);
    assert!(
        eventually(Duration::from_secs(2), || sleepers(&token).is_empty()),
        "sandbox processes survived the timeout: {:?}",
        sleepers(&token)
    );
}

#[test]
fn a_timeout_is_recorded_in_the_json_record() {
    let env = Env::host();
    let record = env
        .run(["-o", "json", "run", "-t", "1", "--", "sleep", "30"])
        .code(255)
        .stderr_contains("timed out after 1s")
        .json();
    assert_eq!(record["metadata"]["timeout"], 1);
    assert_eq!(record["exit_code"], -1);
    assert_eq!(record["image"], "");
}

#[test]
fn a_command_finishing_in_time_is_not_affected() {
    let env = Env::host();
    env.run(["run", "-t", "2", "--", "sh", "-c", "sleep 0.1; echo ok"])
        .success()
        .stdout("ok\n")
        .stderr_empty();
}

#[test]
fn truncate_cuts_stdout_and_says_how_much_was_dropped() {
    let env = Env::host();
    // `seq 1 100` prints 292 bytes.
    env.run(["run", "-T", "10", "--", "seq", "1", "100"])
        .success()
        .stdout("1\n2\n3\n4\n5\n")
        .stderr(
            "[WARNING] stdout cut at 10 bytes (282 more dropped); raise -T/--truncate to keep more\n",
        );
}

#[test]
fn truncate_applies_to_stderr_separately() {
    let env = Env::host();
    env.run([
        "run", "--truncate", "4", "--", "sh", "-c", "printf abcdef; printf 123456 >&2",
    ])
    .success()
    .stdout("abcd")
    .check("both warnings", |o| {
        let err = o.stderr_text();
        err.starts_with("1234")
            && err.contains(
                "[WARNING] stdout cut at 4 bytes (2 more dropped); raise -T/--truncate to keep more\n",
            )
            && err.contains(
                "[WARNING] stderr cut at 4 bytes (2 more dropped); raise -T/--truncate to keep more\n",
            )
    });
}

#[test]
fn output_exactly_at_the_limit_is_not_a_cut() {
    let env = Env::host();
    env.run(["run", "-T", "3", "--", "printf", "abc"])
        .success()
        .stdout("abc")
        .stderr_empty();
}

#[test]
fn the_recorded_output_is_truncated_too() {
    let env = Env::host();
    let record = env
        .run(["-o", "json", "run", "-T", "5", "--", "echo", "1234567890"])
        .success()
        .stderr(
            "[WARNING] stdout cut at 5 bytes (6 more dropped); raise -T/--truncate to keep more\n",
        )
        .json();
    assert_eq!(record["stdout"], "12345");
    assert_eq!(record["metadata"]["truncate_output_at"], 5);
    let op = record["uuid"].as_str().unwrap().to_string();
    assert_eq!(env.json(["show", &op])["result"]["stdout"], "12345");
}

#[test]
fn the_default_limit_is_64_kib() {
    let env = Env::host();
    let out = env
        .run(["run", "--", "head", "-c", "70000", "/dev/zero"])
        .success()
        .stderr(
            "[WARNING] stdout cut at 65536 bytes (4464 more dropped); raise -T/--truncate to keep more\n",
        );
    assert_eq!(out.stdout.len(), 65536);
    // Raising the limit keeps everything.
    let out = env
        .run([
            "run",
            "-T",
            "100000",
            "--",
            "head",
            "-c",
            "70000",
            "/dev/zero",
        ])
        .success()
        .stderr_empty();
    assert_eq!(out.stdout.len(), 70000);
}
