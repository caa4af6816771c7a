//! `contree file cp|edit|ls`: files staged for the session's next run, on its current
//! branch only; on this machine and through `contree serve`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::Value;

use crate::harness::Env;
use crate::serve::{our_client, Server};

/// `-o json file ls --staged`: one record per staged file.
fn staged(env: &Env) -> Vec<Value> {
    env.run(["-o", "json", "file", "ls", "--staged"])
        .success()
        .json_lines()
}

fn staged_paths(env: &Env) -> Vec<String> {
    staged(env)
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect()
}

/// An executable script in the scratch dir, for `$EDITOR`.
fn script(env: &Env, name: &str, body: &str) -> PathBuf {
    let path = env.write(name, format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `file cp` uploads now and the next run sees the file, with its mode; after that run it
/// is no longer staged (the run baked it in), so a later run does not bring it back.
fn cp_then_run(env: &Env) {
    let src = env.write("tool.sh", "echo from the host\n");
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).unwrap();
    env.write("notes.txt", "notes\n");
    env.run(["file", "ls", "--staged"])
        .success()
        .stdout_empty()
        .stderr_contains("No files staged");

    env.run(["file", "cp", "tool.sh", "/app/tool.sh"])
        .success()
        .stderr_contains("Staged /app/tool.sh");
    // A destination ending in `/` keeps the name; a relative one is from the session's cd.
    env.run(["f", "cp", "notes.txt", "/docs/"]).success();
    env.run(["cd", "/srv"]).success();
    let rec = env.json(["file", "cp", "notes.txt", "rel.txt"]);
    assert_eq!(rec["path"], "/srv/rel.txt");
    assert_eq!(rec["mode"], "0644");

    let listed = staged(env);
    let paths: Vec<&str> = listed.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/app/tool.sh", "/docs/notes.txt", "/srv/rel.txt"]);
    assert_eq!(listed[0]["mode"], "0750");
    env.run(["file", "list", "--staged"])
        .success()
        .stdout_contains("/app/tool.sh")
        .stdout_contains("PATH");
    // Every upload, newest first, with where the next run puts the staged ones.
    let uploaded = env.run(["-o", "json", "file", "ls"]).success().json_lines();
    let tool = uploaded
        .iter()
        .find(|f| f["staged_at"] == "/app/tool.sh")
        .expect("the staged tool among the uploads");
    assert_eq!(tool["size"], 19);
    assert_eq!(tool["sha256"].as_str().unwrap().len(), 64);
    let quiet = env
        .run(["-o", "json", "file", "ls", "-q"])
        .success()
        .json_lines();
    assert_eq!(quiet.len(), uploaded.len());
    assert_eq!(quiet[0].as_object().unwrap().len(), 2, "{quiet:?}");
    env.run(["file", "ls", "--limit", "1"])
        .success()
        .stderr_contains("more than 1 files");
    env.run(["-o", "json", "file", "ls", "--since", "1h"])
        .success()
        .check("uploads of the last hour", |o| {
            o.json_lines().len() == uploaded.len()
        });
    env.run(["file", "ls", "--until", "2000-01-01"])
        .success()
        .stderr_contains("No files uploaded");

    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "sh /app/tool.sh; stat -c %a /app/tool.sh; cat /docs/notes.txt rel.txt",
    ])
    .success()
    .stdout("from the host\n750\nnotes\nnotes\n");
    assert!(staged_paths(env).is_empty(), "the run took them");
    env.run(["run", "--", "rm", "/app/tool.sh"]).success();
    env.run(["run", "--", "test", "-e", "/app/tool.sh"]).code(1);

    // What is not a file is refused, and nothing is staged.
    env.run(["file", "cp", "no-such-file", "/x"])
        .code(1)
        .stderr_contains("no-such-file");
    env.run(["file", "cp", ".", "/x"])
        .code(1)
        .stderr_contains("not a regular file");
    assert!(staged_paths(env).is_empty());
}

