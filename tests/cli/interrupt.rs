//! Stopping a foreground run from the outside: Ctrl-C (SIGINT) cancels the operation and
//! leaves nothing behind; a reader closing stdout (`| head`) ends the run too.

use std::io::Read;
use std::process::ChildStdout;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::{eventually, sleepers, unique_token, Env, Running};

#[test]
fn sigint_cancels_a_foreground_run_and_cleans_up() {
    let env = Env::host();
    let token = unique_token();
    let sleeper = format!("sleep 30.{token}");
    let mut running = env
        .cmd([
            "run",
            "--",
            "sh",
            "-c",
            &format!("echo started; {sleeper} & {sleeper}; wait"),
        ])
        .spawn();
    // Output is live: it arrives while the command is still running.
    let (_stdout, first) = first_output(&mut running, 8);
    assert_eq!(&first, b"started\n");
    assert!(
        eventually(Duration::from_secs(10), || sleepers(&token).len() == 2),
        "the sandboxed command never started"
    );
    kill(Pid::from_raw(running.pid()), Signal::SIGINT).expect("send SIGINT");
    let out = running.wait().code(1);
    let op = env.last_op();
    out.stderr(&format!(
        "[INFO] Cancelled operation {op}\n[ERROR] User interrupted\n"
    ));
    assert!(
        eventually(Duration::from_secs(2), || sleepers(&token).is_empty()),
        "sandbox processes left behind: {:?}",
        sleepers(&token)
    );
    assert_eq!(env.op_status(&op), "CANCELLED");
    assert_eq!(
        env.mounts_in_home(),
        Vec::<String>::new(),
        "mounts left behind"
    );
}

#[test]
fn an_interrupted_run_does_not_move_the_session() {
    let env = Env::host();
    let before = env.session_image();
    let token = unique_token();
    let running = env
        .cmd([
            "run",
            "--",
            "sh",
            "-c",
            &format!("touch /half-done; sleep 30.{token}"),
        ])
        .spawn();
    assert!(
        eventually(Duration::from_secs(10), || !sleepers(&token).is_empty()),
        "the sandboxed command never started"
    );
    kill(Pid::from_raw(running.pid()), Signal::SIGINT).expect("send SIGINT");
    running.wait().code(1);
    assert_eq!(env.session_image(), before);
    env.run(["run", "--", "test", "-e", "/half-done"]).code(1);
}

#[test]
fn sigterm_cancels_like_sigint() {
    let env = Env::host();
    let token = unique_token();
    let running = env
        .cmd(["run", "--", "sleep", &format!("30.{token}")])
        .spawn();
    assert!(
        eventually(Duration::from_secs(10), || !sleepers(&token).is_empty()),
        "the sandboxed command never started"
    );
    kill(Pid::from_raw(running.pid()), Signal::SIGTERM).expect("send SIGTERM");
    running
        .wait()
        .code(1)
        .stderr_contains("[INFO] Cancelled operation");
    assert!(
        eventually(Duration::from_secs(2), || sleepers(&token).is_empty()),
        "sandbox processes left behind"
    );
    assert_eq!(env.op_status(&env.last_op()), "CANCELLED");
}

#[test]
fn closing_stdout_cancels_the_run_with_exit_141() {
    let env = Env::host();
    // `contree run -- … | head -n 1`: the next write after the reader is gone stops the run.
    let mut running = env
        .cmd([
            "run",
            "-t",
            "20",
            "--",
            "sh",
            "-c",
            "echo first; sleep 0.3; yes",
        ])
        .spawn();
    let (stdout, first) = first_output(&mut running, 6);
    assert_eq!(&first, b"first\n");
    drop(stdout);
    let status = running.child.wait().expect("wait");
    let op = env.last_op();
    assert_eq!(
        status.code(),
        Some(141),
        "exit status {status:?}; operation ended {}",
        env.op_status(&op)
    );
    assert_eq!(env.op_status(&op), "CANCELLED");
}

#[test]
fn closing_stdout_after_the_output_was_cut_still_ends_the_run() {
    let env = Env::host();
    // `contree run -- yes | head -c 3` hangs until the timeout when the 64 KiB cut fits in
    // the pipe before `head` exits: contree has nothing left to write, so it never sees EPIPE.
    // Here deterministically: the cut output is read, the reader goes, the command lives on.
    let mut running = env
        .cmd([
            "run",
            "-t",
            "4",
            "-T",
            "10",
            "--",
            "sh",
            "-c",
            "echo 0123456789abcdef; sleep 30",
        ])
        .spawn();
    let (stdout, first) = first_output(&mut running, 10);
    assert_eq!(&first, b"0123456789");
    drop(stdout);
    let status = running.child.wait().expect("wait");
    let op = env.last_op();
    assert_eq!(
        status.code(),
        Some(141),
        "exit status {status:?}; operation ended {}",
        env.op_status(&op)
    );
    assert_eq!(env.op_status(&op), "CANCELLED");
}

