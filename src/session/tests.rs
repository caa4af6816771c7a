//! Behaviour of the session store, each test on its own temporary database.

use std::collections::BTreeMap;

use super::*;

fn store() -> (tempfile::TempDir, SessionStore) {
    let dir = tempfile::tempdir().unwrap();
    // A nested path also checks that `open` creates parent directories.
    let s = SessionStore::open(&dir.path().join("cli/sessions/default.db")).unwrap();
    (dir, s)
}

/// use(A) → run(B) → run(C) in session `t`; returns the three entries.
fn abc(s: &SessionStore) -> [HistoryEntry; 3] {
    let a = s.set_image("t", "A", "use", "tag:a", None).unwrap();
    let b = s
        .set_image("t", "B", "run", "make b", Some("op-b"))
        .unwrap();
    let c = s
        .set_image("t", "C", "run", "make c", Some("op-c"))
        .unwrap();
    [a, b, c]
}

/// A new store, and `abc` run in it.
fn store_with_abc() -> (tempfile::TempDir, SessionStore, [HistoryEntry; 3]) {
    let (dir, s) = store();
    let entries = abc(&s);
    (dir, s, entries)
}

fn image(s: &SessionStore, key: &str) -> String {
    s.info(key).unwrap().unwrap().current_image
}

#[test]
fn set_image_builds_a_chain_and_info_reports_the_tip() {
    let (_d, s) = store();
    assert!(s.info("t").unwrap().is_none());
    let [a, b, c] = abc(&s);
    assert_eq!(a.parent_id, None);
    assert_eq!(b.parent_id, Some(a.id));
    assert_eq!(c.parent_id, Some(b.id));
    assert!(c.created_at.ends_with('Z') && c.created_at.contains('T'));
    let info = s.info("t").unwrap().unwrap();
    assert_eq!(info.session_key, "t");
    assert_eq!(info.active_branch, "main");
    assert_eq!(info.current_image, "C");
    assert_eq!(
        (info.last_kind.as_str(), info.last_title.as_str()),
        ("run", "make c")
    );
    assert_eq!(info.tip_id, c.id);
    assert_eq!(s.history("t").unwrap(), vec![a, b, c.clone()]);
    assert_eq!(s.entry(c.id).unwrap(), Some(c));
    assert_eq!(
        s.branches("t").unwrap(),
        vec![("main".to_string(), info.tip_id)]
    );
}

#[test]
fn rollback_navigates_like_scenario_52() {
    let (_d, s, [a, b, c]) = store_with_abc();
    let other = s.set_image("other", "X", "use", "x", None).unwrap();

    assert_eq!(s.rollback("t", "-1").unwrap().id, b.id);
    assert_eq!(image(&s, "t"), "B");
    assert_eq!(s.rollback("t", "-1").unwrap().id, a.id);
    assert_eq!(s.rollback("t", "+1").unwrap().id, b.id);
    assert_eq!(s.rollback("t", &c.id.to_string()).unwrap().id, c.id);
    assert_eq!(image(&s, "t"), "C");

    let err = |t: &str| s.rollback("t", t).unwrap_err().to_string();
    assert_eq!(err("0"), "Navigation target must not be 0");
    assert_eq!(err("+0"), "Navigation target must not be 0");
    assert_eq!(
        err("-9"),
        "Cannot go back 9 steps: only 2 ancestors available"
    );
    assert_eq!(
        err("+1"),
        "Cannot go forward 1 steps: only 0 descendants available"
    );
    assert_eq!(
        err(&other.id.to_string()),
        format!("History entry {} not found in this session", other.id)
    );
    assert_eq!(err("nope"), "invalid rollback target 'nope'");
    // Failed navigation leaves the session where it was.
    assert_eq!(image(&s, "t"), "C");
    assert_eq!(s.rollback("t", "-2").unwrap().id, a.id);
    assert_eq!(
        err("+3"),
        "Cannot go forward 3 steps: only 2 descendants available"
    );
}

#[test]
fn forward_steps_follow_the_newest_child() {
    let (_d, s, [a, _b, _c]) = store_with_abc();
    s.rollback("t", "-2").unwrap();
    let d = s.set_image("t", "D", "run", "make d", None).unwrap();
    s.rollback("t", "-1").unwrap();
    assert_eq!(s.rollback("t", "+1").unwrap().id, d.id);
    assert_eq!(d.parent_id, Some(a.id));
}

