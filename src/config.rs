//! config.toml in the config dir: the sections contree reads, as types, and the layers
//! every setting goes through: built-in defaults < config.toml < `CONTREE_*` environment
//! < flags (the last applied by the commands that have them).
//!
//! Each reader takes only its own section, and a section that is wrong is kept as its own
//! error rather than failing the file: a mistake in `[plugins]` must not stop `serve` or a
//! run. Sections and keys nobody reads are ignored. What the values mean stays with their
//! readers (`plugin::registry`, `server::auth`, `engine::limits`, `hooks`, `api`); every
//! key is in `KEYS` and in docs/configuration.md (a test holds the two together).
//!
//! Not the `config` crate (auth.ini uses it): it would parse the file a second time, fold
//! keys to lower case and forget where a value came from, which the messages name.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where config.toml is in `config_dir`.
pub fn file(config_dir: &Path) -> PathBuf {
    config_dir.join("config.toml")
}

/// What config.toml says; `None` for a section it does not have.
#[derive(Debug, Default)]
pub struct Config {
    /// The file read (for messages), if any.
    pub path: Option<PathBuf>,
    /// The whole file, for `layered`.
    table: toml::Table,
    /// `[plugins]`.
    pub plugins: Option<Result<Plugins, ConfigError>>,
    /// `[limits]`: every run's defaults.
    pub limits: Option<Result<Limits, ConfigError>>,
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
    pub tokens: Option<Result<Vec<Token>, ConfigError>>,
    /// `[serve.limits]`: the most a client may ask for.
    pub limits: Option<Result<Limits, ConfigError>>,
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

/// What is wrong with config.toml (the whole file), or with one of its sections.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read, in the system's words.
    #[error("{0}")]
    Read(String),
    /// Not TOML, in the parser's words.
    #[error("{0}")]
    Syntax(String),
    #[error("`plugins` must be a table")]
    PluginsNotTable,
    #[error("`plugins.path` must list strings")]
    PluginPathItem,
    #[error("`plugins.path` must be a string or a list of strings")]
    PluginPath,
    #[error("`serve.tokens` must be a list of {{ token, namespace }} tables")]
    TokensNotList,
    /// Entry `entry` (from 1) lacks a one-word `name`.
    #[error("serve.tokens entry {entry}: `{name}` must be a string without spaces")]
    TokenWord { entry: usize, name: &'static str },
    /// A `[limits]` or `[serve.limits]` that is not a table.
    #[error("must be a table")]
    LimitsNotTable,
}

/// The text of `file`; a missing file reads as empty, as if it said nothing.
pub fn read(file: &Path) -> Result<String, ConfigError> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(ConfigError::Read(e.to_string())),
    }
}

impl Config {
    /// Reads `file` (see `read`).
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::parse(&read(file)?)?;
        config.path = Some(file.to_path_buf());
        Ok(config)
    }

    /// Fails only when `text` is not TOML; a wrong section is that section's error.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.message().to_string()))?;
        let raw: Raw = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.message().to_string()))?;
        let serve = raw.serve.as_ref().and_then(|s| s.as_table());
        Ok(Config {
            path: None,
            table,
            plugins: raw.plugins.map(plugins),
            limits: raw.limits.map(limits),
            serve: Serve {
                tokens: serve.and_then(|s| s.get("tokens")).map(tokens),
                limits: serve.and_then(|s| s.get("limits")).cloned().map(limits),
            },
        })
    }
}

fn plugins(value: toml::Value) -> Result<Plugins, ConfigError> {
    let table = value.as_table().ok_or(ConfigError::PluginsNotTable)?;
    let path = match table.get("path") {
        None => Vec::new(),
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or(ConfigError::PluginPathItem)
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ConfigError::PluginPath),
    };
    Ok(Plugins { path })
}

fn tokens(value: &toml::Value) -> Result<Vec<Token>, ConfigError> {
    let entries = value.as_array().ok_or(ConfigError::TokensNotList)?;
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let word = |name: &'static str| {
            entry
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty() && !v.chars().any(char::is_whitespace))
                .map(str::to_string)
                .ok_or(ConfigError::TokenWord { entry: i + 1, name })
        };
        out.push(Token {
            token: word("token")?,
            namespace: word("namespace")?,
        });
    }
    Ok(out)
}

fn limits(value: toml::Value) -> Result<Limits, ConfigError> {
    let toml::Value::Table(table) = value else {
        return Err(ConfigError::LimitsNotTable);
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

/// A setting a layer can give: `section.name` in config.toml, overridden by the first of
/// `env` that is set (the first name is the documented one; later ones are older names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub section: &'static str,
    pub name: &'static str,
    pub env: &'static [&'static str],
    /// The built-in value, as docs/configuration.md shows it.
    pub default: &'static str,
}

