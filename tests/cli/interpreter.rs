//! Shebang mode: a script starting with `#!/usr/bin/env -S contree run -I` is executed by the
//! kernel like any program, and its body runs inside the session's sandbox.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness::{Cmd, Env, CONTREE};

const SHEBANG: &str = "#!/usr/bin/env -S contree run -I";

/// Writes an executable script into `<scratch>/bin`.
fn script(env: &Env, name: &str, content: &str) -> PathBuf {
    let path = env.write(&format!("bin/{name}"), content);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod +x");
    path
}

/// The script's dir first on PATH, then the directory of the contree binary, then the rest.
fn with_path(env: &Env, cmd: Cmd) -> Cmd {
    let contree_dir = Path::new(CONTREE).parent().expect("binary dir");
    let mut dirs = vec![env.work().join("bin"), contree_dir.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    cmd.env("PATH", std::env::join_paths(dirs).expect("join PATH"))
}

/// Runs a script by name through PATH, as a user would type it.
fn exec(env: &Env, name: &str, args: &[&str]) -> Cmd {
    let mut cmd = with_path(env, env.program(name));
    for arg in args {
        cmd = cmd.arg(arg);
    }
    cmd
}

#[test]
fn a_script_runs_inside_the_sandbox_with_its_arguments() {
    let env = Env::host();
    script(
        &env,
        "greet",
        &format!(
            "{SHEBANG}\n\
             echo \"argc=$#\"\n\
             for a in \"$@\"; do echo \"arg=[$a]\"; done\n\
             hostname\n\
             echo made-by-script > /from-script\n"
        ),
    );
    exec(&env, "greet", &["a1", "b 2", "--flag"])
        .output()
        .success()
        .stdout("argc=3\narg=[a1]\narg=[b 2]\narg=[--flag]\nlinuxkit\n");
    // It was a real run: the session moved to its snapshot, and the host is untouched.
    assert!(!Path::new("/from-script").exists());
    env.run(["run", "--", "cat", "/from-script"])
        .success()
        .stdout("made-by-script\n");
}

#[test]
fn a_script_without_arguments_sees_none() {
    let env = Env::host();
    script(&env, "count", &format!("{SHEBANG}\necho \"argc=$#\"\n"));
    exec(&env, "count", &[])
        .output()
        .success()
        .stdout("argc=0\n");
}

#[test]
fn a_crlf_script_runs_as_if_it_had_lf_endings() {
    let env = Env::host();
    script(
        &env,
        "crlf",
        &format!("{SHEBANG}\r\necho hi\r\necho \"n=$#\"\r\nprintf '%s' \"$1\" | od -An -c\r\n"),
    );
    let out = exec(&env, "crlf", &["x"]).output().success();
    let text = out.stdout_text();
    assert!(!text.contains('\r'), "a CR survived: {text:?}");
    assert!(text.starts_with("hi\nn=1\n"), "{text:?}");
    assert_eq!(text.lines().nth(2).map(str::trim), Some("x"), "{text:?}");
}

#[test]
fn the_scripts_exit_code_is_the_callers() {
    let env = Env::host();
    script(&env, "fails", &format!("{SHEBANG}\necho partial\nexit 7\n"));
    exec(&env, "fails", &[])
        .output()
        .code(7)
        .stdout("partial\n");
}

#[test]
fn piped_input_does_not_replace_the_script_body() {
    let env = Env::host();
    script(&env, "body", &format!("{SHEBANG}\necho from-body\n"));
    exec(&env, "body", &[])
        .stdin("echo INJECTED\n")
        .output()
        .success()
        .stdout("from-body\n");
}

#[test]
fn run_flags_in_the_shebang_line_apply() {
    let env = Env::host();
    script(
        &env,
        "flags",
        "#!/usr/bin/env -S contree run -D -H scripted -I\nhostname\ntouch /disposable-marker\n",
    );
    exec(&env, "flags", &[])
        .output()
        .success()
        .stdout("scripted\n");
    env.run(["run", "--", "test", "-e", "/disposable-marker"])
        .code(1);
}

#[test]
fn the_first_line_is_dropped_even_without_a_shebang() {
    let env = Env::host();
    let path = env.write("plain.sh", "echo first\necho second\n");
    env.run(["run", "-I", path.to_str().unwrap()])
        .success()
        .stdout("second\n");
}

#[test]
fn without_interpreter_mode_a_local_script_is_just_a_command_name() {
    let env = Env::host();
    let path = script(&env, "local", &format!("{SHEBANG}\necho hi\n"));
    env.run(["run", path.to_str().unwrap()])
        .code(127)
        .stderr_contains("No such file or directory");
}

#[test]
fn a_missing_script_is_an_error_naming_it() {
    let env = Env::host();
    env.run(["run", "-I", "nosuch.sh"])
        .code(1)
        .stdout_empty()
        .stderr_contains("[ERROR]")
        .stderr_contains("nosuch.sh");
    assert_eq!(env.all_ops(), Vec::<String>::new());
}
