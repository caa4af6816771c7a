//! Resource limits of a run: what a request asks (`resources_limits`), the defaults of
//! config.toml's `[limits]` and the ceilings of `[serve.limits]`, and the effective values a
//! supervisor applies: memory, processes and CPU through cgroups (`cgroup`), the writable
//! layer's size through a filesystem of its own or a guard (`layerlimit`).
//!
//! Sizes, process counts and CPU shares are read by `wire::limits`, for `run`'s flags and
//! the config alike, so both accept and refuse the same words.

pub use crate::wire::limits::{
    check_layer, check_memory, human, parse_cpus, parse_pids, parse_size, validate, LimitError,
    Setting, GIB,
};

use crate::wire::{ResourcesLimits, SpawnRequest};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The API's default for `max_layer_bytes`.
pub const DEFAULT_LAYER_BYTES: u64 = 12 * GIB;
/// Processes and threads a run may have when nothing else is said: enough for parallel
/// builds, far below the host's pid space (often 32768), so a fork bomb stops there.
pub const DEFAULT_PIDS: u64 = 4096;
/// The memory a run may take when nothing else is said, in percent of the host's RAM.
pub const DEFAULT_MEMORY_PERCENT: u64 = 50;

/// One set of limits; `None` means no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    pub layer: Option<u64>,
}

impl Settings {
    /// The built-in defaults: they protect the host without getting in a build's way.
    pub fn builtin() -> Settings {
        Settings {
            memory: host_ram().map(|ram| ram / 100 * DEFAULT_MEMORY_PERCENT),
            pids: Some(DEFAULT_PIDS),
            cpus: None,
            layer: Some(DEFAULT_LAYER_BYTES),
        }
    }
}

/// The host's RAM in bytes (sysinfo(2)).
pub fn host_ram() -> Option<u64> {
    // SAFETY: sysinfo fills the plain struct we hand it.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to that struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    Some(info.totalram as u64 * info.mem_unit.max(1) as u64)
}

/// config.toml's `[limits]` (the defaults of every run) and `[serve.limits]` (what `serve`
/// lets a client ask for, at most).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub defaults: Settings,
    pub ceilings: Settings,
}

