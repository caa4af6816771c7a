//! `contree gc` and `images rm`: exactly the unreferenced images, layers and blobs go;
//! nothing a tag, a session or a running operation uses is ever removed.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::Env;

fn layers(env: &Env) -> BTreeSet<String> {
    std::fs::read_dir(env.home().join("store/layers"))
        .expect("list layers")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `-o json gc ARGS` records as (kind, id).
fn gc(env: &Env, args: &[&str]) -> BTreeSet<(String, String)> {
    let mut all = vec!["-o", "json", "gc"];
    all.extend_from_slice(args);
    env.run(all)
        .success()
        .json_lines()
        .iter()
        .map(|r: &Value| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn as_session(env: &Env, key: &str, args: &[&str]) -> crate::harness::Output {
    env.cmd(args).env("CONTREE_SESSION", key).output()
}

fn image_of(env: &Env, key: &str) -> String {
    as_session(env, key, &["-o", "json", "use"]).json()["current_image"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn gc_frees_exactly_what_a_deleted_session_left_behind() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo t > /tmp/t"])
        .success();
    let kept = layers(&env);
    as_session(&env, "o", &["use", "host"]).success();
    as_session(&env, "o", &["run", "--", "sh", "-c", "echo o > /tmp/o"]).success();
    let o_image = image_of(&env, "o");
    let o_layers: BTreeSet<String> = layers(&env).difference(&kept).cloned().collect();
    assert_eq!(o_layers.len(), 1, "one run, one layer");

    // Still referenced by session `o`: nothing to free.
    assert!(gc(&env, &["--dry-run"]).is_empty());
    as_session(&env, "o", &["session", "delete", "-f", "o"]).success();

    let expected: BTreeSet<(String, String)> = o_layers
        .iter()
        .map(|l| ("layer".to_string(), l.clone()))
        .chain([("image".to_string(), o_image.clone())])
        .collect();
    assert_eq!(gc(&env, &["-n"]), expected, "the dry run names them");
    assert_eq!(layers(&env).len(), kept.len() + 1, "and removes nothing");
    env.run(["gc", "--dry-run"])
        .success()
        .stderr_contains("Would free 1 images, 1 layers");

    assert_eq!(gc(&env, &[]), expected);
    assert_eq!(layers(&env), kept);
    assert!(gc(&env, &[]).is_empty(), "a second gc finds nothing");
    env.run(["images", "-a"]).success().stdout_lacks(&o_image);
    // The session's own image is intact.
    env.run(["cat", "/tmp/t"]).success().stdout("t\n");
    env.run(["run", "--", "cat", "/tmp/t"])
        .success()
        .stdout("t\n");
}

#[test]
fn gc_keeps_tagged_images_and_what_a_running_operation_uses() {
    let env = Env::host();
    // An image only a tag keeps.
    as_session(&env, "tagged", &["use", "host"]).success();
    as_session(
        &env,
        "tagged",
        &["run", "--", "sh", "-c", "echo x > /tmp/x"],
    )
    .success();
    as_session(&env, "tagged", &["tag", "keepme"]).success();
    let tagged = image_of(&env, "tagged");
    as_session(&env, "tagged", &["session", "delete", "-f", "tagged"]).success();

    // An image only a running operation keeps.
    as_session(&env, "busy", &["use", "host"]).success();
    as_session(&env, "busy", &["run", "--", "sh", "-c", "echo y > /tmp/y"]).success();
    let busy = image_of(&env, "busy");
    let token = crate::harness::unique_token();
    as_session(
        &env,
        "busy",
        &[
            "run",
            "-d",
            "--",
            "sh",
            "-c",
            &format!("sleep 60 # {token}"),
        ],
    )
    .success();
    let op = env.last_op();
    as_session(&env, "busy", &["session", "delete", "-f", "busy"]).success();

    let before = layers(&env);
    let freed = gc(&env, &[]);
    assert!(
        freed.iter().all(|(_, id)| *id != tagged && *id != busy),
        "{freed:?}"
    );
    assert_eq!(layers(&env), before, "no layer of a kept image goes");
    env.run(["run", "--use", "tag:keepme", "--", "cat", "/tmp/x"])
        .success()
        .stdout("x\n");

    env.run(["kill", &op]).success();
    env.run(["op", "wait", &op]).check("finished", |_| true);
    let freed = gc(&env, &[]);
    assert!(freed.contains(&("image".to_string(), busy)), "{freed:?}");
    assert!(layers(&env).len() < before.len());
}

#[test]
fn images_rm_removes_an_unused_image_and_refuses_a_used_one() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo a > /tmp/a"])
        .success();
    let mine = env.session_image();
    env.run(["images", "rm", &mine])
        .code(1)
        .stderr_contains("is used by session 't'");
    env.run(["images", "rm", "tag:host"]).code(1);

    as_session(&env, "o", &["use", "host"]).success();
    as_session(&env, "o", &["run", "--", "sh", "-c", "echo o > /tmp/o"]).success();
    let theirs = image_of(&env, "o");
    as_session(&env, "o", &["tag", "theirs"]).success();
    as_session(&env, "o", &["session", "delete", "-f", "o"]).success();
    let before = layers(&env);
    let out = env.run(["-o", "json", "images", "rm", "theirs"]).success();
    let freed: Vec<Value> = out.json_lines();
    assert_eq!(freed.iter().filter(|r| r["kind"] == "image").count(), 1);
    assert_eq!(freed.iter().filter(|r| r["kind"] == "layer").count(), 1);
    assert_eq!(layers(&env).len(), before.len() - 1);
    env.run(["images", "-a"]).success().stdout_lacks(&theirs);
    env.run(["images", "rm", &theirs])
        .code(1)
        .stderr_contains("not found");
    env.run(["cat", "/tmp/a"]).success().stdout("a\n");
}

#[test]
fn gc_frees_attachment_blobs_nothing_stages_and_runs_still_attach() {
    let env = Env::host();
    let file = env.write("data.txt", "payload\n");
    let spec = format!("{}:/tmp/data.txt", file.display());
    env.run(["run", "-F", &spec, "--", "cat", "/tmp/data.txt"])
        .success()
        .stdout("payload\n");
    let freed = gc(&env, &[]);
    assert_eq!(
        freed.iter().filter(|(k, _)| k == "blob").count(),
        1,
        "{freed:?}"
    );
    // The committed image keeps its attachment layer (and the file in it).
    env.run(["cat", "/tmp/data.txt"])
        .success()
        .stdout("payload\n");
    // The blob is stored again when a run attaches the file anew, on top of an image that
    // already holds its attachment layer, also after a run changed the file.
    env.run(["run", "-F", &spec, "--", "cat", "/tmp/data.txt"])
        .success()
        .stdout("payload\n");
    env.run(["run", "--", "sh", "-c", "echo changed > /tmp/data.txt"])
        .success();
    env.run(["run", "-F", &spec, "--", "cat", "/tmp/data.txt"])
        .success()
        .stdout("payload\n");
    env.run(["cat", "/tmp/data.txt"])
        .success()
        .stdout("payload\n");
}

/// The sizes of the event logs under `store/ops/`, by operation.
fn log_sizes(env: &Env) -> Vec<(String, u64)> {
    std::fs::read_dir(env.home().join("store/ops"))
        .expect("list ops")
        .filter_map(|e| {
            let e = e.unwrap();
            let size = std::fs::metadata(e.path().join("events")).ok()?.len();
            Some((e.file_name().to_string_lossy().into_owned(), size))
        })
        .collect()
}

fn logs_total(env: &Env) -> u64 {
    log_sizes(env).iter().map(|(_, size)| size).sum()
}

/// Makes the store look last pruned two minutes ago, so the next run prunes again.
fn backdate_prune_stamp(env: &Env) {
    let stamp = std::fs::File::options()
        .write(true)
        .open(env.home().join("store/prune.stamp"))
        .expect("the first run made the stamp");
    stamp
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(120))
        .unwrap();
}

#[test]
fn runs_with_large_output_keep_their_logs_under_the_budget_and_pruned_runs_keep_their_ending() {
    let env = Env::host();
    let budget: u64 = 300 << 10;
    std::fs::write(
        env.home().join("config.toml"),
        "[store]\nevents_max_bytes = \"300K\"\n",
    )
    .unwrap();
    let big = |code: i32| format!("head -c 100000 /dev/zero | tr '\\0' x; echo; exit {code}");
    // The oldest: it exits 3, and is the first its log is cut from.
    env.run(["run", "-D", "-T", "200000", "--", "sh", "-c", &big(3)])
        .code(3);
    let oldest = env.last_op();
    for _ in 0..9 {
        env.run(["run", "-D", "-T", "200000", "--", "sh", "-c", &big(0)])
            .success();
    }
    // Pruned after the first run only (nothing to cut then): at most once a minute.
    assert!(
        logs_total(&env) > 900_000,
        "pruned more often than once a minute: {:?}",
        log_sizes(&env)
    );
    // The last supervisor may still be finishing, and would prune itself.
    crate::harness::wait_until(
        std::time::Duration::from_secs(10),
        "the supervisors to finish",
        || crate::harness::supervisors_of(&env).is_empty(),
    );
    assert!(logs_total(&env) > 900_000, "{:?}", log_sizes(&env));
    backdate_prune_stamp(&env);
    env.run(["run", "-D", "-T", "200000", "--", "sh", "-c", &big(0)])
        .success();
    // The supervisor prunes after its CLI has gone.
    crate::harness::wait_until(
        std::time::Duration::from_secs(20),
        "the logs to be pruned after a run",
        || logs_total(&env) <= budget,
    );
    assert!(
        log_sizes(&env).iter().any(|(_, size)| *size > 100_000),
        "the newest logs stay whole: {:?}",
        log_sizes(&env)
    );

    // The pruned run still says how it ended, and that its output is gone.
    let show = env.run(["-o", "json", "show", &oldest]).success().json();
    assert_eq!(show["status"], "SUCCESS", "{show}");
    assert_eq!(show["exit_code"], 3, "{show}");
    assert_eq!(show["output_pruned"], true, "{show}");
    env.run(["show", &oldest])
        .success()
        .stdout_contains("SUCCESS")
        .stderr_contains("was pruned");
    let events = env.run(["-o", "json", "op", "events", &oldest]).success();
    let events = events.json_lines();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "completion");
    assert_eq!(events[0]["data"]["output_pruned"], true);
}

#[test]
fn gc_cuts_logs_past_their_age_and_a_dry_run_names_them() {
    let env = Env::host();
    env.run(["run", "-D", "--", "echo", "kept for a while"])
        .success();
    let op = env.last_op();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let aged = |args: &[&str]| {
        let mut all = vec!["-o", "json", "gc"];
        all.extend_from_slice(args);
        env.cmd(all)
            .env("CONTREE_STORE_EVENTS_MAX_AGE", "1s")
            .output()
            .success()
            .json_lines()
    };
    let would = aged(&["-n"]);
    assert!(
        would
            .iter()
            .any(|r| r["kind"] == "log" && r["id"] == op.as_str()),
        "{would:?}"
    );
    env.run(["show", &op])
        .success()
        .stdout_contains("kept for a while");
    aged(&[]);
    env.run(["show", &op])
        .success()
        .stdout_lacks("kept for a while")
        .stderr_contains("was pruned");
    // The default keeps a month: a plain gc cuts nothing.
    env.run(["run", "-D", "--", "echo", "recent"]).success();
    assert!(!gc(&env, &[]).iter().any(|(kind, _)| kind == "log"));
    // A bad setting names where it came from.
    env.cmd(["gc", "-n"])
        .env("CONTREE_STORE_EVENTS_MAX_AGE", "soon")
        .output()
        .code(1)
        .stderr_contains("CONTREE_STORE_EVENTS_MAX_AGE: 'soon' is not an age");
}

#[test]
fn gc_dry_run_and_doctor_give_the_store_size_by_kind_and_what_gc_would_free() {
    let env = Env::host();
    env.run([
        "run",
        "-D",
        "-T",
        "200000",
        "--",
        "sh",
        "-c",
        "head -c 150000 /dev/zero",
    ])
    .success();
    let op = env.last_op();
    let out = env
        .cmd(["gc", "-n"])
        .env("CONTREE_STORE_EVENTS_MAX_BYTES", "1K")
        .output()
        .success();
    let text = out.stdout_text();
    let line = |name: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in {text:?}"))
            .to_string()
    };
    for kind in ["layers", "blobs", "blob variants", "database", "caches"] {
        line(kind);
    }
    // The log takes ~150 KB, and the budget cuts it.
    let logs = line("event logs");
    assert!(logs.contains("KiB  would free 1"), "{logs:?}");
    assert!(line("total").contains("would free"), "{text:?}");
    // A summary, not a line per item; `-L debug` has those.
    assert!(text.lines().count() <= 8, "{text:?}");
    out.stderr_contains("Would free 0 images, 0 layers, 0 blobs, 0 blob variants, 1 event logs");
    env.cmd(["-L", "debug", "gc", "-n"])
        .env("CONTREE_STORE_EVENTS_MAX_BYTES", "1K")
        .output()
        .success()
        .stderr_contains(&format!("Would free log {op}"));

    let doctor = env
        .cmd(["doctor"])
        .env("CONTREE_STORE_EVENTS_MAX_BYTES", "1K")
        .output()
        .success()
        .stdout_text();
    let usage = doctor
        .lines()
        .find(|l| l.contains("usage"))
        .unwrap_or_else(|| panic!("no usage line: {doctor:?}"));
    assert!(
        usage.contains("event logs ")
            && usage.contains("gc would free")
            && usage.contains("1 event logs cut"),
        "{usage:?}"
    );
    // Nothing was cut by either.
    env.run(["show", &op])
        .success()
        .check("not pruned", |o| !o.stderr_text().contains("was pruned"));
}

