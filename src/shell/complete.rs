//! Tab completion for the shell: the first word (built-ins, `contree`), a `contree` line's
//! subcommands and flags (walked from the same clap definitions that parse it), and the
//! values that live elsewhere (image paths, tags, branches, manual topics) through a
//! `Catalog`, so that this module never opens a store or a connection itself.

use super::{scan, Word, BUILTINS};

/// Where completion finds what is not in the command line's definitions. Each call may
/// fail silently (an empty list): completion never reports errors.
pub trait Catalog {
    /// The session's working directory inside its image.
    fn cwd(&self) -> String;
    /// The entries of a directory of the session's image: (name, is a directory).
    fn list_dir(&self, dir: &str) -> Vec<(String, bool)>;
    fn tags(&self) -> Vec<String>;
    fn branches(&self) -> Vec<String>;
    /// `contree agent`'s topics.
    fn topics(&self) -> Vec<String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// What the list shows (a directory ends with `/`).
    pub display: String,
    /// What replaces the word being completed.
    pub replacement: String,
}

impl Candidate {
    /// A whole word: chosen, it is followed by a space, as shells do.
    fn word(word: &str) -> Candidate {
        Candidate {
            display: word.to_string(),
            replacement: format!("{} ", escape(word)),
        }
    }
}

/// What a word's value is, when it is not one of the definitions' own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Paths,
    Dirs,
    Tags,
    Branches,
    Topics,
    Nothing,
}

/// The candidates for the word the cursor is in (or a new one), and where that word starts.
pub fn complete(
    line: &str,
    pos: usize,
    root: &clap::Command,
    catalog: &dyn Catalog,
) -> (usize, Vec<Candidate>) {
    let before = &line[..pos.min(line.len())];
    // Inside an unclosed quote there is nothing sensible to offer.
    let Ok(mut words) = scan(before) else {
        return (pos, Vec::new());
    };
    let partial = match words.last() {
        Some(_) if !before.ends_with(char::is_whitespace) => words.pop(),
        _ => None,
    };
    let (start, prefix) = match &partial {
        Some(Word { text, start }) => (*start, text.as_str()),
        None => (pos, ""),
    };
    let mut out = match words.first().map(|w| w.text.as_str()) {
        None => {
            let mut names: Vec<&str> = BUILTINS.to_vec();
            names.push("contree");
            let mut out = words_with(prefix, names.iter().copied());
            if prefix.contains('/') {
                out.extend(values(Source::Paths, prefix, catalog));
            }
            out
        }
        Some("contree") => contree(&words[1..], prefix, root, catalog),
        Some("cd") => values(Source::Dirs, prefix, catalog),
        Some(_) => values(Source::Paths, prefix, catalog),
    };
    out.sort_by(|a, b| a.display.cmp(&b.display));
    out.dedup();
    (start, out)
}