#[test]
fn a_run_after_rollback_becomes_a_second_child() {
    let (_d, s, [a, b, c]) = store_with_abc();
    s.rollback("t", "-1").unwrap();
    let d = s.set_image("t", "D", "run", "other", None).unwrap();
    assert_eq!(d.parent_id, Some(b.id));
    let children: Vec<i64> = s
        .history("t")
        .unwrap()
        .iter()
        .filter(|e| e.parent_id == Some(b.id))
        .map(|e| e.id)
        .collect();
    assert_eq!(children, vec![c.id, d.id]);
    assert_eq!(s.history("t").unwrap().len(), 4);
    assert_eq!(s.rollback("t", "-2").unwrap().id, a.id);
}

#[test]
fn branches_can_be_created_checked_out_and_deleted() {
    let (_d, s, [_a, b, c]) = store_with_abc();
    s.create_branch("t", "feat", None).unwrap();
    assert_eq!(
        s.create_branch("t", "feat", None).unwrap_err().to_string(),
        "Branch 'feat' already exists"
    );
    assert_eq!(
        s.create_branch("t", "x", Some("nope"))
            .unwrap_err()
            .to_string(),
        "Source branch 'nope' does not exist"
    );
    assert_eq!(s.checkout("t", "feat").unwrap().id, c.id);
    assert_eq!(s.info("t").unwrap().unwrap().active_branch, "feat");
    assert_eq!(
        s.delete_branch("t", "feat").unwrap_err().to_string(),
        "Cannot delete the active branch"
    );
    assert_eq!(
        s.delete_branch("t", "ghost").unwrap_err().to_string(),
        "Branch 'ghost' does not exist"
    );
    assert_eq!(
        s.checkout("t", "ghost").unwrap_err().to_string(),
        "Branch 'ghost' does not exist"
    );

    // Moving feat leaves main where it was.
    s.rollback("t", "-1").unwrap();
    assert_eq!(
        s.branches("t").unwrap(),
        vec![("feat".to_string(), b.id), ("main".to_string(), c.id)]
    );
    s.create_branch("t", "from-main", Some("main")).unwrap();
    s.checkout("t", "main").unwrap();
    s.delete_branch("t", "feat").unwrap();
    let names: Vec<String> = s.branches("t").unwrap().into_iter().map(|b| b.0).collect();
    assert_eq!(names, ["from-main", "main"]);
    assert_eq!(
        s.history("t").unwrap().len(),
        3,
        "deleting a branch keeps entries"
    );
}

#[test]
fn side_branches_do_not_move_the_active_branch() {
    let (_d, s, [_a, _b, c]) = store_with_abc();
    let e = s
        .add_side_branch("t", "op1", false, "C", "sleep 9")
        .unwrap();
    assert_eq!((e.parent_id, e.kind.as_str()), (Some(c.id), "run-detached"));
    let info = s.info("t").unwrap().unwrap();
    assert_eq!((info.active_branch.as_str(), info.tip_id), ("main", c.id));
    assert!(s
        .branches("t")
        .unwrap()
        .contains(&("detached-op1".to_string(), e.id)));
    // Re-creating an existing side branch moves it (session wait after `run -d -D`).
    let d1 = s.add_side_branch("t", "op1", true, "C", "sleep 9").unwrap();
    let d2 = s.add_side_branch("t", "op1", true, "C", "sleep 9").unwrap();
    assert_eq!(d2.kind, "run-disposable");
    let branches = s.branches("t").unwrap();
    assert!(branches.contains(&("disposable-op1".to_string(), d2.id)));
    assert!(!branches.iter().any(|(_, id)| *id == d1.id));
    assert!(matches!(
        s.add_side_branch("fresh", "b", false, "I", "t"),
        Err(SessionError::NoSession)
    ));
}

#[test]
fn cwd_is_the_nearest_cd_and_rollback_past_it_undoes_it() {
    let (_d, s) = store();
    assert_eq!(s.cwd("t").unwrap(), None);
    s.set_image("t", "A", "use", "a", None).unwrap();
    assert_eq!(s.cwd("t").unwrap(), None);
    let cd = s.set_cwd("t", "/work").unwrap();
    assert_eq!((cd.kind.as_str(), cd.image.as_str()), ("cd", "A"));
    s.set_image("t", "B", "run", "x", None).unwrap();
    s.set_image("t", "C", "use", "c", None).unwrap();
    assert_eq!(
        s.cwd("t").unwrap().as_deref(),
        Some("/work"),
        "use does not reset cwd"
    );
    s.set_cwd("t", "/work/sub").unwrap();
    assert_eq!(s.cwd("t").unwrap().as_deref(), Some("/work/sub"));
    s.rollback("t", "-1").unwrap();
    assert_eq!(s.cwd("t").unwrap().as_deref(), Some("/work"));
    s.rollback("t", "-3").unwrap();
    assert_eq!(s.cwd("t").unwrap(), None);
    assert!(matches!(
        s.set_cwd("fresh", "/x"),
        Err(SessionError::NoSession)
    ));
}

