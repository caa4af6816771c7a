//! Which project hook directories the user trusts, pinned to the files' content.
//!
//! `contree hooks trust` records the sha256 of every `.lua` file of a project's
//! `.contree/hooks/` in `hooks-trust.json` in the data dir. A directory whose files differ
//! in any way (changed, added, removed) is untrusted again, like direnv: a cloned repository
//! must not run code on the first `contree run`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Entry {
    /// File name → sha256 (lower-case hex).
    files: BTreeMap<String, String>,
    trusted_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    /// Canonical hooks directory → what was trusted.
    dirs: BTreeMap<String, Entry>,
}

/// The trust store could not be read (it is never replaced then).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Damaged {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub struct TrustStore {
    path: PathBuf,
    stored: Stored,
}

/// How a project's hook files compare with what was trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Trusted,
    NeverTrusted,
    /// What differs, e.g. `a.lua changed, b.lua added`.
    Changed(String),
}

impl TrustStore {
    pub fn file(data_dir: &Path) -> PathBuf {
        data_dir.join("hooks-trust.json")
    }

    /// Reads the store; a missing file is an empty store. A damaged one is an error: it is
    /// never silently replaced (the caller treats project hooks as untrusted).
    pub fn open(data_dir: &Path) -> Result<TrustStore, TrustError> {
        let path = TrustStore::file(data_dir);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(stored) => stored,
                Err(source) => return Err(TrustError::Damaged { path, source }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(source) => return Err(TrustError::Read { path, source }),
        };
        Ok(TrustStore { path, stored })
    }

    pub fn verdict(&self, dir: &Path, files: &BTreeMap<String, String>) -> Verdict {
        let Some(entry) = self.stored.dirs.get(&key(dir)) else {
            return Verdict::NeverTrusted;
        };
        if &entry.files == files {
            return Verdict::Trusted;
        }
        let mut diffs = Vec::new();
        for (name, sha) in files {
            match entry.files.get(name) {
                None => diffs.push(format!("{name} added")),
                Some(old) if old != sha => diffs.push(format!("{name} changed")),
                _ => {}
            }
        }
        for name in entry.files.keys().filter(|n| !files.contains_key(*n)) {
            diffs.push(format!("{name} removed"));
        }
        Verdict::Changed(diffs.join(", "))
    }

    pub fn trust(&mut self, dir: &Path, files: BTreeMap<String, String>) {
        self.stored.version = 1;
        self.stored.dirs.insert(
            key(dir),
            Entry {
                files,
                trusted_at: crate::wire::now_ts(),
            },
        );
    }

    /// Writes the store atomically (temp file, fsync, rename).
    pub fn save(&self) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut text = serde_json::to_string_pretty(&self.stored).map_err(std::io::Error::other)?;
        text.push('\n');
        // 0666 before the umask, as `File::create` makes it.
        crate::paths::write_atomic(&self.path, &tmp, 0o666, text.as_bytes())
    }
}

fn key(dir: &Path) -> String {
    dir.to_string_lossy().into_owned()
}