impl Config {
    /// Reads `config.toml` in `config_dir`; no file or no table means the built-in values.
    /// Ceilings not given are the defaults: a client can ask for less, not for more.
    pub fn load(config_dir: &Path) -> Result<Config, LimitError> {
        let path = crate::config::file(config_dir);
        let text = crate::config::read(&path).map_err(|reason| LimitError::ConfigFile {
            path: path.clone(),
            reason,
        })?;
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, LimitError> {
        Self::parse_with(text, path, |name| std::env::var(name).ok())
    }

    /// The layers in order: built-in, config.toml's `[limits]`, `CONTREE_LIMITS_*`; the
    /// ceilings (`[serve.limits]`) over the result.
    fn parse_with(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, LimitError> {
        let builtin = Settings::builtin();
        let (limits, serve_limits) = if text.contains("limits") {
            let config =
                crate::config::Config::parse(text).map_err(|reason| LimitError::ConfigFile {
                    path: path.to_path_buf(),
                    reason,
                })?;
            (config.limits, config.serve.limits)
        } else {
            (None, None)
        };
        let mut defaults = settings(limits, "limits", path, &builtin)?;
        for key in crate::config::KEYS.iter().filter(|k| k.section == "limits") {
            let Some((var, value)) = key
                .env
                .iter()
                .find_map(|var| env(var).filter(|v| !v.is_empty()).map(|v| (*var, v)))
            else {
                continue;
            };
            set(&mut defaults, key.name, &value).map_err(|reason| LimitError::Env {
                var,
                value: value.clone(),
                reason,
            })?;
        }
        let ceilings = settings(serve_limits, "serve.limits", path, &defaults)?;
        Ok(Config { defaults, ceilings })
    }
}

/// One table's settings over `base`: `memory` (a size or `N%` of RAM), `pids`, `cpus`,
/// `max_layer_bytes`; each may be `"none"`.
fn settings(
    section: Option<Result<crate::config::Limits, crate::config::ConfigError>>,
    table: &'static str,
    path: &Path,
    base: &Settings,
) -> Result<Settings, LimitError> {
    let mut out = base.clone();
    let Some(section) = section else {
        return Ok(out);
    };
    let fail = |key: &str, reason: Setting| LimitError::Config {
        path: path.to_path_buf(),
        table,
        key: key.to_string(),
        reason,
    };
    for (key, setting) in &section
        .map_err(|reason| fail("", Setting::Table(reason)))?
        .entries
    {
        let text = match setting {
            crate::config::Setting::Text(text) => text.clone(),
            crate::config::Setting::Other => return Err(fail(key, Setting::NotText)),
        };
        set(&mut out, key, &text).map_err(|e| fail(key, e))?;
    }
    Ok(out)
}

/// Sets `key` of `out` from its text (`none` lifts the limit).
fn set(out: &mut Settings, key: &str, text: &str) -> Result<(), Setting> {
    let none = text.trim().eq_ignore_ascii_case("none");
    match key {
        "memory" if none => out.memory = None,
        "memory" => {
            out.memory = Some(match text.trim().strip_suffix('%') {
                Some(p) => {
                    let p: u64 = p
                        .trim()
                        .parse()
                        .ok()
                        .filter(|p| (1..=100).contains(p))
                        .ok_or_else(|| Setting::Percent(text.to_string()))?;
                    host_ram().ok_or(Setting::UnknownRam)? / 100 * p
                }
                None => parse_size(text)?,
            });
            check_memory(out.memory)?;
        }
        "pids" if none => out.pids = None,
        "pids" => out.pids = Some(parse_pids(text)?),
        "cpus" if none => out.cpus = None,
        "cpus" => out.cpus = Some(parse_cpus(text)?),
        "max_layer_bytes" if none => out.layer = None,
        "max_layer_bytes" => {
            let size = parse_size(text)?;
            check_layer(size)?;
            out.layer = Some(size);
        }
        _ => return Err(Setting::UnknownKey),
    }
    Ok(())
}

/// The limits a run gets: the request's where it says, else the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes of memory (RAM and swap together).
    pub memory: Option<u64>,
    /// Processes and threads of the command (the sandbox's init comes on top).
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    /// Bytes of the writable layer.
    pub layer: Option<u64>,
    /// The request named the layer's size: it gets a filesystem of that size, so writes
    /// past it fail with ENOSPC (see `layerlimit`).
    pub layer_exact: bool,
}

impl Limits {
    pub fn resolve(req: Option<&ResourcesLimits>, defaults: &Settings) -> Limits {
        let req = req.cloned().unwrap_or_default();
        // 0 asks for no limit.
        let pick = |asked: Option<u64>, default: Option<u64>| match asked {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        Limits {
            memory: pick(req.max_memory_bytes, defaults.memory),
            pids: pick(req.max_pids, defaults.pids),
            cpus: match req.max_cpus {
                Some(0.0) => None,
                Some(c) => Some(c),
                None => defaults.cpus,
            },
            layer: req.max_layer_bytes.or(defaults.layer),
            layer_exact: req.max_layer_bytes.is_some(),
        }
    }

    /// The limits as the exit event and the result show them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "max_memory_bytes": self.memory,
            "max_pids": self.pids,
            "max_cpus": self.cpus,
            "max_layer_bytes": self.layer,
        })
    }
}

