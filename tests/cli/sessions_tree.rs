//! The session as a tree: branches, checkout, rollback (run-behaviour.md §3.6, scenarios
//! 37, 42, 52, 53), `session show`, `session use`, `session wait`, `session delete`, and
//! many processes working on one session at once.

use serde_json::Value;

use crate::harness::Env;

/// `session show -a` as records, oldest first.
fn history(env: &Env) -> Vec<Value> {
    env.run(["-o", "json", "session", "show", "-a"])
        .success()
        .json_lines()
}

/// The entry the active branch points at.
fn tip(env: &Env) -> Value {
    let branches = env
        .run(["-o", "json", "session", "branch"])
        .success()
        .json_lines();
    let active = branches.iter().find(|b| b["active"] == true).unwrap()["history_id"].clone();
    history(env)
        .into_iter()
        .find(|e| e["id"] == active)
        .unwrap_or(Value::Null)
}

/// Runs a shell command in the session and returns the new history entry's id.
fn run_sh(env: &Env, script: &str) -> i64 {
    env.run(["run", "-s", "--", script]).success();
    last_id(env)
}

fn last_id(env: &Env) -> i64 {
    history(env).last().unwrap()["id"].as_i64().unwrap()
}

fn current_image(env: &Env) -> String {
    env.session_image()
}

#[test]
fn a_run_records_its_entry_under_the_previous_tip() {
    let env = Env::host();
    let before = last_id(&env);
    env.run(["run", "--", "echo", "hello", "world"]).success();
    let last = history(&env).pop().unwrap();
    assert_eq!(last["kind"], "run");
    assert_eq!(last["title"], "echo hello world");
    assert_eq!(last["parent_id"].as_i64(), Some(before));
    assert_eq!(last["operation"].as_str(), Some(env.last_op().as_str()));
    assert_eq!(last["image"].as_str().unwrap(), current_image(&env));
}

#[test]
fn rollback_follows_the_official_target_rules() {
    let env = Env::host();
    let a = current_image(&env);
    run_sh(&env, "echo b > /tmp/b");
    let b = current_image(&env);
    let c_id = run_sh(&env, "echo c > /tmp/c");
    let c = current_image(&env);

    env.run(["session", "rollback"]).success();
    assert_eq!(current_image(&env), b);
    env.run(["session", "rollback", "--", "-1"]).success();
    assert_eq!(current_image(&env), a);
    env.run(["session", "rollback", "+1"]).success();
    assert_eq!(current_image(&env), b, "+1 goes to the newest child");
    env.run(["session", "rollback", &c_id.to_string()])
        .success();
    assert_eq!(current_image(&env), c, "a bare number is a history id");
    // The official 0.9.4 parser also takes a bare negative number.
    env.run(["session", "rollback", "-2"]).success();
    assert_eq!(current_image(&env), a);
    env.run(["-o", "json", "session", "rollback", "+2"])
        .success()
        .stdout_contains("\"kind\":\"run\"");
    assert_eq!(current_image(&env), c);

    env.run(["session", "rollback", "0"])
        .code(1)
        .stderr_contains("Navigation target must not be 0");
    env.run(["session", "rollback", "--", "-9"])
        .code(1)
        .stderr_contains("Cannot go back 9 steps: only 2 ancestors available");
    env.run(["session", "rollback", "abc"]).code(1);
    let other = env
        .cmd(["use", "host"])
        .env("CONTREE_SESSION", "other")
        .output();
    other.success();
    let other_id = env
        .cmd(["-o", "json", "session", "show"])
        .env("CONTREE_SESSION", "other")
        .output()
        .json_lines()[0]["id"]
        .as_i64()
        .unwrap();
    env.run(["session", "rollback", &other_id.to_string()])
        .code(1)
        .stderr_contains(&format!(
            "History entry {other_id} not found in this session"
        ));
    assert_eq!(current_image(&env), c, "failed rollbacks move nothing");
}

#[test]
fn a_run_after_a_rollback_starts_a_second_child() {
    let env = Env::host();
    let first = run_sh(&env, "echo 1 > /tmp/one");
    env.run(["session", "rollback"]).success();
    let second = run_sh(&env, "echo 2 > /tmp/two");
    let h = history(&env);
    let parent = |id: i64| h.iter().find(|e| e["id"] == id).unwrap()["parent_id"].clone();
    assert_eq!(parent(first), parent(second));
    env.run(["run", "--", "ls", "/tmp"])
        .success()
        .stdout("two\n");
}

