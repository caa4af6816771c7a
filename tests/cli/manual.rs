//! `contree agent [TOPIC]` (alias `man`): the manual for agents, by topic; `manpage` keeps
//! the roff page.

use crate::harness::Env;

#[test]
fn every_topic_prints_and_all_holds_them_all() {
    let env = Env::new();
    let all = env.run(["agent"]).success().stdout_text();
    for (topic, heading) in [
        ("core", "# Core workflow"),
        ("sessions", "# Sessions and branches"),
        ("execution", "# Execution modes"),
        ("files", "# Files and directories"),
        ("images", "# Images and tags"),
        ("output", "# Output formats"),
        ("profiles", "# Profiles"),
        ("safety", "# Command safety"),
        ("additions", "# What this implementation adds"),
        ("commands", "# Commands"),
    ] {
        let text = env.run(["agent", topic]).success().stdout_text();
        assert!(text.starts_with(heading), "{topic}: {text}");
        assert!(all.contains(heading), "all lacks {topic}");
    }
    // The official client's long names and `man` work too.
    let long = env.run(["man", "execution_modes"]).success().stdout_text();
    assert!(long.starts_with("# Execution modes"));
    env.run(["agent", "topics"])
        .success()
        .stdout_contains("safety");
}

#[test]
fn an_unknown_topic_is_refused_with_the_list() {
    Env::new()
        .run(["agent", "gardening"])
        .code(2)
        .stdout_empty()
        .stderr_contains("unknown manual topic 'gardening'")
        .stderr_contains("core, sessions");
}
