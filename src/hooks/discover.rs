//! Where hook files come from, in the order they run: `hooks/*.lua` in the config dir, then
//! the nearest project's `.contree/hooks/*.lua` (only when trusted), then `--hook FILE`s in
//! command-line order. Each file is read once here; the bytes that were hashed for trust
//! are the bytes that run.

use super::trust::{TrustStore, Verdict};
use super::HookError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Config,
    Project,
    Flag,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Project => "project",
            Origin::Flag => "flag",
        }
    }
}

/// One hook file and whether it may run.
#[derive(Debug, Clone)]
pub struct HookFile {
    pub path: PathBuf,
    pub origin: Origin,
    /// Config and flag files are the user's own; project files need `hooks trust`.
    pub trusted: bool,
    pub source: Vec<u8>,
}

/// Everything found, with the one-line reason why untrusted project hooks do not run.
#[derive(Debug, Default)]
pub struct Found {
    pub files: Vec<HookFile>,
    pub untrusted: Option<String>,
}

impl Found {
    pub fn runnable(&self) -> impl Iterator<Item = &HookFile> {
        self.files.iter().filter(|f| f.trusted)
    }

    /// Reads and adds a file the user named or put in the config directory: trusted, as
    /// their own.
    fn add_own(&mut self, path: PathBuf, origin: Origin) -> Result<(), HookError> {
        let source = read(&path)?;
        self.files.push(HookFile {
            path,
            origin,
            trusted: true,
            source,
        });
        Ok(())
    }
}

/// The `.contree/hooks` directory of the nearest project at or above `start`.
pub fn find_project(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let hooks = dir.join(".contree").join("hooks");
        hooks.is_dir().then_some(hooks)
    })
}

/// The project root of a `.contree/hooks` directory (for messages and `hooks trust`).
pub fn project_root(hooks_dir: &Path) -> &Path {
    hooks_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(hooks_dir)
}

/// `*.lua` regular files of a directory, by name; a missing directory has none.
fn lua_files(dir: &Path) -> Result<Vec<PathBuf>, HookError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(HookError::Read {
                path: dir.display().to_string(),
                source: e,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lua") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<Vec<u8>, HookError> {
    std::fs::read(path).map_err(|e| HookError::Read {
        path: path.display().to_string(),
        source: e,
    })
}

/// A project's hook files with their content, and their hashes (file name → sha256).
pub type ProjectFiles = (Vec<(PathBuf, Vec<u8>)>, BTreeMap<String, String>);

/// The project's hook files with their content and hashes.
pub fn project_files(hooks_dir: &Path) -> Result<ProjectFiles, HookError> {
    let mut files = Vec::new();
    let mut hashes = BTreeMap::new();
    for path in lua_files(hooks_dir)? {
        let source = read(&path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hashes.insert(name, crate::sha256::of(&source));
        files.push((path, source));
    }
    Ok((files, hashes))
}

/// Finds every hook file for a run from `cwd` with the `--hook` flags.
pub fn discover(
    config_dir: &Path,
    data_dir: &Path,
    cwd: &Path,
    flags: &[String],
) -> Result<Found, HookError> {
    let mut found = Found::default();
    for path in lua_files(&config_dir.join("hooks"))? {
        found.add_own(path, Origin::Config)?;
    }
    if let Some(dir) = find_project(cwd) {
        let (files, hashes) = project_files(&dir)?;
        if !files.is_empty() {
            let dir = dir.canonicalize().unwrap_or(dir);
            let root = project_root(&dir).display().to_string();
            let verdict = match TrustStore::open(data_dir) {
                Ok(store) => store.verdict(&dir, &hashes),
                Err(e) => Verdict::Changed(format!("the trust store is unreadable: {e}")),
            };
            let trusted = verdict == Verdict::Trusted;
            found.untrusted = match verdict {
                Verdict::Trusted => None,
                Verdict::NeverTrusted => Some(format!(
                    "project hooks in {} are not trusted, so they did not run; review them, then: contree hooks trust {root}",
                    dir.display()
                )),
                Verdict::Changed(what) => Some(format!(
                    "project hooks in {} changed since they were trusted ({what}), so they did not run; review them, then: contree hooks trust {root}",
                    dir.display()
                )),
            };
            for (path, source) in files {
                found.files.push(HookFile {
                    path,
                    origin: Origin::Project,
                    trusted,
                    source,
                });
            }
        }
    }
    for flag in flags {
        found.add_own(cwd.join(flag), Origin::Flag)?;
    }
    Ok(found)
}