#[test]
fn branch_create_list_checkout_delete_and_prune() {
    let env = Env::host();
    env.run(["session", "branch", "feat"])
        .success()
        .stdout("Created branch 'feat'\n");
    env.run(["session", "branch", "feat"])
        .code(1)
        .stderr_contains("Branch 'feat' already exists");
    env.run(["session", "branch", "x", "--from", "nope"])
        .code(1)
        .stderr_contains("Source branch 'nope' does not exist");
    env.run(["session", "branch", ""])
        .code(1)
        .stderr_contains("Branch NAME is required (or use --delete/--prune)");
    env.run(["session", "branch"])
        .success()
        .stdout("  feat\n* main\n");
    let image = current_image(&env);
    let rec = env.json(["session", "checkout", "feat"]);
    assert_eq!(rec["branch"], "feat");
    assert_eq!(rec["image"].as_str(), Some(image.as_str()));
    env.run(["session", "co", "nope"])
        .code(1)
        .stderr_contains("Branch 'nope' does not exist");
    env.run(["session", "branch", "-U", "feat"])
        .code(1)
        .stderr_contains("Cannot delete the active branch");
    env.run(["session", "branch", "-U"])
        .code(1)
        .stderr_contains("--delete requires a branch NAME");
    env.run(["session", "checkout", "main"]).success();
    env.run(["session", "branch", "-U", "feat"])
        .success()
        .stdout("Deleted branch 'feat'\n");
    env.run(["session", "branch", "-U", "feat"])
        .code(1)
        .stderr_contains("Branch 'feat' does not exist");

    // Detached and disposable runs leave branches; prune takes only those, never the
    // active one.
    env.run(["run", "-d", "--", "true"]).success();
    env.run(["run", "-d", "-D", "--", "true"]).success();
    env.run(["session", "wait"]).success();
    env.run(["session", "branch", "keep"]).success();
    let names = |env: &Env| -> Vec<String> {
        env.run(["-o", "json", "session", "branch"])
            .success()
            .json_lines()
            .iter()
            .map(|b| b["branch"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&env)
            .iter()
            .filter(|n| n.starts_with("detached-") || n.starts_with("disposable-"))
            .count(),
        2
    );
    let out = env.run(["session", "branch", "--prune"]).success();
    assert_eq!(out.stdout_text().matches("Pruned branch '").count(), 2);
    assert_eq!(names(&env), ["keep", "main"]);
    env.run(["session", "branch", "--prune"])
        .success()
        .stdout("No disposable/detached branches to prune.\n");
}

#[test]
fn without_a_session_branch_lists_nothing() {
    let env = Env::new();
    env.run(["session", "branch"])
        .success()
        .stdout_empty()
        .stderr_contains("No branches (no active session).");
    env.run(["session", "show"])
        .success()
        .stderr_contains("No history.");
}

/// Three branches from one point, a run on each: each branch sees exactly its own files,
/// in runs and in inspection, and the tree drawing shows the fork.
#[test]
fn three_branches_each_see_exactly_their_own_files() {
    let env = Env::host();
    run_sh(&env, "mkdir -p /tmp/t && echo base > /tmp/t/base");
    env.run(["session", "branch", "b1"]).success();
    env.run(["session", "branch", "b2"]).success();
    run_sh(&env, "echo main > /tmp/t/main");
    for b in ["b1", "b2"] {
        env.run(["session", "checkout", b]).success();
        run_sh(&env, &format!("echo {b} > /tmp/t/{b}"));
        run_sh(
            &env,
            &format!("echo {b}2 > /tmp/t/{b}-second && rm /tmp/t/base"),
        );
    }
    let expect = [
        ("main", "base\nmain\n"),
        ("b1", "b1\nb1-second\n"),
        ("b2", "b2\nb2-second\n"),
    ];
    for (branch, files) in expect {
        env.run(["session", "checkout", branch]).success();
        env.run(["run", "--", "ls", "/tmp/t"])
            .success()
            .stdout(files);
        let listed: Vec<String> = env
            .run(["-o", "json", "ls", "/tmp/t"])
            .success()
            .json_lines()
            .iter()
            .map(|e| {
                let path = e["path"].as_str().unwrap_or_default();
                path.rsplit('/').next().unwrap_or_default().to_string()
            })
            .collect();
        let wanted: Vec<&str> = files.lines().collect();
        assert_eq!(listed, wanted, "branch {branch}");
    }
    // main's run was the last before the checkouts: `cat` sees each branch's own content.
    env.run(["session", "checkout", "b2"]).success();
    env.run(["cat", "/tmp/t/b2"]).success().stdout("b2\n");
    env.run(["cat", "/tmp/t/b1"]).code(1);

    let tree = env.run(["session", "show", "-a"]).success().stdout_text();
    assert_eq!(tree.matches("├─").count(), 2, "{tree}");
    assert_eq!(tree.matches("└─").count(), 1, "{tree}");
    assert!(tree.contains("[b2*]"), "{tree}");
    assert!(
        tree.lines()
            .any(|l| l.contains("@ ") && l.contains("[b2*]")),
        "{tree}"
    );
}

#[test]
fn show_limits_filters_and_names_branches() {
    let env = Env::host();
    for i in 0..22 {
        env.run(["cd", if i % 2 == 0 { "/tmp" } else { "/" }])
            .success();
    }
    let out = env.run(["-o", "json", "session", "show"]).success();
    assert_eq!(out.json_lines().len(), 20);
    assert!(out
        .stderr_text()
        .contains("Showing last 20 of 23 history entries."));
    assert_eq!(history(&env).len(), 23);
    let three = env
        .run(["-o", "json", "session", "show", "-l", "3"])
        .success()
        .json_lines();
    assert_eq!(three.len(), 3);
    assert_eq!(three[2]["branches"], "main");
    // The official client's --last, and our earlier --limit, are the same flag.
    for flag in ["--last", "--limit"] {
        let two = env
            .run(["-o", "json", "session", "show", flag, "2"])
            .success()
            .json_lines();
        assert_eq!(two, three[1..], "{flag}");
    }
    let uses = env
        .run(["-o", "json", "session", "show", "-k", "use"])
        .success()
        .json_lines();
    assert_eq!(uses.len(), 1);
    env.run(["session", "show", "-k", "run"])
        .success()
        .stderr_contains("No history.");
    env.run(["-o", "json", "session", "show", "-a", "--since", "1h"])
        .success()
        .check("all entries are recent", |o| o.json_lines().len() == 23);
    env.run(["session", "show", "--until", "2000-01-01"])
        .success()
        .stderr_contains("No history.");
}

#[test]
fn session_use_takes_another_sessions_image() {
    let env = Env::host();
    env.cmd(["use", "host"])
        .env("CONTREE_SESSION", "proj+1234abcd")
        .output()
        .success();
    env.cmd(["run", "--", "sh", "-c", "echo x > /tmp/x"])
        .env("CONTREE_SESSION", "proj+1234abcd")
        .output()
        .success();
    let theirs = env
        .cmd(["-o", "json", "use"])
        .env("CONTREE_SESSION", "proj+1234abcd")
        .output()
        .json()["current_image"]
        .clone();
    let rec = env.json(["session", "use", "1234ABCD"]);
    assert_eq!(rec["image"], theirs);
    assert_eq!(rec["from_session"], "proj+1234abcd");
    let last = history(&env).pop().unwrap();
    assert_eq!(last["kind"], "session use");
    assert_eq!(last["title"], "proj+1234abcd");
    env.run(["session", "use", "nosuch"])
        .code(1)
        .stderr_contains("Session 'nosuch' not found");
    env.cmd(["use", "host"])
        .env("CONTREE_SESSION", "other+1234abcd")
        .output()
        .success();
    env.run(["session", "use", "1234abcd"])
        .code(1)
        .stderr_contains("Ambiguous session '1234abcd': matches other+1234abcd, proj+1234abcd");
}

#[test]
fn session_wait_applies_finished_detached_runs() {
    let env = Env::host();
    let start = current_image(&env);
    env.run(["run", "-d", "--", "sh", "-c", "echo kept > /tmp/kept"])
        .success();
    env.run(["run", "-d", "-D", "--", "sh", "-c", "echo gone > /tmp/gone"])
        .success();
    assert_eq!(
        current_image(&env),
        start,
        "detached runs do not move the session"
    );
    let out = env.run(["-o", "json", "session", "wait"]).success();
    assert!(out.stderr_text().contains("Waiting for 2 operations"));
    let records = out.json_lines();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["status"] == "SUCCESS"));
    assert_eq!(tip(&env)["kind"], "run");
    env.run(["cat", "/tmp/kept"]).success().stdout("kept\n");
    env.run(["cat", "/tmp/gone"]).code(1);
    let branches = env.run(["session", "branch"]).success().stdout_text();
    assert_eq!(branches.matches("disposable-").count(), 1, "{branches}");
    env.run(["session", "wait"])
        .success()
        .stderr_contains("No active operations for this session.");

    // A non-zero exit is reported and does not move the session.
    let before = current_image(&env);
    env.run(["run", "-d", "--", "sh", "-c", "echo x > /tmp/x; exit 2"])
        .success();
    env.run(["-o", "json", "session", "wait"])
        .code(2)
        .stdout_contains("\"exit_code\":2");
    assert_eq!(current_image(&env), before);
}

