//! Operations: detached runs (`-d`) and the commands that follow them — `ps`, `wait`, `show`,
//! `kill`, `op events` — plus references like `@`/`HEAD` to the session tip's operation.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{eventually, Env};

/// Starts `run -d ARGS…` and returns the pending record.
fn detach(env: &Env, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json", "run", "-d", "--"];
    all.extend_from_slice(args);
    env.run(all).success().stderr_empty().json()
}

fn uuid(record: &Value) -> String {
    record["uuid"].as_str().expect("uuid").to_string()
}

#[test]
fn detach_returns_at_once_with_a_pending_record() {
    let env = Env::host();
    let out = env
        .run(["-o", "json", "run", "-d", "--", "sleep", "5"])
        .success();
    assert!(out.elapsed.as_secs_f64() < 3.0, "took {:?}", out.elapsed);
    let record = out.json();
    assert_eq!(record["status"], "PENDING");
    assert_eq!(record["command"], "sleep");
    let op = uuid(&record);
    assert_eq!(env.all_ops(), vec![op.clone()]);
    env.run(["kill", &op]).success();
    env.run(["wait", &op]).code(1);
}

#[test]
fn detach_default_format_is_a_table_row() {
    let env = Env::host();
    let out = env.run(["run", "--detach", "--", "true"]).success();
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("UUID  STATUS"), "{text}");
    assert!(lines[1].contains("PENDING"), "{text}");
    let op = env.last_op();
    assert!(lines[1].starts_with(&op), "{text}");
    env.run(["wait", &op]).success();
}

#[test]
fn ps_lists_running_operations_and_wait_collects_them() {
    let env = Env::host();
    let op = uuid(&detach(&env, &["sh", "-c", "sleep 1; echo done"]));
    env.run(["ps", "-q"]).success().stdout(&format!("{op}\n"));
    // PENDING until its supervisor has started it, then EXECUTING.
    assert!(
        eventually(Duration::from_secs(10), || {
            let rows = env.run(["-o", "json", "ps"]).success().json_lines();
            rows.len() == 1 && rows[0]["uuid"] == op.as_str() && rows[0]["status"] == "EXECUTING"
        }),
        "the op never showed as EXECUTING in `ps`"
    );
    let records = env.run(["-o", "json", "wait", &op]).success().json_lines();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], "SUCCESS");
    assert_eq!(records[0]["exit_code"], 0);
    assert_eq!(records[0]["timed_out"], false);
    // Finished: gone from `ps`, still in `ps -a`, filterable by status.
    env.run(["ps", "-q"]).success().stdout_empty();
    env.run(["ps", "-a", "-q"])
        .success()
        .stdout(&format!("{op}\n"));
    env.run(["ps", "--status", "SUCCESS", "-q"])
        .success()
        .stdout(&format!("{op}\n"));
    env.run(["ps", "--status", "FAILED", "-q"])
        .success()
        .stdout_empty();
    env.run(["show", &op]).success().stdout_contains("done\n");
}

#[test]
fn a_detached_run_does_not_move_the_session() {
    let env = Env::host();
    let before = env.session_image();
    let op = uuid(&detach(&env, &["touch", "/detached"]));
    env.run(["wait", &op]).success();
    assert_eq!(env.session_image(), before);
    env.run(["run", "--", "test", "-e", "/detached"]).code(1);
}

#[test]
fn wait_exits_with_the_highest_exit_code() {
    let env = Env::host();
    let ok = uuid(&detach(&env, &["true"]));
    let three = uuid(&detach(&env, &["sh", "-c", "exit 3"]));
    let records = env
        .run(["-o", "json", "wait", &ok, &three])
        .code(3)
        .json_lines();
    assert_eq!(records.len(), 2);
    let codes: Vec<&Value> = records.iter().map(|r| &r["exit_code"]).collect();
    assert!(codes.contains(&&Value::from(0)) && codes.contains(&&Value::from(3)));
}

