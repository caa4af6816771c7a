//! Plugins: the real binary loading the real plugins built from `plugins/` (the JUnit
//! formatter, the git resolver), a plugin written in C, and broken ones (wrong ABI version,
//! panics, no entry symbol, not a shared library, two plugins claiming one name). Each
//! failure must be a clear error naming the file, and must leave other runs working.
//!
//! The plugin libraries are built once per test process: `cargo build` of the plugin
//! packages (they are cdylibs, which `cargo test` does not link) and `cc` for the C ones.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::{skip, Env};

/// The plugin files every test copies from.
pub(crate) struct Built {
    pub(crate) junit: PathBuf,
    git: PathBuf,
    panicky: PathBuf,
    /// The C fixture and its broken variants; `None` without a C compiler.
    c: Option<CPlugins>,
    /// A file named like a plugin that is not a shared library at all.
    junk: PathBuf,
}

struct CPlugins {
    good: PathBuf,
    /// Claims ABI version 99.
    wrong_abi: PathBuf,
    /// A real shared library without the entry symbol.
    no_entry: PathBuf,
}

pub(crate) fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(build)
}

fn build() -> Built {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--message-format=json-render-diagnostics"])
        .args([
            "-p",
            "contree-junit",
            "-p",
            "contree-git",
            "-p",
            "contree-fixture-panicky",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        out.status.success(),
        "building the plugins failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // cargo names each artifact it built (or found fresh) on stdout, one JSON per line.
    let mut libs = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let name = msg["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for file in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = file.as_str().filter(|f| f.ends_with(".so")) {
                libs.insert(name.clone(), PathBuf::from(f));
            }
        }
    }
    let lib = |name: &str| {
        libs.get(name)
            .cloned()
            .unwrap_or_else(|| panic!("cargo built no {name}.so (got {libs:?})"))
    };
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the fixture dir");
    let junk = dir.join("junk.so");
    std::fs::write(&junk, "this is not a shared library\n").expect("write junk.so");
    Built {
        junit: lib("contree_junit"),
        git: lib("contree_git"),
        panicky: lib("contree_fixture_panicky"),
        c: build_c(root, &dir),
        junk,
    }
}

/// The C fixture, compiled against the SDK's header, plus its broken variants.
fn build_c(root: &Path, dir: &Path) -> Option<CPlugins> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let source = root.join("tests/fixtures/plugins/cplugin.c");
    let compile = |name: &str, defines: &[&str]| -> Option<PathBuf> {
        let out = dir.join(name);
        let result = Command::new(&cc)
            .args([
                "-shared", "-fPIC", "-std=c11", "-Wall", "-Wextra", "-Werror",
            ])
            .arg("-I")
            .arg(root.join("plugins/sdk"))
            .args(defines)
            .arg(&source)
            .arg("-o")
            .arg(&out)
            .output()
            .ok()?;
        assert!(
            result.status.success(),
            "{cc} failed on {}:\n{}",
            source.display(),
            String::from_utf8_lossy(&result.stderr)
        );
        Some(out)
    };
    Some(CPlugins {
        good: compile("cplugin.so", &[])?,
        wrong_abi: compile("cplugin-abi99.so", &["-DCT_ABI=99"])?,
        no_entry: compile("cplugin-noentry.so", &["-DCT_NO_ENTRY"])?,
    })
}

fn c_plugins() -> Option<&'static CPlugins> {
    let c = built().c.as_ref();
    if c.is_none() {
        skip("no C compiler (cc) to build the C plugin fixture");
    }
    c
}

/// Copies `lib` into `dir` as `name` (the data dir's `plugins/` unless said otherwise).
fn install(dir: &Path, lib: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create plugin dir");
    let to = dir.join(name);
    std::fs::copy(lib, &to).expect("copy plugin");
    to
}

fn plugin_dir(env: &Env) -> PathBuf {
    env.home().join("plugins")
}

