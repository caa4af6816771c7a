//! The shell's history file: one line per entry, oldest first, shared by every shell of
//! this user (appended to, never rewritten while small). Entries with a newline cannot be
//! typed at the prompt, so a line is always an entry.

use super::ShellError;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Entries kept; the file is cut back to them once it holds twice as many.
pub const KEEP: usize = 1000;

pub struct History {
    path: PathBuf,
    lines: Vec<String>,
}

impl History {
    /// The history at `path` (none yet when the file is missing).
    pub fn open(path: &Path) -> Result<History, ShellError> {
        let err = |source| ShellError::History {
            path: path.to_path_buf(),
            source,
        };
        let lines: Vec<String> = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e)),
        };
        let mut history = History {
            path: path.to_path_buf(),
            lines,
        };
        if history.lines.len() > 2 * KEEP {
            history.lines.drain(..history.lines.len() - KEEP);
            let mut text = history.lines.join("\n");
            text.push('\n');
            let tmp = path.with_extension("tmp");
            crate::paths::write_atomic(path, &tmp, 0o600, text.as_bytes()).map_err(err)?;
        }
        Ok(history)
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Records `line` (unless it repeats the last entry or is blank) in memory and in the
    /// file. Returns whether it was added.
    pub fn push(&mut self, line: &str) -> Result<bool, ShellError> {
        let line = line.trim();
        if line.is_empty() || self.lines.last().map(String::as_str) == Some(line) {
            return Ok(false);
        }
        let err = |source| ShellError::History {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            crate::paths::create_private(dir).map_err(err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(err)?;
        writeln!(file, "{line}").map_err(err)?;
        self.lines.push(line.to_string());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_outlive_the_shell_that_typed_them() {
        let (_dir, path) = crate::paths::temp_path("sub/history");
        let mut first = History::open(&path).unwrap();
        assert!(first.push("echo one").unwrap());
        assert!(!first.push("echo one").unwrap(), "a repeat is not kept");
        assert!(!first.push("   ").unwrap());
        first.push("contree ls /").unwrap();
        let second = History::open(&path).unwrap();
        assert_eq!(second.lines(), ["echo one", "contree ls /"]);
    }

    #[test]
    fn a_long_history_is_cut_to_its_newest_entries() {
        let (_dir, path) = crate::paths::temp_path("history");
        let text: String = (0..2 * KEEP + 5).map(|i| format!("echo {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let history = History::open(&path).unwrap();
        assert_eq!(history.lines().len(), KEEP);
        assert_eq!(history.lines()[0], format!("echo {}", KEEP + 5));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            KEEP
        );
    }
}
