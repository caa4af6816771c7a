//! `-F/--file HOST[:/inst][:uUID][:gGID][:mMODE]`: host files and directories copied into the
//! instance, their owners and modes, the exclude rules for directories, and the exact error
//! for every malformed spec (which must stop the run before anything is spawned).

use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::Path;

use crate::harness::{sha256_hex, Env};

const STAT: &str = "stat -c '%u %g %a' \"$0\"";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_file_lands_at_its_instance_path() {
    let env = Env::host();
    let host = env.write("data.txt", "payload\n");
    let spec = format!("{}:/app/conf/data.txt", host.display());
    env.run(["run", "-F", &spec, "--", "cat", "/app/conf/data.txt"])
        .success()
        .stdout("payload\n");
}

#[test]
fn without_an_instance_path_the_host_path_is_used() {
    let env = Env::host();
    let host = env.write("same/place.txt", "here\n");
    let host = host.to_str().unwrap();
    env.run(["run", "--file", host, "--", "cat", host])
        .success()
        .stdout("here\n");
}

#[test]
fn relative_host_paths_land_relative_to_the_working_directory() {
    let env = Env::host();
    env.write("rel/notes.txt", "relative\n");
    env.cmd([
        "run",
        "-C",
        "/w",
        "-F",
        "rel/notes.txt",
        "--",
        "cat",
        "rel/notes.txt",
    ])
    .current_dir(env.work())
    .output()
    .success()
    .stdout("relative\n");
    env.run(["run", "--", "test", "-e", "/w/rel/notes.txt"])
        .success();
}

#[test]
fn an_attached_file_becomes_part_of_the_snapshot() {
    let env = Env::host();
    let host = env.write("keep.txt", "kept\n");
    let spec = format!("{}:/keep.txt", host.display());
    env.run(["run", "-F", &spec, "--", "true"]).success();
    env.run(["run", "--", "cat", "/keep.txt"])
        .success()
        .stdout("kept\n");
}

#[test]
fn owner_and_mode_default_to_the_host_files() {
    let env = Env::host();
    let host = env.write("owned.txt", "x");
    chmod(&host, 0o640);
    chown(&host, Some(1234), Some(2345)).expect("chown");
    let spec = format!("{}:/owned.txt", host.display());
    env.run(["run", "-F", &spec, "--", "sh", "-c", STAT, "/owned.txt"])
        .success()
        .stdout("1234 2345 640\n");
}

#[test]
fn explicit_uid_gid_and_mode_win() {
    let env = Env::host();
    let host = env.write("secret", "s");
    chmod(&host, 0o644);
    let spec = format!("{}:/x/secret:u1000:g1000:m0600", host.display());
    env.run(["run", "-F", &spec, "--", "sh", "-c", STAT, "/x/secret"])
        .success()
        .stdout("1000 1000 600\n");
    // Fields may come in any order, and setuid/sticky bits are kept.
    let spec = format!("{}:m4755:g7:/y:u8", host.display());
    env.run(["run", "-F", &spec, "--", "sh", "-c", STAT, "/y"])
        .success()
        .stdout("8 7 4755\n");
}

#[test]
fn user_and_group_names_are_resolved_on_the_host() {
    let env = Env::host();
    let host = env.write("named", "n");
    chown(&host, Some(4321), Some(4321)).expect("chown");
    let spec = format!("{}:/named:uroot:groot", host.display());
    env.run(["run", "-F", &spec, "--", "sh", "-c", STAT, "/named"])
        .success()
        .stdout("0 0 644\n");
    let daemon = nix::unistd::User::from_name("daemon")
        .expect("read passwd")
        .expect("a daemon user exists");
    let spec = format!("{}:/named:udaemon", host.display());
    env.run(["run", "-F", &spec, "--", "stat", "-c", "%u", "/named"])
        .success()
        .stdout(&format!("{}\n", daemon.uid));
}

