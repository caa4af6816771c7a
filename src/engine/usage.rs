//! What the local store takes on disk, by kind (`gc`, `doctor`). Read-only: it walks the
//! store's directories and never takes a lock, so its figures are a moment's picture.

use super::LocalEngine;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes on disk by kind, in the order they are reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub kinds: Vec<(&'static str, u64)>,
    /// The store's budget (`[store] max_size`) in bytes, and how it reads; `None` without
    /// one, or with a bad setting (which `gc` reports).
    pub budget: Option<(u64, String)>,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.kinds.iter().map(|(_, bytes)| bytes).sum()
    }
}

impl LocalEngine {
    /// The store's size by kind: `layers` (with the host mask), `blobs`, `blob variants`,
    /// `event logs` (`ops/`), `database` (`contree.db` and its WAL), `caches` (spare and
    /// staging scratch dirs, the digest cache). Disk blocks, each file once however many
    /// links it has: a flattened layer or a variant that shares a file with another
    /// counts it once, under the kind seen first.
    pub fn usage(&self) -> Usage {
        let root = &self.store.root;
        let budget = super::Budget::load(&self.config_dir)
            .ok()
            .and_then(|b| b.bytes(root).map(|bytes| (bytes, b.describe(bytes))));
        Usage {
            kinds: self.sizes(),
            budget,
        }
    }

    /// `usage`'s sizes alone, by kind (a walk of the store, no config read).
    pub(super) fn sizes(&self) -> Vec<(&'static str, u64)> {
        let root = &self.store.root;
        let mut seen = HashSet::new();
        let mut walk = |paths: &[&Path]| paths.iter().map(|p| du(p, &mut seen)).sum::<u64>();
        vec![
            ("layers", walk(&[&root.join("layers"), &root.join("base")])),
            ("blobs", walk(&[&root.join("blobs/sha256")])),
            ("blob variants", walk(&[&root.join("blobs/variants")])),
            ("event logs", walk(&[&root.join("ops")])),
            (
                "database",
                walk(&[
                    &root.join("contree.db"),
                    &root.join("contree.db-wal"),
                    &root.join("contree.db-shm"),
                ]),
            ),
            (
                "caches",
                walk(&[
                    &root.join("spare"),
                    &root.join("tmp"),
                    &self.data_dir.join("cache"),
                ]),
            ),
        ]
    }
}

/// Disk usage of `path` and everything under it (symlinks not followed), each inode once.
fn du(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut bytes = 0;
    if seen.insert((meta.dev(), meta.ino())) {
        bytes += meta.blocks() * 512;
    }
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                bytes += du(&entry.path(), seen);
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_two_links_counts_once() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), vec![1u8; 64 << 10]).unwrap();
        std::fs::hard_link(tmp.path().join("a"), tmp.path().join("b")).unwrap();
        let mut seen = HashSet::new();
        let once = du(&tmp.path().join("a"), &mut seen);
        assert!(once >= 64 << 10, "{once}");
        assert_eq!(du(&tmp.path().join("b"), &mut seen), 0);
        assert_eq!(du(&tmp.path().join("missing"), &mut seen), 0);
    }
}
