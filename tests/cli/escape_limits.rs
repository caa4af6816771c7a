//! Escape probes, resource limits: a command that forks, allocates, spins or writes without
//! end is stopped by the sandbox's limits, and the host is fine afterwards. Each probe
//! passes only if the limit held: without it the bomb forks all it wants, the allocation
//! succeeds, the CPU runs free and the layer grows on the host's disk.
//!
//! Bounded on purpose: a probe never starts what could hurt the machine if the limit were
//! missing (the fork loop stops at 2,000 children of a host allowing 32,768 pids; the
//! allocation is 3 GiB of 24; every run has a timeout). Tests never write a cgroup file
//! themselves; the cgroups they cause are the runs', removed when the runs end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{processes, skip, sleepers, unique_token, wait_until, Env};
use crate::serve::{Server, TOKEN_A, TOKEN_B};

const LIMIT: Duration = Duration::from_secs(60);

/// The cgroup controllers a limit needs, or the test reports itself skipped.
fn controllers_here(wanted: &[&str]) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut have: Vec<String> = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.get(2) {
            Some(&"cgroup") => have.extend(f[3].split(',').map(str::to_string)),
            Some(&"cgroup2") => {
                let list = std::fs::read_to_string(Path::new(f[1]).join("cgroup.controllers"));
                have.extend(
                    list.unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_string),
                );
            }
            _ => {}
        }
    }
    let missing: Vec<&&str> = wanted
        .iter()
        .filter(|w| !have.iter().any(|h| h == **w))
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip(&format!("needs the cgroup controllers {missing:?}"));
    false
}

/// The host-side directories of the cgroups `pid` is in, per controller (`""` for the v2
/// tree), read from /proc/PID/cgroup and the mount table.
fn cgroup_dirs(pid: i32) -> HashMap<String, PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut mount_of: HashMap<String, PathBuf> = HashMap::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.get(2) {
            Some(&"cgroup") => {
                for c in f[3].split(',') {
                    mount_of
                        .entry(c.to_string())
                        .or_insert_with(|| PathBuf::from(f[1]));
                }
            }
            Some(&"cgroup2") => {
                mount_of
                    .entry(String::new())
                    .or_insert_with(|| PathBuf::from(f[1]));
            }
            _ => {}
        }
    }
    let mut dirs = HashMap::new();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        for c in controllers.split(',') {
            if let Some(mount) = mount_of.get(c) {
                dirs.insert(c.to_string(), mount.join(path.trim_start_matches('/')));
            }
        }
    }
    dirs
}

/// A file of the cgroup that holds `controller` for `pid`, trimmed.
fn cgroup_file(pid: i32, controller: &str, v2: &str, v1: &str) -> String {
    let dirs = cgroup_dirs(pid);
    let (dir, file) = match dirs.get(controller) {
        Some(dir) => (dir.clone(), v1),
        None => (dirs.get("").expect("a v2 cgroup").clone(), v2),
    };
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

/// `contree run -d … -- sleep 60.TOKEN` and the sleeper's pid.
fn detached_sleeper(env: &Env, flags: &[&str]) -> (String, i32) {
    let token = unique_token();
    let mut args = vec!["-o", "json", "run", "-d", "-D", "-t", "60"];
    args.extend_from_slice(flags);
    let arg = format!("60.{token}");
    args.extend(["--", "sleep", &arg]);
    let op = env.run(&args).success().json()["uuid"]
        .as_str()
        .expect("uuid")
        .to_string();
    wait_until(LIMIT, "the sandboxed sleeper", || {
        !sleepers(&token).is_empty()
    });
    (op, sleepers(&token)[0])
}

fn parent(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    after
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn show(env: &Env, op: &str) -> Value {
    env.json(["show", op])
}

/// Directories under the hierarchies' `contree/` whose name starts with `op`.
fn cgroups_of(op: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !matches!(f.get(2), Some(&"cgroup") | Some(&"cgroup2")) {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(Path::new(f[1]).join("contree")) {
            found.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(op))
                    .map(|e| e.path()),
            );
        }
    }
    found
}

/// `fork_loop`'s report: how many forks worked and how many failed.
pub(crate) fn forks(text: &str) -> (u64, u64) {
    let num = |key: &str| -> u64 {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {text:?}"))
    };
    (num("made="), num("failed="))
}