#[test]
fn an_unknown_user_name_warns_and_uses_uid_0() {
    let env = Env::host();
    let host = env.write("f", "f");
    chown(&host, Some(555), Some(555)).expect("chown");
    let spec = format!("{}:/f:unosuchuser", host.display());
    env.run(["run", "-F", &spec, "--", "stat", "-c", "%u %g", "/f"])
        .success()
        .stdout("0 555\n")
        .stderr("[WARNING] Unknown user 'nosuchuser', using uid 0\n");
}

#[test]
fn a_mode_that_is_not_octal_permission_bits_is_refused() {
    // Upstream attaches these as mode 0000, silently: a file nobody can read.
    rejected(
        "/etc/hostname:/x:m99999",
        "[ERROR] invalid file spec '/etc/hostname:/x:m99999': mode '99999' is not octal (like m0644 or m4755)\n",
    );
    rejected(
        "/etc/hostname:/x:m7777777777777",
        "[ERROR] invalid file spec '/etc/hostname:/x:m7777777777777': mode '7777777777777' is above 07777 (permission bits only, like m0644 or m4755)\n",
    );
    rejected(
        "/etc/hostname:/x:m",
        "[ERROR] invalid file spec '/etc/hostname:/x:m': the mode field is empty\n",
    );
}

#[test]
fn the_largest_mode_keeps_every_special_bit() {
    let env = Env::host();
    let host = env.write("f", "f");
    let spec = format!("{}:/f:m7777", host.display());
    env.run(["run", "-D", "-F", &spec, "--", "stat", "-c", "%a", "/f"])
        .success()
        .stdout("7777\n");
}

#[test]
fn a_negative_or_out_of_range_id_is_refused_not_taken_for_a_name() {
    rejected(
        "/etc/hostname:/x:u-1",
        "[ERROR] invalid file spec '/etc/hostname:/x:u-1': uid '-1' is out of range (0 to 4294967294)\n",
    );
    rejected(
        "/etc/hostname:/x:g4294967296",
        "[ERROR] invalid file spec '/etc/hostname:/x:g4294967296': gid '4294967296' is out of range (0 to 4294967294)\n",
    );
}

#[test]
fn a_file_cannot_land_on_the_root_directory() {
    let env = Env::host();
    let host = env.write("f", "f");
    let spec = format!("{}:/", host.display());
    env.run(["run", "-F", &spec, "--", "touch", "/spawned"])
        .code(1)
        .stdout_empty()
        .stderr(&format!(
            "[ERROR] invalid file spec '{0}:/': '/' is not a file path; give the file a name, like '{0}:/f'\n",
            host.display()
        ));
    assert_eq!(env.all_ops(), Vec::<String>::new());
    // A directory's files may land under `/`.
    env.write("d/zz-attached", "under root\n");
    let spec = format!("{}:/", env.work().join("d").display());
    env.run(["run", "-D", "-F", &spec, "--", "cat", "/zz-attached"])
        .success()
        .stdout("under root\n");
}

/// A project as a developer has it, with everything the default excludes should drop.
fn project(env: &Env) -> String {
    for (rel, content) in [
        ("proj/a.txt", "a"),
        ("proj/src/main.py", "m"),
        ("proj/src/.env", "secret"),
        ("proj/.env", "secret"),
        ("proj/.git/config", "g"),
        ("proj/__pycache__/x.pyc", "p"),
        ("proj/src/y.pyc", "p"),
        ("proj/node_modules/x.js", "n"),
        ("proj/.venv/bin/python", "v"),
        ("proj/.mypy_cache/c", "c"),
        ("proj/.pytest_cache/c", "c"),
        ("proj/dist/pkg.whl", "d"),
        ("proj/sub/build/o", "b"),
        ("proj/logs/x.log", "l"),
        ("proj/sub/keep.txt", "k"),
    ] {
        env.write(rel, content);
    }
    env.work().join("proj").display().to_string()
}

#[test]
fn a_directory_is_copied_without_the_default_excludes() {
    let env = Env::host();
    let proj = project(&env);
    let spec = format!("{proj}:/app");
    env.run([
        "run",
        "-F",
        &spec,
        "--",
        "sh",
        "-c",
        "cd /app && find . -type f | sort",
    ])
    .success()
    .stdout("./a.txt\n./logs/x.log\n./src/main.py\n./sub/keep.txt\n");
}