#[test]
fn wait_gives_up_after_its_timeout() {
    let env = Env::host();
    let op = uuid(&detach(&env, &["sleep", "10"]));
    let out = env
        .run(["-o", "json", "wait", "-t", "1", &op])
        .code(1)
        .stderr("[WARNING] Timeout: 1 operation(s) did not finish in 1s\n");
    assert!(out.elapsed.as_secs_f64() < 3.0, "took {:?}", out.elapsed);
    let record = out.json();
    assert_eq!(record["uuid"], op.as_str());
    assert_eq!(record["timed_out"], true);
    env.run(["kill", &op]).success();
    env.run(["wait", &op]).code(1);
}

#[test]
fn kill_cancels_a_running_operation() {
    let env = Env::host();
    let op = uuid(&detach(&env, &["sleep", "30"]));
    env.run(["kill", &op])
        .success()
        .stdout_empty()
        .stderr(&format!("[INFO] Cancelled operation {op}\n"));
    let record = env.run(["-o", "json", "wait", &op]).code(1).json();
    assert_eq!(record["status"], "CANCELLED");
    assert_eq!(env.op_status(&op), "CANCELLED");
    env.run(["ps", "-q"]).success().stdout_empty();
}

#[test]
fn kill_needs_an_operation() {
    let env = Env::host();
    env.run(["kill"])
        .code(1)
        .stderr("[ERROR] Provide at least one UUID, or use --all\n");
    let missing = "00000000-0000-0000-0000-000000000000";
    env.run(["kill", missing])
        .code(1)
        .stderr_contains(&format!("[ERROR] Failed to cancel {missing}"));
}

#[test]
fn show_prints_a_row_then_the_output() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo out; echo err >&2"])
        .success();
    let op = env.last_op();
    let out = env.run(["show", &op]).success().stderr("err\n");
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("UUID  STATUS  EXIT_CODE"), "{text}");
    assert!(lines[1].starts_with(&format!("{op}  SUCCESS  0")), "{text}");
    assert_eq!(lines[2], "out");
}

#[test]
fn show_adds_a_newline_to_output_without_one() {
    let env = Env::host();
    env.run(["run", "--", "printf", "partial"]).success();
    let op = env.last_op();
    env.run(["show", &op])
        .success()
        .check("ends with the output and a newline", |o| {
            o.stdout_text().ends_with("\npartial\n")
        });
}

#[test]
fn show_json_has_the_decoded_result() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo out; echo err >&2; exit 5"])
        .code(5);
    let op = env.last_op();
    let record = env.json(["show", &op]);
    assert_eq!(record["uuid"], op.as_str());
    assert_eq!(record["status"], "SUCCESS");
    assert_eq!(record["exit_code"], 5);
    assert_eq!(record["kind"], "instance");
    assert_eq!(record["result"]["stdout"], "out\n");
    assert_eq!(record["result"]["stderr"], "err\n");
    let keys: Vec<&String> = record.as_object().unwrap().keys().collect();
    assert_eq!(keys.last().map(|k| k.as_str()), Some("error"));
}

#[test]
fn at_and_head_are_the_tips_operation() {
    let env = Env::host();
    env.run(["run", "--", "echo", "first"]).success();
    env.run(["run", "--", "echo", "second"]).success();
    let tip = env.last_op();
    for reference in ["@", "HEAD"] {
        let record = env.json(["show", reference]);
        assert_eq!(record["uuid"], tip.as_str(), "{reference}");
        assert_eq!(record["result"]["stdout"], "second\n");
    }
}

#[test]
fn show_rejects_a_malformed_reference() {
    let env = Env::host();
    env.run(["show", "not-a-uuid"])
        .code(1)
        .stderr("[ERROR] Invalid operation reference: not-a-uuid\n");
}

