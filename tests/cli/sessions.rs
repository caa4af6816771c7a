//! Sessions: `use` starts one and prints the line that exports its key; without one every
//! command explains how to start it; a failed `use` changes nothing.

use crate::harness::Env;

const NO_SESSION: &str = "No active session. Run `contree use IMAGE` to start one.";

/// The second line, pointing at help that exists (the official client names `contree agent`).
const AGENTS: &str = "Agents: read `contree agent` for workflow and set a session first.";

/// The three-line explanation printed when there is no session.
fn assert_no_session_message(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert_eq!(lines[0], NO_SESSION);
    assert_eq!(lines[1], AGENTS, "{stderr}");
    assert!(lines[2].starts_with("hint: "), "{stderr}");
    assert!(lines[2].contains("contree use host"), "{stderr}");
}

#[test]
fn use_prints_the_export_line() {
    let env = Env::new();
    env.run(["use", "host"])
        .success()
        .stdout("export CONTREE_SESSION=t\n")
        .stderr_empty();
}

#[test]
fn use_prints_a_fish_line_for_fish_users() {
    let env = Env::new();
    env.cmd(["use", "host"])
        .env("SHELL", "/usr/bin/fish")
        .output()
        .success()
        .stdout("set -gx CONTREE_SESSION t\n");
}

#[test]
fn use_with_a_session_flag_names_that_session() {
    let env = Env::new();
    env.run(["-S", "mine", "use", "tag:host"])
        .success()
        .stdout("export CONTREE_SESSION=mine\n");
    // The env's own session `t` was not started.
    env.run(["use"]).code(1);
}

#[test]
fn use_alone_shows_the_session() {
    let env = Env::host();
    let record = env.json(["use"]);
    assert_eq!(record["session_key"], "t");
    assert_eq!(record["active_branch"], "main");
    assert_eq!(record["last_kind"], "use");
    assert_eq!(record["last_title"], "host");
    let image = record["current_image"].as_str().expect("current image");
    assert_eq!(image.len(), 36, "{image}");
    let table = env.run(["use"]).success().stdout_text();
    assert!(
        table.starts_with("SESSION_KEY  ACTIVE_BRANCH  CURRENT_IMAGE"),
        "{table}"
    );
    assert!(table.contains(image), "{table}");
}

#[test]
fn without_a_session_use_explains_how_to_start_one() {
    let env = Env::new();
    let out = env.run(["use"]).code(1).stdout_empty();
    assert_no_session_message(&out.stderr_text());
}

#[test]
fn without_a_session_run_spawns_nothing() {
    let env = Env::new();
    let out = env.run(["run", "--", "true"]).code(1).stdout_empty();
    assert_no_session_message(&out.stderr_text());
    assert_eq!(env.all_ops(), Vec::<String>::new());
}

#[test]
fn use_new_without_an_image_is_refused() {
    let env = Env::new();
    env.run(["use", "--new"])
        .code(1)
        .stdout_empty()
        .stderr("--new requires an IMAGE argument.\n");
}

#[test]
fn use_new_starts_a_fresh_session_and_leaves_the_current_one() {
    let env = Env::host();
    env.run(["run", "--", "touch", "/in-t"]).success();
    let before = env.json(["use"]);
    let out = env.run(["use", "--new", "host"]).success();
    let line = out.stdout_text();
    let key = line
        .strip_prefix("export CONTREE_SESSION=")
        .and_then(|k| k.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("not an export line: {line:?}"));
    assert_ne!(key, "t");
    assert!(uuid_shaped(key), "{key}");
    assert_eq!(env.json(["use"]), before, "session t changed");
    env.run(["-S", key, "run", "--", "test", "-e", "/in-t"])
        .code(1);
    env.run(["run", "--", "test", "-e", "/in-t"]).success();
}

fn uuid_shaped(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn use_of_an_unknown_image_fails_and_leaves_the_session_unchanged() {
    let env = Env::host();
    env.run(["run", "--", "touch", "/x"]).success();
    let before = env.json(["use"]);
    for image in [
        "nosuch",
        "tag:nosuch",
        "12345678-1234-1234-1234-123456789abc",
    ] {
        env.run(["use", image])
            .code(1)
            .stdout_empty()
            .stderr_contains("[ERROR]")
            .stderr_contains(image.trim_start_matches("tag:"));
        assert_eq!(env.json(["use"]), before, "after `use {image}`");
    }
}

#[test]
fn run_use_starts_a_session_on_a_fresh_key() {
    let env = Env::new();
    env.run(["run", "--use", "host", "--", "echo", "hi"])
        .success()
        .stdout("hi\n");
    let record = env.json(["use"]);
    assert_eq!(record["last_kind"], "run");
}

#[test]
fn run_use_of_an_unknown_image_spawns_nothing() {
    let env = Env::new();
    env.run(["run", "--use", "nosuch", "--", "true"])
        .code(1)
        .stderr_contains("nosuch");
    assert_eq!(env.all_ops(), Vec::<String>::new());
    env.run(["use"]).code(1);
}

#[test]
fn sessions_in_one_data_dir_are_independent() {
    let env = Env::host();
    env.run(["-S", "b", "use", "host"]).success();
    env.run(["run", "--", "touch", "/only-in-t"]).success();
    env.run(["-S", "b", "run", "--", "test", "-e", "/only-in-t"])
        .code(1);
    env.cmd(["run", "--", "test", "-e", "/only-in-t"])
        .env("CONTREE_SESSION", "b")
        .output()
        .code(1);
    // -S beats $CONTREE_SESSION.
    env.cmd(["-S", "t", "run", "--", "test", "-e", "/only-in-t"])
        .env("CONTREE_SESSION", "b")
        .output()
        .success();
}

#[test]
fn a_bad_file_spec_stops_run_use_before_the_session_switches() {
    let env = Env::new();
    env.run(["run", "--use", "host", "-F", "/a:badfield", "--", "true"])
        .code(1)
        .stderr_contains("invalid file spec");
    env.run(["use"]).code(1);
}

#[test]
fn the_no_session_message_points_at_help_that_exists() {
    let env = Env::new();
    let out = env.run(["run", "--", "true"]).code(1);
    assert_no_session_message(&out.stderr_text());
    env.run(["--help"]).success().stdout_contains("use");
    env.run(["use", "--help"])
        .success()
        .stdout_contains("Start or switch the session to IMAGE");
}