#[test]
fn file_excludes_add_globs_matching_a_component_or_the_whole_path() {
    let env = Env::host();
    let proj = project(&env);
    let spec = format!("{proj}:/app");
    let list = "cd /app && find . -type f | sort";
    env.run([
        "run",
        "-D",
        "-F",
        &spec,
        "--file-excludes",
        "*.log",
        "--",
        "sh",
        "-c",
        list,
    ])
    .success()
    .stdout("./a.txt\n./src/main.py\n./sub/keep.txt\n");
    // Several globs after one flag, until `--`.
    env.run([
        "run",
        "-D",
        "-F",
        &spec,
        "--file-excludes",
        "*.log",
        "sub/*",
        "--",
        "sh",
        "-c",
        list,
    ])
    .success()
    .stdout("./a.txt\n./src/main.py\n");
    // The flag repeats too.
    env.run([
        "run",
        "-D",
        "-F",
        &spec,
        "--file-excludes",
        "logs",
        "--file-excludes",
        "src",
        "--",
        "sh",
        "-c",
        list,
    ])
    .success()
    .stdout("./a.txt\n./sub/keep.txt\n");
}

#[test]
fn excludes_never_apply_to_a_file_named_directly() {
    let env = Env::host();
    let proj = project(&env);
    let spec = format!("{proj}/.env:/app/.env");
    env.run([
        "run",
        "-F",
        &spec,
        "--file-excludes",
        "*",
        "--",
        "cat",
        "/app/.env",
    ])
    .success()
    .stdout("secret");
}

#[test]
fn directory_files_keep_their_own_modes_and_owners() {
    let env = Env::host();
    let tool = env.write("tools/bin/hello", "#!/bin/sh\necho hello from tool\n");
    chmod(&tool, 0o755);
    let private = env.write("tools/private", "p");
    chmod(&private, 0o600);
    chown(&private, Some(77), Some(88)).expect("chown");
    let spec = format!("{}:/opt/tools", env.work().join("tools").display());
    env.run([
        "run",
        "-F",
        &spec,
        "--",
        "sh",
        "-c",
        "/opt/tools/bin/hello && stat -c '%u %g %a' /opt/tools/private",
    ])
    .success()
    .stdout("hello from tool\n77 88 600\n");
}

#[test]
fn directory_symlinks_are_skipped_and_file_symlinks_copied_as_content() {
    let env = Env::host();
    env.write("tree/a.txt", "A\n");
    env.write("tree/src/m", "M\n");
    symlink("a.txt", env.work().join("tree/link.txt")).expect("symlink");
    symlink("src", env.work().join("tree/ldir")).expect("symlink");
    let spec = format!("{}:/t", env.work().join("tree").display());
    env.run([
        "run",
        "-F",
        &spec,
        "--",
        "sh",
        "-c",
        "cd /t && find . | sort && test ! -L link.txt && cat link.txt",
    ])
    .success()
    .stdout(".\n./a.txt\n./link.txt\n./src\n./src/m\nA\n");
}

#[test]
fn a_large_file_arrives_intact() {
    let env = Env::host();
    let content: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let host = env.write("big.bin", &content);
    let digest = sha256_hex(&content);
    let spec = format!("{}:/big.bin", host.display());
    env.run(["run", "-D", "-F", &spec, "--", "sha256sum", "/big.bin"])
        .success()
        .stdout(&format!("{digest}  /big.bin\n"));
}