/// Waits for every supervisor of `env` to be done, with its upkeep.
fn upkeep_done(env: &Env) {
    crate::harness::wait_until(
        std::time::Duration::from_secs(20),
        "the supervisors to finish",
        || crate::harness::supervisors_of(env).is_empty(),
    );
}

/// Makes the next run's upkeep due, once the last one is done.
fn upkeep_due(env: &Env) {
    upkeep_done(env);
    backdate_prune_stamp(env);
}

#[test]
fn past_its_budget_the_store_is_collected_after_a_run_and_kept_images_stay() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo mine > /root/mine"])
        .success();
    // Only a tag keeps it.
    as_session(&env, "tagged", &["use", "host"]).success();
    as_session(
        &env,
        "tagged",
        &["run", "--", "sh", "-c", "echo t > /root/t"],
    )
    .success();
    as_session(&env, "tagged", &["tag", "kept"]).success();
    as_session(&env, "tagged", &["session", "delete", "-f", "tagged"]).success();
    // A detached run not applied yet: its result is on session `p`'s pending list only.
    as_session(&env, "p", &["use", "host"]).success();
    as_session(
        &env,
        "p",
        &["run", "-d", "--", "sh", "-c", "echo p > /root/p"],
    )
    .success();
    let pending = env.last_op();
    env.run(["op", "wait", &pending]).success();
    // What nothing keeps: a deleted session's image.
    as_session(&env, "o", &["use", "host"]).success();
    as_session(&env, "o", &["run", "--", "sh", "-c", "echo o > /root/o"]).success();
    let orphan = image_of(&env, "o");
    as_session(&env, "o", &["session", "delete", "-f", "o"]).success();
    let would = gc(&env, &["-n"]);
    let orphan_layers: BTreeSet<String> = would
        .iter()
        .filter(|(kind, _)| kind == "layer")
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(orphan_layers.len(), 1, "one layer to free: {would:?}");

    // Within the (default) budget, a run's upkeep collects nothing.
    upkeep_due(&env);
    env.run(["run", "-D", "--", "true"]).success();
    upkeep_due(&env);
    assert!(
        layers(&env).is_superset(&orphan_layers),
        "collected within the budget"
    );
    env.run(["gc", "-n"])
        .success()
        .stdout_contains("budget         10% of the filesystem: ");

    std::fs::write(
        env.home().join("config.toml"),
        "[store]\nmax_size = \"1K\"\n",
    )
    .unwrap();
    env.run(["gc", "-n"])
        .success()
        .stdout_contains("budget         1.0 KiB; over it");
    env.run(["run", "-D", "--", "true"]).success();
    upkeep_done(&env);
    assert!(
        layers(&env).is_disjoint(&orphan_layers),
        "the upkeep freed the deleted session's layer"
    );
    env.run(["images", "-a"]).success().stdout_lacks(&orphan);
    // Everything kept is whole.
    env.run(["run", "--", "cat", "/root/mine"])
        .success()
        .stdout("mine\n");
    env.run(["run", "-D", "--use", "tag:kept", "--", "cat", "/root/t"])
        .success()
        .stdout("t\n");
    as_session(&env, "p", &["session", "wait"]).success();
    as_session(&env, "p", &["run", "--", "cat", "/root/p"])
        .success()
        .stdout("p\n");
    // A bad budget is refused by name.
    env.cmd(["gc", "-n"])
        .env("CONTREE_STORE_MAX_SIZE", "lots")
        .output()
        .code(1)
        .stderr_contains("CONTREE_STORE_MAX_SIZE: ");
}