/// Validates a JUnit report against `plugins/junit/junit.xsd` with xmllint; skips (loudly)
/// when xmllint is not installed (`.ci/run` installs it).
fn assert_valid_junit(xml: &[u8]) {
    let xsd = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/junit/junit.xsd");
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), xml).expect("write report");
    match Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&xsd)
        .arg(file.path())
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "not valid JUnit:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(xml)
        ),
        Err(_) => skip("xmllint not installed (apt-get install libxml2-utils): schema not checked"),
    }
}

/// Runs `git` in `dir` with a fixed identity.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- JUnit

#[test]
fn junit_reports_a_passing_run_as_one_clean_testcase() {
    let env = Env::host();
    install(&plugin_dir(&env), &built().junit, "junit.so");
    let out = env
        .run([
            "-o",
            "junit",
            "run",
            "--",
            "sh",
            "-c",
            "echo out; echo 'a<b' >&2",
        ])
        .success()
        .stderr_empty();
    assert_valid_junit(&out.stdout);
    let xml = out.stdout_text();
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
        "{xml}"
    );
    assert!(
        xml.contains("tests=\"1\" failures=\"0\" errors=\"0\""),
        "{xml}"
    );
    assert!(
        xml.contains("<testcase name=\"sh -c 'echo out; echo '\\''a&lt;b'\\'' &gt;&amp;2'\""),
        "{xml}"
    );
    assert!(xml.contains("<system-out>out&#10;</system-out>"), "{xml}");
    assert!(
        xml.contains("<system-err>a&lt;b&#10;</system-err>"),
        "{xml}"
    );
    assert!(
        xml.contains(&format!(
            "<property name=\"operation\" value=\"{}\"/>",
            env.last_op()
        )),
        "{xml}"
    );
    // A JUnit run is a run like any other: it snapshots and moves the session.
    assert_eq!(env.op_status(&env.last_op()), "SUCCESS");
}

#[test]
fn junit_reports_a_failing_run_as_a_failure_and_keeps_the_exit_code() {
    let env = Env::host();
    install(&plugin_dir(&env), &built().junit, "junit.so");
    let out = env
        .run([
            "-o",
            "junit",
            "run",
            "--",
            "sh",
            "-c",
            "printf 'bad\\033[0m\\001'; exit 3",
        ])
        .code(3);
    assert_valid_junit(&out.stdout);
    let xml = out.stdout_text();
    assert!(xml.contains("failures=\"1\" errors=\"0\""), "{xml}");
    assert!(
        xml.contains("<failure message=\"exit code 3\" type=\"exit-code\">exit code 3</failure>"),
        "{xml}"
    );
    // Control characters XML cannot hold are stripped, the rest kept.
    assert!(xml.contains("<system-out>bad[0m</system-out>"), "{xml}");
}

#[test]
fn junit_reports_a_timed_out_run_as_an_error() {
    let env = Env::host();
    install(&plugin_dir(&env), &built().junit, "junit.so");
    let out = env
        .run([
            "-o",
            "junit",
            "run",
            "-t",
            "1",
            "--",
            "sh",
            "-c",
            "echo started; sleep 30",
        ])
        .code(255)
        .stderr_contains("timed out after 1s");
    assert_valid_junit(&out.stdout);
    let xml = out.stdout_text();
    assert!(xml.contains("failures=\"0\" errors=\"1\""), "{xml}");
    assert!(
        xml.contains("<error message=\"timed out after 1s\" type=\"timeout\">"),
        "{xml}"
    );
    assert!(
        xml.contains("<system-out>started&#10;</system-out>"),
        "{xml}"
    );
}