/// A `contree` line: walk the subcommands typed so far, then offer flags, subcommands or
/// the value the position wants.
fn contree(
    done: &[Word],
    prefix: &str,
    root: &clap::Command,
    catalog: &dyn Catalog,
) -> Vec<Candidate> {
    let mut node = root;
    let mut pending: Option<&clap::Arg> = None;
    let mut after_dashes = false;
    for word in done {
        let w = word.text.as_str();
        if pending.take().is_some() {
            continue;
        }
        if w == "--" {
            after_dashes = true;
        } else if after_dashes {
            // The command's own words (`run -- …`).
        } else if let Some(long) = w.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            pending = find_arg(node, root, |a| {
                a.get_long() == Some(name)
                    || a.get_all_aliases().is_some_and(|all| all.contains(&name))
            })
            .filter(|a| takes_value(a) && !inline);
        } else if w.len() > 1 && w.starts_with('-') {
            let last = w.chars().last().unwrap_or_default();
            pending = find_arg(node, root, |a| a.get_short() == Some(last))
                .filter(|a| takes_value(a) && w.len() == 2);
        } else if let Some(sub) = node.find_subcommand(w) {
            node = sub;
        }
    }
    if let Some(arg) = pending {
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        if !possible.is_empty() {
            return words_with(prefix, possible.iter().map(String::as_str));
        }
        return values(value_source(arg.get_id().as_str()), prefix, catalog);
    }
    if after_dashes {
        return Vec::new();
    }
    if prefix.starts_with('-') {
        let mut flags = Vec::new();
        for cmd in [node, root] {
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if std::ptr::eq(cmd, root) && !std::ptr::eq(node, root) && !arg.is_global_set() {
                    continue;
                }
                flags.extend(arg.get_long().map(|l| format!("--{l}")));
                flags.extend(arg.get_short().map(|s| format!("-{s}")));
            }
        }
        flags.push("--help".into());
        return words_with(prefix, flags.iter().map(String::as_str));
    }
    let subcommands: Vec<&str> = node
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name())
        .collect();
    let mut out = words_with(prefix, subcommands.iter().copied());
    let positional_values: Vec<String> = node
        .get_positionals()
        .flat_map(|a| a.get_possible_values())
        .map(|v| v.get_name().to_string())
        .collect();
    out.extend(words_with(
        prefix,
        positional_values.iter().map(String::as_str),
    ));
    out.extend(values(command_source(node.get_name()), prefix, catalog));
    out
}

/// What the positional words of a command are.
fn command_source(command: &str) -> Source {
    match command {
        "ls" | "cat" | "cp" | "grep" => Source::Paths,
        "cd" => Source::Dirs,
        "use" | "tag" | "rm" => Source::Tags,
        "checkout" | "branch" => Source::Branches,
        "agent" => Source::Topics,
        _ => Source::Nothing,
    }
}

/// What an option's value is, by the option's id (as in `cli/args.rs`).
fn value_source(id: &str) -> Source {
    match id {
        "use_image" => Source::Tags,
        "cwd" => Source::Dirs,
        "from" => Source::Branches,
        _ => Source::Nothing,
    }
}

fn find_arg<'a>(
    node: &'a clap::Command,
    root: &'a clap::Command,
    matches: impl Fn(&clap::Arg) -> bool,
) -> Option<&'a clap::Arg> {
    node.get_arguments()
        .find(|a| matches(a))
        .or_else(|| root.get_arguments().find(|a| matches(a)))
}

fn takes_value(arg: &clap::Arg) -> bool {
    arg.get_action().takes_values()
}

fn values(source: Source, prefix: &str, catalog: &dyn Catalog) -> Vec<Candidate> {
    match source {
        Source::Paths => paths(prefix, catalog, false),
        Source::Dirs => paths(prefix, catalog, true),
        Source::Tags => words_with(prefix, catalog.tags().iter().map(String::as_str)),
        Source::Branches => words_with(prefix, catalog.branches().iter().map(String::as_str)),
        Source::Topics => words_with(prefix, catalog.topics().iter().map(String::as_str)),
        Source::Nothing => Vec::new(),
    }
}

