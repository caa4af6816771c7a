//! `contree skill`: the agent skill installed into a scratch HOME (`claude:~`) and a path,
//! listed, upgraded only over unchanged files unless forced, and removed.

use crate::harness::Env;

#[test]
fn skill_install_list_upgrade_remove() {
    let env = Env::new();
    let home = env.work();
    let claude = home.join(".claude/skills/contree");
    let path = home.join("elsewhere/skills/contree");
    let path_arg = path.to_str().unwrap();

    // Nothing to detect in a bare home: said, with what to type.
    env.run(["skill", "install"])
        .code(1)
        .stderr_contains("no agent home found")
        .stderr_contains("claude:~");

    env.run(["skill", "install", "claude:~", path_arg])
        .success()
        .stdout_contains("install  contree  claude  ~/.claude/skills/contree")
        .stderr_contains("Installed contree (claude) to ~/.claude/skills/contree");
    let skill = std::fs::read_to_string(claude.join("SKILL.md")).unwrap();
    assert!(
        skill.starts_with("---\nname: contree\ndescription: "),
        "{skill}"
    );
    assert!(path.join("reference").is_dir());

    let lines = env
        .run(["-o", "json", "skill", "list"])
        .success()
        .json_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines
        .iter()
        .all(|l| l["outdated"] == false && l["exists"] == true));

    // A changed file is not overwritten without -f, by install or upgrade.
    std::fs::write(claude.join("SKILL.md"), "my notes\n").unwrap();
    env.run(["skill", "upgrade"])
        .code(1)
        .stderr_contains("changed since contree installed it: SKILL.md")
        .stderr_contains("-f");
    assert_eq!(
        std::fs::read_to_string(claude.join("SKILL.md")).unwrap(),
        "my notes\n"
    );
    env.run(["skill", "install", "claude:~"]).code(1);
    env.run(["skill", "u", "-f", "claude:~"]).success();
    assert_eq!(
        std::fs::read_to_string(claude.join("SKILL.md")).unwrap(),
        skill
    );

    // Detection finds the home now.
    env.run(["skill", "install"])
        .success()
        .stderr_contains("Detected agent homes: ~/.claude/skills/contree (claude)");

    env.run(["skill", "rm", path_arg]).success();
    assert!(!path.exists());
    env.run(["skill", "remove"]).success();
    assert!(!claude.exists());
    env.run(["skill", "list"])
        .success()
        .stderr_contains("No skill installs remembered");
}
