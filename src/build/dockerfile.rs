//! The Dockerfile parser: logical lines (continuations, comments), directives and their
//! flags, stages, and `$VAR` / `${VAR}` substitution. It never reads the context, talks to
//! a backend or prints: words keep their quotes until the executor expands them with the
//! values of that point of the build (`expand`), since ARG and ENV change as it goes.

use std::collections::BTreeMap;

/// Why a Dockerfile cannot be read; each names the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: unknown instruction '{name}'")]
    Unknown { line: usize, name: String },
    #[error("line {line}: {name} needs {what}")]
    Missing {
        line: usize,
        name: &'static str,
        what: &'static str,
    },
    #[error("line {line}: {name} does not take the flag '{flag}'")]
    Flag {
        line: usize,
        name: &'static str,
        flag: String,
    },
    #[error("line {line}: only ARG may come before the first FROM, not {name}")]
    BeforeFrom { line: usize, name: String },
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: String },
    #[error("the Dockerfile has no FROM")]
    NoFrom,
    /// A `${VAR:?message}` whose variable is unset or empty, or a bad `${…}`.
    #[error("{0}")]
    Substitution(String),
}

/// A command of RUN: shell form (run by `/bin/sh -c`) or exec form (a JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

/// COPY and ADD: sources, destination and flags, all still to be expanded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Copy {
    pub sources: Vec<String>,
    pub dest: String,
    /// `--from=<stage name|index|image>`.
    pub from: Option<String>,
    /// `--chown=user[:group]` (numeric ids, or names looked up in the target image).
    pub chown: Option<String>,
    /// `--chmod=0755` (octal).
    pub chmod: Option<String>,
    /// Exec form (`["a", "b"]`): the words are not split nor unquoted.
    pub exec_form: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    From {
        image: String,
        alias: Option<String>,
    },
    Run(Command),
    Copy(Copy),
    Add(Copy),
    Workdir(String),
    /// `KEY=VALUE` pairs (values still raw).
    Env(Vec<(String, String)>),
    /// `NAME[=default]`.
    Arg(Vec<(String, Option<String>)>),
    User(String),
    /// A directive that is understood but does nothing here (CMD, EXPOSE…): its name.
    Skipped(String),
}

/// One logical line: where it starts, its text (continuations joined) and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub line: usize,
    pub text: String,
    pub directive: Directive,
}

/// A stage: its FROM and what follows it up to the next FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub from: Instruction,
    pub steps: Vec<Instruction>,
}

impl Stage {
    pub fn alias(&self) -> Option<&str> {
        match &self.from.directive {
            Directive::From { alias, .. } => alias.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// ARGs before the first FROM: usable in FROM lines (and, redeclared, in a stage).
    pub global_args: Vec<Instruction>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// Every instruction in order, FROMs included (what `Step N/M` counts).
    pub fn step_count(&self) -> usize {
        self.global_args.len() + self.stages.iter().map(|s| 1 + s.steps.len()).sum::<usize>()
    }
}

/// Directives that parse and are skipped, with a warning naming them.
const SKIPPED: &[&str] = &[
    "CMD",
    "ENTRYPOINT",
    "LABEL",
    "EXPOSE",
    "VOLUME",
    "STOPSIGNAL",
    "MAINTAINER",
    "HEALTHCHECK",
    "ONBUILD",
    "SHELL",
];

pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for (line, logical) in logical_lines(text) {
        let instruction = instruction(line, &logical)?;
        match (&instruction.directive, stages.last_mut()) {
            (Directive::From { .. }, _) => stages.push(Stage {
                from: instruction,
                steps: Vec::new(),
            }),
            (_, Some(stage)) => stage.steps.push(instruction),
            (Directive::Arg(_), None) => global_args.push(instruction),
            (_, None) => {
                let name = logical.split_whitespace().next().unwrap_or("").to_string();
                return Err(ParseError::BeforeFrom {
                    line,
                    name: name.to_uppercase(),
                });
            }
        }
    }
    if stages.is_empty() {
        return Err(ParseError::NoFrom);
    }
    Ok(Dockerfile {
        global_args,
        stages,
    })
}

/// The logical lines with the number of the line each starts on: comment lines dropped
/// (also inside a continuation), `\` at the end of a line joining it to the next.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_some()) {
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        let (body, continues) = match raw.trim_end().strip_suffix('\\') {
            Some(body) => (body, true),
            None => (raw.trim_end(), false),
        };
        let (_, joined) = current.get_or_insert_with(|| (i + 1, String::new()));
        joined.push_str(if joined.is_empty() {
            body.trim_start()
        } else {
            body
        });
        if !continues {
            out.push(current.take().expect("a line in progress"));
        }
    }
    // A continuation on the last line ends the instruction there.
    out.extend(current);
    out
}

