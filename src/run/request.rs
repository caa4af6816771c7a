//! Turning `run`'s high-level arguments into the /v1 spawn request: command and args
//! (direct, shell, interpreter mode), environment merge, working directory, files.

use crate::wire::{FileRef, SpawnRequest, StdinRepr};
use std::collections::BTreeMap;

/// POSIX-shell quoting of one word: bare when made only of safe characters, else wrapped
/// in single quotes with each `'` written as `'"'"'` (so `sh` splits it back exactly).
pub fn shell_quote(word: &str) -> String {
    if word.is_empty() {
        return "''".to_string();
    }
    let safe = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\"'\"'"))
    }
}

/// Command and args from the words after the options (§2.5.1).
pub fn command_and_args(words: &[String], shell: bool) -> (String, Option<Vec<String>>) {
    if shell {
        return match words {
            [] => (String::new(), None),
            [one] => (one.clone(), None),
            many => (
                many.iter()
                    .map(|w| shell_quote(w))
                    .collect::<Vec<_>>()
                    .join(" "),
                None,
            ),
        };
    }
    match words.split_first() {
        None => (String::new(), None),
        Some((cmd, [])) => (cmd.clone(), None),
        Some((cmd, rest)) => (cmd.clone(), Some(rest.to_vec())),
    }
}

/// Interpreter (shebang) mode: the script body (minus its first line, CRLF → LF) becomes
/// stdin of `/bin/sh -s -- ARGS`.
pub fn interpreter(script: &[u8], args: &[String]) -> (String, Vec<String>, Option<StdinRepr>) {
    let text = replace_crlf(script);
    let body = match text.iter().position(|&b| b == b'\n') {
        Some(pos) => text[pos + 1..].to_vec(),
        None => Vec::new(),
    };
    let mut argv = vec!["-s".to_string()];
    if !args.is_empty() {
        argv.push("--".to_string());
        argv.extend(args.iter().cloned());
    }
    let stdin = (!body.is_empty()).then(|| StdinRepr::from_bytes(&body, None));
    ("/bin/sh".to_string(), argv, stdin)
}

fn replace_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// A `KEY=VALUE` item (`run -e`, `contree env`) that is not one. Upstream takes `KEY` as
/// `KEY=` and `=v` as an empty name, silently; a typo should not reach the command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvItemError {
    #[error("'{0}' is not KEY=VALUE (write '{0}=' for an empty value)")]
    NoEquals(String),
    #[error("'{0}' has an empty KEY (expected KEY=VALUE)")]
    EmptyKey(String),
}

/// One item split at its first `=` (the value may hold more).
pub fn parse_env_item(item: &str) -> Result<(String, String), EnvItemError> {
    match item.split_once('=') {
        None => Err(EnvItemError::NoEquals(item.to_string())),
        Some(("", _)) => Err(EnvItemError::EmptyKey(item.to_string())),
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
    }
}

/// Every item, or the first bad one.
pub fn parse_env_items(items: &[String]) -> Result<Vec<(String, String)>, EnvItemError> {
    items.iter().map(|item| parse_env_item(item)).collect()
}

/// Everything `build` needs, already resolved.
pub struct Inputs<'a> {
    pub image: String,
    pub words: &'a [String],
    pub shell: bool,
    pub session_env: BTreeMap<String, String>,
    /// `-e` pairs, already checked (`parse_env_items`), in order.
    pub env_items: &'a [(String, String)],
    pub preserved_env: Option<BTreeMap<String, String>>,
    pub preserve_env: bool,
    pub cwd_flag: &'a str,
    pub session_cwd: Option<String>,
    pub hostname: &'a str,
    pub timeout: u64,
    pub truncate: u64,
    pub disposable: bool,
    pub network: bool,
    pub files: BTreeMap<String, FileRef>,
    /// Sent only when a flag set one (the official client never sends the field).
    pub limits: crate::wire::ResourcesLimits,
}