#[test]
fn automatic_gc_never_frees_what_runs_and_imports_in_flight_need() {
    let Some(busybox) = crate::harness::static_busybox() else {
        crate::harness::skip("needs a static /bin/busybox (apt-get install busybox-static)");
        return;
    };
    let env = Env::host();
    let root = crate::harness::busybox_rootfs(&busybox, env.work());
    // Every run's upkeep collects, as often as the stamp allows: it is backdated all along.
    std::fs::write(
        env.home().join("config.toml"),
        "[store]\nmax_size = \"1\"\n",
    )
    .unwrap();
    env.run(["run", "-D", "--", "true"]).success();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rounds = 6;
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if env.home().join("store/prune.stamp").exists() {
                    backdate_prune_stamp(&env);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        // A session whose every run builds on the last.
        let chain = s.spawn(|| {
            as_session(&env, "chain", &["use", "host"]).success();
            for i in 0..rounds {
                as_session(
                    &env,
                    "chain",
                    &["run", "--", "sh", "-c", &format!("echo {i} >> /root/chain")],
                )
                .success();
            }
        });
        // Imports, each tagged.
        let imports = s.spawn(|| {
            for i in 0..rounds {
                env.run([
                    "images",
                    "import",
                    root.to_str().unwrap(),
                    "--tag",
                    &format!("bb{i}"),
                ])
                .success();
            }
        });
        // Detached runs, applied later; and garbage made along the way.
        let detached = s.spawn(|| {
            as_session(&env, "det", &["use", "host"]).success();
            for i in 0..rounds {
                as_session(
                    &env,
                    "det",
                    &[
                        "run",
                        "-d",
                        "--",
                        "sh",
                        "-c",
                        &format!("echo {i} > /root/d{i}"),
                    ],
                )
                .success();
                as_session(&env, "det", &["session", "wait"]).success();
                let key = format!("junk{i}");
                as_session(&env, &key, &["use", "host"]).success();
                as_session(
                    &env,
                    &key,
                    &["run", "--", "sh", "-c", "echo junk > /root/j"],
                )
                .success();
                as_session(&env, &key, &["session", "delete", "-f", &key]).success();
            }
        });
        for worker in [chain, imports, detached] {
            let done = worker.join();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            done.unwrap();
        }
    });
    let expected: String = (0..rounds).map(|i| format!("{i}\n")).collect();
    as_session(&env, "chain", &["run", "--", "cat", "/root/chain"])
        .success()
        .stdout(&expected);
    for i in 0..rounds {
        env.run([
            "run",
            "-D",
            "--use",
            &format!("tag:bb{i}"),
            "--",
            "busybox",
            "true",
        ])
        .success();
        as_session(
            &env,
            "det",
            &["run", "-D", "--", "cat", &format!("/root/d{i}")],
        )
        .success()
        .stdout(&format!("{i}\n"));
    }
    // And the garbage went: after one more upkeep, nothing is left to free but what came
    // since.
    upkeep_due(&env);
    env.run(["run", "-D", "--", "true"]).success();
    upkeep_done(&env);
    let freeable: Vec<(String, String)> = gc(&env, &["-n"])
        .into_iter()
        .filter(|(kind, _)| kind == "image" || kind == "layer")
        .collect();
    assert!(freeable.is_empty(), "the upkeep left {freeable:?}");
    env.run(["doctor"]).success();
}

