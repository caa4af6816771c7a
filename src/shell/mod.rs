//! `contree shell`'s own logic, apart from the terminal: what a typed line means (a
//! built-in, a `contree` command, or a shell line for the sandbox), splitting a `contree`
//! line into words, the history file, and completion (`complete.rs`).
//!
//! It never runs anything: the CLI (`cli/shell.rs`) dispatches what `classify` returns
//! through the same code as a `contree` invocation, so a line behaves as its command would.

pub mod complete;
pub mod history;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ShellError {
    #[error("unclosed {0} quote in the line")]
    UnclosedQuote(char),
    #[error("a backslash ends the line")]
    TrailingBackslash,
    #[error("`{word}`: expected a number")]
    NotANumber { word: String },
    #[error("`{builtin}` takes {expected}")]
    Arguments {
        builtin: &'static str,
        expected: &'static str,
    },
    #[error("`contree shell` is already running: type commands at its prompt")]
    Nested,
    #[error("the shell's history file {path}: {source}")]
    History {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Blank, or a `#` comment.
    Empty,
    Builtin(Builtin),
    /// `contree WORDS…`: a management command, without the leading `contree`.
    Contree(Vec<String>),
    /// Anything else: the line as typed, for `run --shell`.
    Run(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Builtin {
    /// `cd [DIR]` (no DIR: print the session's working directory, as `contree cd`).
    Cd(Option<String>),
    Pwd,
    /// `history [N]`: the last N lines (all without N).
    History(Option<usize>),
    Help,
    /// `exit [CODE]` or `quit [CODE]`.
    Exit(Option<i32>),
}

/// The built-ins' names, for completion and `help`.
pub const BUILTINS: [&str; 6] = ["cd", "pwd", "history", "help", "exit", "quit"];

/// What the line means. Built-ins are recognised by their first word only when the rest of
/// the line is plain words: `cd /tmp && ls` is a shell line for the sandbox.
pub fn classify(line: &str) -> Result<Line, ShellError> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(Line::Empty);
    }
    let first = trimmed.split_whitespace().next().unwrap_or_default();
    if first == "contree" {
        let words = split_words(trimmed)?;
        return Ok(Line::Contree(words[1..].to_vec()));
    }
    if !BUILTINS.contains(&first) || trimmed.contains(|c: char| "|&;<>()$`*?".contains(c)) {
        return Ok(Line::Run(trimmed.to_string()));
    }
    let words = split_words(trimmed)?;
    let args = &words[1..];
    let at_most_one = |builtin: &'static str, expected: &'static str| {
        if args.len() > 1 {
            Err(ShellError::Arguments { builtin, expected })
        } else {
            Ok(args.first().cloned())
        }
    };
    let builtin = match first {
        "cd" => Builtin::Cd(at_most_one("cd", "at most one directory")?),
        "pwd" if args.is_empty() => Builtin::Pwd,
        "pwd" => {
            return Err(ShellError::Arguments {
                builtin: "pwd",
                expected: "no arguments",
            })
        }
        "help" => Builtin::Help,
        "history" => Builtin::History(
            at_most_one("history", "at most one count")?
                .map(|n| n.parse().map_err(|_| ShellError::NotANumber { word: n }))
                .transpose()?,
        ),
        _ => Builtin::Exit(
            at_most_one("exit", "at most one exit code")?
                .map(|n| n.parse().map_err(|_| ShellError::NotANumber { word: n }))
                .transpose()?,
        ),
    };
    Ok(Line::Builtin(builtin))
}

/// Splits a line into words as a POSIX shell would, for quoting only: `'…'` is literal,
/// `"…"` keeps spaces and takes `\` before `"`, `\`, `$` and `` ` ``, a bare `\` quotes the
/// next character. No expansion of any kind.
pub fn split_words(line: &str) -> Result<Vec<String>, ShellError> {
    Ok(scan(line)?.into_iter().map(|w| w.text).collect())
}

/// A word of a line: its text once unquoted, and where it starts in the line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Word {
    pub text: String,
    pub start: usize,
}

pub(crate) fn scan(line: &str) -> Result<Vec<Word>, ShellError> {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_whitespace() {
            words.extend(current.take());
            continue;
        }
        let word = current.get_or_insert_with(|| Word {
            text: String::new(),
            start: i,
        });
        match c {
            '\'' => loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, c)) => word.text.push(c),
                    None => return Err(ShellError::UnclosedQuote('\'')),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.peek() {
                        Some(&(_, n)) if "\"\\$`".contains(n) => {
                            word.text.push(n);
                            chars.next();
                        }
                        _ => word.text.push('\\'),
                    },
                    Some((_, c)) => word.text.push(c),
                    None => return Err(ShellError::UnclosedQuote('"')),
                }
            },
            '\\' => match chars.next() {
                Some((_, n)) => word.text.push(n),
                None => return Err(ShellError::TrailingBackslash),
            },
            c => word.text.push(c),
        }
    }
    words.extend(current);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_line_runs_in_the_sandbox_as_typed() {
        assert_eq!(
            classify("  echo 'a  b' | wc -c ").unwrap(),
            Line::Run("echo 'a  b' | wc -c".into())
        );
        // A built-in's name with shell syntax after it is the sandbox's.
        assert_eq!(
            classify("cd /tmp && ls").unwrap(),
            Line::Run("cd /tmp && ls".into())
        );
        assert_eq!(classify("  # note").unwrap(), Line::Empty);
        assert_eq!(classify("").unwrap(), Line::Empty);
    }

    #[test]
    fn a_contree_line_is_split_into_words() {
        assert_eq!(
            classify(r#"contree tag "my tag" it\'s"#).unwrap(),
            Line::Contree(vec!["tag".into(), "my tag".into(), "it's".into()])
        );
        assert_eq!(classify("contree").unwrap(), Line::Contree(vec![]));
        assert!(matches!(
            classify("contree ls 'x"),
            Err(ShellError::UnclosedQuote('\''))
        ));
    }

    #[test]
    fn builtins_take_their_arguments() {
        assert_eq!(
            classify("cd /etc").unwrap(),
            Line::Builtin(Builtin::Cd(Some("/etc".into())))
        );
        assert_eq!(classify("cd").unwrap(), Line::Builtin(Builtin::Cd(None)));
        assert_eq!(classify("pwd").unwrap(), Line::Builtin(Builtin::Pwd));
        assert_eq!(
            classify("history 3").unwrap(),
            Line::Builtin(Builtin::History(Some(3)))
        );
        assert_eq!(
            classify("quit 4").unwrap(),
            Line::Builtin(Builtin::Exit(Some(4)))
        );
        assert!(matches!(
            classify("exit x"),
            Err(ShellError::NotANumber { .. })
        ));
        assert!(matches!(
            classify("cd a b"),
            Err(ShellError::Arguments { builtin: "cd", .. })
        ));
    }

    #[test]
    fn words_keep_their_start_for_completion() {
        let words = scan(r#"ls "a b" c\ d"#).unwrap();
        let texts: Vec<_> = words.iter().map(|w| (w.text.as_str(), w.start)).collect();
        assert_eq!(texts, [("ls", 0), ("a b", 3), ("c d", 9)]);
        assert_eq!(split_words(r#""\$x\q""#).unwrap(), ["$x\\q"]);
    }
}