/// `file edit` opens the image's file in the editor and stages the edited copy (same owner
/// and mode); an unchanged file, or a failed editor, stages nothing.
fn edit_in_an_editor(env: &Env) {
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "mkdir -p /srv && printf 'port=1\\n' > /srv/app.conf && chmod 600 /srv/app.conf && chown 7:8 /srv/app.conf",
    ])
    .success();
    let append = script(env, "append.sh", "printf 'debug=1\\n' >> \"$1\"");
    let keep = script(env, "keep.sh", "test -f \"$1\"");

    env.cmd(["file", "edit", "/srv/app.conf"])
        .env("EDITOR", &keep)
        .output()
        .success()
        .stderr_contains("unchanged: nothing staged");
    env.cmd(["file", "edit", "/srv/app.conf"])
        .env("EDITOR", "false")
        .output()
        .code(1)
        .stderr_contains("exited with");
    assert!(staged_paths(env).is_empty());

    // $VISUAL comes before $EDITOR.
    env.cmd(["file", "e", "/srv/app.conf"])
        .env("VISUAL", &append)
        .env("EDITOR", "false")
        .output()
        .success()
        .stderr_contains("Staged /srv/app.conf");
    let listed = staged(env);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["mode"], &listed[0]["uid"], &listed[0]["gid"]),
        (&Value::from("0600"), &Value::from(7), &Value::from(8))
    );
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "cat /srv/app.conf; stat -c '%a %u %g' /srv/app.conf",
    ])
    .success()
    .stdout("port=1\ndebug=1\n600 7 8\n");

    // -E wins over both; a missing file is a user error.
    env.cmd([
        "file",
        "edit",
        "-E",
        append.to_str().unwrap(),
        "/srv/app.conf",
    ])
    .env("EDITOR", "false")
    .output()
    .success();
    env.run(["run", "--", "cat", "/srv/app.conf"])
        .success()
        .stdout("port=1\ndebug=1\ndebug=1\n");
    env.cmd(["file", "edit", "/srv/nope.conf"])
        .env("EDITOR", &keep)
        .output()
        .code(1)
        .stderr_contains("/srv/nope.conf");
}

/// A staged file belongs to the branch it was staged on.
fn pending_per_branch(env: &Env) {
    env.run(["session", "branch", "other"]).success();
    env.write("only-main.txt", "main\n");
    env.run(["file", "cp", "only-main.txt", "/m.txt"]).success();
    assert_eq!(staged_paths(env), ["/m.txt"]);

    env.run(["session", "checkout", "other"]).success();
    assert!(
        staged_paths(env).is_empty(),
        "another branch does not see it"
    );
    env.run(["run", "-D", "--", "test", "-e", "/m.txt"]).code(1);

    env.run(["session", "checkout", "main"]).success();
    assert_eq!(staged_paths(env), ["/m.txt"]);
    env.run(["run", "--", "cat", "/m.txt"])
        .success()
        .stdout("main\n");
}

#[test]
fn file_cp_stages_a_file_for_the_next_run() {
    cp_then_run(&Env::host());
}

#[test]
fn file_edit_stages_the_edited_copy_only_when_it_changed() {
    edit_in_an_editor(&Env::host());
}

#[test]
fn staged_files_belong_to_the_current_branch() {
    pending_per_branch(&Env::host());
}

#[test]
fn file_commands_through_serve() {
    let server = Server::start();
    for check in [cp_then_run, edit_in_an_editor, pending_per_branch] {
        let env = our_client(&server);
        env.use_host();
        check(&env);
    }
}

#[test]
fn gc_keeps_the_content_of_staged_files() {
    let env = Env::host();
    env.write("kept.txt", "still here\n");
    env.run(["file", "cp", "kept.txt", "/kept.txt"]).success();
    env.run(["gc"]).success();
    env.run(["run", "--", "cat", "/kept.txt"])
        .success()
        .stdout("still here\n");
}