/// A fork loop bounded at 2,000 children, each exec'ing `sleep 60.TOKEN`: prints how many
/// forks worked and how many failed (see `forks`).
pub(crate) fn fork_loop(token: &str) -> String {
    format!(
        "my ($ok, $failed) = (0, 0); for (1 .. 2000) {{ my $p = fork; \
         if (!defined $p) {{ $failed++ }} elsif ($p == 0) {{ exec 'sleep', '60.{token}'; exit 1 }} \
         else {{ $ok++ }} }} print \"made=$ok failed=$failed\\n\""
    )
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_the_host_is_fine_afterwards() {
    if !controllers_here(&["pids"]) {
        return;
    }
    let env = Env::host();
    let token = unique_token();
    let out = env
        .run([
            "run",
            "-D",
            "-t",
            "60",
            "--pids",
            "64",
            "--",
            "perl",
            "-e",
            &fork_loop(&token),
        ])
        .success();
    let text = out.stdout_text();
    let (made, failed) = forks(&text);
    // The command itself is one of the 64: at most 63 children, and the rest refused.
    assert!(made <= 63, "{text}");
    assert!(failed >= 2000 - 63, "{text}");
    let op = env.last_op();
    let limits = &show(&env, &op)["result"]["limits"];
    assert_eq!(limits["max_pids"], 64);
    assert!(limits["forks_refused"].as_u64().unwrap() > 0, "{limits}");
    // The host: every child is gone with the run, nothing of it is left, and it can fork.
    assert!(
        sleepers(&token).is_empty(),
        "sandboxed sleepers outlived the run"
    );
    // Removed by the supervisor once the run's ending is recorded, a moment after the CLI
    // is told.
    wait_until(
        Duration::from_secs(10),
        "the run's cgroups are removed",
        || cgroups_of(&op).is_empty(),
    );
    std::process::Command::new("true")
        .status()
        .expect("the host can still fork");
}

#[test]
fn an_allocation_past_memory_is_killed_as_out_of_memory_with_137() {
    if !controllers_here(&["memory"]) {
        return;
    }
    let env = Env::host();
    let before = env.session_image();
    // 3 GiB, touched: the host has it to give, the sandbox does not.
    env.run([
        "run",
        "-t",
        "60",
        "--memory",
        "256M",
        "--",
        "perl",
        "-e",
        "$x = 'a' x (3 * 2**30); print length($x), qq(\\n)",
    ])
    .code(137)
    .stdout_lacks("3221225472")
    .stderr_contains("killed: out of memory (limit 256 MiB)");
    let op = env.last_op();
    let shown = show(&env, &op);
    assert_eq!(shown["status"], "FAILED");
    assert_eq!(shown["exit_code"], 137);
    assert_eq!(shown["result"]["state"]["oom"], true);
    // Peak memory in KiB, never past the limit.
    let peak = shown["consumed_memory"].as_u64().expect("consumed_memory");
    assert!(peak <= 256 * 1024, "peak {peak} KiB");
    // A failed run keeps nothing: the session stays where it was.
    assert_eq!(env.session_image(), before);
}

#[test]
fn cpus_caps_cpu_time_per_second() {
    if !controllers_here(&["cpu"]) {
        return;
    }
    let env = Env::host();
    let (op, sleeper) = detached_sleeper(&env, &["--cpus", "0.5"]);
    let quota = cgroup_file(sleeper, "cpu", "cpu.max", "cpu.cfs_quota_us");
    let half = if quota.contains(' ') {
        quota == "50000 100000"
    } else {
        let period = cgroup_file(sleeper, "cpu", "cpu.max", "cpu.cfs_period_us");
        quota.parse::<f64>().unwrap() / period.parse::<f64>().unwrap() == 0.5
    };
    assert!(half, "the sandbox's CPU quota is {quota}");
    env.run(["kill", &op]).success();
    // And what it consumed, loosely: a spinning loop gets at most half a CPU of wall time.
    env.run([
        "run",
        "-D",
        "-t",
        "30",
        "--cpus",
        "0.5",
        "--",
        "sh",
        "-c",
        "timeout 2 sh -c 'while :; do :; done'; true",
    ])
    .success();
    let shown = show(&env, &env.last_op());
    let cpu = shown["consumed_cpu"].as_f64().expect("consumed_cpu");
    let wall = shown["duration"].as_f64().expect("duration");
    assert!(cpu <= wall * 0.5 + 0.25, "{cpu} CPU seconds in {wall} s");
}

#[test]
fn what_a_run_consumed_is_in_show_and_the_api_record() {
    if !controllers_here(&["memory"]) {
        return;
    }
    let env = Env::host();
    let record = env.json([
        "run",
        "-D",
        "--",
        "perl",
        "-e",
        "$x = 'a' x (64 * 2**20); $i = 0; $i++ while $i < 2e6",
    ]);
    let shown = show(&env, record["uuid"].as_str().unwrap());
    assert!(
        shown["consumed_memory"].as_u64().unwrap() >= 64 * 1024,
        "{shown}"
    );
    assert!(shown["consumed_cpu"].as_f64().unwrap() > 0.0, "{shown}");
    let raw: Value = serde_json::from_str(
        &env.run(["show", "--raw", record["uuid"].as_str().unwrap()])
            .success()
            .stdout_text(),
    )
    .unwrap();
    assert_eq!(raw["consumed_memory"], shown["consumed_memory"]);
}

#[test]
fn max_layer_bytes_makes_writes_past_it_fail_with_enospc_inside() {
    if crate::harness::find_program("mkfs.ext4").is_none()
        && !Path::new("/usr/sbin/mkfs.ext4").exists()
        && !Path::new("/sbin/mkfs.ext4").exists()
    {
        skip("needs mkfs.ext4 (e2fsprogs)");
        return;
    }
    let env = Env::host();
    env.run([
        "run",
        "--max-layer-bytes",
        "20M",
        "--",
        "sh",
        "-c",
        "head -c 50M /dev/zero > /root/big; echo status=$?; echo kept > /root/small || true",
    ])
    .success()
    .stdout_contains("status=1")
    .stderr_contains("No space left on device")
    .stderr_contains("the writable layer reached its limit of 20 MiB");
    let op = env.last_op();
    assert_eq!(show(&env, &op)["result"]["state"]["layer_limit_hit"], true);
    // What fitted is kept, like on a full disk, and no more than the limit.
    let size: u64 = env
        .run(["run", "-D", "--", "stat", "-c", "%s", "/root/big"])
        .success()
        .stdout_text()
        .trim()
        .parse()
        .unwrap();
    assert!(size > 0 && size <= 20 << 20, "{size}");
    wait_until(
        Duration::from_secs(10),
        "the run's cgroups are removed",
        || cgroups_of(&op).is_empty(),
    );
}

#[test]
fn the_default_layer_limit_from_config_stops_a_run_that_writes_past_it() {
    let env = Env::host();
    std::fs::write(
        env.home().join("config.toml"),
        "[limits]\nmax_layer_bytes = \"30M\"\n",
    )
    .unwrap();
    let before = env.session_image();
    // 400 MiB in steps, over several seconds: stopped long before the end.
    env.run([
        "run", "-t", "60", "--", "sh", "-c",
        "i=0; while [ $i -lt 200 ]; do head -c 2M /dev/zero > /root/f$i; i=$((i+1)); sleep 0.05; done; echo all-written",
    ])
    .code(255)
    .stdout_lacks("all-written")
    .stderr_contains("past its limit of 30 MiB");
    assert_eq!(env.session_image(), before, "nothing of it was kept");
}

#[test]
fn limits_from_config_apply_to_every_run() {
    if !controllers_here(&["memory", "pids", "cpu"]) {
        return;
    }
    let env = Env::host();
    std::fs::write(
        env.home().join("config.toml"),
        "[limits]\nmemory = \"64M\"\npids = 16\ncpus = 0.25\n",
    )
    .unwrap();
    let (op, sleeper) = detached_sleeper(&env, &[]);
    let memory = cgroup_file(sleeper, "memory", "memory.max", "memory.limit_in_bytes");
    assert_eq!(memory, (64u64 << 20).to_string());
    // 16 for the command, 1 for the sandbox's init.
    assert_eq!(cgroup_file(sleeper, "pids", "pids.max", "pids.max"), "17");
    let quota = cgroup_file(sleeper, "cpu", "cpu.max", "cpu.cfs_quota_us");
    assert!(quota == "25000" || quota == "25000 100000", "{quota}");
    env.run(["kill", &op]).success();
    // A flag still wins over the config.
    let token = unique_token();
    env.run([
        "run",
        "-D",
        "-t",
        "60",
        "--pids",
        "4",
        "--",
        "perl",
        "-e",
        &fork_loop(&token),
    ])
    .success()
    .stdout_contains("made=3 ");
}

#[test]
fn a_crashed_supervisors_cgroups_are_removed_by_the_next_command() {
    let env = Env::host();
    let (op, sleeper) = detached_sleeper(&env, &["--pids", "100"]);
    let dirs = cgroups_of(&op);
    assert!(!dirs.is_empty(), "the run has cgroups");
    let supervisor = parent(parent(sleeper));
    assert!(supervisor > 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The sandbox dies with its supervisor; its cgroups stay until someone recovers.
    wait_until(LIMIT, "the sandbox to die with its supervisor", || {
        !processes().iter().any(|(pid, _)| *pid == sleeper)
    });
    wait_until(LIMIT, "recovery to remove the dead run's cgroups", || {
        env.run(["ps", "-a"]).success();
        dirs.iter().all(|d| !d.exists())
    });
}

#[test]
fn bad_limit_values_are_refused_before_anything_runs() {
    let env = Env::host();
    for (flag, value, says) in [
        ("--memory", "12MB", "'12MB' is not a size"),
        ("--memory", "1M", "below the smallest allowed, 4 MiB"),
        ("--pids", "0", "'0' is not a process count"),
        ("--cpus", "half", "'half' is not a number of CPUs"),
        (
            "--max-layer-bytes",
            "10",
            "below the smallest allowed, 1 MiB",
        ),
    ] {
        env.run(["run", flag, value, "--", "true"])
            .code(2)
            .stderr_contains(says);
    }
    assert!(env.all_ops().is_empty(), "nothing ran");
    std::fs::write(
        env.home().join("config.toml"),
        "[limits]\npids = \"many\"\n",
    )
    .unwrap();
    env.run(["run", "--", "true"])
        .code(1)
        .stderr_contains("config.toml: [limits] pids: 'many' is not a process count");
}

#[test]
fn serve_applies_resources_limits_within_its_maxima() {
    if !controllers_here(&["memory"]) {
        return;
    }
    let env = Env::new();
    std::fs::write(
        env.home().join("config.toml"),
        "[serve.limits]\nmemory = \"256M\"\n",
    )
    .unwrap();
    let tokens = env.write("tokens", format!("{TOKEN_A} alice\n{TOKEN_B} bob\n"));
    let server = Server::start_in(env, &["--tokens", &tokens.to_string_lossy()]);
    let image = server.host_image(TOKEN_A);
    // The client asks for no memory limit at all: it gets the server's ceiling.
    let reply = server.post_json(
        "/v1/instances",
        TOKEN_A,
        &json!({
            "image": image, "shell": true, "timeout": 60,
            "command": "perl -e '$x = \"a\" x (3 * 2**30)'",
            "resources_limits": {"max_memory_bytes": 0},
        }),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();
    let events = server.events(&op, TOKEN_A, None);
    let exit = events
        .iter()
        .find(|e| e["type"] == "exit")
        .expect("exit event");
    assert_eq!(exit["data"]["oom"], true, "{exit}");
    assert_eq!(exit["data"]["limits"]["max_memory_bytes"], 256u64 << 20);
    let done = events.last().unwrap();
    assert_eq!(done["type"], "completion");
    assert_eq!(
        done["data"]["error"],
        "killed: out of memory (limit 256 MiB)"
    );
    let shown = server.get(&format!("/v1/operations/{op}"), TOKEN_A).json();
    assert!(
        shown["consumed_memory"].as_u64().unwrap() <= 256 * 1024,
        "{shown}"
    );
    assert!(shown["consumed_cpu"].as_f64().is_some(), "{shown}");
    assert_eq!(shown["metadata"]["result"]["state"]["oom"], true);
    // The API's own field: the layer is held to it, ENOSPC inside.
    let reply = server.post_json(
        "/v1/instances",
        TOKEN_A,
        &json!({
            "image": image, "shell": true, "timeout": 60,
            "command": "head -c 30M /dev/zero > /root/big",
            "resources_limits": {"max_layer_bytes": 10 << 20},
        }),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();
    let events = server.events(&op, TOKEN_A, None);
    let stderr: String = events
        .iter()
        .filter(|e| e["type"] == "stderr")
        .filter_map(|e| e["data"]["value"].as_str())
        .collect();
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let exit = events
        .iter()
        .find(|e| e["type"] == "exit")
        .expect("exit event");
    assert_eq!(exit["data"]["layer_limit_hit"], true);
    // Our CLI through serve: the same message and exit code as locally.
    let client = crate::serve::our_client(&server);
    client.use_host();
    client
        .run([
            "run",
            "-t",
            "60",
            "--memory",
            "128M",
            "--",
            "perl",
            "-e",
            "$x = 'a' x (3 * 2**30)",
        ])
        .code(137)
        .stderr_contains("killed: out of memory (limit 128 MiB)");
    // A value below what the engine can apply is a 400 naming the field.
    let reply = server.post_json(
        "/v1/instances",
        TOKEN_A,
        &json!({"image": image, "command": "true", "resources_limits": {"max_layer_bytes": 10}}),
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("max_layer_bytes") || reply.text().contains("writable layer"));
}