#[test]
fn plugin_formats_are_for_run_only_and_unknown_ones_list_what_exists() {
    let env = Env::host();
    install(&plugin_dir(&env), &built().junit, "junit.so");
    env.run(["-o", "nope", "run", "--", "true"])
        .code(1)
        .stdout_empty()
        .stderr_contains("[ERROR] unknown output format 'nope' for run (available: default, json, json-pretty, plain, toml, junit)");
    // Nothing ran.
    assert!(env.all_ops().is_empty());
    env.run(["-o", "junit", "images"])
        .code(1)
        .stderr_contains("unknown format 'junit'");
    // Built-in formats are unchanged.
    let rec = env
        .run(["-o", "json", "run", "--", "echo", "hi"])
        .success()
        .json();
    assert_eq!(rec["stdout"], "hi\n");
}

// ---------------------------------------------------------------- git

#[test]
fn git_attaches_exactly_the_tracked_files_of_a_commit() {
    let env = Env::host();
    install(&plugin_dir(&env), &built().git, "git.so");
    let repo = env.work();
    env.write("proj/a.txt", "one\n");
    env.write("proj/src/main.c", "int main;\n");
    env.write("proj/bin/run.sh", "#!/bin/sh\n");
    std::os::unix::fs::symlink("a.txt", repo.join("proj/link")).expect("symlink");
    chmod(&repo.join("proj/bin/run.sh"), 0o755);
    git(repo, &["init", "-q", "."]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", "one"]);
    git(repo, &["tag", "v1"]);
    // After the commit: a change, a new tracked file, an untracked one.
    env.write("proj/a.txt", "changed\n");
    env.write("proj/later.txt", "later\n");
    git(repo, &["add", "proj/a.txt", "proj/later.txt"]);
    git(repo, &["commit", "-qm", "two"]);
    env.write("proj/untracked.txt", "no\n");
    env.write("proj/a.txt", "dirty working tree\n");

    let listing = "cd /app && find . -type f -o -type l | sort && cat a.txt && stat -c '%a %u %g' bin/run.sh a.txt";
    env.run(["run", "-F", "git:v1:proj:/app", "--", "sh", "-c", listing])
        .success()
        .stdout("./a.txt\n./bin/run.sh\n./src/main.c\none\n755 0 0\n644 0 0\n");
    // HEAD has the second commit's files; spec fields override owner and mode.
    env.run([
        "run",
        "-F",
        "git:HEAD:proj/a.txt:/x:u7:m600",
        "--",
        "sh",
        "-c",
        "cat /x; stat -c '%a %u' /x",
    ])
    .success()
    .stdout("changed\n600 7\n");
    env.run(["run", "-F", "git:HEAD:proj:/h", "--", "cat", "/h/later.txt"])
        .success()
        .stdout("later\n");
    // Without /inst the files land at PATH, relative to the run's working directory.
    env.run([
        "run",
        "-C",
        "/w",
        "-F",
        "git:v1:proj/src",
        "--",
        "cat",
        "/w/proj/src/main.c",
    ])
    .success()
    .stdout("int main;\n");
    // Later specs win for one instance path, whichever resolver made them.
    let local = env.write("local.txt", "local\n");
    let spec = format!("{}:/app/a.txt", local.display());
    env.run([
        "run",
        "-F",
        "git:v1:proj:/app",
        "-F",
        &spec,
        "--",
        "cat",
        "/app/a.txt",
    ])
    .success()
    .stdout("local\n");
}

#[test]
fn git_errors_name_the_spec_and_stop_the_run_before_it_starts() {
    let env = Env::host();
    install(&plugin_dir(&env), &built().git, "git.so");
    env.write("f", "x");
    git(env.work(), &["init", "-q", "."]);
    git(env.work(), &["add", "f"]);
    git(env.work(), &["commit", "-qm", "one"]);
    env.run(["run", "-F", "git:nope:f", "--", "true"])
        .code(1)
        .stderr_contains("[ERROR] cannot resolve file spec 'git:nope:f': plugin 'git' (")
        .stderr_contains("failed in resolve: 'nope' is not a commit in this repository");
    env.run(["run", "-F", "git:HEAD", "--", "true"])
        .code(1)
        .stderr("[ERROR] invalid file spec 'git:HEAD': expected git:REV:PATH[:/inst][:uUID][:gGID][:mMODE]\n");
    assert!(env.all_ops().is_empty());
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

// ---------------------------------------------------------------- C

#[test]
fn a_plugin_written_in_c_formats_and_resolves() {
    let Some(c) = c_plugins() else { return };
    let env = Env::host();
    install(&plugin_dir(&env), &c.good, "cplugin.so");
    env.run([
        "-o",
        "c-upper",
        "run",
        "-F",
        "chello:world:/greeting",
        "--",
        "sh",
        "-c",
        "cat /greeting; stat -c %a /greeting; echo quiet >&2; exit 4",
    ])
    .code(4)
    .stdout("HELLO, WORLD\n600\n")
    .stderr("quiet\nc-upper: exit 4\n");
    // Without /inst the resolver's name is the place.
    env.run([
        "run",
        "-C",
        "/d",
        "-F",
        "chello:you",
        "--",
        "cat",
        "/d/hello.txt",
    ])
    .success()
    .stdout("hello, you\n");
    let list = env.run(["-o", "json", "plugins", "list"]).success().json();
    assert_eq!(list["name"], "c-fixture");
    assert_eq!(list["abi"], 1);
    assert_eq!(list["provides"], "-o c-upper, -o c-cat, -F chello:NAME");
    assert_eq!(list["status"], "ok");
}

#[test]
fn a_single_letter_or_a_plain_path_never_reaches_a_plugin() {
    let Some(c) = c_plugins() else { return };
    let env = Env::host();
    install(&plugin_dir(&env), &c.good, "cplugin.so");
    // A plugin may not even claim one letter; `c:/x` is the local file `c`.
    env.write("c", "drive\n");
    env.write("chello", "a file, not a scheme\n");
    env.run([
        "run",
        "-F",
        "c:/x",
        "-F",
        "./chello:/y",
        "--",
        "cat",
        "/x",
        "/y",
    ])
    .success()
    .stdout("drive\na file, not a scheme\n");
    env.run(["run", "-F", "C:\\x:/app", "--", "true"])
        .code(1)
        .stderr_contains("invalid file spec 'C:\\x:/app': unknown field '\\x'");
}

// ---------------------------------------------------------------- broken plugins

/// Other runs in the same env keep working: plain, with a file, with a good plugin.
#[track_caller]
fn other_runs_still_work(env: &Env) {
    env.run(["run", "--", "echo", "ok"])
        .success()
        .stdout("ok\n");
    let file = env.write("still.txt", "still\n");
    let spec = format!("{}:/still.txt", file.display());
    env.run(["run", "-F", &spec, "--", "cat", "/still.txt"])
        .success()
        .stdout("still\n");
    env.run(["-o", "junit", "run", "--", "true"])
        .success()
        .stdout_contains("failures=\"0\" errors=\"0\"");
}

#[test]
fn a_plugin_for_another_abi_version_is_refused_by_name() {
    let Some(c) = c_plugins() else { return };
    let env = Env::host();
    let dir = plugin_dir(&env);
    install(&dir, &built().junit, "junit.so");
    let bad = install(&dir, &c.wrong_abi, "cplugin.so");
    let reason = format!(
        "plugin '{}' was built for plugin ABI v99; this contree loads v1",
        bad.display()
    );
    // Asking for a name it would have provided says why it is not there.
    env.run(["-o", "c-upper", "run", "--", "true"])
        .code(1)
        .stderr_contains("unknown output format 'c-upper'")
        .stderr_contains(&format!("hint: not loaded: {reason}"));
    // Named with --plugin, it is an error for the run itself.
    env.run(["--plugin", bad.to_str().unwrap(), "run", "--", "true"])
        .code(1)
        .stderr_contains(&format!("[ERROR] {reason}"));
    let list = env
        .run(["-o", "json", "plugins", "list"])
        .success()
        .json_lines();
    assert!(
        list.iter()
            .any(|r| r["status"] == format!("error: {reason}").as_str()),
        "{list:?}"
    );
    other_runs_still_work(&env);
}

#[test]
fn a_plugin_that_panics_is_reported_and_contree_survives() {
    let env = Env::host();
    let dir = plugin_dir(&env);
    install(&dir, &built().junit, "junit.so");
    install(&dir, &built().panicky, "panicky.so");
    // In a formatter: the run happens, the report is the panic message (with its place).
    env.run(["-o", "panicky", "run", "--", "echo", "hi"])
        .code(1)
        .stdout_empty()
        .stderr_contains(
            "panicked in formatter 'panicky' chunk: fixture formatter panics on output (at ",
        )
        .stderr_contains("[ERROR] plugin 'panicky' (");
    env.run(["-o", "panicky-new", "run", "--", "echo", "hi"])
        .code(1)
        .stderr_contains(
            "panicked in formatter 'panicky-new' new: fixture formatter panics while being created",
        );
    // A plain error is reported as the plugin's failure.
    env.run(["-o", "erring", "run", "--", "echo", "hi"])
        .code(1)
        .stdout("hi\n")
        .stderr_contains(
            "failed in formatter 'erring' finish: fixture formatter refuses to finish",
        );
    // In a resolver: nothing is spawned.
    let ops = env.all_ops().len();
    env.run(["run", "-F", "panicky:x", "--", "true"])
        .code(1)
        .stderr_contains("[ERROR] cannot resolve file spec 'panicky:x': plugin 'panicky' (")
        .stderr_contains("panicked in resolve: fixture resolver panics on 'x'");
    env.run(["run", "-F", "erring:y", "--", "true"])
        .code(1)
        .stderr_contains("failed in resolve: fixture resolver cannot resolve 'y'");
    assert_eq!(env.all_ops().len(), ops);
    other_runs_still_work(&env);
}

#[test]
fn a_library_without_the_entry_symbol_is_not_a_plugin() {
    let Some(c) = c_plugins() else { return };
    let env = Env::host();
    install(&plugin_dir(&env), &built().junit, "junit.so");
    let bad = install(&plugin_dir(&env), &c.no_entry, "noentry.so");
    env.run([
        "--plugin",
        bad.to_str().unwrap(),
        "-o",
        "junit",
        "run",
        "--",
        "true",
    ])
    .code(1)
    .stderr_contains(&format!(
        "[ERROR] plugin '{}' is not a contree plugin: it exports no `contree_plugin_v1` symbol",
        bad.display()
    ));
    other_runs_still_work(&env);
}

#[test]
fn a_file_that_is_not_a_shared_library_is_named() {
    let env = Env::host();
    install(&plugin_dir(&env), &built().junit, "junit.so");
    let bad = install(&plugin_dir(&env), &built().junk, "junk.so");
    env.run(["--plugin", bad.to_str().unwrap(), "run", "--", "true"])
        .code(1)
        .stderr_contains(&format!(
            "[ERROR] plugin '{}' cannot be loaded as a shared library: ",
            bad.display()
        ));
    let list = env
        .run(["-o", "json", "plugins", "list"])
        .success()
        .json_lines();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[1]["file"], bad.to_str().unwrap());
    assert!(
        list[1]["status"].as_str().unwrap().starts_with("error: "),
        "{list:?}"
    );
    other_runs_still_work(&env);
}

#[test]
fn two_plugins_with_one_name_are_an_error_naming_both() {
    let env = Env::host();
    let first = install(&plugin_dir(&env), &built().junit, "junit.so");
    let elsewhere = env.work().join("more-plugins");
    let second = install(&elsewhere, &built().junit, "junit-copy.so");
    let with_path = |args: &[&str]| {
        env.cmd(args)
            .env("CONTREE_PLUGIN_PATH", &elsewhere)
            .output()
    };
    // The path's copy is found before the data dir's.
    with_path(&["-o", "junit", "run", "--", "true"])
        .code(1)
        .stderr_contains(&format!(
            "[ERROR] output format 'junit' is provided by two plugins: '{}' and '{}'",
            second.display(),
            first.display()
        ));
    let list = with_path(&["-o", "json", "plugins", "list"])
        .success()
        .json_lines();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["found_by"], "CONTREE_PLUGIN_PATH");
    assert_eq!(list[1]["found_by"], "data dir");
    assert_eq!(
        list[0]["status"],
        format!(
            "clash: output format 'junit' also provided by '{}'",
            first.display()
        )
    );
    // Runs that do not ask for the name are unaffected.
    with_path(&["run", "--", "echo", "ok"])
        .success()
        .stdout("ok\n");
    // Schemes clash the same way.
    if let Some(c) = c_plugins() {
        install(&plugin_dir(&env), &c.good, "c1.so");
        install(&elsewhere, &c.good, "c2.so");
        with_path(&["run", "-F", "chello:x", "--", "true"])
            .code(1)
            .stderr_contains("file scheme 'chello:' is provided by two plugins: '");
    }
}