/// `serve`: keeps what a client asks within the server's ceilings. A field the client left
/// out gets the server's default, which is within them unless the config says otherwise.
pub fn clamp(req: &mut SpawnRequest, config: &Config) {
    let mut asked = req.resources_limits.clone().unwrap_or_default();
    let ceil = &config.ceilings;
    let clamp_u64 = |asked: &mut Option<u64>, default: Option<u64>, ceiling: Option<u64>| {
        let Some(c) = ceiling else { return };
        match *asked {
            // 0 (no limit) and anything above the ceiling get the ceiling.
            Some(n) if n == 0 || n > c => *asked = Some(c),
            Some(_) => {}
            None if default.is_none_or(|d| d > c) => *asked = Some(c),
            None => {}
        }
    };
    clamp_u64(
        &mut asked.max_memory_bytes,
        config.defaults.memory,
        ceil.memory,
    );
    clamp_u64(&mut asked.max_pids, config.defaults.pids, ceil.pids);
    clamp_u64(
        &mut asked.max_layer_bytes,
        config.defaults.layer,
        ceil.layer,
    );
    if let Some(c) = ceil.cpus {
        match asked.max_cpus {
            Some(n) if n == 0.0 || n > c => asked.max_cpus = Some(c),
            Some(_) => {}
            None if config.defaults.cpus.is_none_or(|d| d > c) => asked.max_cpus = Some(c),
            None => {}
        }
    }
    req.resources_limits = (!asked.is_empty()).then_some(asked);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 GiB of memory, 100 processes, any CPU, the default layer.
    fn gig_and_hundred() -> Settings {
        Settings {
            memory: Some(1 << 30),
            pids: Some(100),
            cpus: None,
            layer: Some(DEFAULT_LAYER_BYTES),
        }
    }

    #[test]
    fn config_sets_defaults_and_serve_ceilings() {
        let text = "[limits]\nmemory = \"1G\"\npids = 100\ncpus = 1.5\nmax_layer_bytes = \"2G\"\n\
                    [serve.limits]\npids = 50\nmemory = \"none\"\n";
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.defaults.memory, Some(1 << 30));
        assert_eq!(c.defaults.pids, Some(100));
        assert_eq!(c.defaults.cpus, Some(1.5));
        assert_eq!(c.defaults.layer, Some(2 << 30));
        assert_eq!(c.ceilings.pids, Some(50));
        assert_eq!(c.ceilings.memory, None);
        assert_eq!(c.ceilings.layer, Some(2 << 30));
    }

    #[test]
    fn config_errors_name_the_file_table_and_key() {
        let err = Config::parse("[limits]\nmemory = \"lots\"\n", Path::new("/x/config.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/x/config.toml: [limits] memory: 'lots' is not a size"),
            "{err}"
        );
        let err = Config::parse("[limits]\nmemroy = 1\n", Path::new("c")).unwrap_err();
        assert!(err.to_string().contains("unknown key"));
    }

    #[test]
    fn the_request_wins_over_defaults_and_zero_lifts_a_limit() {
        let defaults = gig_and_hundred();
        let l = Limits::resolve(None, &defaults);
        assert_eq!(
            (l.memory, l.pids, l.layer_exact),
            (Some(1 << 30), Some(100), false)
        );
        let req = ResourcesLimits {
            max_memory_bytes: Some(0),
            max_pids: Some(10),
            max_layer_bytes: Some(1 << 20),
            max_cpus: Some(0.5),
        };
        let l = Limits::resolve(Some(&req), &defaults);
        assert_eq!(l.memory, None);
        assert_eq!(l.pids, Some(10));
        assert_eq!(l.cpus, Some(0.5));
        assert_eq!((l.layer, l.layer_exact), (Some(1 << 20), true));
    }

    #[test]
    fn serve_keeps_requests_within_its_ceilings() {
        let base = gig_and_hundred();
        let config = Config {
            defaults: base.clone(),
            ceilings: Settings {
                cpus: Some(2.0),
                ..base
            },
        };
        let mut req = SpawnRequest {
            resources_limits: Some(ResourcesLimits {
                max_memory_bytes: Some(0),
                max_pids: Some(50),
                max_cpus: Some(8.0),
                max_layer_bytes: None,
            }),
            ..Default::default()
        };
        clamp(&mut req, &config);
        let got = req.resources_limits.unwrap();
        assert_eq!(got.max_memory_bytes, Some(1 << 30));
        assert_eq!(got.max_pids, Some(50));
        assert_eq!(got.max_cpus, Some(2.0));
        // Left to the default, which is within the ceiling: still not named.
        assert_eq!(got.max_layer_bytes, None);
    }
}