/// Declares each key as a constant, written as config.toml and the environment spell it
/// (`NAME: section.name = "default", env ["CONTREE_…"]`), and `KEYS`, all of them in order.
macro_rules! keys {
    ($(
        $(#[$doc:meta])*
        $id:ident: $section:ident.$name:ident = $default:literal, env [$($env:literal),+];
    )*) => {
        $(
            $(#[$doc])*
            pub const $id: Key = Key {
                section: stringify!($section),
                name: stringify!($name),
                env: &[$($env),+],
                default: $default,
            };
        )*

        /// Every key with a layer of its own (`[plugins]` and `[serve]` are read whole).
        pub const KEYS: &[Key] = &[$($id),*];
    };
}

keys! {
    HOOK_TIME_MS: hooks.time_ms = "1000", env ["CONTREE_HOOK_TIME_MS"];
    HOOK_INSTRUCTIONS: hooks.instructions = "100000000", env ["CONTREE_HOOK_INSTRUCTIONS"];
    HOOK_MEMORY_MB: hooks.memory_mb = "64", env ["CONTREE_HOOK_MEMORY_MB"];
    API_TIMEOUT: api.timeout = "30", env ["CONTREE_API_TIMEOUT"];
    API_CONCURRENCY: api.concurrency = "8", env ["CONTREE_API_CONCURRENCY", "CONTREE_CONCURRENCY"];
    LIMIT_MEMORY: limits.memory = "50%", env ["CONTREE_LIMITS_MEMORY"];
    LIMIT_PIDS: limits.pids = "4096", env ["CONTREE_LIMITS_PIDS"];
    LIMIT_CPUS: limits.cpus = "none", env ["CONTREE_LIMITS_CPUS"];
    LIMIT_MAX_LAYER_BYTES: limits.max_layer_bytes = "12G", env ["CONTREE_LIMITS_MAX_LAYER_BYTES"];
    /// How long a local store keeps finished operations' event logs whole (`engine::prune`):
    /// a month of a user's history, which `show` and `op events` can still replay.
    STORE_EVENTS_MAX_AGE: store.events_max_age = "30d", env ["CONTREE_STORE_EVENTS_MAX_AGE"];
    /// The most they may take together; the oldest are cut first.
    STORE_EVENTS_MAX_BYTES: store.events_max_bytes = "1G",
        env ["CONTREE_STORE_EVENTS_MAX_BYTES"];
    /// How much the local store may take before a run's upkeep collects what nothing uses
    /// (`engine::upkeep`): a size, a share of the filesystem the store is on, or `none`.
    STORE_MAX_SIZE: store.max_size = "10%", env ["CONTREE_STORE_MAX_SIZE"];
}

/// A value that does not read as its key wants.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("'{0}' is not an age (like 45s, 30m, 12h or 7d)")]
    Age(String),
    #[error("'{0}' is not a share of the filesystem (from 0% to 100%)")]
    Share(String),
    #[error("{0} (or a share like 10%, or none)")]
    Budget(Box<crate::wire::limits::LimitError>),
    #[error(transparent)]
    Size(Box<crate::wire::limits::LimitError>),
}

impl From<crate::wire::limits::LimitError> for ValueError {
    fn from(e: crate::wire::limits::LimitError) -> ValueError {
        ValueError::Size(Box::new(e))
    }
}

/// A bad setting of a layered key, named by where it came from (none: the built-in default).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingError {
    #[error("{file}: {source}")]
    File { file: String, source: ConfigError },
    #[error("{origin}: {source}")]
    Value { origin: Origin, source: ValueError },
    #[error(transparent)]
    Default(ValueError),
}

impl Config {
    /// config.toml in `config_dir`; a file that cannot be read or parsed is named.
    pub fn load_in(config_dir: &Path) -> Result<Config, SettingError> {
        let file = self::file(config_dir);
        Config::load(&file).map_err(|source| SettingError::File {
            file: file.display().to_string(),
            source,
        })
    }

    /// `key`'s value read by `parse`, from its highest layer or its default; a bad one is
    /// named by where it came from.
    pub fn read<T>(
        &self,
        key: &Key,
        parse: impl Fn(&str) -> Result<T, ValueError>,
    ) -> Result<T, SettingError> {
        match self.layered(key) {
            Some(set) => parse(&set.text).map_err(|source| SettingError::Value {
                origin: set.origin,
                source,
            }),
            None => parse(key.default).map_err(SettingError::Default),
        }
    }
}

/// `45`, `45s`, `30m`, `12h` or `7d` (`serve --events-max-age`, `[store] events_max_age`).
pub fn parse_age(text: &str) -> Result<std::time::Duration, ValueError> {
    let text = text.trim();
    let bad = || ValueError::Age(text.to_string());
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&text[..i], &text[i..]),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(unit)))
}

