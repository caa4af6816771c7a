//! `contree run`: how the words after `run` become the command, the flags that shape the
//! instance (cwd, env, hostname), exit codes, raw output and the `-o json` record.

use crate::harness::Env;

#[test]
fn echo_prints_its_arguments_and_nothing_else() {
    let env = Env::host();
    env.run(["run", "--", "echo", "hello", "world"])
        .success()
        .stdout("hello world\n")
        .stderr_empty();
}

#[test]
fn a_command_first_needs_no_double_dash() {
    let env = Env::host();
    env.run(["run", "ls", "-d", "/usr"])
        .success()
        .stdout("/usr\n");
}

#[test]
fn words_after_the_command_that_look_like_flags_belong_to_it() {
    let env = Env::host();
    // `-e X=1` goes to echo; had it been taken as an env flag echo would print an empty line.
    env.run(["run", "echo", "-e", "X=1"])
        .success()
        .stdout("X=1\n");
    env.run(["run", "--", "sh", "-c", "echo \"${X-unset}\"", "-e", "X=1"])
        .success()
        .stdout("unset\n");
}

#[test]
fn only_one_leading_double_dash_is_stripped() {
    let env = Env::host();
    let out = env
        .run(["run", "--", "--", "echo", "x"])
        .code(127)
        .stdout_empty();
    let op = env.last_op();
    out.stderr(&format!(
        "[CRITICAL] Operation {op} ended with status FAILED: spawn failed: exec --: No such file or directory\n"
    ));
}

#[test]
fn shell_mode_runs_a_single_word_as_an_expression() {
    let env = Env::host();
    env.run(["run", "-s", "--", "echo 1 ; echo 2"])
        .success()
        .stdout("1\n2\n");
}

#[test]
fn shell_mode_quotes_each_of_several_words() {
    let env = Env::host();
    env.run(["run", "-s", "--", "printf", "%s|", "a b", "c$d", "it's", ""])
        .success()
        .stdout("a b|c$d|it's||");
    // A lone `;` among several words is an argument, not a separator.
    env.run(["run", "-s", "--", "echo", "1", ";", "echo", "2"])
        .success()
        .stdout("1 ; echo 2\n");
    env.run(["run", "--shell", "--", "sh", "-c", "echo 'hello world'"])
        .success()
        .stdout("hello world\n");
}

#[test]
fn direct_mode_passes_arguments_verbatim() {
    let env = Env::host();
    env.run(["run", "--", "printf", "[%s]", "a b", "'q'", "$HOME", "*"])
        .success()
        .stdout("[a b]['q'][$HOME][*]");
}

#[test]
fn the_working_directory_defaults_to_root() {
    let env = Env::host();
    env.run(["run", "--", "pwd"]).success().stdout("/\n");
}

#[test]
fn cwd_flag_is_created_when_missing() {
    let env = Env::host();
    env.run(["run", "-C", "/new/deep/dir", "--", "pwd"])
        .success()
        .stdout("/new/deep/dir\n");
    env.run(["run", "--cwd", "/usr", "--", "pwd"])
        .success()
        .stdout("/usr\n");
}

#[test]
fn a_relative_cwd_is_refused_before_spawning() {
    let env = Env::host();
    env.run(["run", "-C", "rel", "--", "pwd"])
        .code(1)
        .stdout_empty()
        .stderr("[ERROR] cwd 'rel' must be an absolute path\n");
    assert_eq!(env.all_ops(), Vec::<String>::new());
}

#[test]
fn env_flags_set_one_variable_each() {
    let env = Env::host();
    env.run([
        "run",
        "-e",
        "FOO=bar",
        "-e",
        "EMPTY=",
        "--env",
        "EQ=a=b",
        "--",
        "sh",
        "-c",
        r#"printf '%s|%s|%s' "$FOO" "${EMPTY-unset}" "$EQ""#,
    ])
    .success()
    .stdout("bar||a=b");
}