fn instruction(line: usize, text: &str) -> Result<Instruction, ParseError> {
    let (name, rest) = match text.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim()),
        None => (text, ""),
    };
    let upper = name.to_uppercase();
    let missing = |name, what| ParseError::Missing { line, name, what };
    let directive = match upper.as_str() {
        "FROM" => {
            let (flags, words) = flags_and_words(line, rest)?;
            // `--platform` names the platform to pull; there is one here.
            check_flags(line, "FROM", &flags, &["platform"])?;
            match words.as_slice() {
                [image] => Directive::From {
                    image: image.clone(),
                    alias: None,
                },
                [image, as_, alias] if as_.eq_ignore_ascii_case("as") => Directive::From {
                    image: image.clone(),
                    alias: Some(alias.to_lowercase()),
                },
                [] => return Err(missing("FROM", "an image")),
                _ => {
                    return Err(ParseError::Syntax {
                        line,
                        what: "FROM takes IMAGE [AS NAME]".into(),
                    })
                }
            }
        }
        "RUN" => {
            let (flags, _) = flags_and_words(line, rest)?;
            check_flags(line, "RUN", &flags, &[])?;
            if rest.is_empty() {
                return Err(missing("RUN", "a command"));
            }
            match exec_form(rest) {
                Some(argv) if argv.is_empty() => return Err(missing("RUN", "a command")),
                Some(argv) => Directive::Run(Command::Exec(argv)),
                None => Directive::Run(Command::Shell(rest.to_string())),
            }
        }
        "COPY" | "ADD" => {
            let copy = copy(line, if upper == "COPY" { "COPY" } else { "ADD" }, rest)?;
            if upper == "COPY" {
                Directive::Copy(copy)
            } else {
                Directive::Add(copy)
            }
        }
        "WORKDIR" if rest.is_empty() => return Err(missing("WORKDIR", "a path")),
        "WORKDIR" => Directive::Workdir(rest.to_string()),
        "USER" if rest.is_empty() => return Err(missing("USER", "a user")),
        "USER" => Directive::User(rest.to_string()),
        "ENV" => Directive::Env(env_pairs(line, rest)?),
        "ARG" => {
            let words = split_words(line, rest)?;
            if words.is_empty() {
                return Err(missing("ARG", "a name"));
            }
            Directive::Arg(
                words
                    .into_iter()
                    .map(|w| match w.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (w, None),
                    })
                    .collect(),
            )
        }
        other if SKIPPED.contains(&other) => Directive::Skipped(other.to_string()),
        _ => {
            return Err(ParseError::Unknown {
                line,
                name: name.to_string(),
            })
        }
    };
    Ok(Instruction {
        line,
        text: text.to_string(),
        directive,
    })
}

fn copy(line: usize, name: &'static str, rest: &str) -> Result<Copy, ParseError> {
    let (flags, words) = flags_and_words(line, rest)?;
    check_flags(line, name, &flags, &["from", "chown", "chmod", "link"])?;
    // The exec form is what follows the flags.
    let after_flags = rest
        .split_whitespace()
        .skip(flags.len())
        .collect::<Vec<_>>()
        .join(" ");
    let (words, exec_form) = match exec_form(&after_flags) {
        Some(argv) => (argv, true),
        None => (words, false),
    };
    let Some((dest, sources)) = words.split_last() else {
        return Err(ParseError::Missing {
            line,
            name,
            what: "a source and a destination",
        });
    };
    if sources.is_empty() {
        return Err(ParseError::Missing {
            line,
            name,
            what: "a source and a destination",
        });
    }
    let flag = |k: &str| {
        flags
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    Ok(Copy {
        sources: sources.to_vec(),
        dest: dest.clone(),
        from: flag("from"),
        chown: flag("chown"),
        chmod: flag("chmod"),
        exec_form,
    })
}

fn check_flags(
    line: usize,
    name: &'static str,
    flags: &[(String, String)],
    allowed: &[&str],
) -> Result<(), ParseError> {
    match flags.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(ParseError::Flag {
            line,
            name,
            flag: format!("--{k}"),
        }),
        None => Ok(()),
    }
}