/// Entries of the session's image below the directory part of `prefix` (relative to the
/// session's cd), completed as typed: `usr/lo` → `usr/local/`.
fn paths(prefix: &str, catalog: &dyn Catalog, dirs_only: bool) -> Vec<Candidate> {
    let (dir, name) = match prefix.rfind('/') {
        Some(i) => (&prefix[..=i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    let listed = resolve(&catalog.cwd(), if dir.is_empty() { "." } else { dir });
    catalog
        .list_dir(&listed)
        .into_iter()
        .filter(|(entry, is_dir)| entry.starts_with(name) && (*is_dir || !dirs_only))
        .filter(|(entry, _)| !entry.starts_with('.') || name.starts_with('.'))
        .map(|(entry, is_dir)| {
            // A directory goes on (`/`), a file is done (a space).
            let (shown, end) = if is_dir { ("/", "/") } else { ("", " ") };
            Candidate {
                display: format!("{entry}{shown}"),
                replacement: format!("{}{end}", escape(&format!("{dir}{entry}"))),
            }
        })
        .collect()
}

/// `path` against the working directory `cwd`, `.` and `..` taken out.
fn resolve(cwd: &str, path: &str) -> String {
    crate::imagepath::resolve(cwd, path)
}

fn words_with<'a>(prefix: &str, words: impl Iterator<Item = &'a str>) -> Vec<Candidate> {
    words
        .filter(|w| w.starts_with(prefix))
        .map(Candidate::word)
        .collect()
}

/// A backslash before each character a shell would split or interpret.
fn escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if c.is_whitespace() || "'\"\\$`&|;<>()*?![]{}#~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    struct Fake;
    impl Catalog for Fake {
        fn cwd(&self) -> String {
            "/usr".into()
        }
        fn list_dir(&self, dir: &str) -> Vec<(String, bool)> {
            match dir {
                "/usr" => vec![("local".into(), true), ("lib".into(), true)],
                "/usr/local" => vec![("my file".into(), false), ("bin".into(), true)],
                "/" => vec![("etc".into(), true), (".hidden".into(), false)],
                _ => vec![],
            }
        }
        fn tags(&self) -> Vec<String> {
            vec!["alpine".into(), "base".into()]
        }
        fn branches(&self) -> Vec<String> {
            vec!["main".into(), "exp".into()]
        }
        fn topics(&self) -> Vec<String> {
            vec!["core".into()]
        }
    }

    fn cli() -> Command {
        Command::new("contree")
            .arg(Arg::new("session").short('S').long("session"))
            .subcommand(
                Command::new("run")
                    .arg(Arg::new("use_image").long("use"))
                    .arg(
                        Arg::new("shell")
                            .short('s')
                            .long("shell")
                            .action(clap::ArgAction::SetTrue),
                    )
                    .arg(Arg::new("words").num_args(0..)),
            )
            .subcommand(Command::new("ls").arg(Arg::new("path")))
            .subcommand(Command::new("session").subcommand(Command::new("checkout")))
            .subcommand(
                Command::new("completions")
                    .arg(Arg::new("shell").value_parser(["bash", "zsh", "fish"])),
            )
    }

    fn shown(line: &str) -> (usize, Vec<String>) {
        let (start, c) = complete(line, line.len(), &cli(), &Fake);
        (start, c.into_iter().map(|c| c.replacement).collect())
    }

    #[test]
    fn the_first_word_is_a_builtin_or_contree() {
        assert_eq!(shown("c"), (0, vec!["cd ".into(), "contree ".into()]));
        assert_eq!(shown("e"), (0, vec!["exit ".into()]));
    }

    #[test]
    fn contree_lines_complete_from_the_definitions() {
        assert_eq!(shown("contree r"), (8, vec!["run ".into()]));
        assert_eq!(
            shown("contree run --"),
            (
                12,
                vec!["--help ".into(), "--shell ".into(), "--use ".into()]
            )
        );
        assert_eq!(
            shown("contree -S x run --use a"),
            (23, vec!["alpine ".into()])
        );
        assert_eq!(
            shown("contree session checkout e"),
            (25, vec!["exp ".into()])
        );
        assert_eq!(shown("contree completions f"), (20, vec!["fish ".into()]));
        // The command's own words are not ours to complete.
        assert_eq!(shown("contree run -- --").1, Vec::<String>::new());
    }

    #[test]
    fn paths_come_from_the_image_relative_to_the_session_cd() {
        assert_eq!(shown("ls lo"), (3, vec!["local/".into()]));
        assert_eq!(
            shown("cat local/"),
            (4, vec!["local/bin/".into(), "local/my\\ file ".into()])
        );
        assert_eq!(shown("cd local/"), (3, vec!["local/bin/".into()]));
        assert_eq!(shown("contree ls /"), (11, vec!["/etc/".into()]));
        assert_eq!(shown("contree ls /."), (11, vec!["/.hidden ".into()]));
    }
}