#[test]
fn pending_files_stop_at_the_last_run_and_latest_per_path_wins() {
    let (_d, s) = store();
    s.set_image("t", "A", "use", "a", None).unwrap();
    let f = s.add_file("t", "/app/old", "u-old", 0, 0, "0644").unwrap();
    assert_eq!(
        (f.kind.as_str(), f.title.as_str()),
        ("file", "Change file /app/old")
    );
    s.set_image("t", "B", "run", "bake", Some("op")).unwrap();
    assert!(
        s.pending_files("t").unwrap().is_empty(),
        "the run baked them in"
    );

    s.add_file("t", "/app/cfg", "u1", 0, 0, "0644").unwrap();
    s.add_side_branch("t", "x", false, "B", "x").unwrap();
    s.set_image("t", "B", "run-disposable", "d", None).unwrap();
    s.set_cwd("t", "/app").unwrap();
    s.add_file("t", "/app/cfg", "u2", 1, 2, "0600").unwrap();
    s.add_file("t", "rel", "u3", 0, 0, "0644").unwrap();
    assert_eq!(
        s.pending_files("t").unwrap(),
        vec![
            (
                "/app/cfg".to_string(),
                "u2".to_string(),
                1,
                2,
                "0600".to_string()
            ),
            (
                "rel".to_string(),
                "u3".to_string(),
                0,
                0,
                "0644".to_string()
            ),
        ]
    );

    s.set_image("t", "C", "run", "use them", None).unwrap();
    assert!(s.pending_files("t").unwrap().is_empty());
    s.rollback("t", "-1").unwrap();
    assert_eq!(
        s.pending_files("t").unwrap().len(),
        2,
        "rollback past the run restores them"
    );
    assert!(s.pending_files("fresh").unwrap().is_empty());
}

#[test]
fn env_and_preserved_env_round_trip() {
    let (_d, s) = store();
    assert!(s.env("t").unwrap().is_empty());
    s.set_env("t", "PATH", "/usr/bin").unwrap();
    s.set_env("t", "A", "x=y").unwrap();
    s.set_env("t", "PATH", "/bin").unwrap();
    s.set_env("other", "Z", "1").unwrap();
    let env = s.env("t").unwrap();
    assert_eq!(
        env.iter().collect::<Vec<_>>(),
        [
            (&"A".into(), &"x=y".into()),
            (&"PATH".into(), &"/bin".into())
        ]
    );
    assert!(s.unset_env("t", "A").unwrap());
    assert!(!s.unset_env("t", "A").unwrap());
    assert_eq!(s.env("t").unwrap().len(), 1);

    assert_eq!(s.preserved_env("IMG").unwrap(), None);
    let m: BTreeMap<String, String> = [("K".to_string(), "v".to_string())].into();
    s.set_preserved_env("IMG", &m).unwrap();
    assert_eq!(s.preserved_env("IMG").unwrap(), Some(m));
}

#[test]
fn pending_ops_keep_insertion_order() {
    let (_d, s) = store();
    let op = |id: &str, d: bool| PendingOp {
        op: id.to_string(),
        title: format!("t-{id}"),
        disposable: d,
        branch: format!("detached-{id}"),
        ..Default::default()
    };
    s.add_pending_op("t", &op("b", false)).unwrap();
    s.add_pending_op("t", &op("a", true)).unwrap();
    s.add_pending_op("u", &op("c", false)).unwrap();
    let mut again = op("b", false);
    again.title = "renamed".into();
    s.add_pending_op("t", &again).unwrap();
    assert_eq!(s.pending_ops("t").unwrap(), vec![again, op("a", true)]);
    s.remove_pending_op("t", "b").unwrap();
    s.remove_pending_op("t", "missing").unwrap();
    assert_eq!(s.pending_ops("t").unwrap(), vec![op("a", true)]);
}

