//! Fault injection: hundreds of operations (snapshotting runs with attachments, detached and
//! disposable runs, imports, tag changes, `gc`), four sessions at a time, while the CLI,
//! the supervisor or both are SIGKILLed at random moments and at named points inside the
//! commit (`CONTREE_FAILPOINTS`, see src/failpoint.rs). Afterwards nothing may be lost:
//! every run that ended SUCCESS is in its session with its files, `contree doctor` finds the
//! store whole (no half-written image, every event log complete), and no mount or process
//! is left. `FAULT_OPS` (default 200) and `FAULT_SEED` replay a run; the figures are printed
//! (`cargo test --test cli faults -- --nocapture`) and recorded in docs/store.md.

use crate::harness::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WORKERS: usize = 4;

/// Points inside a run where its CLI or supervisor can be made to die (src/failpoint.rs).
const RUN_POINTS: &[&str] = &[
    "run:spawned",
    "run:completed",
    "supervisor:running",
    "commit:layer-moved",
    "commit:image-inserted",
    "supervisor:completion-written",
];

/// xorshift64*: a small seeded generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Default)]
struct Tally {
    ops: HashMap<&'static str, usize>,
    kills: HashMap<&'static str, usize>,
}

impl Tally {
    fn op(&mut self, kind: &'static str) {
        *self.ops.entry(kind).or_default() += 1;
    }
    fn kill(&mut self, how: &'static str) {
        *self.kills.entry(how).or_default() += 1;
    }
}

/// Processes of this env: (pid, parent pid, comm) of those whose environment names its
/// data dir.
pub fn env_processes(home: &Path) -> Vec<(i32, i32, String)> {
    let needle = format!("CONTREE_HOME={}", home.display());
    let mut found = Vec::new();
    for (pid, dir) in processes() {
        let Ok(environ) = std::fs::read(dir.join("environ")) else {
            continue;
        };
        if !environ
            .split(|&b| b == 0)
            .any(|var| var == needle.as_bytes())
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        let ppid = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        found.push((pid, ppid, comm));
    }
    found
}

fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Waits for a CLI, killing it after the hang limit.
fn reap(mut child: Child) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a contree command hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One worker: its share of the operations, in its own session.
fn worker(env: &Env, w: usize, ops: usize, seed: u64, tally: &Mutex<Tally>) {
    let key = format!("w{w}");
    let mut rng = Rng((seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
    env.run(["-S", &key, "use", "host"]).success();
    let data = env.write(&format!("w{w}/data"), format!("attached by {w}\n"));
    for i in 0..ops {
        let marker = format!("w{w}-{i}");
        let dice = rng.below(100);
        let (kind, args): (&'static str, Vec<String>) = match dice {
            0..=44 => (
                "run",
                vec![
                    "run".into(),
                    "-F".into(),
                    format!("{}:/data/{marker}", data.display()),
                    "--".into(),
                    "sh".into(),
                    "-c".into(),
                    format!("cat /data/{marker} > /root/{marker}; echo {marker} >> /root/log"),
                ],
            ),
            45..=59 => (
                "detached run",
                vec![
                    "run".into(),
                    "-d".into(),
                    "--".into(),
                    "sh".into(),
                    "-c".into(),
                    format!("echo {marker} > /root/{marker}"),
                ],
            ),
            60..=69 => (
                "disposable run",
                vec![
                    "run".into(),
                    "-D".into(),
                    "--".into(),
                    "sh".into(),
                    "-c".into(),
                    format!("echo {marker} > /root/{marker}"),
                ],
            ),
            70..=79 => {
                let dir = env.work().join(format!("w{w}/rootfs-{i}"));
                std::fs::create_dir_all(dir.join("etc")).expect("rootfs");
                std::fs::write(dir.join("etc/marker"), &marker).expect("rootfs file");
                (
                    "import",
                    vec![
                        "images".into(),
                        "import".into(),
                        dir.display().to_string(),
                        "--tag".into(),
                        format!("imported-{marker}"),
                    ],
                )
            }
            80..=89 => {
                let delete = rng.below(3) == 0;
                let mut args = vec!["tag".into(), format!("tag-w{w}")];
                if delete {
                    args.push("--delete".into());
                }
                ("tag", args)
            }
            _ => ("gc", vec!["gc".into()]),
        };
        tally.lock().unwrap().op(kind);
        let mut cmd = env.cmd(["-S", &key]);
        for a in &args {
            cmd = cmd.arg(a);
        }
        // How this one is hurt: not at all, at a named point, or by a SIGKILL after a while.
        let fault = rng.below(100);
        let mut timed: Option<(&'static str, u64)> = None;
        match (kind, fault) {
            ("run" | "detached run" | "disposable run", 0..=29) => {
                let point = rng.pick(RUN_POINTS);
                let point = if kind == "detached run" && point.starts_with("run:") {
                    "run:detached"
                } else {
                    point
                };
                cmd = cmd.env("CONTREE_FAILPOINTS", point);
                tally.lock().unwrap().kill("failpoint in a run");
            }
            ("run", 30..=54) => {
                let who = rng.pick(&["cli", "supervisor", "both"]);
                let how = match who {
                    "cli" => "SIGKILL the CLI",
                    "supervisor" => "SIGKILL the supervisor",
                    _ => "SIGKILL both",
                };
                timed = Some((how, rng.below(120)));
            }
            ("import", 0..=39) => {
                cmd = cmd.env("CONTREE_FAILPOINTS", "import:layer-moved");
                tally.lock().unwrap().kill("failpoint in an import");
            }
            ("gc", 0..=39) => {
                cmd = cmd.env("CONTREE_FAILPOINTS", "gc:committed");
                tally.lock().unwrap().kill("failpoint in gc");
            }
            _ => {}
        }
        let running = cmd.spawn();
        match timed {
            None => reap(running.child),
            Some((how, after_ms)) => {
                let cli = running.pid();
                std::thread::sleep(Duration::from_millis(after_ms));
                let supervisors: Vec<i32> = env_processes(env.home())
                    .into_iter()
                    .filter(|(_, ppid, comm)| *ppid == cli && comm == "contree-super")
                    .map(|(pid, _, _)| pid)
                    .collect();
                if how != "SIGKILL the CLI" {
                    supervisors.iter().for_each(|pid| sigkill(*pid));
                }
                if how != "SIGKILL the supervisor" {
                    sigkill(cli);
                }
                reap(running.child);
                tally.lock().unwrap().kill(how);
            }
        }
    }
}

#[test]
fn nothing_is_lost_when_clis_and_supervisors_are_killed_anywhere() {
    let env = Env::host();
    let ops: usize = std::env::var("FAULT_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("fault injection: {ops} operations, FAULT_SEED={seed}");
    let tally = Mutex::new(Tally::default());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for w in 0..WORKERS {
            let (env, tally) = (&env, &tally);
            let share = ops / WORKERS + usize::from(w < ops % WORKERS);
            scope.spawn(move || worker(env, w, share, seed, tally));
        }
    });
    let chaos = started.elapsed();

    // Whatever is still running ends (recovery fails what lost its supervisor).
    wait_until(Duration::from_secs(120), "no operation is running", || {
        env.run(["ps", "-q"])
            .success()
            .stdout_text()
            .trim()
            .is_empty()
    });
    // Every session applies what it has pending: detached runs, and runs whose CLI died.
    for w in 0..WORKERS {
        let key = format!("w{w}");
        // Exit 1 when a run it waited for failed: expected here.
        let out = env.run(["-S", &key, "session", "wait"]);
        assert!(
            matches!(out.status.code(), Some(0) | Some(1)),
            "session wait for {key}: {}",
            out.stderr_text()
        );
    }

    // 0 lost results: every non-disposable run that ended SUCCESS is a `run` entry of a
    // session's history, pointing at its result image, which holds its files.
    let mut in_history: HashMap<String, (String, String)> = HashMap::new();
    for w in 0..WORKERS {
        let key = format!("w{w}");
        let entries = env
            .run(["-S", &key, "-o", "json", "session", "show", "-a"])
            .success()
            .json_lines();
        for e in entries {
            if e["kind"] == "run" {
                if let (Some(op), Some(image)) = (e["operation"].as_str(), e["image"].as_str()) {
                    let title = e["title"].as_str().unwrap_or_default().to_string();
                    in_history.insert(op.to_string(), (image.to_string(), title));
                }
            }
        }
    }
    let all = env.run(["-o", "json", "ps", "-a"]).success().json_lines();
    let (mut succeeded, mut failed, mut lost, mut files_checked) = (0, 0, Vec::new(), 0);
    for op in &all {
        let uuid = op["uuid"].as_str().expect("uuid").to_string();
        let shown = env.json(["show", &uuid]);
        if shown["kind"] != "instance" {
            continue;
        }
        match shown["status"].as_str() {
            Some("SUCCESS") => succeeded += 1,
            _ => {
                failed += 1;
                continue;
            }
        }
        let Some(result) = shown["result_image_uuid"].as_str() else {
            continue;
        };
        if shown["exit_code"].as_i64().unwrap_or(0) != 0 {
            continue;
        }
        match in_history.get(&uuid) {
            Some((image, title)) if image == result => {
                // Its files are in its image: the file its command wrote, not empty.
                if let Some(marker) = title.split_whitespace().find(|w| w.starts_with("/root/w")) {
                    let marker = marker.trim_end_matches(';');
                    env.run(["run", "--use", result, "-D", "--", "test", "-s", marker])
                        .success();
                    files_checked += 1;
                }
            }
            _ => lost.push(uuid),
        }
    }

    // 0 half-written images, every event log complete, nothing abandoned: the store is whole,
    // and what crashes left in `layers/` is garbage that `gc` frees.
    env.run(["-S", "gc", "gc"]).success();
    let doctor = env.run(["doctor"]);
    let doctor = doctor.check("gc left no layer dir without a row", |out| {
        out.stdout_text()
            .contains("layer dirs   every layer directory has its row")
    });
    let problems = doctor
        .stdout_text()
        .lines()
        .filter(|l| !l.starts_with("ok "))
        .count();
    // 0 leftover processes and mounts.
    wait_until(
        Duration::from_secs(20),
        "no contree process is left",
        || env_processes(env.home()).is_empty(),
    );
    let mounts = env.mounts_in_home();

    let t = tally.lock().unwrap();
    let kills: usize = t.kills.values().sum();
    println!(
        "fault injection: {} operations in {:.1} s ({}), {kills} kills or armed failpoints ({})",
        t.ops.values().sum::<usize>(),
        chaos.as_secs_f64(),
        sorted(&t.ops),
        sorted(&t.kills)
    );
    println!(
        "fault injection: {succeeded} runs ended SUCCESS, {failed} did not; {} lost; {files_checked} result images checked for their files; doctor: {problems} problems; {} mounts left",
        lost.len(),
        mounts.len()
    );
    assert!(
        lost.is_empty(),
        "runs that ended SUCCESS are in no session: {lost:?}"
    );
    assert_eq!(problems, 0, "doctor:\n{}", doctor.stdout_text());
    doctor.success();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}

fn sorted(counts: &HashMap<&'static str, usize>) -> String {
    let mut pairs: Vec<_> = counts.iter().collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
