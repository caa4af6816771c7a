//! Finding plugins and answering "who provides this name".
//!
//! Where plugins come from, in this order (a file found twice counts once, first place
//! wins): `--plugin PATH` (repeatable), `CONTREE_PLUGIN_PATH` (`:`-separated), the
//! `[plugins] path` list of `config.toml` in the config dir, and `plugins/` in the data
//! dir. Each place is a plugin file or a directory whose `*.so` files are plugins (not
//! recursive). A missing directory is skipped; a missing file is an error entry.
//!
//! Every file found becomes an [`Entry`], loaded or failed with the reason. Failures and
//! clashes only matter to a run that asks for a name: that run gets the error; any other
//! run is unaffected.

use super::library::{self, LoadedPlugin};
use super::resolver::PluginResolver;
use super::PluginError;
use crate::attach::resolve::{SchemeInfo, Schemes};
use crate::attach::Resolver;
use crate::paths::Paths;
use contree_plugin::msg::FormatterDecl;
use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where a plugin file was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    Config,
    DataDir,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Flag => "--plugin",
            Origin::Env => "CONTREE_PLUGIN_PATH",
            Origin::Config => "config",
            Origin::DataDir => "data dir",
        }
    }
}

/// One plugin file and what became of it.
#[derive(Debug)]
pub struct Entry {
    pub file: PathBuf,
    pub origin: Origin,
    pub plugin: Result<&'static LoadedPlugin, PluginError>,
}

/// Every plugin found, loaded once.
#[derive(Debug, Default)]
pub struct Registry {
    pub entries: Vec<Entry>,
    /// Formatter name → the plugins providing it (more than one is a clash).
    formatters: BTreeMap<String, Vec<(&'static LoadedPlugin, FormatterDecl)>>,
    /// Scheme → the plugins providing it.
    schemes: BTreeMap<String, Vec<&'static LoadedPlugin>>,
    resolvers: BTreeMap<String, PluginResolver>,
}

impl Registry {
    /// Finds and loads every plugin in `places`; resolvers keep content under `content_dir`.
    pub fn load(
        places: &[(PathBuf, Origin)],
        config_error: Option<PluginError>,
        content_dir: &Path,
    ) -> Registry {
        let mut reg = Registry::default();
        if let Some(e) = config_error {
            let file = match &e {
                PluginError::Config { path, .. } => path.clone(),
                _ => PathBuf::new(),
            };
            reg.entries.push(Entry {
                file,
                origin: Origin::Config,
                plugin: Err(e),
            });
        }
        let mut seen = BTreeSet::new();
        for (file, origin) in files(places) {
            let key = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if !seen.insert(key) {
                continue;
            }
            let plugin = library::load(&file);
            crate::debug!(
                "plugin {}: {}",
                file.display(),
                match &plugin {
                    Ok(p) => format!("{} {}", p.name, p.version),
                    Err(e) => e.to_string(),
                }
            );
            reg.entries.push(Entry {
                file,
                origin,
                plugin,
            });
        }
        for plugin in reg.entries.iter().filter_map(|e| e.plugin.as_ref().ok()) {
            for f in &plugin.manifest.formatters {
                reg.formatters
                    .entry(f.name.clone())
                    .or_default()
                    .push((plugin, f.clone()));
            }
            for r in &plugin.manifest.resolvers {
                reg.schemes
                    .entry(r.scheme.clone())
                    .or_default()
                    .push(plugin);
            }
        }
        for (scheme, providers) in &reg.schemes {
            if let [only] = providers.as_slice() {
                reg.resolvers.insert(
                    scheme.clone(),
                    PluginResolver::new(only, scheme, content_dir),
                );
            }
        }
        reg
    }

    /// The plugin providing formatter `name`, if any; two is an error naming both.
    pub fn formatter(
        &self,
        name: &str,
    ) -> Result<Option<(&'static LoadedPlugin, &FormatterDecl)>, PluginError> {
        match self.formatters.get(name).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([(plugin, decl)]) => Ok(Some((plugin, decl))),
            Some([(a, _), (b, _), ..]) => Err(PluginError::Clash {
                what: "output format",
                name: name.to_string(),
                first: a.path.clone(),
                second: b.path.clone(),
            }),
        }
    }

    /// Every formatter name plugins provide.
    pub fn formatter_names(&self) -> Vec<String> {
        self.formatters.keys().cloned().collect()
    }

    fn scheme_clash(&self, name: &str) -> Option<PluginError> {
        match self.schemes.get(name).map(Vec::as_slice) {
            Some([a, b, ..]) => Some(PluginError::Clash {
                what: "file scheme",
                name: format!("{name}:"),
                first: a.path.clone(),
                second: b.path.clone(),
            }),
            _ => None,
        }
    }