#[test]
fn a_pending_run_is_applied_once_whoever_applies_it() {
    let (_d, s) = store();
    s.set_image("t", "BASE", "use", "base", None).unwrap();
    let env: BTreeMap<String, String> = [("K".to_string(), "v".to_string())].into();
    let run = PendingOp {
        op: "op1".into(),
        title: "echo hi".into(),
        foreground: true,
        preserved_env: Some(env.clone()),
        ..Default::default()
    };
    s.add_pending_op("t", &run).unwrap();
    assert_eq!(s.pending_foreground("t").unwrap(), vec![run]);
    let Applied::Recorded(entry) = s
        .apply_pending("t", "op1", Some(("IMG", "echo hi")), Some(&env), None)
        .unwrap()
    else {
        panic!("not applied");
    };
    assert_eq!(
        (entry.kind.as_str(), entry.operation.as_deref()),
        ("run", Some("op1"))
    );
    assert_eq!(s.info("t").unwrap().unwrap().current_image, "IMG");
    assert_eq!(s.preserved_env("IMG").unwrap(), Some(env));
    // A second applier (the run's CLI after a later command applied it) changes nothing.
    assert_eq!(
        s.apply_pending("t", "op1", Some(("IMG", "echo hi")), None, None)
            .unwrap(),
        Applied::NotPending
    );
    assert_eq!(s.history("t").unwrap().len(), 2);
    assert!(s.pending_ops("t").unwrap().is_empty());
}

#[test]
fn list_find_and_delete_sessions() {
    let (_d, s) = store();
    s.set_image("proj+aaaa1111", "A", "use", "a", None).unwrap();
    s.set_image("proj+bbbb2222", "B", "use", "b", None).unwrap();
    s.set_env("env-only", "K", "V").unwrap();
    let keys: Vec<String> = s
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.session_key)
        .collect();
    assert_eq!(
        keys,
        ["proj+bbbb2222", "proj+aaaa1111"],
        "newest first, env-only is no session"
    );

    assert_eq!(s.find_sessions("AAAA1111").unwrap(), ["proj+aaaa1111"]);
    assert_eq!(s.find_sessions("1").unwrap(), ["proj+aaaa1111"]);
    assert_eq!(s.find_sessions("2").unwrap(), ["proj+bbbb2222"]);
    assert_eq!(s.find_sessions("proj+bbbb2222").unwrap(), ["proj+bbbb2222"]);
    assert_eq!(s.find_sessions("+").unwrap(), Vec::<String>::new());
    assert_eq!(
        s.find_sessions("a_a1111").unwrap(),
        Vec::<String>::new(),
        "no LIKE wildcards"
    );

    s.add_file("proj+aaaa1111", "/f", "u", 0, 0, "0644")
        .unwrap();
    assert!(s.delete_session("proj+aaaa1111").unwrap());
    assert!(!s.delete_session("proj+aaaa1111").unwrap());
    assert!(s.info("proj+aaaa1111").unwrap().is_none());
    assert!(s.history("proj+aaaa1111").unwrap().is_empty());
    assert_eq!(s.list().unwrap().len(), 1);
}

#[test]
fn navigation_without_a_session_reports_no_session() {
    let (_d, s) = store();
    let text = "No active session. Run `contree use IMAGE` to start one.";
    assert_eq!(s.rollback("t", "-1").unwrap_err().to_string(), text);
    assert_eq!(
        s.create_branch("t", "b", None).unwrap_err().to_string(),
        text
    );
    // A bad target is reported before the store is consulted.
    assert_eq!(
        s.rollback("t", "0").unwrap_err().to_string(),
        "Navigation target must not be 0"
    );
}

#[test]
fn reopening_keeps_the_data() {
    let (_dir, path) = crate::paths::temp_path("p.db");
    let c = {
        let s = SessionStore::open(&path).unwrap();
        abc(&s)[2].clone()
    };
    let s = SessionStore::open(&path).unwrap();
    assert_eq!(s.info("t").unwrap().unwrap().tip_id, c.id);
}

#[test]
fn concurrent_writers_on_one_session_build_a_single_chain() {
    let (_dir, path) = crate::paths::temp_path("s.db");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let s = SessionStore::open(&path).unwrap();
                for i in 0..50 {
                    s.set_image("shared", &format!("img-{t}-{i}"), "run", "x", None)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = SessionStore::open(&path).unwrap();
    let h = s.history("shared").unwrap();
    assert_eq!(h.len(), 200);
    assert_eq!(h[0].parent_id, None);
    for w in h.windows(2) {
        assert_eq!(
            w[1].parent_id,
            Some(w[0].id),
            "every entry builds on the previous tip"
        );
    }
    assert_eq!(s.info("shared").unwrap().unwrap().tip_id, h[199].id);
}
