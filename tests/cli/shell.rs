//! `contree shell`: lines typed at a terminal or piped in run as `run -s` or as `contree`
//! commands, with built-ins; the history outlives a shell.

use crate::harness::Env;
use std::io::Write;
use std::time::Duration;

const PROMPT: &str = "contree> ";
/// What the line editor writes once as it starts reading a line: bracketed paste on.
const NEW_LINE: &str = "\x1b[?2004h";

/// Types each line after the prompt it answers (the line editor drops what is typed
/// ahead of its prompt, as a terminal user never does), then waits for the exit.
fn type_lines(env: &Env, lines: &[&str]) -> Option<crate::harness::Output> {
    let mut shell = env.on_terminal(["shell"])?.spawn_with_stdin_pipe();
    let mut input = shell.child.stdin.take().expect("stdin pipe");
    for (i, line) in lines.iter().enumerate() {
        shell.wait_for_stdout_times(PROMPT, i + 1, Duration::from_secs(60));
        input.write_all(format!("{line}\r").as_bytes()).unwrap();
        input.flush().unwrap();
    }
    let out = shell.wait();
    drop(input);
    Some(out)
}

#[test]
fn a_terminal_shell_runs_lines_commands_and_builtins() {
    let env = Env::host();
    let Some(out) = type_lines(
        &env,
        &[
            "echo made > /tmp/note && cat /tmp/note",
            "contree cat /tmp/note",
            "cd /tmp",
            "pwd",
            "exit 3",
        ],
    ) else {
        return;
    };
    let out = out.code(3);
    let text = out.stdout_text();
    assert_eq!(text.matches("made\r\n").count(), 2, "{text}");
    assert!(text.contains("/tmp\r\n"), "{text}");
    // The run was kept: the session moved, and its cd is the shell's.
    env.run(["cat", "/tmp/note"]).success().stdout("made\n");
    env.run(["cd"]).success().stdout("/tmp\n");
}

#[test]
fn piped_lines_run_in_order_and_commands_get_no_stdin() {
    let env = Env::host();
    let out = env
        .cmd(["shell"])
        .stdin(
            "echo one > /tmp/x\n\
             cat\n\
             contree -o json cat /tmp/x\n\
             cd /nowhere\n\
             cd /tmp\n\
             pwd\n\
             contree shell\n",
        )
        .output();
    // The exit code is the last line's (a refused nested shell: 1).
    let out = out
        .code(1)
        .stderr_contains("cd: /nowhere: no such directory")
        .stderr_contains("already running");
    assert_eq!(out.stdout_text(), "one\n/tmp\n");
    env.cmd(["shell"])
        .stdin("false\n")
        .output()
        .code(1)
        .stdout_empty();
    env.cmd(["sh"])
        .stdin("true\nexit 7\ntrue\n")
        .output()
        .code(7);
}

#[test]
fn the_history_outlives_the_shell() {
    let env = Env::host();
    env.cmd(["shell"])
        .stdin("echo first\ncontree ls /\n")
        .output()
        .success();
    let out = env.cmd(["shell"]).stdin("history\n").output().success();
    let text = out.stdout_text();
    assert!(
        text.contains("1  echo first\n") && text.contains("2  contree ls /\n"),
        "{text}"
    );
    let out = env.cmd(["shell"]).stdin("history 1\n").output().success();
    assert_eq!(out.stdout_text().trim(), "4  history 1");
}

#[test]
fn shell_lines_that_cannot_be_read_are_usage_errors() {
    let env = Env::host();
    env.cmd(["shell"])
        .stdin("contree ls 'open\n")
        .output()
        .code(2)
        .stderr_contains("unclosed ' quote");
    env.cmd(["shell"])
        .stdin("contree run --bogus -- true\n")
        .output()
        .code(2)
        .stderr_contains("--bogus");
}

#[test]
fn on_a_terminal_tab_completes_and_ctrl_c_cancels_the_run_not_the_shell() {
    let env = Env::host();
    env.run(["tag", "mytag"]).success();
    let Some(cmd) = env.on_terminal(["shell"]) else {
        return;
    };
    let mut shell = cmd.spawn_with_stdin_pipe();
    let mut input = shell.child.stdin.take().expect("stdin pipe");
    let mut send = |bytes: &[u8]| {
        input.write_all(bytes).unwrap();
        input.flush().unwrap();
    };
    shell.wait_for_stdout_times(PROMPT, 1, Duration::from_secs(60));
    // `contree ta<Tab>` → `contree tag `, then a tag from the store.
    send(b"contree ta\t");
    shell.wait_for_stdout("contree tag ", Duration::from_secs(30));
    send(b"my\t");
    shell.wait_for_stdout("mytag", Duration::from_secs(30));
    // Ctrl-C drops the line being typed. (Each prompt turns bracketed paste on once; the
    // prompt's text itself comes again with every redraw.)
    send(b"\x03");
    shell.wait_for_stdout_times(NEW_LINE, 2, Duration::from_secs(30));
    send(b"echo started; sleep 60\r");
    shell.wait_for_stdout("started", Duration::from_secs(60));
    send(b"\x03");
    shell.wait_for_stdout_times(NEW_LINE, 3, Duration::from_secs(30));
    send(b"exit\r");
    let out = shell.wait();
    // Ctrl-C on a run exits as `contree run` does after an interrupt (not 0).
    assert!(!out.status.success(), "{}", out.stdout_text());
}