    /// Problems to show next to `entry` in `plugins list`: the names it shares with
    /// another plugin.
    pub fn clashes(&self, plugin: &LoadedPlugin) -> Vec<String> {
        let mut out = Vec::new();
        let others = |list: Vec<&LoadedPlugin>| -> Vec<String> {
            list.into_iter()
                .filter(|p| p.path != plugin.path)
                .map(|p| p.path.display().to_string())
                .collect()
        };
        for f in &plugin.manifest.formatters {
            let list = self.formatters[&f.name].iter().map(|(p, _)| *p).collect();
            for other in others(list) {
                out.push(format!(
                    "output format '{}' also provided by '{other}'",
                    f.name
                ));
            }
        }
        for r in &plugin.manifest.resolvers {
            for other in others(self.schemes[&r.scheme].clone()) {
                out.push(format!(
                    "file scheme '{}:' also provided by '{other}'",
                    r.scheme
                ));
            }
        }
        out
    }

    /// One line per file that did not load.
    pub fn failures(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|e| e.plugin.as_ref().err().map(|err| err.to_string()))
            .collect()
    }
}

/// The plugin files of `places`, in order.
fn files(places: &[(PathBuf, Origin)]) -> Vec<(PathBuf, Origin)> {
    let mut out = Vec::new();
    for (place, origin) in places {
        if place.is_dir() {
            let Ok(dir) = std::fs::read_dir(place) else {
                continue;
            };
            let mut found: Vec<PathBuf> = dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "so") && !p.is_dir())
                .collect();
            found.sort();
            out.extend(found.into_iter().map(|p| (p, *origin)));
        } else if place.exists()
            || place.extension().is_some_and(|x| x == "so")
            || *origin == Origin::Flag
        {
            // A named file that is missing is still listed: loading it says why it failed.
            out.push((place.clone(), *origin));
        }
    }
    out
}

/// The plugins of one invocation: where to look, loaded on first use.
pub struct Plugins {
    explicit: Vec<PathBuf>,
    paths: Paths,
    registry: OnceCell<Registry>,
}

impl Plugins {
    /// `explicit` are the `--plugin` paths, in order.
    pub fn new(explicit: Vec<PathBuf>, paths: &Paths) -> Plugins {
        Plugins {
            explicit: explicit
                .into_iter()
                .map(|p| std::path::absolute(&p).unwrap_or(p))
                .collect(),
            paths: paths.clone(),
            registry: OnceCell::new(),
        }
    }

    /// True when `--plugin` was given: those are loaded (and must load) for every run.
    pub fn has_explicit(&self) -> bool {
        !self.explicit.is_empty()
    }

    /// The first `--plugin` that failed to load, if any.
    pub fn explicit_failure(&self) -> Option<PluginError> {
        if !self.has_explicit() {
            return None;
        }
        self.registry()
            .entries
            .iter()
            .filter(|e| e.origin == Origin::Flag)
            .find_map(|e| e.plugin.as_ref().err().cloned())
    }

    /// Finds and loads every plugin (once).
    pub fn registry(&self) -> &Registry {
        self.registry.get_or_init(|| {
            crate::log::trace("plugins: loading");
            let (places, config_error) = self.places();
            let reg = Registry::load(&places, config_error, &self.content_dir());
            crate::log::trace("plugins: loaded");
            reg
        })
    }

    /// Where resolvers' in-memory files are kept (by content hash) for upload.
    pub fn content_dir(&self) -> PathBuf {
        self.paths.data.join("cache").join("resolved")
    }

    /// The config file with a `[plugins] path` list.
    pub fn config_file(&self) -> PathBuf {
        crate::config::file(&self.paths.config)
    }

    /// Every place to look, in order, and the config file's error if it cannot be read.
    pub fn places(&self) -> (Vec<(PathBuf, Origin)>, Option<PluginError>) {
        let mut places: Vec<(PathBuf, Origin)> = self
            .explicit
            .iter()
            .map(|p| (p.clone(), Origin::Flag))
            .collect();
        if let Some(list) = std::env::var_os("CONTREE_PLUGIN_PATH") {
            places.extend(
                std::env::split_paths(&list)
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| (std::path::absolute(&p).unwrap_or(p), Origin::Env)),
            );
        }
        let config = self.config_file();
        let config_error = match config_paths(&config) {
            Ok(list) => {
                places.extend(list.into_iter().map(|p| (p, Origin::Config)));
                None
            }
            Err(e) => Some(e),
        };
        places.push((self.paths.data.join("plugins"), Origin::DataDir));
        (places, config_error)
    }
}

/// `[plugins] path = ["dir", "file.so"]` (or one string) from `config.toml`; relative
/// entries are relative to the config file's directory. No file: no entries.
pub fn config_paths(file: &Path) -> Result<Vec<PathBuf>, PluginError> {
    let bad = |reason: crate::config::ConfigError| PluginError::Config {
        path: file.to_path_buf(),
        reason,
    };
    let Some(plugins) = crate::config::Config::load(file).map_err(bad)?.plugins else {
        return Ok(Vec::new());
    };
    let base = file.parent().unwrap_or(Path::new("/"));
    Ok(plugins
        .map_err(bad)?
        .path
        .iter()
        .map(|p| base.join(p))
        .collect())
}

