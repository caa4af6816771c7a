//! `contree agent [TOPIC]` (alias `man`): the built-in manual for coding agents. The topics
//! are texts in `texts/agent/`, embedded in the binary; `commands` is generated from the
//! clap definitions so it never drifts from the real command line.

use crate::error::CommandResult;
use crate::format::to_stdout;
use clap::CommandFactory;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("unknown manual topic '{topic}'; the topics are: {known}")]
    UnknownTopic { topic: String, known: String },
}

struct Topic {
    name: &'static str,
    /// Other names it answers to (the official client's long names among them).
    aliases: &'static [&'static str],
    about: &'static str,
    /// `None`: generated (`commands`).
    text: Option<&'static str>,
}

/// A topic whose text is `texts/agent/NAME.md`.
macro_rules! topic {
    ($name:literal, [$($alias:literal),*], $about:literal) => {
        Topic {
            name: $name,
            aliases: &[$($alias),*],
            about: $about,
            text: Some(include_str!(concat!("texts/agent/", $name, ".md"))),
        }
    };
}

const TOPICS: &[Topic] = &[
    topic!(
        "core",
        ["core_workflow", "workflow"],
        "the loop: open a session, run, look, roll back, tag"
    ),
    topic!(
        "sessions",
        ["session", "branches"],
        "sessions, history, branches, rollback"
    ),
    topic!(
        "execution",
        ["execution_modes", "run"],
        "run, run -s, -D, -d, exec, timeouts"
    ),
    topic!(
        "files",
        ["files_and_directories"],
        "attaching files; ls, cat, cp, grep"
    ),
    topic!(
        "images",
        ["images_and_tags", "tags"],
        "listing, importing, tagging, removing images"
    ),
    topic!(
        "output",
        ["output_formats", "formats"],
        "-o json and friends, messages, exit codes"
    ),
    topic!(
        "profiles",
        ["auth", "remote"],
        "using a ConTree API instead of this machine"
    ),
    topic!(
        "safety",
        ["command_safety", "command"],
        "which commands read, which change the session, which change shared state"
    ),
    topic!(
        "additions",
        ["local", "extensions"],
        "local engine, limits, exec, grep, hooks, plugins, serve, shell, skill"
    ),
    Topic {
        name: "commands",
        aliases: &["all_commands"],
        about: "every command and subcommand, from the command line's definitions",
        text: None,
    },
];

/// Every name `agent` takes, canonical names first (for completion).
pub fn topic_names() -> Vec<String> {
    let mut names = vec!["all".to_string(), "topics".to_string()];
    names.extend(TOPICS.iter().map(|t| t.name.to_string()));
    names
}

pub fn agent(topic: Option<&str>) -> CommandResult<i32> {
    let text = manual(topic.unwrap_or("all"))?;
    to_stdout(|out| out.write_all(text.as_bytes()))?;
    Ok(0)
}

/// The text of a topic (`all`: every one; `topics`: their list). Hyphens and underscores
/// are the same in a name.
pub fn manual(topic: &str) -> Result<String, AgentError> {
    let wanted = topic.to_ascii_lowercase().replace('-', "_");
    match wanted.as_str() {
        "all" => {
            let texts: Vec<String> = TOPICS.iter().map(text_of).collect();
            return Ok(texts.join("\n"));
        }
        "topics" => return Ok(topic_list()),
        _ => {}
    }
    TOPICS
        .iter()
        .find(|t| t.name == wanted || t.aliases.contains(&wanted.as_str()))
        .map(text_of)
        .ok_or_else(|| AgentError::UnknownTopic {
            topic: topic.to_string(),
            known: topic_names().join(", "),
        })
}

fn topic_list() -> String {
    let mut out = String::from("Topics of `contree agent TOPIC` (default: all):\n\n");
    for t in TOPICS {
        out.push_str(&format!("  {:<11} {}\n", t.name, t.about));
    }
    out
}

fn text_of(topic: &Topic) -> String {
    match topic.text {
        Some(text) => text.to_string(),
        None => commands(),
    }
}

/// Every visible command with its aliases and one-line help, subcommands indented.
fn commands() -> String {
    fn walk(cmd: &clap::Command, path: &str, out: &mut String) {
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            let name = format!("{path} {}", sub.get_name());
            let aliases: Vec<&str> = sub.get_visible_aliases().collect();
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            let about = about.lines().next().unwrap_or_default();
            out.push_str(&format!("- `{}`", name.trim()));
            if !aliases.is_empty() {
                out.push_str(&format!(" ({})", aliases.join(", ")));
            }
            out.push_str(&format!(": {about}\n"));
            walk(sub, &name, out);
        }
    }
    let mut out = String::from(
        "# Commands\n\nEvery command, as `contree COMMAND --help` describes it in full:\n\n",
    );
    walk(&super::args::Cli::command(), "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_answers_to_its_names() {
        for t in TOPICS {
            let text = manual(t.name).unwrap();
            assert!(text.starts_with("# "), "{}: {text}", t.name);
            for alias in t.aliases {
                assert_eq!(manual(alias).unwrap(), text, "{alias}");
            }
        }
        assert_eq!(
            manual("Execution-Modes").unwrap(),
            manual("execution").unwrap()
        );
        let all = manual("all").unwrap();
        assert!(TOPICS.iter().all(|t| all.contains(&text_of(t))));
    }

    #[test]
    fn the_command_list_comes_from_the_definitions() {
        let text = manual("commands").unwrap();
        assert!(text.contains("- `run` (r): "), "{text}");
        assert!(text.contains("- `session rollback` (rb): "), "{text}");
        assert!(!text.contains("__supervise"));
    }

    #[test]
    fn an_unknown_topic_lists_the_known_ones() {
        let e = manual("nope").unwrap_err().to_string();
        assert!(
            e.contains("'nope'") && e.contains("sessions, execution"),
            "{e}"
        );
    }
}
