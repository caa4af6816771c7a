//! `contree doctor`: a whole store passes; damage a crash or a hand can do is found, and
//! `--repair` fixes what it can without losing anything.

use crate::harness::*;
use std::time::Duration;

#[test]
fn a_fresh_store_is_whole() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo a > /root/a"])
        .success();
    env.run(["doctor"])
        .success()
        .stdout_contains("ok        database")
        .stdout_contains("ok        sessions")
        .stdout_lacks("problem")
        .stderr_contains("[INFO] The store is whole");
}

#[test]
fn doctor_finds_dead_operations_incomplete_logs_and_abandoned_scratch_and_repairs_them() {
    let env = Env::host();
    // A finished run whose log lost its ending.
    env.run(["run", "--", "true"]).success();
    let done = env.last_op();
    let log = env.home().join("store/ops").join(&done).join("events");
    std::fs::write(&log, b"").expect("truncate the log");
    // That run's supervisor ends abandoned operations on its way out: had it still been
    // finishing, it could end the one killed below before doctor sees it.
    wait_until(
        Duration::from_secs(20),
        "the first run's supervisor is gone",
        || supervisors_of(&env).is_empty(),
    );
    // A detached run whose supervisor is killed: doctor opens the store as it is, without
    // the recovery every other command does first.
    let token = unique_token();
    let running = env.json(["run", "-d", "--", "sleep", &format!("30.{token}")])["uuid"]
        .as_str()
        .expect("uuid")
        .to_string();
    wait_until(Duration::from_secs(20), "the sandbox runs", || {
        !sleepers(&token).is_empty()
    });
    // Not any contree-super of this env: an earlier run's may still be finishing.
    let supervisor = supervisor_of(sleepers(&token)[0]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the supervisor");
    wait_until(Duration::from_secs(10), "the sandbox is gone", || {
        sleepers(&token).is_empty()
    });
    std::fs::create_dir_all(env.home().join("store/tmp/abandoned/upper")).expect("scratch");

    env.run(["doctor"])
        .code(1)
        // PENDING or EXECUTING, whether or not it had marked itself before it was killed.
        .check("the dead run is found", |out| {
            out.stdout_text().lines().any(|l| {
                l.contains(&format!("operation {running} is "))
                    && l.ends_with("but its supervisor is gone")
            })
        })
        .stdout_contains(&format!(
            "operation {done} (SUCCESS): its log has no completion"
        ))
        .stdout_contains("tmp/abandoned: nobody holds it")
        .stdout_contains(&format!("tmp/{running}: nobody holds it"))
        .stderr_contains("4 problem(s) found in the store")
        .stderr_contains("hint: `contree doctor --repair`");
    env.run(["doctor", "--repair"])
        .success()
        .stdout_contains("repaired  operations")
        .stdout_contains("repaired  event logs")
        .stdout_contains("repaired  scratch");
    env.run(["doctor"]).success().stdout_lacks("problem");
    assert_eq!(env.op_status(&running), "FAILED");
    env.run(["show", &done]).success();
}

#[test]
fn a_layer_lost_from_disk_is_reported_and_never_repaired_away() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo a > /root/a"])
        .success();
    let image = env.session_image();
    let op = env.last_op();
    std::fs::remove_dir_all(env.home().join("store/layers").join(&op)).expect("remove the layer");
    env.run(["doctor", "--repair"])
        .code(1)
        .stdout_contains(&format!("image {image}: layer {op} is missing on disk"))
        .stderr_contains("1 problem(s) found in the store");
    // The image and the session are left as they are: nothing is deleted to look clean.
    assert_eq!(env.session_image(), image);
}

#[test]
fn run_limits_come_from_config_toml_under_the_environment() {
    let env = Env::host();
    std::fs::write(env.home().join("config.toml"), "[limits]\npids = 100\n").expect("config");
    env.run(["doctor"])
        .success()
        .stdout_contains("processes 100,");
    env.cmd(["doctor"])
        .env("CONTREE_LIMITS_PIDS", "64")
        .output()
        .success()
        .stdout_contains("processes 64,");
    env.cmd(["doctor"])
        .env("CONTREE_LIMITS_PIDS", "lots")
        .output()
        .code(1)
        .stdout_contains("CONTREE_LIMITS_PIDS=lots: 'lots' is not a process count");
}