#[test]
fn session_delete_asks_unless_forced() {
    let env = Env::host();
    env.cmd(["use", "host"])
        .env("CONTREE_SESSION", "doomed")
        .output()
        .success();
    env.cmd(["session", "delete", "doomed"])
        .stdin("n\n")
        .output()
        .success()
        .stderr_contains("Delete session 'doomed'? [y/N]");
    assert!(env
        .run(["session", "list"])
        .success()
        .stdout_text()
        .contains("doomed"));
    env.cmd(["session", "rm", "doomed"])
        .stdin("y\n")
        .output()
        .success();
    assert!(!env
        .run(["session", "list"])
        .success()
        .stdout_text()
        .contains("doomed"));
    env.run(["session", "delete", "-f", "t"]).success();
    env.run(["use"]).code(1);
    env.run(["session", "delete", "-f", "nosuch"])
        .code(1)
        .stderr_contains("Session 'nosuch' not found");
}

/// Four processes run and branch on one session at once: the history stays one tree
/// (every parent exists, one root), every run and branch is recorded, every branch points
/// at an entry of the session.
#[test]
fn four_processes_hammering_one_session_keep_one_consistent_tree() {
    let env = Env::host();
    const PER: usize = 3;
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let mut script = String::new();
            for i in 0..PER {
                script.push_str(&format!(
                    "\"$C\" run -- sh -c 'echo {w} > /tmp/w{w}-{i}' >/dev/null || exit 1\n\
                     \"$C\" session branch b{w}-{i} >/dev/null || exit 1\n\
                     \"$C\" -o json session show -a >/dev/null || exit 1\n"
                ));
            }
            env.program("sh")
                .env("C", crate::harness::CONTREE)
                .arg("-c")
                .arg(script)
                .spawn()
        })
        .collect();
    for w in workers {
        w.wait().success();
    }
    let h = history(&env);
    let ids: std::collections::HashSet<i64> = h.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), h.len(), "ids are unique");
    assert_eq!(h.iter().filter(|e| e["kind"] == "run").count(), 4 * PER);
    let roots: Vec<&Value> = h.iter().filter(|e| e["parent_id"].is_null()).collect();
    assert_eq!(roots.len(), 1, "one root");
    for e in &h {
        if let Some(p) = e["parent_id"].as_i64() {
            assert!(
                ids.contains(&p),
                "entry {} has a parent in the session",
                e["id"]
            );
            assert!(p < e["id"].as_i64().unwrap(), "parents come first");
        }
    }
    let branches = env
        .run(["-o", "json", "session", "branch"])
        .success()
        .json_lines();
    assert_eq!(branches.len(), 1 + 4 * PER);
    for b in &branches {
        assert!(ids.contains(&b["history_id"].as_i64().unwrap()));
    }
    // Every run is on main's line: each one's parent is an entry of the session and the
    // chain from the tip back to the root holds all of them.
    let by_id: std::collections::HashMap<i64, &Value> =
        h.iter().map(|e| (e["id"].as_i64().unwrap(), e)).collect();
    let mut cur = tip(&env)["id"].as_i64();
    let mut runs_on_line = 0;
    while let Some(id) = cur {
        if by_id[&id]["kind"] == "run" {
            runs_on_line += 1;
        }
        cur = by_id[&id]["parent_id"].as_i64();
    }
    assert_eq!(runs_on_line, 4 * PER);
}
