//! config.toml in the config dir: the sections contree reads, as types.
//!
//! Each reader takes only its own section, and a section that is wrong is kept as its own
//! error rather than failing the file: a mistake in `[plugins]` must not stop `serve` or a
//! run. Sections and keys nobody reads are ignored. What the values mean stays with their
//! readers (`plugin::registry`, `server::auth`, `engine::limits`); the keys are documented
//! in docs/plugins.md, docs/serve.md and docs/sandbox.md.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where config.toml is in `config_dir`.
pub fn file(config_dir: &Path) -> PathBuf {
    config_dir.join("config.toml")
}

/// What config.toml says; `None` for a section it does not have.
#[derive(Debug, Default)]
pub struct Config {
    /// `[plugins]`.
    pub plugins: Option<Result<Plugins, String>>,
    /// `[limits]`: every run's defaults.
    pub limits: Option<Result<Limits, String>>,
    /// `[serve]`; a `serve` that is not a table counts as absent.
    pub serve: Serve,
}

/// `[plugins]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugins {
    /// `path = "dir"` or `path = ["dir", "file.so"]`, as written.
    pub path: Vec<String>,
}

/// `[serve]`.
#[derive(Debug, Default)]
pub struct Serve {
    /// `[[serve.tokens]]`.
    pub tokens: Option<Result<Vec<Token>, String>>,
    /// `[serve.limits]`: the most a client may ask for.
    pub limits: Option<Result<Limits, String>>,
}

/// One `[[serve.tokens]]` entry: two words without spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    pub namespace: String,
}

/// `[limits]` or `[serve.limits]`: every key with its setting, in the file's order. Which
/// keys exist and what the words mean is `engine::limits`' business, since `run`'s flags
/// take the same words.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub entries: Vec<(String, Setting)>,
}

/// One limit as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// A string, or a number as its text (`512M`, `100`, `1.5`).
    Text(String),
    /// Any other kind of value, which no limit takes.
    Other,
}

/// The top level: only the sections something reads.
#[derive(Deserialize)]
struct Raw {
    plugins: Option<toml::Value>,
    limits: Option<toml::Value>,
    serve: Option<toml::Value>,
}

/// The text of `file`; a missing file reads as empty, as if it said nothing.
pub fn read(file: &Path) -> Result<String, String> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e.to_string()),
    }
}

impl Config {
    /// Reads `file` (see `read`).
    pub fn load(file: &Path) -> Result<Config, String> {
        Config::parse(&read(file)?)
    }

    /// Fails only when `text` is not TOML; a wrong section is that section's error.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let serve = raw.serve.as_ref().and_then(|s| s.as_table());
        Ok(Config {
            plugins: raw.plugins.map(plugins),
            limits: raw.limits.map(limits),
            serve: Serve {
                tokens: serve.and_then(|s| s.get("tokens")).map(tokens),
                limits: serve.and_then(|s| s.get("limits")).cloned().map(limits),
            },
        })
    }
}

fn plugins(value: toml::Value) -> Result<Plugins, String> {
    let table = value
        .as_table()
        .ok_or("`plugins` must be a table".to_string())?;
    let path = match table.get("path") {
        None => Vec::new(),
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or("`plugins.path` must list strings".to_string())
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`plugins.path` must be a string or a list of strings".into()),
    };
    Ok(Plugins { path })
}

fn tokens(value: &toml::Value) -> Result<Vec<Token>, String> {
    let entries = value
        .as_array()
        .ok_or("`serve.tokens` must be a list of { token, namespace } tables")?;
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let word = |name: &str| {
            entry
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty() && !v.chars().any(char::is_whitespace))
                .map(str::to_string)
                .ok_or_else(|| {
                    format!(
                        "serve.tokens entry {}: `{name}` must be a string without spaces",
                        i + 1
                    )
                })
        };
        out.push(Token {
            token: word("token")?,
            namespace: word("namespace")?,
        });
    }
    Ok(out)
}

