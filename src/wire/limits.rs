//! The words of a run's resource limits (`ResourcesLimits`): sizes, process counts and CPU
//! shares as `run`'s flags, config.toml and messages write them, and the least a request
//! may ask for. The engine applies limits (`engine::limits`); what they are called is
//! shared by everyone who reads or writes one.

use super::ResourcesLimits;
use std::path::PathBuf;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Below this a sandbox cannot even start its shell.
pub const MIN_MEMORY: u64 = 4 * MIB;
/// The smallest writable layer: the filesystem that holds it needs room for its own
/// metadata (see `engine::layerlimit`).
pub const MIN_LAYER: u64 = MIB;
pub const MIN_CPUS: f64 = 0.01;

/// What is wrong with a limit as written: a flag's word, or a key of config.toml's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    #[error("'{0}' is not a size: write bytes, or a number with K, M, G or T (KiB, MiB, GiB, TiB), like 512M or 1.5G")]
    Size(String),
    #[error("'{0}' is not a process count: write a whole number of at least 1")]
    Pids(String),
    #[error("'{0}' is not a number of CPUs: write a number of at least 0.01, like 0.5 or 2")]
    Cpus(String),
    #[error("{what} {value} is below the smallest allowed, {min}")]
    TooSmall {
        what: &'static str,
        value: String,
        min: String,
    },
    #[error("{path}: [{table}] {key}: {reason}")]
    Config {
        path: PathBuf,
        table: &'static str,
        key: String,
        reason: Setting,
    },
    /// config.toml cannot be read or parsed (in `config`'s words).
    #[error("{path}: {reason}")]
    ConfigFile {
        path: PathBuf,
        reason: crate::config::ConfigError,
    },
    /// A `CONTREE_LIMITS_*` variable (see `config::KEYS`).
    #[error("{var}={value}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: Setting,
    },
}

/// What is wrong with one setting of a `[limits]` table (or its variable).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Setting {
    /// The table itself, in `config`'s words.
    #[error("{0}")]
    Table(crate::config::ConfigError),
    #[error("must be a string or a number")]
    NotText,
    #[error("'{0}' is not a percentage from 1% to 100%")]
    Percent(String),
    #[error("the host's RAM is unknown")]
    UnknownRam,
    #[error("unknown key (expected memory, pids, cpus or max_layer_bytes)")]
    UnknownKey,
    #[error(transparent)]
    Value(Box<LimitError>),
}

impl From<LimitError> for Setting {
    fn from(e: LimitError) -> Setting {
        Setting::Value(Box::new(e))
    }
}

/// `512`, `64K`, `512M`, `1.5G`, `2T` (binary units; `KiB`… and lower case accepted).
/// Decimal units (`MB`) are refused rather than guessed at.
pub fn parse_size(text: &str) -> Result<u64, LimitError> {
    let bad = || LimitError::Size(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = match unit.trim() {
        "" | "b" | "B" => 1,
        "k" | "K" | "KiB" | "kiB" => KIB,
        "m" | "M" | "MiB" => MIB,
        "g" | "G" | "GiB" => GIB,
        "t" | "T" | "TiB" => 1 << 40,
        _ => return Err(bad()),
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * unit as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A whole number of processes, at least 1.
pub fn parse_pids(text: &str) -> Result<u64, LimitError> {
    match text.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(LimitError::Pids(text.to_string())),
    }
}

/// CPUs as a decimal number, at least `MIN_CPUS`.
pub fn parse_cpus(text: &str) -> Result<f64, LimitError> {
    match text.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= MIN_CPUS => Ok(n),
        _ => Err(LimitError::Cpus(text.to_string())),
    }
}

/// `1.5 GiB`, `256 MiB`, `12 KiB`: for messages.
pub fn human(bytes: u64) -> String {
    let units = [
        (1u64 << 40, "TiB"),
        (GIB, "GiB"),
        (MIB, "MiB"),
        (KIB, "KiB"),
    ];
    for (size, name) in units {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if (v - v.round()).abs() < 0.005 {
                format!("{} {name}", v.round() as u64)
            } else {
                format!("{v:.1} {name}")
            };
        }
    }
    format!("{bytes} B")
}

/// A memory limit the sandbox can start with.
pub fn check_memory(memory: Option<u64>) -> Result<(), LimitError> {
    match memory {
        Some(m) if m < MIN_MEMORY => Err(LimitError::TooSmall {
            what: "a memory limit of",
            value: human(m),
            min: human(MIN_MEMORY),
        }),
        _ => Ok(()),
    }
}

/// A writable layer's limit big enough for its filesystem.
pub fn check_layer(size: u64) -> Result<(), LimitError> {
    if size < MIN_LAYER {
        return Err(LimitError::TooSmall {
            what: "a writable layer limit of",
            value: human(size),
            min: human(MIN_LAYER),
        });
    }
    Ok(())
}

/// Checks a request's `resources_limits` (the engine refuses what it cannot apply).
pub fn validate(req: &ResourcesLimits) -> Result<(), LimitError> {
    if let Some(size) = req.max_layer_bytes {
        check_layer(size)?;
    }
    if let Some(m) = req.max_memory_bytes.filter(|m| *m > 0) {
        check_memory(Some(m))?;
    }
    if let Some(c) = req.max_cpus.filter(|c| *c != 0.0) {
        if !c.is_finite() || c < MIN_CPUS {
            return Err(LimitError::Cpus(c.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units_and_refuse_the_rest() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("256m").unwrap(), 256 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        for bad in ["", "G", "12MB", "-1M", "1..5G", "0", "1e3", "x"] {
            assert!(parse_size(bad).is_err(), "{bad} was taken");
        }
        assert!(parse_size("12MB")
            .unwrap_err()
            .to_string()
            .contains("like 512M"));
    }

    #[test]
    fn pids_and_cpus_refuse_nonsense() {
        assert_eq!(parse_pids("64").unwrap(), 64);
        assert!(parse_pids("0").is_err());
        assert!(parse_pids("1.5").is_err());
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("nan").is_err());
        assert!(parse_cpus("-1").is_err());
    }

    #[test]
    fn human_sizes_read_well() {
        assert_eq!(human(256 << 20), "256 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(12), "12 B");
    }
}