#[test]
fn the_host_environment_does_not_leak_in() {
    let env = Env::host();
    env.cmd(["run", "--", "sh", "-c", "echo \"${LEAKY-absent}\""])
        .env("LEAKY", "from-the-host")
        .output()
        .success()
        .stdout("absent\n");
}

#[test]
fn hostname_is_linuxkit_unless_given() {
    let env = Env::host();
    env.run(["run", "--", "hostname"])
        .success()
        .stdout("linuxkit\n");
    env.run(["run", "-H", "box", "--", "hostname"])
        .success()
        .stdout("box\n");
    env.run([
        "run",
        "--hostname",
        "other",
        "--",
        "cat",
        "/proc/sys/kernel/hostname",
    ])
    .success()
    .stdout("other\n");
}

#[test]
fn exit_code_is_the_commands() {
    let env = Env::host();
    env.run(["run", "--", "true"]).code(0);
    env.run(["run", "--", "false"]).code(1).stderr_empty();
    env.run(["run", "--", "sh", "-c", "exit 42"])
        .code(42)
        .stderr_empty();
}

#[test]
fn a_command_killed_by_a_signal_exits_255() {
    let env = Env::host();
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "echo before; kill -9 $$; echo after",
    ])
    .code(255)
    .stdout("before\n");
}

#[test]
fn a_missing_command_exits_127_with_a_critical_line() {
    let env = Env::host();
    let out = env
        .run(["run", "--", "nosuchcmd", "arg"])
        .code(127)
        .stdout_empty();
    let op = env.last_op();
    out.stderr(&format!(
        "[CRITICAL] Operation {op} ended with status FAILED: spawn failed: exec nosuchcmd: No such file or directory\n"
    ));
    assert_eq!(env.op_status(&op), "FAILED");
}

#[test]
fn run_with_no_command_is_a_usage_error_that_spawns_nothing() {
    // A deliberate divergence from the official client, which spawns an empty command.
    let env = Env::host();
    env.run(["run"])
        .code(2)
        .stdout_empty()
        .stderr_contains("[ERROR] nothing to run: no command was given")
        .stderr_contains("hint: ");
    env.run(["run", "--"]).code(2);
    assert_eq!(env.all_ops(), Vec::<String>::new());
}

#[test]
fn stdout_and_stderr_go_to_their_own_streams() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo out; echo err >&2"])
        .success()
        .stdout("out\n")
        .stderr("err\n");
}

#[test]
fn output_is_raw_bytes_without_an_added_newline() {
    let env = Env::host();
    env.run(["run", "--", "printf", "no newline"])
        .success()
        .stdout("no newline");
    // Escape sequences are passed through untouched.
    env.run(["run", "--", "printf", r"\033[2Jclear\033[1;32mgreen\033[0m"])
        .success()
        .stdout("\x1b[2Jclear\x1b[1;32mgreen\x1b[0m");
}

#[test]
fn binary_and_non_utf8_output_arrives_byte_exact() {
    let env = Env::host();
    env.run(["run", "--", "printf", r"\377\376\000\001abc\200"])
        .success()
        .stdout_bytes(b"\xff\xfe\x00\x01abc\x80");
    let out = env
        .run(["run", "--", "sh", "-c", r"printf '\377\000x' >&2"])
        .success()
        .stdout_empty();
    assert_eq!(out.stderr, b"\xff\x00x");
}

#[test]
fn every_byte_value_survives_the_round_trip() {
    let env = Env::host();
    let all: Vec<u8> = (0..=255u8).collect();
    let script = "i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done";
    env.run(["run", "--", "sh", "-c", script])
        .success()
        .stdout_bytes(&all);
}

/// The record's keys, in order: the operation, then the run's summary, `error` last.
const RUN_RECORD_KEYS: &[&str] = &[
    "uuid",
    "kind",
    "status",
    "duration",
    "image_size",
    "result_image_uuid",
    "metadata",
    "result",
    "exit_code",
    "image",
    "tag",
    "stdout",
    "stderr",
    "backend",
    "error",
];