#[test]
fn a_foreground_run_is_listed_and_can_be_killed_from_elsewhere() {
    let env = Env::host();
    let token = unique_token();
    let mut running = env
        .cmd([
            "run",
            "--",
            "sh",
            "-c",
            &format!("echo started; sleep 30.{token}"),
        ])
        .spawn();
    let (_stdout, _) = first_output(&mut running, 8);
    // The supervisor records the operation while the sandbox starts.
    let mut listed = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            listed = env.run(["ps", "-q"]).success().stdout_text();
            !listed.trim().is_empty()
        }),
        "the running operation is not listed"
    );
    let op = listed.trim().to_string();
    assert_eq!(op.lines().count(), 1, "ps -q: {listed:?}");
    assert_eq!(env.op_status(&op), "EXECUTING");
    env.run(["kill", &op])
        .success()
        .stderr(&format!("[INFO] Cancelled operation {op}\n"));
    // Killed, so the command's code is unknown: 255, and the run says why.
    running.wait().code(255).stderr(&format!(
        "[CRITICAL] Operation {op} ended with status CANCELLED: cancelled\n"
    ));
    assert_eq!(env.op_status(&op), "CANCELLED");
    assert!(
        eventually(Duration::from_secs(2), || sleepers(&token).is_empty()),
        "sandbox processes left behind"
    );
}

#[test]
fn a_run_outlives_its_killed_cli() {
    let env = Env::host();
    let token = unique_token();
    let mut running = env
        .cmd([
            "run",
            "--",
            "sh",
            "-c",
            &format!("echo started; sleep 1.{token}; echo kept > /root/outlived"),
        ])
        .spawn();
    let (_stdout, _) = first_output(&mut running, 8);
    kill(Pid::from_raw(running.pid()), Signal::SIGKILL).expect("kill the CLI");
    let _ = running.child.wait();
    // The operation's supervisor is a process of its own: the run completes and is
    // snapshotted, and the next command of the session moves it there, as the CLI would
    // have.
    let op = env.run(["ps", "-a", "-q"]).success().stdout_text();
    let op = op.lines().next().expect("the operation").to_string();
    let record = env.run(["-o", "json", "wait", &op]).success().json();
    assert_eq!(record["status"], "SUCCESS");
    let image = record["result_image_uuid"]
        .as_str()
        .expect("a result image")
        .to_string();
    assert_eq!(image, env.session_image());
    env.run(["run", "-D", "--", "cat", "/root/outlived"])
        .success()
        .stdout("kept\n");
    assert!(sleepers(&token).is_empty());
}

#[test]
fn the_output_stops_with_a_killed_cli() {
    let env = Env::host();
    // The CLI's stdout is a pipe, which its supervisor writes the output to itself: once the
    // CLI is gone, the supervisor lets go of it too, though the command goes on.
    let mut running = env
        .cmd([
            "run",
            "-t",
            "60",
            "--",
            "sh",
            "-c",
            "while :; do echo tick; sleep 0.05; done",
        ])
        .spawn();
    let (mut stdout, first) = first_output(&mut running, 5);
    assert_eq!(&first, b"tick\n");
    kill(Pid::from_raw(running.pid()), Signal::SIGKILL).expect("kill the CLI");
    let _ = running.child.wait();
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
        let _ = done.send(rest);
    });
    let rest = ended.recv_timeout(Duration::from_secs(10));
    let op = env.run(["ps", "-q"]).success().stdout_text();
    let op = op.lines().next().expect("the run goes on").to_string();
    env.run(["kill", &op]).success();
    let rest = rest.expect("the output still flowed 10 s after its CLI was killed");
    assert!(
        rest.len() < 4096,
        "{} bytes came after the CLI was killed",
        rest.len()
    );
}

/// Reads the first `n` bytes of a started run's stdout (they arrive while it runs: the
/// output is live); hands back the rest of the pipe with them.
fn first_output(running: &mut Running, n: usize) -> (ChildStdout, Vec<u8>) {
    let mut stdout = running.child.stdout.take().expect("stdout");
    let mut first = vec![0u8; n];
    stdout.read_exact(&mut first).expect("read live output");
    (stdout, first)
}
