//! The SQLite-backed session store: one database file per profile.
//!
//! Several `contree` processes may work on one session at once (a detached run finishing
//! while the user types the next command), so every change that reads before it writes runs
//! in one `BEGIN IMMEDIATE` transaction: the write lock is taken up front and a second
//! writer waits (busy timeout) instead of building on a tip that is about to move. Entries
//! are never deleted except together with their whole session; rollback and checkout only
//! move branch pointers, so history stays a tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::{Applied, HistoryEntry, PendingFile, PendingOp, SessionError, SessionInfo, Target};

/// Bumped when the schema changes; `open` migrates older files.
mod pending;
mod rows;

use rows::*;

const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_key TEXT    NOT NULL,
    image       TEXT    NOT NULL,
    parent_id   INTEGER REFERENCES history(id),
    kind        TEXT    NOT NULL,
    title       TEXT    NOT NULL,
    operation   TEXT,
    created_at  TEXT    NOT NULL,
    cwd         TEXT
);
CREATE INDEX IF NOT EXISTS history_by_session ON history(session_key, id);
CREATE INDEX IF NOT EXISTS history_by_parent ON history(parent_id, id);
CREATE TABLE IF NOT EXISTS branches (
    session_key TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    history_id  INTEGER NOT NULL REFERENCES history(id),
    PRIMARY KEY (session_key, name)
);
CREATE TABLE IF NOT EXISTS state (
    session_key   TEXT PRIMARY KEY,
    active_branch TEXT NOT NULL DEFAULT 'main',
    updated_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS env (
    session_key TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (session_key, key)
);
CREATE TABLE IF NOT EXISTS files (
    history_id    INTEGER NOT NULL REFERENCES history(id),
    instance_path TEXT    NOT NULL,
    file_uuid     TEXT    NOT NULL,
    uid           INTEGER NOT NULL DEFAULT 0,
    gid           INTEGER NOT NULL DEFAULT 0,
    mode          TEXT    NOT NULL DEFAULT '0644'
);
CREATE INDEX IF NOT EXISTS files_by_entry ON files(history_id);
CREATE TABLE IF NOT EXISTS preserved_env (
    image TEXT PRIMARY KEY,
    json  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_ops (
    session_key TEXT    NOT NULL,
    op          TEXT    NOT NULL,
    title       TEXT    NOT NULL,
    disposable  INTEGER NOT NULL,
    branch      TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    foreground  INTEGER NOT NULL DEFAULT 0,
    preserved_env TEXT,
    cli_pid     INTEGER,
    cli_start   INTEGER,
    PRIMARY KEY (session_key, op)
);
";

const ENTRY_COLS: &str =
    "h.id, h.session_key, h.image, h.parent_id, h.kind, h.title, h.operation, h.created_at";

/// Entries from `?1` back to the root, with their distance from `?1`. The `parent_id < id`
/// guard makes a corrupted parent link end the walk instead of looping forever (parents are
/// always inserted before their children).
const CHAIN: &str = "WITH RECURSIVE chain(id, depth) AS (
    SELECT ?1, 0
    UNION ALL
    SELECT h.parent_id, c.depth + 1 FROM history h JOIN chain c ON h.id = c.id
    WHERE h.parent_id IS NOT NULL AND h.parent_id < h.id
)";

/// The session database of one profile.
pub struct SessionStore {
    conn: crate::db::CliDb,
}

/// The active branch of a session and, when the session exists, its tip.
struct Active {
    branch: String,
    tip: Option<HistoryEntry>,
}

impl SessionStore {
    /// Opens (creating if needed, with parent directories) the database at `path` and
    /// brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, SessionError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::paths::create_private(dir).map_err(|source| SessionError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = crate::db::CliDb::open(path)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let store = SessionStore { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), SessionError> {
        // A plain read first: the write lock is only needed for a new or old database.
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version >= SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self.write()?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < SCHEMA_VERSION {
            if version == 1 {
                // Version 2 keeps each entry's working directory, so `cwd` is one lookup
                // instead of a walk to the root of a long history.
                tx.execute_batch("ALTER TABLE history ADD COLUMN cwd TEXT")?;
                let rows: Vec<(i64, Option<i64>, String, String)> = tx
                    .prepare("SELECT id, parent_id, kind, title FROM history ORDER BY id")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<_, _>>()?;
                let mut cwds: HashMap<i64, Option<String>> = HashMap::new();
                for (id, parent, kind, title) in rows {
                    let cwd = if kind == "cd" {
                        Some(title)
                    } else {
                        parent.and_then(|p| cwds.get(&p).cloned().flatten())
                    };
                    tx.execute(
                        "UPDATE history SET cwd = ?2 WHERE id = ?1",
                        params![id, cwd],
                    )?;
                    cwds.insert(id, cwd);
                }
            }
            if (1..3).contains(&version) {
                // Version 3 keeps foreground runs in the pending list until they are applied.
                tx.execute_batch(
                    "ALTER TABLE pending_ops ADD COLUMN foreground INTEGER NOT NULL DEFAULT 0;
                     ALTER TABLE pending_ops ADD COLUMN preserved_env TEXT;
                     ALTER TABLE pending_ops ADD COLUMN cli_pid INTEGER;
                     ALTER TABLE pending_ops ADD COLUMN cli_start INTEGER;",
                )?;
            }
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A write transaction: takes the database write lock now, not at the first write.
    fn write(&self) -> Result<Transaction<'_>, SessionError> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }

    /// A read transaction, so multi-query reads see one snapshot.
    fn read(&self) -> Result<Transaction<'_>, SessionError> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Deferred,
        )?)
    }

    /// Session key for this invocation (run-behaviour.md §3.2): `explicit` (`-S`), else
    /// `$CONTREE_SESSION`, else `<cwd name or "session">+<8 hex>` derived from the profile,
    /// the parent pid and stdin's tty, so each shell gets its own session.
    pub fn resolve_key(explicit: Option<&str>, profile: &str) -> String {
        super::key::resolve_key(explicit, profile)
    }

    /// The session's current state, or `None` when it does not exist (no state row whose
    /// active branch exists).
    pub fn info(&self, key: &str) -> Result<Option<SessionInfo>, SessionError> {
        let sql = format!("{INFO_SELECT} WHERE s.session_key = ?1");
        Ok(self.conn.query_row(&sql, [key], info_row).optional()?)
    }

    /// Every existing session, most recently updated first.
    pub fn list(&self) -> Result<Vec<SessionInfo>, SessionError> {
        let sql = format!("{INFO_SELECT} ORDER BY s.updated_at DESC, h.id DESC");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], info_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keys of the sessions `name` designates for `session use NAME`: those ending in
    /// `name` (case-insensitive) after at least one more character, else the exact key.
    /// The official client does this with `LIKE '%_NAME'`, where `_` inside NAME also
    /// matches any character; a plain suffix test avoids that surprise.
    pub fn find_sessions(&self, name: &str) -> Result<Vec<String>, SessionError> {
        let keys: Vec<String> = self.list()?.into_iter().map(|s| s.session_key).collect();
        let lname = name.to_lowercase();
        let mut found: Vec<String> = keys
            .iter()
            .filter(|k| {
                let lk = k.to_lowercase();
                lk.len() > lname.len() && lk.ends_with(&lname)
            })
            .cloned()
            .collect();
        if found.is_empty() {
            found = keys.into_iter().filter(|k| k == name).collect();
        }
        found.sort();
        Ok(found)
    }

    /// "Set image": appends an entry (parent = the active tip, none for a new session) and
    /// moves the active branch to it, creating the session with branch `main` if needed.
    pub fn set_image(
        &self,
        key: &str,
        image: &str,
        kind: &str,
        title: &str,
        operation: Option<&str>,
    ) -> Result<HistoryEntry, SessionError> {
        let tx = self.write()?;
        let active = active(&tx, key)?;
        let parent = active.tip.as_ref().map(|t| t.id);
        let entry = insert_entry(&tx, key, image, parent, kind, title, operation)?;
        upsert_branch(&tx, key, &active.branch, entry.id)?;
        touch_state(&tx, key, &active.branch)?;
        tx.commit()?;
        Ok(entry)
    }

    /// Records a `cd` (title = the new cwd, image unchanged) on the active branch.
    pub fn set_cwd(&self, key: &str, path: &str) -> Result<HistoryEntry, SessionError> {
        let tx = self.write()?;
        let entry = append_on_tip(&tx, key, "cd", path)?;
        tx.commit()?;
        Ok(entry)
    }

    /// Stages a file for the next run (`file cp` / `file edit`): a `file` entry titled
    /// `Change file <path>` on the active branch plus its pending-file row, atomically.
    pub fn add_file(
        &self,
        key: &str,
        instance_path: &str,
        file_uuid: &str,
        uid: u32,
        gid: u32,
        mode: &str,
    ) -> Result<HistoryEntry, SessionError> {
        let tx = self.write()?;
        let entry = append_on_tip(&tx, key, "file", &format!("Change file {instance_path}"))?;
        tx.execute(
            "INSERT INTO files (history_id, instance_path, file_uuid, uid, gid, mode)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![entry.id, instance_path, file_uuid, uid, gid, mode],
        )?;
        tx.commit()?;
        Ok(entry)
    }

    /// The side entry of detached run `op` (child of the active tip) with its branch (see
    /// `side_branch`) pointing at it; the active branch does not move. An existing branch
    /// of that name is moved: `session wait` re-creates the `disposable-<op>` branch that
    /// `run -d -D` made at spawn time.
    pub fn add_side_branch(
        &self,
        key: &str,
        op: &str,
        disposable: bool,
        image: &str,
        title: &str,
    ) -> Result<HistoryEntry, SessionError> {
        let (branch, kind) = super::side_branch(op, disposable);
        let tx = self.write()?;
        let active = active(&tx, key)?;
        let tip = active.tip.ok_or(SessionError::NoSession)?;
        let entry = insert_entry(&tx, key, image, Some(tip.id), kind, title, Some(op))?;
        upsert_branch(&tx, key, &branch, entry.id)?;
        touch_state(&tx, key, &active.branch)?;
        tx.commit()?;
        Ok(entry)
    }

    /// A build cache entry (see `build::cache`): `image` as a `build` entry titled
    /// `title`, child of entry `parent`, with branch `name` and the session's `main` (made
    /// active) pointing at it, in one transaction.
    pub fn record_branch(
        &self,
        key: &str,
        name: &str,
        parent: Option<i64>,
        image: &str,
        title: &str,
    ) -> Result<HistoryEntry, SessionError> {
        let tx = self.write()?;
        let entry = insert_entry(&tx, key, image, parent, "build", title, None)?;
        upsert_branch(&tx, key, name, entry.id)?;
        upsert_branch(&tx, key, "main", entry.id)?;
        touch_state(&tx, key, "main")?;
        tx.commit()?;
        Ok(entry)
    }

    /// The entry branch `name` of session `key` points at, if the branch exists.
    pub fn branch_entry(
        &self,
        key: &str,
        name: &str,
    ) -> Result<Option<HistoryEntry>, SessionError> {
        let tx = self.read()?;
        match branch_tip(&tx, key, name)? {
            Some(id) => entry(&tx, id),
            None => Ok(None),
        }
    }

    /// The whole history of a session, oldest first.
    pub fn history(&self, key: &str) -> Result<Vec<HistoryEntry>, SessionError> {
        let sql =
            format!("SELECT {ENTRY_COLS} FROM history h WHERE h.session_key = ?1 ORDER BY h.id");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([key], entry_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    #[cfg(test)]
    /// One entry by id, whatever its session.
    pub fn entry(&self, id: i64) -> Result<Option<HistoryEntry>, SessionError> {
        entry(&self.conn, id)
    }

    /// `(name, history id)` of every branch of the session, sorted by name.
    pub fn branches(&self, key: &str) -> Result<Vec<(String, i64)>, SessionError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, history_id FROM branches WHERE session_key = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Creates branch `name` at the tip of `from` (default: the active branch).
    pub fn create_branch(
        &self,
        key: &str,
        name: &str,
        from: Option<&str>,
    ) -> Result<(), SessionError> {
        let tx = self.write()?;
        if branch_tip(&tx, key, name)?.is_some() {
            return Err(SessionError::BranchExists(name.to_string()));
        }
        let at = match from {
            Some(src) => branch_tip(&tx, key, src)?
                .ok_or_else(|| SessionError::SourceBranchNotFound(src.to_string()))?,
            None => active(&tx, key)?.tip.ok_or(SessionError::NoSession)?.id,
        };
        upsert_branch(&tx, key, name, at)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a branch (never the active one). Its entries stay in the history.
    pub fn delete_branch(&self, key: &str, name: &str) -> Result<(), SessionError> {
        let tx = self.write()?;
        if branch_tip(&tx, key, name)?.is_none() {
            return Err(SessionError::BranchNotFound(name.to_string()));
        }
        if active(&tx, key)?.branch == name {
            return Err(SessionError::DeleteActiveBranch);
        }
        tx.execute(
            "DELETE FROM branches WHERE session_key = ?1 AND name = ?2",
            params![key, name],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Makes `name` the active branch; returns its tip.
    pub fn checkout(&self, key: &str, name: &str) -> Result<HistoryEntry, SessionError> {
        let tx = self.write()?;
        let tip = branch_tip(&tx, key, name)?
            .ok_or_else(|| SessionError::BranchNotFound(name.to_string()))?;
        let entry =
            entry(&tx, tip)?.ok_or_else(|| SessionError::BranchNotFound(name.to_string()))?;
        touch_state(&tx, key, name)?;
        tx.commit()?;
        Ok(entry)
    }

    /// Moves the active branch per `target` (run-behaviour.md §3.6): `-N` back along
    /// parents, `+N` forward to the newest child each step, bare `N` to entry N of this
    /// session. The target is validated before the store is looked at.
    pub fn rollback(&self, key: &str, target: &str) -> Result<HistoryEntry, SessionError> {
        let target: Target = target.parse()?;
        let tx = self.write()?;
        let active = active(&tx, key)?;
        let tip = active.tip.ok_or(SessionError::NoSession)?;
        let dest = match target {
            Target::Back(steps) => {
                let chain = ancestry(&tx, tip.id)?;
                // The chain starts at the tip itself, so it holds len - 1 ancestors.
                let available = chain.len().saturating_sub(1) as u64;
                let too_far = SessionError::TooFarBack { steps, available };
                if steps > available {
                    return Err(too_far);
                }
                usize::try_from(steps)
                    .ok()
                    .and_then(|i| chain.into_iter().nth(i))
                    .ok_or(too_far)?
            }
            Target::Forward(steps) => {
                let mut cur = tip;
                for done in 0..steps {
                    cur = newest_child(&tx, key, cur.id)?.ok_or(SessionError::TooFarForward {
                        steps,
                        available: done,
                    })?;
                }
                cur
            }
            Target::Absolute(id) => entry(&tx, id)?
                .filter(|e| e.session_key == key)
                .ok_or(SessionError::EntryNotFound(id))?,
        };
        upsert_branch(&tx, key, &active.branch, dest.id)?;
        touch_state(&tx, key, &active.branch)?;
        tx.commit()?;
        Ok(dest)
    }

    /// The session cwd: the title of the nearest `cd` entry walking parents from the tip.
    /// `None` without a session or without any `cd` on the path.
    pub fn cwd(&self, key: &str) -> Result<Option<String>, SessionError> {
        let tx = self.read()?;
        let Some(tip) = active(&tx, key)?.tip else {
            return Ok(None);
        };
        Ok(tx
            .query_row("SELECT cwd FROM history WHERE id = ?1", [tip.id], |r| {
                r.get(0)
            })
            .optional()?
            .flatten())
    }

    /// The session's environment (`contree env`), sorted by name.
    pub fn env(&self, key: &str) -> Result<BTreeMap<String, String>, SessionError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM env WHERE session_key = ?1")?;
        let rows = stmt.query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_env(&self, key: &str, k: &str, v: &str) -> Result<(), SessionError> {
        self.conn.execute(
            "INSERT INTO env (session_key, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (session_key, key) DO UPDATE SET value = excluded.value",
            params![key, k, v],
        )?;
        Ok(())
    }

    /// Removes one variable; `false` when it was not set.
    pub fn unset_env(&self, key: &str, k: &str) -> Result<bool, SessionError> {
        let n = self.conn.execute(
            "DELETE FROM env WHERE session_key = ?1 AND key = ?2",
            params![key, k],
        )?;
        Ok(n > 0)
    }

    /// The env map a `--preserve-env` run baked into `image`, if any.
    pub fn preserved_env(
        &self,
        image: &str,
    ) -> Result<Option<BTreeMap<String, String>>, SessionError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT json FROM preserved_env WHERE image = ?1",
                [image],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|source| SessionError::PreservedEnv {
                image: image.to_string(),
                source,
            })
        })
        .transpose()
    }

    #[cfg(test)]
    pub fn set_preserved_env(
        &self,
        image: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<(), SessionError> {
        let json = serde_json::to_string(env).map_err(|source| SessionError::PreservedEnv {
            image: image.to_string(),
            source,
        })?;
        self.conn.execute(
            "INSERT INTO preserved_env (image, json) VALUES (?1, ?2)
             ON CONFLICT (image) DO UPDATE SET json = excluded.json",
            params![image, json],
        )?;
        Ok(())
    }

    /// What the sessions of this database keep alive in the store, for `gc` and `images
    /// rm`: every image in any history (entries are only deleted with their session, so
    /// any of them can be checked out again), with one session using it; the files staged
    /// for a next run; the detached runs not applied yet.
    pub fn references(&self) -> Result<super::References, SessionError> {
        let tx = self.read()?;
        let mut refs = super::References::default();
        let mut stmt = tx.prepare("SELECT image, MIN(session_key) FROM history GROUP BY image")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (image, key) = row?;
            refs.images.insert(image, key);
        }
        let mut stmt = tx.prepare("SELECT DISTINCT file_uuid FROM files")?;
        for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
            refs.files.insert(row?);
        }
        let mut stmt = tx.prepare("SELECT DISTINCT op FROM pending_ops")?;
        for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
            refs.ops.insert(row?);
        }
        Ok(refs)
    }

    /// Removes every row of a session (`session delete`); `false` when there was nothing.
    pub fn delete_session(&self, key: &str) -> Result<bool, SessionError> {
        let tx = self.write()?;
        tx.execute(
            "DELETE FROM files WHERE history_id IN (SELECT id FROM history WHERE session_key = ?1)",
            [key],
        )?;
        let mut n = 0;
        // Children before parents for the foreign keys: branches point at history rows.
        for table in ["branches", "state", "env", "pending_ops", "history"] {
            n += tx.execute(
                &format!("DELETE FROM {table} WHERE session_key = ?1"),
                [key],
            )?;
        }
        tx.commit()?;
        Ok(n > 0)
    }
}