impl Schemes for Plugins {
    fn scheme(&self, name: &str) -> Result<Option<SchemeInfo>, PluginError> {
        let reg = self.registry();
        if let Some(clash) = reg.scheme_clash(name) {
            return Err(clash);
        }
        Ok(reg.schemes.get(name).and_then(|p| p.first()).and_then(|p| {
            p.manifest
                .resolvers
                .iter()
                .find(|r| r.scheme == name)
                .map(|r| SchemeInfo {
                    parts: r.parts as usize,
                    usage: r.usage.clone().unwrap_or_else(|| {
                        let rest: Vec<&str> = vec!["REST"; r.parts as usize];
                        format!("{name}:{}", rest.join(":"))
                    }),
                })
        }))
    }

    fn resolver(&self, name: &str) -> Result<Option<&dyn Resolver>, PluginError> {
        let reg = self.registry();
        if let Some(clash) = reg.scheme_clash(name) {
            return Err(clash);
        }
        Ok(reg.resolvers.get(name).map(|r| r as &dyn Resolver))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(root: &Path) -> Paths {
        Paths {
            data: root.join("data"),
            config: root.join("config"),
            owns_data: true,
        }
    }

    #[test]
    fn directories_give_their_so_files_in_name_order_and_missing_places_are_skipped() {
        let (tmp, dir) = crate::paths::temp_path("p");
        std::fs::create_dir_all(dir.join("sub.so")).unwrap();
        for f in ["b.so", "a.so", "notes.txt"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let got = files(&[
            (dir.clone(), Origin::Env),
            (tmp.path().join("nodir"), Origin::Env),
            (tmp.path().join("gone.so"), Origin::Config),
        ]);
        let names: Vec<_> = got
            .iter()
            .map(|(p, _)| p.strip_prefix(tmp.path()).unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [PathBuf::from("p/a.so"), "p/b.so".into(), "gone.so".into()]
        );
    }

    #[test]
    fn config_lists_paths_relative_to_itself() {
        let (tmp, file) = crate::paths::temp_path("config.toml");
        assert!(config_paths(&file).unwrap().is_empty());
        std::fs::write(&file, "[plugins]\npath = [\"p\", \"/abs/x.so\"]\n").unwrap();
        assert_eq!(
            config_paths(&file).unwrap(),
            [tmp.path().join("p"), PathBuf::from("/abs/x.so")]
        );
        std::fs::write(&file, "[plugins]\npath = \"one\"\n[other]\nx = 1\n").unwrap();
        assert_eq!(config_paths(&file).unwrap(), [tmp.path().join("one")]);
        std::fs::write(&file, "[plugins]\npath = 3\n").unwrap();
        let err = config_paths(&file).unwrap_err().to_string();
        assert!(
            err.contains("`plugins.path` must be a string or a list"),
            "{err}"
        );
        std::fs::write(&file, "[plugins\n").unwrap();
        assert!(config_paths(&file)
            .unwrap_err()
            .to_string()
            .starts_with(&format!("config file '{}': ", file.display())));
    }

    #[test]
    fn places_come_in_order_flag_env_config_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let p = paths(tmp.path());
        std::fs::create_dir_all(&p.config).unwrap();
        std::fs::write(p.config.join("config.toml"), "[plugins]\npath = [\"c\"]\n").unwrap();
        let plugins = Plugins::new(vec![PathBuf::from("/f.so")], &p);
        let (places, err) = plugins.places();
        assert!(err.is_none());
        let origins: Vec<Origin> = places.iter().map(|(_, o)| *o).collect();
        // CONTREE_PLUGIN_PATH may or may not be set for the test process; drop it.
        let origins: Vec<Origin> = origins.into_iter().filter(|o| *o != Origin::Env).collect();
        assert_eq!(origins, [Origin::Flag, Origin::Config, Origin::DataDir]);
        assert_eq!(places.last().unwrap().0, p.data.join("plugins"));
    }

    #[test]
    fn a_broken_file_is_an_entry_with_its_reason_and_provides_nothing() {
        let (tmp, junk) = crate::paths::temp_path("junk.so");
        std::fs::write(&junk, "junk").unwrap();
        let reg = Registry::load(&[(junk.clone(), Origin::Flag)], None, tmp.path());
        assert_eq!(reg.entries.len(), 1);
        assert!(reg.entries[0].plugin.is_err());
        assert_eq!(reg.failures().len(), 1);
        assert!(reg.formatter("junk").unwrap().is_none());
        assert!(reg.formatter_names().is_empty());
    }
}