/// Where a setting's value came from; messages about a bad value name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Env(&'static str),
    File { path: Option<PathBuf>, key: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Env(name) => f.write_str(name),
            Origin::File { path: Some(p), key } => write!(f, "{}: {key}", p.display()),
            Origin::File { path: None, key } => write!(f, "config.toml: {key}"),
        }
    }
}

/// A setting's text (numbers as their text) and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layered {
    pub text: String,
    pub origin: Origin,
}

impl Config {
    /// `key` from the highest layer that gives it: the environment, else config.toml.
    /// A value of another TOML type than string or number comes back as its TOML text, for
    /// its reader to refuse.
    pub fn layered(&self, key: &Key) -> Option<Layered> {
        layered_with(self, key, |name| std::env::var(name).ok())
    }
}

fn layered_with(
    config: &Config,
    key: &Key,
    env: impl Fn(&str) -> Option<String>,
) -> Option<Layered> {
    for name in key.env {
        if let Some(text) = env(name).filter(|v| !v.is_empty()) {
            return Some(Layered {
                text,
                origin: Origin::Env(name),
            });
        }
    }
    let value = config
        .table
        .get(key.section)
        .and_then(|s| s.as_table())
        .and_then(|s| s.get(key.name))?;
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => other.to_string(),
    };
    Some(Layered {
        text,
        origin: Origin::File {
            path: config.path.clone(),
            key: format!("{}.{}", key.section, key.name),
        },
    })
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
        assert_eq!(c.plugins, Some(Err(ConfigError::PluginsNotTable)));
        assert_eq!(c.limits, Some(Err(ConfigError::LimitsNotTable)));
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
            Err(ConfigError::PluginPathItem)
        );
        assert_eq!(p("[plugins]\npath = 3\n"), Err(ConfigError::PluginPath));
    }

    #[test]
    fn token_entries_need_two_words_and_say_which_entry_is_wrong() {
        let t = |text: &str| Config::parse(text).unwrap().serve.tokens.unwrap();
        assert_eq!(t("[serve]\ntokens = 1\n"), Err(ConfigError::TokensNotList));
        assert_eq!(
            t("[[serve.tokens]]\ntoken = \"a\"\nnamespace = \"n\"\n\
               [[serve.tokens]]\ntoken = \"b c\"\nnamespace = \"n\"\n"),
            Err(ConfigError::TokenWord {
                entry: 2,
                name: "token"
            })
        );
        assert_eq!(
            t("[[serve.tokens]]\ntoken = \"a\"\n"),
            Err(ConfigError::TokenWord {
                entry: 1,
                name: "namespace"
            })
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
        assert!(matches!(err, ConfigError::Syntax(ref m) if !m.is_empty()));
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

    #[test]
    fn the_environment_wins_over_the_file_and_each_value_says_where_it_came_from() {
        let mut c = Config::parse("[hooks]\ntime_ms = 250\n[api]\nconcurrency = \"3\"\n").unwrap();
        c.path = Some(PathBuf::from("/etc/c.toml"));
        let none = |_: &str| None;
        let got = layered_with(&c, &HOOK_TIME_MS, none).unwrap();
        assert_eq!(got.text, "250");
        assert_eq!(got.origin.to_string(), "/etc/c.toml: hooks.time_ms");
        let env = |name: &str| (name == "CONTREE_HOOK_TIME_MS").then(|| "40".to_string());
        let got = layered_with(&c, &HOOK_TIME_MS, env).unwrap();
        assert_eq!(
            (got.text.as_str(), got.origin),
            ("40", Origin::Env("CONTREE_HOOK_TIME_MS"))
        );
        // The older name still counts, after the documented one.
        let old = |name: &str| (name == "CONTREE_CONCURRENCY").then(|| "5".to_string());
        assert_eq!(layered_with(&c, &API_CONCURRENCY, old).unwrap().text, "5");
        let both = |name: &str| {
            Some(
                if name == "CONTREE_CONCURRENCY" {
                    "5"
                } else {
                    "6"
                }
                .to_string(),
            )
        };
        assert_eq!(layered_with(&c, &API_CONCURRENCY, both).unwrap().text, "6");
        assert_eq!(layered_with(&c, &API_CONCURRENCY, none).unwrap().text, "3");
        assert!(layered_with(&c, &API_TIMEOUT, none).is_none());
        // An empty variable is no setting.
        let empty = |_: &str| Some(String::new());
        assert_eq!(layered_with(&c, &HOOK_TIME_MS, empty).unwrap().text, "250");
    }

    #[test]
    fn every_key_and_variable_is_documented() {
        let doc = include_str!("../docs/configuration.md");
        for key in KEYS {
            let name = format!("`{}.{}`", key.section, key.name);
            assert!(
                doc.contains(&name),
                "{name} is not in docs/configuration.md"
            );
            for var in key.env {
                assert!(doc.contains(var), "{var} is not in docs/configuration.md");
            }
            assert!(
                doc.contains(&format!("`{}`", key.default)),
                "{name}'s default"
            );
        }
    }
}