/// The leading `--name=value` flags, then the remaining words (raw).
#[allow(clippy::type_complexity)]
fn flags_and_words(
    line: usize,
    rest: &str,
) -> Result<(Vec<(String, String)>, Vec<String>), ParseError> {
    let mut words = split_words(line, rest)?;
    let mut flags = Vec::new();
    while let Some(flag) = words.first().and_then(|w| w.strip_prefix("--")) {
        let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
        flags.push((k.to_lowercase(), v.to_string()));
        words.remove(0);
    }
    Ok((flags, words))
}

/// A JSON array of strings, when `text` is one (exec form).
fn exec_form(text: &str) -> Option<Vec<String>> {
    if !text.trim_start().starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(text.trim()).ok()
}

/// ENV's pairs: `K=V K2="v 2"`, or the old `K V with spaces` form.
fn env_pairs(line: usize, rest: &str) -> Result<Vec<(String, String)>, ParseError> {
    let words = split_words(line, rest)?;
    let Some(first) = words.first() else {
        return Err(ParseError::Missing {
            line,
            name: "ENV",
            what: "KEY=VALUE",
        });
    };
    if !first.contains('=') {
        let value = rest[first.len()..].trim().to_string();
        return Ok(vec![(first.clone(), value)]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(ParseError::Syntax {
                line,
                what: format!("ENV: '{w}' is not KEY=VALUE"),
            }),
        })
        .collect()
}

/// Splits at unquoted whitespace, keeping quotes and escapes for `expand`.
pub fn split_words(line: usize, text: &str) -> Result<Vec<String>, ParseError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                continue;
            }
            (q, '\\') if q != Some('\'') => {
                word.push('\\');
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                word.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                word.push(c);
            }
            (_, c) => word.push(c),
        }
        in_word = true;
    }
    if quote.is_some() {
        return Err(ParseError::Syntax {
            line,
            what: format!("unterminated quote in '{text}'"),
        });
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Expands one raw word: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:+alt}`,
/// `${VAR:?message}` from `vars` (unset is empty), with quotes removed; nothing is
/// substituted inside single quotes, and `\$` is a literal `$`.
pub fn expand(raw: &str, vars: &BTreeMap<String, String>) -> Result<String, ParseError> {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), c) => out.push(c),
            (None, '\'') => quote = Some('\''),
            (None, '"') => quote = Some('"'),
            (Some('"'), '"') => quote = None,
            (_, '\\') => match chars.next() {
                Some(next) => out.push(next),
                None => out.push('\\'),
            },
            (_, '$') => out.push_str(&variable(&mut chars, vars)?),
            (_, c) => out.push(c),
        }
    }
    Ok(out)
}

/// Substitution only (exec-form words: no quotes to remove).
pub fn substitute(raw: &str, vars: &BTreeMap<String, String>) -> Result<String, ParseError> {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => out.push(chars.next().expect("peeked")),
            '$' => out.push_str(&variable(&mut chars, vars)?),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The value of the variable whose reference follows a `$`.
fn variable(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    vars: &BTreeMap<String, String>,
) -> Result<String, ParseError> {
    let is_name = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
    if chars.peek() == Some(&'{') {
        chars.next();
        let mut body = String::new();
        loop {
            match chars.next() {
                Some('}') => break,
                Some(c) => body.push(c),
                None => {
                    return Err(ParseError::Substitution(format!(
                        "missing '}}' after '${{{body}'"
                    )))
                }
            }
        }
        let (name, op) = match body.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            Some(i) => (&body[..i], Some(&body[i..])),
            None => (body.as_str(), None),
        };
        let value = vars.get(name).filter(|v| !v.is_empty());
        return match op {
            None => Ok(value.cloned().unwrap_or_default()),
            Some(op) if op.starts_with(":-") => Ok(match value {
                Some(v) => v.clone(),
                None => expand(&op[2..], vars)?,
            }),
            Some(op) if op.starts_with(":+") => Ok(match value {
                Some(_) => expand(&op[2..], vars)?,
                None => String::new(),
            }),
            Some(op) if op.starts_with(":?") => match value {
                Some(v) => Ok(v.clone()),
                None => Err(ParseError::Substitution(format!(
                    "{name}: {}",
                    if op.len() > 2 { &op[2..] } else { "not set" }
                ))),
            },
            Some(op) => Err(ParseError::Substitution(format!(
                "'${{{body}}}': unsupported modifier '{op}'"
            ))),
        };
    }
    let mut name = String::new();
    while let Some(c) = chars.peek().filter(|c| is_name(c)) {
        name.push(*c);
        chars.next();
    }
    if name.is_empty() {
        return Ok("$".into());
    }
    Ok(vars.get(&name).cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests;
