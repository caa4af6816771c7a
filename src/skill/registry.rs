//! The installs `contree skill` remembers, so that `list` and `upgrade` find them again: a
//! small JSON file in the config directory, rewritten whole (atomically) on each change.

use super::{Agent, SkillError, Target};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub agent: Agent,
    pub dir: PathBuf,
    /// The version installed there last.
    pub version: String,
}

impl Entry {
    pub fn target(&self) -> Target {
        Target {
            agent: self.agent,
            dir: self.dir.clone(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    installs: Vec<Entry>,
}

pub struct Registry {
    path: PathBuf,
    file: File,
}

impl Registry {
    /// The list at `path` (empty when there is none yet).
    pub fn open(path: &Path) -> Result<Registry, SkillError> {
        let file = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| SkillError::Registry {
                path: path.display().to_string(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(SkillError::io(path, e)),
        };
        Ok(Registry {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.file.installs
    }

    /// Records an install at `target` (replacing an older record of the same directory).
    pub fn remember(&mut self, target: &Target, version: &str) {
        self.forget(&target.dir);
        self.file.installs.push(Entry {
            agent: target.agent,
            dir: target.dir.clone(),
            version: version.to_string(),
        });
        self.file.installs.sort_by(|a, b| a.dir.cmp(&b.dir));
    }

    pub fn forget(&mut self, dir: &Path) {
        self.file.installs.retain(|e| e.dir != dir);
    }

    pub fn save(&self) -> Result<(), SkillError> {
        if let Some(dir) = self.path.parent() {
            crate::paths::create_private(dir).map_err(|e| SkillError::io(dir, e))?;
        }
        let json = serde_json::to_vec_pretty(&self.file).expect("the list serializes");
        let tmp = self.path.with_extension("tmp");
        crate::paths::write_atomic(&self.path, &tmp, 0o600, &json)
            .map_err(|e| SkillError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_are_remembered_once_per_directory() {
        let (tmp, path) = crate::paths::temp_path("conf/skills.json");
        let target = Target {
            agent: Agent::Claude,
            dir: tmp.path().join("a"),
        };
        let mut reg = Registry::open(&path).unwrap();
        reg.remember(&target, "1");
        reg.remember(&target, "2");
        reg.save().unwrap();
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.entries().len(), 1);
        assert_eq!(reg.entries()[0].version, "2");
        assert_eq!(reg.entries()[0].target(), target);
    }
}