#[test]
fn op_events_is_the_operations_log() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo out; echo err >&2; exit 4"])
        .code(4);
    let op = env.last_op();
    let events = env
        .run(["-o", "json", "op", "events", &op])
        .success()
        .json_lines();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"init"), "{types:?}");
    assert_eq!(types.last(), Some(&"completion"), "{types:?}");
    for wanted in ["spawn", "stdout", "stderr", "exit"] {
        assert!(types.contains(&wanted), "no {wanted} event: {types:?}");
    }
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );
    assert!(events.iter().all(|e| e["uuid"] == op.as_str()));
    let stdout = events.iter().find(|e| e["type"] == "stdout").unwrap();
    assert_eq!(stdout["spid"], 1);
    assert_eq!(stdout["data"]["value"], "out\n");
    let exit = events.iter().find(|e| e["type"] == "exit").unwrap();
    assert_eq!(exit["data"]["code"], 4);
    let completion = events.last().unwrap();
    assert_eq!(completion["data"]["status"], "SUCCESS");
}

#[test]
fn op_events_of_a_detached_run_follow_it_to_the_end() {
    let env = Env::host();
    let op = uuid(&detach(&env, &["echo", "bg"]));
    env.run(["wait", &op]).success();
    let events = env
        .run(["-o", "json", "op", "events", &op])
        .success()
        .json_lines();
    assert_eq!(events.last().unwrap()["type"], "completion");
    assert!(events
        .iter()
        .any(|e| e["type"] == "stdout" && e["data"]["value"] == "bg\n"));
}

#[test]
fn a_finished_operation_cannot_be_killed() {
    let env = Env::host();
    env.run(["run", "--", "true"]).success();
    let op = env.last_op();
    env.run(["kill", &op])
        .code(1)
        .stderr_contains(&format!("[ERROR] Failed to cancel {op}"))
        .stderr_contains("already finished");
    assert_eq!(env.op_status(&op), "SUCCESS");
}

#[test]
fn unknown_operations_are_reported_by_every_command() {
    let env = Env::host();
    let missing = "00000000-0000-0000-0000-000000000000";
    env.run(["show", missing])
        .code(1)
        .stdout_empty()
        .stderr_contains(&format!("[ERROR] Failed to fetch {missing}"));
    env.run(["wait", missing]).code(1).stderr_contains(missing);
    env.run(["op", "events", missing])
        .code(1)
        .stderr_contains(missing);
}

#[test]
fn ps_status_takes_names_or_letters() {
    let env = Env::host();
    env.run(["run", "--", "true"]).success();
    env.run(["run", "--", "nosuchcmd"]).code(127);
    let ops = env.all_ops();
    let (failed, succeeded) = (&ops[0], &ops[1]);
    env.run(["ps", "--status", "S", "-q"])
        .success()
        .stdout(&format!("{succeeded}\n"));
    env.run(["ps", "--status", "F", "-q"])
        .success()
        .stdout(&format!("{failed}\n"));
    env.run(["ps", "--status", "nonsense"])
        .code(1)
        .stderr_contains("unknown status 'nonsense'");
}

#[test]
fn a_detached_run_still_gets_piped_stdin() {
    let env = Env::host();
    let record = env
        .cmd(["-o", "json", "run", "-d", "--", "cat"])
        .stdin("piped to the background\n")
        .output()
        .success()
        .json();
    let op = uuid(&record);
    env.run(["wait", &op]).success();
    assert_eq!(
        env.json(["show", &op])["result"]["stdout"],
        "piped to the background\n"
    );
}

#[test]
fn kill_right_after_a_detached_spawn_cancels_it() {
    // The supervisor may not have set up its signal handling yet: the cancel must still
    // land as CANCELLED, not as a supervisor that died.
    for _ in 0..5 {
        let env = Env::host();
        let op = env.json(["run", "-d", "--", "sleep", "30"])["uuid"]
            .as_str()
            .expect("uuid")
            .to_string();
        env.run(["kill", &op]).success();
        env.run(["wait", "-t", "20", &op]).code(1);
        assert_eq!(env.op_status(&op), "CANCELLED");
    }
}

