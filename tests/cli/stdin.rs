//! Piped stdin reaches the command byte for byte, whatever its size or content; an empty or
//! closed stdin is EOF; a command that ignores its input does not hang the run.

use std::io::Write;
use std::time::Duration;

use crate::harness::{sha256_hex, Env};

#[test]
fn piped_text_reaches_the_command() {
    let env = Env::host();
    env.cmd(["run", "--", "cat"])
        .stdin("hello\nworld\n")
        .output()
        .success()
        .stdout("hello\nworld\n");
}

#[test]
fn binary_stdin_with_nul_bytes_is_exact() {
    let env = Env::host();
    let input: Vec<u8> = (0..4096u32)
        .map(|i| (i % 256) as u8)
        .chain(*b"\0\0end")
        .collect();
    env.cmd(["run", "--", "sha256sum"])
        .stdin(input.clone())
        .output()
        .success()
        .stdout(&format!("{}  -\n", sha256_hex(&input)));
}

#[test]
fn twenty_megabytes_are_piped_exactly() {
    let env = Env::host();
    let input: Vec<u8> = (0..20_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let expected = format!("{}  -\n20000000\n", sha256_hex(&input));
    env.cmd([
        "run",
        "-D",
        "--",
        "sh",
        "-c",
        "tee /tmp/in | sha256sum; wc -c < /tmp/in",
    ])
    .stdin(input)
    .output()
    .success()
    .stdout(&expected);
}

#[test]
fn no_stdin_is_eof() {
    let env = Env::host();
    env.run(["run", "--", "cat"]).success().stdout_empty();
    env.cmd(["run", "--", "wc", "-c"])
        .stdin("")
        .output()
        .success()
        .stdout("0\n");
}

#[test]
fn a_command_that_ignores_stdin_does_not_hang() {
    let env = Env::host();
    let input = vec![b'x'; 8 << 20];
    env.cmd(["run", "--", "echo", "ignored"])
        .stdin(input)
        .output()
        .success()
        .stdout("ignored\n");
}

#[test]
fn stdin_written_after_the_command_started_still_arrives() {
    let env = Env::host();
    let mut running = env
        .cmd([
            "run",
            "--",
            "sh",
            "-c",
            "read a; echo \"got $a\"; read b; echo \"got $b\"",
        ])
        .spawn_with_stdin_pipe();
    let mut pipe = running.child.stdin.take().expect("stdin pipe");
    pipe.write_all(b"first\n").unwrap();
    pipe.flush().unwrap();
    // A slow producer: the second line is written only once the command has answered the
    // first, so the run was under way long before.
    running.wait_for_stdout("got first\n", Duration::from_secs(20));
    pipe.write_all(b"second\n").unwrap();
    drop(pipe);
    running.wait().success().stdout("got first\ngot second\n");
}