// ---------------------------------------------------------------- discovery

#[test]
fn plugins_are_found_by_flag_path_config_and_data_dir() {
    let env = Env::host();
    let b = built();
    let flag = install(&env.work().join("flag"), &b.junit, "junit.so");
    let from_env = install(&env.work().join("env"), &b.git, "git.so");
    let from_config = install(&env.work().join("cfg"), &b.panicky, "panicky.so");
    // With $CONTREE_HOME, the config file lives there too; relative paths are relative to it.
    std::fs::write(
        env.home().join("config.toml"),
        format!(
            "[plugins]\npath = [\"{}\"]\n",
            env.work().join("cfg").display()
        ),
    )
    .expect("write config.toml");
    env.run(["plugins", "list"])
        .success()
        .stdout_contains("panicky");
    let list = env
        .cmd([
            "--plugin",
            flag.to_str().unwrap(),
            "-o",
            "json",
            "plugins",
            "list",
        ])
        .env("CONTREE_PLUGIN_PATH", env.work().join("env"))
        .output()
        .success()
        .json_lines();
    let seen: Vec<(&str, &str)> = list
        .iter()
        .map(|r| (r["file"].as_str().unwrap(), r["found_by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            (flag.to_str().unwrap(), "--plugin"),
            (from_env.to_str().unwrap(), "CONTREE_PLUGIN_PATH"),
            (from_config.to_str().unwrap(), "config"),
        ]
    );
    // --plugin works after the subcommand too.
    env.run([
        "-o",
        "junit",
        "run",
        "--plugin",
        flag.to_str().unwrap(),
        "--",
        "true",
    ])
    .success()
    .stdout_contains("<testsuites");
}

#[test]
fn a_broken_config_file_is_listed_and_breaks_no_plain_run() {
    let env = Env::host();
    std::fs::write(env.home().join("config.toml"), "[plugins\n").expect("write config.toml");
    let list = env.run(["-o", "json", "plugins", "list"]).success().json();
    assert!(
        list["status"].as_str().unwrap().starts_with(&format!(
            "error: config file '{}': ",
            env.home().join("config.toml").display()
        )),
        "{list}"
    );
    env.run(["run", "--", "echo", "ok"])
        .success()
        .stdout("ok\n");
}

#[test]
fn no_plugins_lists_nothing_and_says_where_it_looked() {
    let env = Env::new();
    env.run(["plugins", "list"])
        .success()
        .stdout_empty()
        .stderr(&format!(
            "[INFO] No plugins found (looked in: {})\n",
            env.home().join("plugins").display()
        ));
}
