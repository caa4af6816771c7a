//! clap's usage errors in the CLI's own format: `[ERROR] message` naming the command and the
//! word at fault, `hint:` lines with what to type instead, exit 2 (`Kind::Usage`).
//!
//! Only the printing changes: which command lines are accepted stays clap's business.

use crate::error::{CommandError, Kind};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::CommandFactory;
use std::ffi::OsString;

use super::args::Cli;

/// The usage error for `argv`, which clap refused with `e`.
pub fn usage_error(e: &clap::Error, argv: &[OsString]) -> CommandError {
    let path = command_path(argv);
    let shown = path.join(" ");
    let err = match e.kind() {
        ErrorKind::UnknownArgument => unknown_argument(e, &path),
        ErrorKind::InvalidSubcommand => {
            let word = string(e, ContextKind::InvalidSubcommand).unwrap_or_default();
            let mut err = CommandError::new(
                Kind::Usage,
                format!("unknown command '{word}' for `{shown}`"),
            );
            let similar = strings(e, ContextKind::SuggestedSubcommand);
            if !similar.is_empty() {
                err = err.hint(format!("did you mean {}?", quoted_list(&similar)));
            }
            err
        }
        _ => {
            let mut err = CommandError::new(Kind::Usage, first_paragraph(e));
            for tip in strings(e, ContextKind::Suggested) {
                err = err.hint(tip);
            }
            err
        }
    };
    err.hint(format!("`{shown} --help` lists what it accepts"))
}

/// `unexpected argument 'X' found`, said for what it is: an option this command does not
/// have (maybe a similar one, or one of `contree` itself given too late), or a word too many.
fn unknown_argument(e: &clap::Error, path: &[String]) -> CommandError {
    let shown = path.join(" ");
    let arg = string(e, ContextKind::InvalidArg).unwrap_or_default();
    if !arg.starts_with('-') || arg == "-" {
        return CommandError::new(
            Kind::Usage,
            format!("unexpected argument '{arg}' for `{shown}`"),
        );
    }
    let mut err = CommandError::new(Kind::Usage, format!("unknown option '{arg}' for `{shown}`"));
    if let Some(similar) = string(e, ContextKind::SuggestedArg) {
        err = err.hint(format!("did you mean '{similar}'?"));
    } else if let Some(global) = top_level_option(&arg).filter(|_| path.len() > 1) {
        err = err.hint(format!(
            "'{arg}' is an option of contree itself: give it before `{}`, as in `contree {global} {} ...`",
            path[1],
            path[1..].join(" ")
        ));
    } else if path.get(1).is_some_and(|c| c == "run") {
        // `run`'s command starts at the first word that is not an option.
        err = err.hint(format!(
            "a command whose name starts with '-' goes after `--`: `contree run [OPTIONS] -- {arg} ...`"
        ));
    }
    err
}

/// `contree` and the (sub)commands `argv` names, as far as clap recognises them.
fn command_path(argv: &[OsString]) -> Vec<String> {
    let mut path = vec!["contree".to_string()];
    // A second, forgiving parse finds the subcommand the failed one was in.
    let Ok(mut matches) = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(argv)
    else {
        return path;
    };
    while let Some((name, sub)) = matches.remove_subcommand() {
        path.push(name);
        matches = sub;
    }
    path
}

/// `-o FORMAT` when `arg` (`-o`, `--format`, `--format=json`) is an option of `contree`
/// itself rather than of a subcommand.
fn top_level_option(arg: &str) -> Option<String> {
    let name = arg.split('=').next().unwrap_or(arg);
    let cmd = Cli::command();
    let found = cmd
        .get_arguments()
        .filter(|a| !a.is_global_set())
        .find(|a| match name.strip_prefix("--") {
            Some(long) => {
                a.get_long() == Some(long)
                    || a.get_all_aliases().is_some_and(|all| all.contains(&long))
            }
            None => {
                let mut chars = name.chars().skip(1);
                match (chars.next(), chars.next()) {
                    (Some(c), None) => {
                        a.get_short() == Some(c)
                            || a.get_all_short_aliases()
                                .is_some_and(|all| all.contains(&c))
                    }
                    _ => false,
                }
            }
        })?;
    let takes_value = found.get_action().takes_values();
    Some(match found.get_value_names().and_then(|v| v.first()) {
        _ if !takes_value => name.to_string(),
        Some(value) => format!("{name} {value}"),
        None => format!("{name} {}", found.get_id().as_str().to_ascii_uppercase()),
    })
}

/// clap's own message, on one line, without its `error: ` prefix.
fn first_paragraph(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `'a'`, `'a' or 'b'`, `'a', 'b' or 'c'`.
fn quoted_list(words: &[String]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

fn string(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => v.first().cloned(),
        _ => None,
    }
}

fn strings(e: &clap::Error, kind: ContextKind) -> Vec<String> {
    match e.get(kind) {
        Some(ContextValue::StyledStrs(v)) => v.iter().map(|s| s.to_string()).collect(),
        Some(ContextValue::Strings(v)) => v.clone(),
        Some(ContextValue::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}
