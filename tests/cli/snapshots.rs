//! Snapshots: a successful run moves the session to an image holding its changes, so the next
//! run sees them; disposable and failed runs leave the session where it was.

use crate::harness::Env;

#[test]
fn the_next_run_sees_files_written_by_the_previous_one() {
    let env = Env::host();
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "mkdir -p /data && echo one > /data/a",
    ])
    .success();
    env.run(["run", "--", "sh", "-c", "echo two >> /data/a"])
        .success();
    env.run(["run", "--", "cat", "/data/a"])
        .success()
        .stdout("one\ntwo\n");
}

#[test]
fn a_successful_run_moves_the_session_to_its_result_image() {
    let env = Env::host();
    let before = env.session_image();
    let record = env
        .run(["-o", "json", "run", "--", "touch", "/new-file"])
        .success()
        .json();
    let result = record["result_image_uuid"].as_str().expect("result image");
    assert_ne!(result, before);
    assert_eq!(env.session_image(), result);
    let session = env.json(["use"]);
    assert_eq!(session["last_kind"], "run");
    assert_eq!(session["last_title"], "touch /new-file");
}

#[test]
fn deletions_and_renames_are_snapshotted_too() {
    let env = Env::host();
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "mkdir /d && echo x > /d/gone && echo y > /d/old",
    ])
    .success();
    env.run(["run", "--", "sh", "-c", "rm /d/gone && mv /d/old /d/new"])
        .success();
    env.run(["run", "--", "ls", "-A", "/d"])
        .success()
        .stdout("new\n");
    // Removing a directory from the host image must hide it, not just empty it.
    env.run(["run", "--", "rm", "-r", "/d"]).success();
    env.run(["run", "--", "test", "-e", "/d"]).code(1);
}

#[test]
fn changing_a_host_file_in_the_sandbox_leaves_the_host_alone() {
    let env = Env::host();
    let host_before = std::fs::read("/etc/hostname").ok();
    env.run(["run", "--", "sh", "-c", "echo sandboxed > /etc/hostname"])
        .success();
    env.run(["run", "--", "cat", "/etc/hostname"])
        .success()
        .stdout("sandboxed\n");
    assert_eq!(std::fs::read("/etc/hostname").ok(), host_before);
}

#[test]
fn a_nonzero_exit_still_moves_the_session() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "touch /made; exit 3"])
        .code(3);
    env.run(["run", "--", "ls", "/made"])
        .success()
        .stdout("/made\n");
}

#[test]
fn a_disposable_run_keeps_nothing() {
    let env = Env::host();
    let before = env.session_image();
    env.run(["run", "-D", "--", "sh", "-c", "touch /scratch && echo done"])
        .success()
        .stdout("done\n");
    let record = env
        .run([
            "-o",
            "json",
            "run",
            "--disposable",
            "--",
            "touch",
            "/scratch2",
        ])
        .success()
        .json();
    assert_eq!(record["result_image_uuid"], serde_json::Value::Null);
    assert_eq!(env.session_image(), before);
    env.run(["run", "--", "sh", "-c", "ls /scratch /scratch2 2>/dev/null"])
        .code(2)
        .stdout_empty();
}

#[test]
fn a_failed_run_leaves_the_session_unchanged() {
    let env = Env::host();
    env.run(["run", "--", "touch", "/kept"]).success();
    let before = env.session_image();
    env.run(["run", "--", "nosuchcmd"]).code(127);
    assert_eq!(env.session_image(), before);
    // Timed out: its writes are thrown away.
    env.run(["run", "-t", "1", "--", "sh", "-c", "touch /lost; sleep 10"])
        .code(255);
    assert_eq!(env.session_image(), before);
    env.run(["run", "--", "sh", "-c", "ls /kept; test ! -e /lost"])
        .success()
        .stdout("/kept\n");
}

