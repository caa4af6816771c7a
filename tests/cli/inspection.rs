//! Looking inside the session's image without a sandbox (`ls`, `cat`, `cp`) and the
//! session's working directory and environment (`cd`, `env`).

use crate::harness::Env;

#[test]
fn ls_and_cat_see_the_snapshot_with_deletions_respected() {
    let env = Env::host();
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "mkdir -p /w/sub && echo hi > /w/a && echo x > /w/sub/b && rm /etc/hostname",
    ])
    .success();
    env.run(["cat", "/w/a"]).success().stdout("hi\n");
    env.run(["ls", "/w"])
        .success()
        .stdout_contains(" a\n")
        .stdout_contains(" sub\n");
    let rows = env.run(["-o", "json", "ls", "/w"]).success().json_lines();
    let names: Vec<&str> = rows.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "sub"]);
    assert_eq!(rows[1]["type"], "d");
    assert_eq!(rows[0]["mode"], "100644");
    // Deleted in the run's layer: gone for inspection too.
    env.run(["cat", "/etc/hostname"])
        .code(1)
        .stderr_contains("/etc/hostname: no such file or directory");
    env.run(["ls", "/nope"])
        .code(1)
        .stderr_contains("/nope: no such file or directory");
}

#[test]
fn inspection_never_shows_host_secrets_and_follows_image_symlinks() {
    let env = Env::host();
    env.run(["cat", "/etc/shadow"]).code(1);
    env.run(["ls", "/root"]).success().stdout("");
    // /bin is a symlink on merged-/usr systems: it resolves inside the image.
    env.run(["cat", "/bin/sh"]).success();
}

#[test]
fn cp_writes_files_and_directories_atomically_with_their_modes() {
    let env = Env::host();
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "mkdir -p /d/e && printf x > /d/f && chmod 750 /d/f && echo y > /d/e/g",
    ])
    .success();
    let out = env.work().join("out");
    std::fs::create_dir_all(&out).unwrap();
    env.run(["cp", "/d/f", out.to_str().unwrap()])
        .success()
        .stderr_contains("Written 1.0 B");
    let meta = std::fs::metadata(out.join("f")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o750
    );
    env.run(["cp", "/d", out.join("tree").to_str().unwrap()])
        .success();
    assert_eq!(
        std::fs::read_to_string(out.join("tree/e/g")).unwrap(),
        "y\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn cd_sets_the_directory_runs_and_inspection_use_and_checks_it_exists() {
    let env = Env::host();
    env.run(["cd"]).success().stdout("/\n");
    env.run(["run", "--", "mkdir", "-p", "/srv/app"]).success();
    env.run(["cd", "/srv/app"]).success();
    env.run(["cd"]).success().stdout("/srv/app\n");
    env.run(["run", "--", "pwd"]).success().stdout("/srv/app\n");
    env.run(["run", "--", "sh", "-c", "echo z > rel"]).success();
    env.run(["cat", "rel"]).success().stdout("z\n");
    env.run(["cd", "../nope"])
        .code(1)
        .stderr_contains("cd: /srv/nope: no such directory");
    env.run(["cd"]).success().stdout("/srv/app\n");
}

#[test]
fn env_sets_lists_and_unsets_session_variables() {
    let env = Env::host();
    env.run(["env"])
        .success()
        .stdout("No session environment variables set.\n");
    env.run(["env", "A=1", "B=x=y"])
        .success()
        .stderr_contains("[INFO] Set B=x=y");
    env.run(["run", "--", "sh", "-c", "echo $A $B"])
        .success()
        .stdout("1 x=y\n");
    env.run(["env", "C"])
        .code(1)
        .stderr_contains("[ERROR] 'C' is not KEY=VALUE (write 'C=' for an empty value)");
    env.run(["env", "-U", "A"])
        .success()
        .stderr_contains("Unset A");
    env.run(["-o", "json", "env"])
        .success()
        .stdout("{\"key\":\"B\",\"value\":\"x=y\"}\n");
    env.run(["env", "-U"])
        .code(1)
        .stderr_contains("Specify keys to unset");
}
