//! Shell completions and the man page come from the clap definitions; `images
//! --since/--until` take the same time forms as `ps`.

use crate::harness::Env;

#[test]
fn completions_cover_every_shell_and_the_session_subcommands() {
    let env = Env::new();
    for (shell, marker) in [
        ("bash", "complete -F _contree"),
        ("zsh", "#compdef contree"),
        ("fish", "complete -c contree"),
    ] {
        let out = env.run(["completions", shell]).success().stdout_text();
        assert!(out.contains(marker), "{shell}: {out}");
        for word in [
            "rollback", "checkout", "gc", "shell", "agent", "skill", "manpage",
        ] {
            assert!(out.contains(word), "{shell} completes {word}");
        }
    }
    env.run(["completions", "tcsh"]).code(2);
}

#[test]
fn the_manpage_is_roff_naming_the_commands() {
    let env = Env::new();
    let page = env.run(["manpage"]).success().stdout_text();
    assert!(page.contains(".TH contree 1"), "{page}");
    assert!(page.contains("session"), "{page}");
    // A reader that stops early is not an error.
    env.program("sh")
        .arg("-c")
        .arg(format!(
            "'{}' manpage | head -c 10",
            crate::harness::CONTREE
        ))
        .output()
        .success()
        .stderr_empty();
}

#[test]
fn images_since_and_until_filter_by_creation_time() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo x > /tmp/x"])
        .success();
    let recent = env
        .run(["-o", "json", "images", "-a", "--since", "1h"])
        .success()
        .json_lines();
    assert_eq!(recent.len(), 2, "host and the run's snapshot");
    env.run(["-o", "json", "images", "-a", "--until", "2000-01-01"])
        .success()
        .stdout_empty();
    env.run(["-o", "json", "images", "-a", "--since", "+1d"])
        .success()
        .stdout_empty();
    env.run(["images", "--since", "soon"])
        .code(1)
        .stderr_contains("invalid time 'soon'");
}
