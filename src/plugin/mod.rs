//! Plugins: output formatters and attachment resolvers loaded from shared libraries at run
//! time, through the versioned C ABI of the `contree-plugin` crate (`plugins/sdk`).
//!
//! `library` loads one file and checks it before any call; `registry` finds the files
//! (`--plugin`, `CONTREE_PLUGIN_PATH`, the config file, the data dir's `plugins/`) and
//! answers "who provides this name"; `formatter` and `resolver` adapt a plugin to the
//! pipeline's own [`Formatter`](crate::format::formatter::Formatter) and
//! [`Resolver`](crate::attach::Resolver) traits, the ones the built-ins implement.
//!
//! Loading is lazy: a run that asks for no plugin name loads nothing, so a broken plugin
//! cannot break it. A library is never unloaded (its code may be referenced until exit),
//! and every failure becomes a [`PluginError`] naming the plugin file.

pub mod formatter;
pub mod library;
pub mod registry;
pub mod resolver;

pub use formatter::formatter;
pub use registry::Plugins;

use std::path::PathBuf;

/// Everything that can go wrong with a plugin. The Display texts are the user-facing
/// messages and always name the file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("plugin '{path}' cannot be loaded as a shared library: {reason}")]
    Open { path: PathBuf, reason: String },

    #[error("plugin '{path}' is not a contree plugin: it exports no `{symbol}` symbol")]
    NoEntry { path: PathBuf, symbol: String },

    #[error("plugin '{path}' was built for plugin ABI v{found}; this contree loads v{expected}")]
    Abi {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error("plugin '{path}' has an invalid descriptor: {reason}")]
    Descriptor {
        path: PathBuf,
        reason: library::DescriptorError,
    },

    #[error("plugin '{name}' ({path}) failed in {call}: {message}")]
    Failed {
        name: String,
        path: PathBuf,
        call: String,
        message: String,
    },

    #[error("plugin '{name}' ({path}) panicked in {call}: {message}")]
    Panicked {
        name: String,
        path: PathBuf,
        call: String,
        message: String,
    },

    #[error("{what} '{name}' is provided by two plugins: '{first}' and '{second}'")]
    Clash {
        what: &'static str,
        name: String,
        first: PathBuf,
        second: PathBuf,
    },

    #[error("config file '{path}': {reason}")]
    Config {
        path: PathBuf,
        reason: crate::config::ConfigError,
    },

    #[error("unknown output format '{name}' for run (available: {})", available.join(", "))]
    UnknownFormatter {
        name: String,
        available: Vec<String>,
        /// Load failures, any of which might have provided it.
        failed: Vec<String>,
    },
}