/// The spawn body per §2.5; `env` is the merged map (returned too, for `--preserve-env`).
pub fn build(inputs: Inputs<'_>) -> (SpawnRequest, BTreeMap<String, String>) {
    let (command, args) = command_and_args(inputs.words, inputs.shell);
    let mut env = inputs.session_env;
    for (k, v) in inputs.env_items {
        env.insert(k.clone(), v.clone());
    }
    let send_env = !env.is_empty() && inputs.preserved_env.as_ref() != Some(&env);
    let cwd = if !inputs.cwd_flag.is_empty() {
        Some(inputs.cwd_flag.to_string())
    } else {
        inputs.session_cwd.filter(|c| !c.is_empty())
    };
    let req = SpawnRequest {
        image: inputs.image,
        command,
        args,
        shell: inputs.shell,
        env: send_env.then(|| env.clone()),
        preserve_env: inputs.preserve_env,
        cwd,
        disposable: inputs.disposable,
        hostname: inputs.hostname.to_string(),
        timeout: Some(inputs.timeout),
        truncate_output_at: Some(inputs.truncate),
        files: (!inputs.files.is_empty()).then_some(inputs.files),
        networking: (!inputs.network).then_some(crate::wire::Networking { enabled: false }),
        resources_limits: (!inputs.limits.is_empty()).then_some(inputs.limits),
        ..Default::default()
    };
    (req, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shell_mode_quotes_like_a_posix_shell() {
        assert_eq!(
            command_and_args(&words(&["ls", "-la", "/etc"]), true).0,
            "ls -la /etc"
        );
        assert_eq!(
            command_and_args(&words(&["python3", "-c", "print('hello world')"]), true).0,
            r#"python3 -c 'print('"'"'hello world'"'"')'"#
        );
        assert_eq!(
            command_and_args(&words(&["echo", "a b", "c$d"]), true).0,
            "echo 'a b' 'c$d'"
        );
        assert_eq!(
            command_and_args(&words(&["echo 1 ; echo 2"]), true).0,
            "echo 1 ; echo 2"
        );
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn direct_mode_keeps_words_verbatim() {
        assert_eq!(
            command_and_args(&words(&["ls"]), false),
            ("ls".into(), None)
        );
        assert_eq!(
            command_and_args(&words(&["--", "echo", "x"]), false),
            ("--".into(), Some(words(&["echo", "x"])))
        );
        assert_eq!(command_and_args(&[], false), (String::new(), None));
    }

    #[test]
    fn interpreter_drops_the_first_line_and_crlf() {
        let (cmd, args, stdin) = interpreter(
            b"#!/usr/bin/env -S contree run -I\r\necho hi\r\n",
            &words(&["a1", "a2"]),
        );
        assert_eq!(cmd, "/bin/sh");
        assert_eq!(args, words(&["-s", "--", "a1", "a2"]));
        assert_eq!(stdin.unwrap().bytes().unwrap(), b"echo hi\n");
        let (_, args, stdin) = interpreter(b"#!x\n", &[]);
        assert_eq!(args, words(&["-s"]));
        assert!(stdin.is_none());
    }

    #[test]
    fn env_items_split_at_the_first_equals() {
        assert_eq!(
            parse_env_items(&words(&["A=1=2", "C="])),
            Ok(vec![("A".into(), "1=2".into()), ("C".into(), "".into())])
        );
    }

    #[test]
    fn env_items_need_an_equals_sign_and_a_name() {
        assert_eq!(
            parse_env_items(&words(&["A=1", "B"])),
            Err(EnvItemError::NoEquals("B".into()))
        );
        assert_eq!(
            parse_env_item("=v").unwrap_err().to_string(),
            "'=v' has an empty KEY (expected KEY=VALUE)"
        );
        assert_eq!(
            parse_env_item("NOEQ").unwrap_err().to_string(),
            "'NOEQ' is not KEY=VALUE (write 'NOEQ=' for an empty value)"
        );
    }
}