#[test]
fn rerunning_with_unchanged_files_works_and_changes_are_picked_up() {
    let env = Env::host();
    let host = env.write("cfg", "v1");
    let spec = format!("{}:/cfg", host.display());
    for _ in 0..2 {
        env.run(["run", "-D", "-F", &spec, "--", "cat", "/cfg"])
            .success()
            .stdout("v1");
    }
    // Same size, new content: the upload cache must notice.
    std::fs::write(&host, "v2").expect("rewrite");
    env.run(["run", "-D", "-F", &spec, "--", "cat", "/cfg"])
        .success()
        .stdout("v2");
    // Identical content under another name is fine too.
    let twin = env.write("twin", "v2");
    let twin_spec = format!("{}:/twin", twin.display());
    env.run([
        "run", "-D", "-F", &spec, "-F", &twin_spec, "--", "cat", "/cfg", "/twin",
    ])
    .success()
    .stdout("v2v2");
}

/// Runs with a bad spec: must print exactly `stderr`, exit 1 and spawn nothing.
fn rejected(spec: &str, stderr: &str) {
    let env = Env::host();
    env.run(["run", "-F", spec, "--", "touch", "/spawned"])
        .code(1)
        .stdout_empty()
        .stderr(stderr);
    assert_eq!(
        env.all_ops(),
        Vec::<String>::new(),
        "{spec}: nothing may be spawned"
    );
}

#[test]
fn an_unknown_field_is_named() {
    rejected(
        "/a:badfield",
        "[ERROR] invalid file spec '/a:badfield': unknown field 'badfield' (expected /path, u<uid>, g<gid>, or m<mode>)\n",
    );
}

#[test]
fn a_trailing_colon_is_an_empty_unknown_field() {
    rejected(
        "/a:",
        "[ERROR] invalid file spec '/a:': unknown field '' (expected /path, u<uid>, g<gid>, or m<mode>)\n",
    );
}

#[test]
fn a_relative_instance_path_is_an_unknown_field() {
    rejected(
        "/etc/hostname:app/x",
        "[ERROR] invalid file spec '/etc/hostname:app/x': unknown field 'app/x' (expected /path, u<uid>, g<gid>, or m<mode>)\n",
    );
}

#[test]
fn two_instance_paths_are_a_duplicate() {
    rejected(
        "/a:/b:/c",
        "[ERROR] invalid file spec '/a:/b:/c': duplicate instance path\n",
    );
}

#[test]
fn a_missing_host_path_is_required() {
    rejected("", "[ERROR] invalid file spec '': host_path is required\n");
    rejected(
        ":/x",
        "[ERROR] invalid file spec ':/x': host_path is required\n",
    );
}

#[test]
fn a_missing_host_file_cannot_be_stat_ed() {
    let env = Env::host();
    let missing = env.work().join("nope.txt");
    let missing = missing.to_str().unwrap();
    env.run(["run", "-F", missing, "--", "true"])
        .code(1)
        .stdout_empty()
        .stderr_contains(&format!("[ERROR] cannot stat host file '{missing}': "))
        .stderr_contains("No such file or directory");
    assert_eq!(env.all_ops(), Vec::<String>::new());
}

#[test]
fn a_fully_explicit_spec_for_a_missing_file_is_neither_file_nor_directory() {
    rejected(
        "/nonexistent:/x:u0:g0:m755",
        "host path '/nonexistent' is neither file nor directory\n",
    );
}

#[test]
fn a_device_or_fifo_is_neither_file_nor_directory() {
    rejected(
        "/dev/null:/x",
        "host path '/dev/null' is neither file nor directory\n",
    );
    let env = Env::host();
    let fifo = env.work().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    env.run(["run", "-F", fifo.to_str().unwrap(), "--", "true"])
        .code(1)
        .stderr(&format!(
            "host path '{}' is neither file nor directory\n",
            fifo.display()
        ));
    assert_eq!(env.all_ops(), Vec::<String>::new());
}

#[test]
fn a_bad_spec_among_good_ones_still_stops_the_run() {
    let env = Env::host();
    let good = env.write("good", "g");
    let good = format!("{}:/good", good.display());
    env.run([
        "run", "-F", &good, "-F", "/a:/b:/c", "--", "touch", "/spawned",
    ])
    .code(1)
    .stderr_contains("duplicate instance path");
    assert_eq!(env.all_ops(), Vec::<String>::new());
}