#[test]
fn two_runs_at_once_in_one_session_both_succeed() {
    let env = Env::host();
    let base = env.session_image();
    let a = env
        .cmd([
            "-o",
            "json",
            "run",
            "--",
            "sh",
            "-c",
            "sleep 0.2; echo A > /a; cat /a",
        ])
        .spawn();
    let b = env
        .cmd([
            "-o",
            "json",
            "run",
            "--",
            "sh",
            "-c",
            "sleep 0.2; echo B > /b; cat /b",
        ])
        .spawn();
    let a = a.wait().success().json();
    let b = b.wait().success().json();
    assert_eq!(a["stdout"], "A\n");
    assert_eq!(b["stdout"], "B\n");
    // Both started from the same image; the session ends on one of the two results.
    assert_eq!(a["metadata"]["image"], base.as_str());
    assert_eq!(b["metadata"]["image"], base.as_str());
    let tip = env.session_image();
    assert!(
        a["result_image_uuid"] == tip.as_str() || b["result_image_uuid"] == tip.as_str(),
        "session image {tip} is neither result: {a} / {b}"
    );
}

#[test]
fn preserved_env_is_seen_by_the_next_run() {
    // /v1 InstanceSpawnRequest.preserve_env: the merged env is written into the result image.
    let env = Env::host();
    env.run([
        "run",
        "--preserve-env",
        "-e",
        "FOO=kept",
        "--",
        "touch",
        "/x",
    ])
    .success();
    env.run(["run", "--", "sh", "-c", "echo \"FOO=${FOO-unset}\""])
        .success()
        .stdout("FOO=kept\n");
}

#[test]
fn env_without_preserve_is_not_kept() {
    let env = Env::host();
    env.run(["run", "-e", "FOO=once", "--", "touch", "/x"])
        .success();
    env.run(["run", "--", "sh", "-c", "echo \"FOO=${FOO-unset}\""])
        .success()
        .stdout("FOO=unset\n");
}

#[test]
fn a_reused_scratch_dir_starts_empty() {
    let env = Env::host();
    // Runs hand their scratch dir (upper and work dirs) on to the next run: what a
    // disposable or failed run wrote must not show through.
    env.run(["run", "-D", "--", "sh", "-c", "echo leak > /root/leak"])
        .success();
    // Handed on after `completion`, so a moment after the CLI returns.
    let spares = env.home().join("store/spare");
    assert!(
        crate::harness::eventually(std::time::Duration::from_secs(5), || {
            std::fs::read_dir(&spares).map(|d| d.count()).unwrap_or(0) == 1
        }),
        "no spare scratch dir kept"
    );
    env.run(["run", "--", "sh", "-c", "echo gone > /root/gone; exit 3"])
        .code(3);
    env.run([
        "run",
        "-t",
        "1",
        "--",
        "sh",
        "-c",
        "touch /root/cut; sleep 10",
    ])
    .code(255);
    env.run(["run", "--", "sh", "-c", "ls /root"])
        .success()
        .stdout("gone\n");
}

#[test]
fn a_run_that_cannot_start_says_why_and_is_recorded() {
    let env = Env::host();
    env.run(["run", "--", "touch", "/root/layered"]).success();
    let image = env.session_image();
    let op = env.last_op();
    // Break the image: its top layer is the first run's upper dir.
    std::fs::remove_dir_all(env.home().join("store/layers").join(&op)).expect("remove layer");
    let out = env.run(["run", "--", "true"]).code(1);
    let failed = env.last_op();
    // (Said by the supervisor, or by the sandbox's init when it mounts its own root.)
    out.stderr_contains(&format!(
        "[CRITICAL] Operation {failed} ended with status FAILED: "
    ))
    .stderr_contains("cannot mount the overlay root");
    assert_eq!(env.op_status(&failed), "FAILED");
    assert_eq!(env.session_image(), image);
    // Its event log was still written: `init` then `completion`.
    let events = env.run(["op", "events", &failed]).success().stdout_text();
    assert!(
        events.contains("init") && events.contains("completion"),
        "{events}"
    );
}