fn limits(value: toml::Value) -> Result<Limits, String> {
    let toml::Value::Table(table) = value else {
        return Err("must be a table".into());
    };
    let entries = table
        .into_iter()
        .map(|(key, v)| {
            let setting = match v {
                toml::Value::String(s) => Setting::Text(s),
                toml::Value::Integer(i) => Setting::Text(i.to_string()),
                toml::Value::Float(f) => Setting::Text(f.to_string()),
                _ => Setting::Other,
            };
            (key, setting)
        })
        .collect();
    Ok(Limits { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_keys_nobody_reads_are_ignored() {
        let c = Config::parse(
            "top = 1\n[colors]\nx = 1\n[plugins]\npath = \"p\"\nextra = true\n\
             [serve]\nport = 8080\n[[serve.tokens]]\ntoken = \"t\"\nnamespace = \"n\"\nnote = \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            c.plugins,
            Some(Ok(Plugins {
                path: vec!["p".into()]
            }))
        );
        assert_eq!(
            c.serve.tokens,
            Some(Ok(vec![Token {
                token: "t".into(),
                namespace: "n".into()
            }]))
        );
        assert!(c.limits.is_none() && c.serve.limits.is_none());
    }

    #[test]
    fn a_wrong_section_spoils_only_itself() {
        let c = Config::parse(
            "plugins = 5\nlimits = [1]\n[[serve.tokens]]\ntoken = \"t\"\nnamespace = \"n\"\n",
        )
        .unwrap();
        assert_eq!(c.plugins, Some(Err("`plugins` must be a table".into())));
        assert_eq!(c.limits, Some(Err("must be a table".into())));
        assert!(matches!(c.serve.tokens, Some(Ok(ref t)) if t.len() == 1));
        // A `serve` that is not a table has neither tokens nor limits.
        let c = Config::parse("serve = \"yes\"\n").unwrap();
        assert!(c.serve.tokens.is_none() && c.serve.limits.is_none());
    }

    #[test]
    fn plugin_paths_are_one_string_or_a_list_of_strings() {
        let p = |text: &str| Config::parse(text).unwrap().plugins.unwrap();
        assert_eq!(
            p("[plugins]\npath = [\"a\", \"b\"]\n"),
            Ok(Plugins {
                path: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(p("[plugins]\n"), Ok(Plugins { path: vec![] }));
        assert_eq!(
            p("[plugins]\npath = [\"a\", 1]\n"),
            Err("`plugins.path` must list strings".into())
        );
        assert_eq!(
            p("[plugins]\npath = 3\n"),
            Err("`plugins.path` must be a string or a list of strings".into())
        );
    }

    #[test]
    fn token_entries_need_two_words_and_say_which_entry_is_wrong() {
        let t = |text: &str| Config::parse(text).unwrap().serve.tokens.unwrap();
        assert_eq!(
            t("[serve]\ntokens = 1\n"),
            Err("`serve.tokens` must be a list of { token, namespace } tables".into())
        );
        assert_eq!(
            t("[[serve.tokens]]\ntoken = \"a\"\nnamespace = \"n\"\n\
               [[serve.tokens]]\ntoken = \"b c\"\nnamespace = \"n\"\n"),
            Err("serve.tokens entry 2: `token` must be a string without spaces".into())
        );
        assert_eq!(
            t("[[serve.tokens]]\ntoken = \"a\"\n"),
            Err("serve.tokens entry 1: `namespace` must be a string without spaces".into())
        );
    }

    #[test]
    fn limits_keep_every_key_with_numbers_as_text() {
        let c = Config::parse(
            "[limits]\nmemory = \"1G\"\npids = 100\ncpus = 1.5\nodd = true\n\
             [serve.limits]\npids = \"none\"\n",
        )
        .unwrap();
        let entries = c.limits.unwrap().unwrap().entries;
        let text = |s: &str| Setting::Text(s.into());
        for want in [
            ("memory".to_string(), text("1G")),
            ("pids".into(), text("100")),
            ("cpus".into(), text("1.5")),
            ("odd".into(), Setting::Other),
        ] {
            assert!(entries.contains(&want), "{want:?} in {entries:?}");
        }
        assert_eq!(
            c.serve.limits.unwrap().unwrap().entries,
            [("pids".to_string(), text("none"))]
        );
    }

    #[test]
    fn only_text_that_is_not_toml_fails_the_file() {
        let err = Config::parse("[plugins\n").unwrap_err();
        assert!(!err.is_empty());
        assert!(Config::parse("").unwrap().plugins.is_none());
    }

    #[test]
    fn a_missing_file_says_nothing_and_an_unreadable_one_says_why() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read(&file(tmp.path())).unwrap(), "");
        // A directory in the file's place cannot be read as text.
        std::fs::create_dir(file(tmp.path())).unwrap();
        assert!(Config::load(&file(tmp.path())).is_err());
    }
}