#[test]
fn a_runs_upkeep_never_collects_a_store_a_server_is_using() {
    let server = crate::serve::Server::start();
    let env = &server.env;
    env.use_host();
    env.run(["run", "-D", "--", "true"]).success();
    std::fs::write(
        env.home().join("config.toml"),
        "[store]\nmax_size = \"1\"\n",
    )
    .unwrap();
    // A client's snapshot: in no session of this machine, kept only by the client.
    let op = server.spawn(crate::serve::TOKEN_A, "echo x > /root/x");
    let events = server.events(&op, crate::serve::TOKEN_A, None);
    let image = events
        .iter()
        .find(|e| e["type"] == "completion")
        .and_then(|e| e["data"]["result_image_uuid"].as_str())
        .expect("the client's run made an image")
        .to_string();
    upkeep_due(env);
    env.run(["run", "-D", "--", "true"]).success();
    upkeep_done(env);
    assert!(
        gc(env, &["-n"]).contains(&("image".to_string(), image.clone())),
        "the client's image stayed while the server runs"
    );
    // Once the server is gone, the store is the CLI's alone.
    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    crate::harness::wait_until(
        std::time::Duration::from_secs(20),
        "the server to exit",
        || !std::path::Path::new(&format!("/proc/{pid}/exe")).exists(),
    );
    upkeep_due(env);
    env.run(["run", "-D", "--", "true"]).success();
    upkeep_done(env);
    assert!(
        !gc(env, &["-n"]).iter().any(|(_, id)| *id == image),
        "collected once the server is gone"
    );
}
