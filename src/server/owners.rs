//! Which namespace owns what: the server's own small SQLite file (`<data>/serve.db`).
//!
//! The engine's store knows nothing of namespaces. Here each operation and each uploaded
//! file (by sha256) is recorded with the namespace that created it; an image belongs to
//! the namespace of the operation that made it, and an image no operation made (the
//! `host` base image, imports done on the server machine) is public. Tags live in the
//! engine's store as `~NAMESPACE/TAG`, so garbage collection sees them as roots; a tag
//! without the `~` prefix is a public one.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

pub struct Owners {
    conn: Connection,
}

pub const OP: &str = "op";
pub const FILE: &str = "file";

impl Owners {
    pub fn open(path: &Path) -> rusqlite::Result<Owners> {
        let conn = Connection::open(path)?;
        // Private like the store (an existing data dir keeps its mode): SQLite gives the WAL
        // and shared-memory files the database file's mode when it makes them.
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let _ = std::fs::set_permissions(
                &file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            );
        }
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS owned(
                 kind TEXT NOT NULL, id TEXT NOT NULL, ns TEXT NOT NULL,
                 created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
                 PRIMARY KEY(kind, id, ns));",
        )?;
        Ok(Owners { conn })
    }

    /// Records (or refreshes) that `ns` owns `kind/id`.
    pub fn add(&self, kind: &str, id: &str, ns: &str) -> rusqlite::Result<()> {
        let now = crate::wire::now_ts();
        self.conn.execute(
            "INSERT INTO owned(kind, id, ns, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT(kind, id, ns) DO UPDATE SET updated_at = excluded.updated_at",
            params![kind, id.to_ascii_lowercase(), ns, now],
        )?;
        Ok(())
    }

    /// `(created_at, updated_at)` when `ns` owns `kind/id`.
    pub fn get(
        &self,
        kind: &str,
        id: &str,
        ns: &str,
    ) -> rusqlite::Result<Option<(String, String)>> {
        self.conn
            .query_row(
                "SELECT created_at, updated_at FROM owned WHERE kind = ?1 AND id = ?2 AND ns = ?3",
                params![kind, id.to_ascii_lowercase(), ns],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    pub fn owns(&self, kind: &str, id: &str, ns: &str) -> rusqlite::Result<bool> {
        Ok(self.get(kind, id, ns)?.is_some())
    }

    /// Every id of `kind` that `ns` owns.
    pub fn all(&self, kind: &str, ns: &str) -> rusqlite::Result<std::collections::HashSet<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM owned WHERE kind = ?1 AND ns = ?2")?;
        let rows = stmt.query_map(params![kind, ns], |r| r.get::<_, String>(0))?;
        rows.collect()
    }
}

/// The store's name for namespace `ns`'s tag `tag`.
pub fn ns_tag(ns: &str, tag: &str) -> String {
    format!("~{ns}/{tag}")
}

/// The tag as namespace `ns` sees it, if it sees it at all.
pub fn visible_tag<'a>(ns: &str, stored: &'a str) -> Option<&'a str> {
    match stored.strip_prefix('~') {
        Some(rest) => rest.strip_prefix(ns).and_then(|r| r.strip_prefix('/')),
        None => Some(stored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_other_namespaces_are_hidden() {
        assert_eq!(visible_tag("alice", &ns_tag("alice", "x")), Some("x"));
        assert_eq!(visible_tag("bob", &ns_tag("alice", "x")), None);
        assert_eq!(visible_tag("al", &ns_tag("alice", "x")), None);
        assert_eq!(visible_tag("bob", "host"), Some("host"));
    }

    #[test]
    fn ownership_is_per_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let o = Owners::open(&dir.path().join("serve.db")).unwrap();
        o.add(OP, "ABC", "alice").unwrap();
        assert!(o.owns(OP, "abc", "alice").unwrap());
        assert!(!o.owns(OP, "abc", "bob").unwrap());
        assert_eq!(o.all(OP, "alice").unwrap().len(), 1);
    }
}