#[test]
fn json_format_prints_one_record_and_nothing_live() {
    let env = Env::host();
    let out = env
        .run([
            "-o",
            "json",
            "run",
            "--",
            "sh",
            "-c",
            "echo hi; echo err >&2",
        ])
        .success()
        .stderr_empty();
    let record = out.json();
    let keys: Vec<&str> = record
        .as_object()
        .expect("record is an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, RUN_RECORD_KEYS);
    assert_eq!(record["kind"], "instance");
    assert_eq!(record["status"], "SUCCESS");
    assert_eq!(record["exit_code"], 0);
    assert_eq!(record["stdout"], "hi\n");
    assert_eq!(record["stderr"], "err\n");
    assert_eq!(record["tag"], "");
    assert_eq!(record["error"], "");
    assert_eq!(record["image"], record["result_image_uuid"]);
    assert_eq!(record["uuid"].as_str(), Some(env.last_op().as_str()));
    assert_eq!(record["metadata"]["command"], "sh");
    assert_eq!(record["metadata"]["timeout"], 120);
    assert_eq!(record["metadata"]["truncate_output_at"], 65536);
    assert_eq!(record["metadata"]["hostname"], "linuxkit");
}

#[test]
fn json_format_keeps_the_commands_exit_code() {
    let env = Env::host();
    let out = env
        .run([
            "-o",
            "json",
            "run",
            "--",
            "sh",
            "-c",
            "printf '\\033[1mX'; exit 42",
        ])
        .code(42);
    let record = out.json();
    assert_eq!(record["status"], "SUCCESS");
    assert_eq!(record["exit_code"], 42);
    assert_eq!(record["stdout"], "\u{1b}[1mX");
}

#[test]
fn json_pretty_format_prints_one_indented_record() {
    let env = Env::host();
    let out = env
        .run(["-o", "json-pretty", "run", "--", "echo", "hi"])
        .success();
    let text = out.stdout_text();
    assert!(text.starts_with("[\n  {\n"), "{text}");
    assert!(text.ends_with("}\n]\n"), "{text}");
    let records: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(records[0]["stdout"], "hi\n");
}

#[test]
fn tabular_formats_are_refused_before_spawning() {
    let env = Env::host();
    for format in ["table", "csv", "tsv"] {
        env.run(["-o", format, "run", "--", "touch", "/spawned"])
            .code(1)
            .stdout_empty()
            .stderr_contains("[ERROR]")
            .stderr_contains(format);
    }
    assert_eq!(
        env.all_ops(),
        Vec::<String>::new(),
        "nothing may be spawned"
    );
}

#[test]
fn run_alias_r_works() {
    let env = Env::host();
    env.run(["r", "--", "echo", "via alias"])
        .success()
        .stdout("via alias\n");
}

#[test]
fn plain_and_toml_print_the_runs_record() {
    let env = Env::host();
    let text = env
        .run([
            "-o",
            "toml",
            "run",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ])
        .code(3)
        .stderr_empty()
        .stdout_text();
    let doc: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let results = doc["results"].as_array().expect("[[results]]");
    assert_eq!(results.len(), 1, "{text}");
    let r = &results[0];
    assert_eq!(r["uuid"].as_str(), Some(env.last_op().as_str()));
    assert_eq!(r["exit_code"].as_integer(), Some(3));
    assert_eq!(r["stdout"].as_str(), Some("out\n"));
    assert_eq!(r["stderr"].as_str(), Some("err\n"));
    assert_eq!(r["error"].as_str(), Some(""));
    assert_eq!(r["metadata"]["command"].as_str(), Some("sh"));
    assert!(text.starts_with("[[results]]\nuuid = "), "{text}");

    let plain = env
        .run(["-o", "plain", "run", "--", "echo", "hi"])
        .success()
        .stdout_text();
    let lines: Vec<&str> = plain.lines().collect();
    assert!(lines[0].starts_with("uuid:"), "{plain}");
    let value = |key: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key}: {plain}"))
    };
    assert_eq!(value("exit_code"), "0");
    assert_eq!(value("stdout"), "hi");
    assert_eq!(value("status"), "SUCCESS");
    assert!(!plain.contains("---"), "one record: {plain}");
}