#[test]
fn live_output_and_the_recorded_log_are_the_same_bytes() {
    let env = Env::host();
    // Several megabytes of binary output on both streams: the CLI gets it live through
    // pipes from the supervisor, the log gets it recorded; `show` reads the log.
    // (Each ends with a newline: `show` adds one to output without.)
    let script =
        "head -c 3000000 /dev/urandom > /tmp/r; echo >> /tmp/r; cat /tmp/r; cat /tmp/r >&2";
    let live = env
        .run(["run", "-T", "10000000", "--", "sh", "-c", script])
        .success();
    let op = env.last_op();
    assert_eq!(live.stdout.len(), 3_000_001);
    assert_eq!(live.stdout, live.stderr);
    let shown = env.run(["show", &op]).success();
    assert!(
        shown.stdout.ends_with(&live.stdout),
        "show's output differs from what was printed live"
    );
    assert_eq!(shown.stderr, live.stderr);
}

/// `seq 1 N` as the command prints it.
fn seq_text(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[test]
fn big_output_cut_between_chunks_keeps_exactly_the_limit() {
    let env = Env::host();
    // 3.4 MB of output, cut at 2.5 MB: the first megabytes are recorded without being read
    // (relay pipes), the last ones before the cap are read so they can be cut.
    let full = seq_text(500_000);
    let live = env
        .run(["run", "-T", "2500000", "--", "seq", "1", "500000"])
        .success()
        .stderr(&format!(
            "[WARNING] stdout cut at 2500000 bytes ({} more dropped); raise -T/--truncate to keep more\n",
            full.len() - 2_500_000
        ));
    assert_eq!(live.stdout, full.as_bytes()[..2_500_000]);
    let op = env.last_op();
    let shown = env.run(["show", &op]).success();
    assert!(
        shown
            .stdout
            .ends_with(&live.stdout[live.stdout.len() - 1000..]),
        "show's output differs from what was printed live"
    );
    let events = env
        .run(["-o", "json", "op", "events", &op])
        .success()
        .json_lines();
    let cut = events
        .iter()
        .find(|e| e["type"] == "truncated")
        .expect("a truncated event");
    assert_eq!(cut["data"]["bytes_emitted"], 2_500_000);
}

#[test]
fn a_detached_runs_big_output_is_all_recorded() {
    let env = Env::host();
    let op = uuid(&detach(&env, &["seq", "1", "500000"]));
    env.run(["wait", &op]).success();
    // The cap is the run's -T (64 KiB by default).
    let record = env.json(["show", &op]);
    assert_eq!(
        record["result"]["stdout"].as_str().map(str::len),
        Some(65536)
    );
    let op = uuid(
        &env.run([
            "-o", "json", "run", "-d", "-T", "10000000", "--", "seq", "1", "500000",
        ])
        .success()
        .json(),
    );
    env.run(["wait", &op]).success();
    let shown = env.run(["show", &op]).success();
    let full = seq_text(500_000);
    assert!(
        shown.stdout.ends_with(full.as_bytes()),
        "the recorded output of a detached run differs from the command's"
    );
}

#[test]
fn output_redirected_to_a_file_or_appended_arrives_whole() {
    let env = Env::host();
    // Redirected, the output goes from the supervisor to the file without the CLI; a file
    // opened for appending takes no splice(2) and is written plainly.
    let out = env.work().join("out.txt");
    let script = format!(
        "{bin} run -T 10000000 -- seq 1 500000 > {o} 2> {o}.err && \
         {bin} run -T 10000000 -- sh -c 'seq 1 3; echo err >&2' >> {o} 2>> {o}.err && \
         {bin} run -- true > /dev/null",
        bin = crate::harness::CONTREE,
        o = out.display()
    );
    env.program("sh").arg("-c").arg(&script).output().success();
    let mut expected = seq_text(500_000);
    expected.push_str(&seq_text(3));
    assert_eq!(std::fs::read_to_string(&out).expect("out"), expected);
    assert_eq!(
        std::fs::read_to_string(out.with_extension("txt.err")).expect("err"),
        "err\n"
    );
}

#[test]
fn a_big_event_log_takes_no_more_disk_than_its_size() {
    let env = Env::host();
    // Big logs are preallocated ahead of their writes; what was not used is given back.
    env.run([
        "run",
        "-T",
        "10000000",
        "--",
        "head",
        "-c",
        "7000000",
        "/dev/zero",
    ])
    .success();
    let log = env
        .home()
        .join("store/ops")
        .join(env.last_op())
        .join("events");
    let meta = std::fs::metadata(&log).expect("event log");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(meta.len() > 7_000_000, "log of {} bytes", meta.len());
    assert!(
        allocated < meta.len() + (256 << 10),
        "{} bytes allocated for a log of {}",
        allocated,
        meta.len()
    );
}

#[test]
fn ps_since_and_until_keep_the_operations_created_in_that_range() {
    let env = Env::host();
    env.run(["run", "--", "true"]).success();
    let all = env.all_ops();
    assert!(!all.is_empty());
    let listed = |range: &[&str]| -> Vec<String> {
        let mut args = vec!["ps", "-a", "-q"];
        args.extend_from_slice(range);
        env.run(args)
            .success()
            .stdout_text()
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(listed(&["--since", "1h"]), all);
    assert_eq!(listed(&["--since", "2000-01-01", "--until", "+1m"]), all);
    assert!(listed(&["--until", "1h"]).is_empty());
    assert!(listed(&["--since", "+1h"]).is_empty());
    env.run(["op", "ls", "-a", "-q", "--until", "1h"])
        .success()
        .stdout_empty();
    env.run(["ps", "-a", "--since", "soon"])
        .code(1)
        .stderr_contains("invalid time 'soon'");
}

#[test]
fn op_sh_is_op_show() {
    let env = Env::host();
    env.run(["run", "--", "echo", "shown"]).success();
    let op = env.last_op();
    let show = env.run(["op", "show", &op]).success().stdout_text();
    assert!(show.contains("shown\n"), "{show}");
    env.run(["op", "sh", &op]).success().stdout(&show);
}

#[test]
fn bare_wait_applies_the_sessions_detached_runs_like_session_wait() {
    let env = Env::host();
    let before = env.session_image();
    let op = uuid(&detach(&env, &["sh", "-c", "sleep 0.3; echo x > /waited"]));
    env.run(["wait"]).success().stdout_contains(&op);
    assert_ne!(env.session_image(), before);
    env.run(["cat", "/waited"]).success().stdout("x\n");
    // Nothing left to wait for: said, and not an error.
    env.run(["wait"])
        .success()
        .stderr_contains("No active operations for this session.");
}

#[test]
fn ps_prints_plain_blocks_and_toml_tables() {
    let env = Env::host();
    env.run(["run", "--", "true"]).success();
    env.run(["run", "--", "false"]).code(1);
    let ops = env.all_ops();
    let plain = env.run(["-o", "plain", "ps", "-a"]).success().stdout_text();
    let blocks: Vec<&str> = plain.split("---\n").collect();
    assert_eq!(blocks.len(), 2, "{plain}");
    for (block, op) in blocks.iter().zip(&ops) {
        let lines: Vec<&str> = block.lines().collect();
        // Keys padded to the widest (`result_image_uuid:` and one space).
        assert_eq!(lines[0], format!("uuid:{}{op}", " ".repeat(14)), "{block}");
        assert!(lines.contains(&"kind:              instance"), "{block}");
        assert!(lines.contains(&"status:            SUCCESS"), "{block}");
    }
    let text = env.run(["-o", "toml", "ps", "-a"]).success().stdout_text();
    let doc: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let results = doc["results"].as_array().expect("[[results]]");
    let uuids: Vec<&str> = results
        .iter()
        .map(|r| r["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids, ops);
    for r in results {
        assert_eq!(r["status"].as_str(), Some("SUCCESS"));
        assert_eq!(r["error"].as_str(), Some(""));
        assert!(r["duration"].is_float(), "{r}");
    }
}
