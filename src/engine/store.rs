//! The local engine's store: one SQLite database for metadata (images, tags, layers,
//! blobs, operations) plus directories for layer contents, blob objects and event logs.
//!
//! Layout under the store root:
//! - `contree.db`            metadata (WAL)
//! - `layers/<id>/`          one overlay layer each, immutable once committed
//! - `blobs/sha256/<hex>`    attachment contents, content-addressed
//! - `ops/<uuid>/events`     per-operation event log (see `eventlog`)
//! - `tmp/<uuid>/`           a running operation's scratch (upper, work, mount points)
//! - `base/host-mask/`       the whiteout layer that hides host secrets from `host`
//!
//! Every visible change is a rename into place followed by one transaction, so a crash
//! leaves at most unreferenced directories, which `recover` removes.

mod images;
mod ops;

pub use ops::OpRow;

use crate::wire;
use parking_lot::{ReentrantMutex, ReentrantMutexGuard};
use rusqlite::{params, Connection, OptionalExtension};
use std::cell::{Ref, RefCell};
use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("store I/O error on '{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A store root made and a rootless one are never the same (see `check_mode`).
    #[error("{0}")]
    Mode(String),
    /// The store's filesystem is out of space: `what` was not kept.
    #[error("the store's disk is full ({source}): {what} was not kept; free space under the store and try again")]
    Full {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The file that marks a store as rootless (made by contree run by an ordinary user, in
/// its user namespace: see `rootless`).
const ROOTLESS_MARK: &str = "rootless";

/// A store belongs to root mode or to rootless mode, never both: their files' owners and
/// opaque markers differ (a rootless store has only `user.overlay.*`), and root sharing a
/// user's store would leave files the user cannot remove. A new store is marked when
/// rootless; opening one of the other mode is refused. One `stat` when all is well.
fn check_mode(root: &Path, db: &Path) -> Result<()> {
    let marked = root.join(ROOTLESS_MARK);
    let rootless_store = marked.exists();
    let rootless = crate::rootless::active();
    if rootless == rootless_store {
        return Ok(());
    }
    if rootless && !db.exists() {
        return std::fs::write(&marked, "made by contree run by an ordinary user\n")
            .map_err(io_err(&marked));
    }
    Err(StoreError::Mode(if rootless {
        format!(
            "{} is a store of contree run as root: an ordinary user's contree keeps a store of its own (unset CONTREE_HOME, or point it elsewhere)",
            root.display()
        )
    } else {
        format!(
            "{} is the store of contree run by an ordinary user (rootless): root keeps a store of its own (unset CONTREE_HOME, or point it elsewhere)",
            root.display()
        )
    }))
}

/// The store's own directories, 0700 like the store (see `docs/store.md`).
const DIRS: &[&str] = &[
    "layers",
    "blobs",
    "blobs/sha256",
    "blobs/variants",
    "ops",
    "tmp",
    "spare",
    "mnt",
    "base",
];

/// A store found looser than 0700 (an older version made it): its own directories are
/// tightened too, once; layer directories never are, as a layer's root is the image's `/`.
fn tighten(root: &Path) -> Result<()> {
    for sub in DIRS {
        let dir = root.join(sub);
        match crate::paths::private_dir(&dir) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
    }
    Ok(())
}

/// Whether the filesystem at `path` has (next to) no room left for a write, counting the
/// blocks reserved for root, which the store's writers are.
#[allow(clippy::unnecessary_cast)] // u64 here, narrower on some 32-bit targets
pub fn no_room(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path).is_ok_and(|s| {
        (s.blocks_free() as u64).saturating_mul(s.fragment_size() as u64) < 256 << 10
    })
}

/// Whether an I/O error means the store's filesystem is out of space (or quota).
pub fn disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { path, source }
}

/// The reserved layer id standing for "the host's root, seen through the mask".
pub const HOST_LAYER: &str = "@host";
pub const HOST_TAG: &str = "host";

/// An image row.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImageRow {
    pub uuid: String,
    pub created_at: String,
    pub parent: Option<String>,
    pub operation: Option<String>,
    /// Top layer first; may end with `HOST_LAYER`.
    pub layers: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub tags: Vec<String>,
}

/// Where things live under the store root; pure path arithmetic, no database.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

#[cfg(test)]
impl Layout {
    /// For tests: a layout rooted in a fresh temporary directory (removed when dropped).
    pub fn temp() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        (dir, Layout { root })
    }
}

impl Layout {
    pub fn layer_dir(&self, id: &str) -> PathBuf {
        if id == HOST_LAYER {
            self.root.join("base/host-mask")
        } else {
            self.root.join("layers").join(id)
        }
    }
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }
    pub fn op_dir(&self, op: &str) -> PathBuf {
        self.root.join("ops").join(op)
    }
    pub fn scratch_dir(&self, op: &str) -> PathBuf {
        self.root.join("tmp").join(op)
    }
    /// A new directory `tmp/NAME`, claimed by this process (see `claim`): where a layer is
    /// staged before its rename into `layers/`.
    pub fn staging_dir(&self, name: &str) -> std::io::Result<super::claim::Claim> {
        super::claim::Claim::create_dir(&self.root.join("tmp").join(name))
    }
    /// A new empty file `tmp/NAME`, claimed by this process: where a blob is copied in.
    pub fn staging_file(&self, name: &str) -> std::io::Result<super::claim::Claim> {
        super::claim::Claim::create_file(&self.root.join("tmp").join(name))
    }
}

pub struct Store {
    pub root: PathBuf,
    layout: Layout,
    /// `None` after `close`; the next use opens it again. A connection must never be
    /// carried across fork(): SQLite's per-process lock bookkeeping would then be wrong in
    /// the child (see `LocalEngine::fork_supervisor`).
    ///
    /// One connection, shared by the threads of a server: each use holds the lock, and
    /// `reading` and `transaction` hold it for their whole closure, so no other thread's
    /// statement lands inside their transaction. The lock is reentrant because a closure
    /// uses the store again on the same thread.
    conn: ReentrantMutex<RefCell<Option<Connection>>>,
}

/// The store's connection, borrowed under its lock (see `Store::conn`).
struct Conn<'a> {
    // Declared first, so dropped first: the borrow ends before the lock is released.
    conn: Ref<'a, Connection>,
    _lock: ReentrantMutexGuard<'a, RefCell<Option<Connection>>>,
}

impl Deref for Conn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

/// 2: what a run consumed (`consumed_cpu`, `consumed_memory`) and its limits; every opaque
/// directory of every layer carries both overlay markers (see `layers`).
const SCHEMA_VERSION: i64 = 2;

/// Points tag ?1 at image ?2, moving it if another image had it.
const SET_TAG: &str = "INSERT INTO tags(tag, image) VALUES (?1, ?2) ON CONFLICT(tag) DO UPDATE SET image = excluded.image";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images(
  uuid TEXT PRIMARY KEY, created_at TEXT NOT NULL, parent TEXT, operation TEXT,
  layers TEXT NOT NULL, env TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS tags(tag TEXT PRIMARY KEY, image TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tags_image ON tags(image);
CREATE TABLE IF NOT EXISTS layers(id TEXT PRIMARY KEY, created_at TEXT NOT NULL, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blobs(
  sha256 TEXT PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS operations(
  uuid TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL,
  duration REAL, image TEXT, result_image TEXT, error TEXT, request TEXT,
  supervisor_pid INTEGER, supervisor_start INTEGER, exit_code INTEGER,
  timed_out INTEGER NOT NULL DEFAULT 0, image_size INTEGER,
  consumed_cpu REAL, consumed_memory INTEGER, resources TEXT);
-- The registry manifest each pulled image was made from: pulling an unchanged image
-- again gives back the same image.
CREATE TABLE IF NOT EXISTS image_sources(
  digest TEXT NOT NULL, image TEXT NOT NULL, PRIMARY KEY(digest, image));
CREATE INDEX IF NOT EXISTS operations_created ON operations(created_at);
CREATE INDEX IF NOT EXISTS operations_status ON operations(status);
";

impl Store {
    /// Opens the store at `root` as it is, creating nothing: for a run's upkeep, which
    /// must not bring back a store its user removed meanwhile (the run's CLI opened it, so
    /// its schema is current).
    pub fn reopen(root: &Path) -> Result<Store> {
        let conn = crate::db::open_existing(&root.join("contree.db"))?;
        Ok(Store::with_conn(root, conn))
    }

    fn with_conn(root: &Path, conn: Connection) -> Store {
        Store {
            root: root.to_path_buf(),
            layout: Layout {
                root: root.to_path_buf(),
            },
            conn: ReentrantMutex::new(RefCell::new(Some(conn))),
        }
    }

    /// Opens the store at `root`, creating its directories, schema and the `host` image.
    pub fn open(root: &Path) -> Result<Store> {
        let db = root.join("contree.db");
        // Private to its user, so no one else reaches a setuid file a run left in a layer.
        if crate::paths::private_dir(root).map_err(io_err(root))? {
            tighten(root)?;
        }
        check_mode(root, &db)?;
        let conn = crate::db::open(&db)?;
        crate::log::trace("db open");
        let store = Store::with_conn(root, conn);
        // One cheap read on the common path; the full set-up only for a new store.
        let version: i64 = store
            .conn()?
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version < SCHEMA_VERSION {
            for sub in ["layers", "blobs/sha256", "ops", "tmp", "base"] {
                let dir = root.join(sub);
                crate::paths::create_private(&dir).map_err(io_err(&dir))?;
            }
            store.conn()?.execute_batch(SCHEMA)?;
            if version >= 1 {
                store.add_resource_columns()?;
            }
            store.ensure_host_image()?;
            if version == 1 {
                // Layers written before sandboxes had user namespaces carry only the
                // `trusted.` opaque marker, which an overlay inside one would not see.
                for dir in ["layers", "base"] {
                    for entry in std::fs::read_dir(root.join(dir))
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        super::layers::seal(&entry.path());
                    }
                }
            }
            store
                .conn()?
                .pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        Ok(store)
    }

    /// Version 1 → 2. Two commands may upgrade at once: a column the other one added first
    /// is no error.
    fn add_resource_columns(&self) -> Result<()> {
        for column in [
            "consumed_cpu REAL",
            "consumed_memory INTEGER",
            "resources TEXT",
        ] {
            let sql = format!("ALTER TABLE operations ADD COLUMN {column}");
            match self.conn()?.execute_batch(&sql) {
                Err(e) if e.to_string().contains("duplicate column") => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn ensure_host_image(&self) -> Result<()> {
        if self.find_tag(HOST_TAG)?.is_some() {
            return Ok(());
        }
        // Checked again inside the write transaction: two first commands may race here.
        self.transaction(|c| {
            let exists: Option<String> = c
                .query_row("SELECT image FROM tags WHERE tag = ?1", [HOST_TAG], |r| r.get(0))
                .optional()?;
            if exists.is_none() {
                let uuid = uuid::Uuid::new_v4().to_string();
                c.execute(
                    "INSERT INTO images(uuid, created_at, parent, operation, layers, env) VALUES (?1, ?2, NULL, NULL, ?3, '{}')",
                    params![uuid, wire::now_ts(), serde_json::to_string(&[HOST_LAYER]).unwrap_or_default()],
                )?;
                c.execute("INSERT INTO tags(tag, image) VALUES (?1, ?2)", params![HOST_TAG, uuid])?;
            }
            Ok(())
        })
    }

    /// The connection, opened again if `close` dropped it; this thread holds the store's
    /// lock while the answer lives.
    fn conn(&self) -> Result<Conn<'_>> {
        let lock = self.conn.lock();
        if lock.borrow().is_none() {
            let conn = crate::db::open(&self.root.join("contree.db"))?;
            *lock.borrow_mut() = Some(conn);
        }
        // SAFETY: the cell lives as long as `self`, and it is only reached while `lock`,
        // which `Conn` keeps until after the borrow, is held by this thread.
        let cell: &RefCell<Option<Connection>> = unsafe { &*self.conn.data_ptr() };
        Ok(Conn {
            conn: Ref::map(cell.borrow(), |c| c.as_ref().expect("opened just above")),
            _lock: lock,
        })
    }

    /// Runs one statement that writes, whatever the rows it changed.
    fn write(&self, sql: &str, params: impl rusqlite::Params) -> Result<()> {
        self.conn()?.execute(sql, params)?;
        Ok(())
    }

    /// Empties the WAL if it has grown large (`db::checkpoint_if_large`). The supervisor
    /// calls this after `completion`, where nobody waits for it.
    pub fn checkpoint(&self) {
        if let Ok(conn) = self.conn() {
            crate::db::checkpoint_if_large(&conn, &self.root.join("contree.db"));
        }
    }

    /// Closes the connection (before a fork: see `conn`).
    pub fn close(&self) {
        let lock = self.conn.lock();
        let conn = lock.borrow_mut().take();
        if let Some(conn) = conn {
            let _ = conn.close();
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn layer_dir(&self, id: &str) -> PathBuf {
        self.layout.layer_dir(id)
    }
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.layout.blob_path(sha256)
    }
    pub fn op_dir(&self, op: &str) -> PathBuf {
        self.layout.op_dir(op)
    }
    pub fn scratch_dir(&self, op: &str) -> PathBuf {
        self.layout.scratch_dir(op)
    }

    /// What SQLite's `integrity_check` finds wrong (nothing: empty).
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        let rows = self.strings("PRAGMA integrity_check")?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    /// The first column of every row `sql` selects.
    fn strings(&self, sql: &str) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn layer_ids(&self) -> Result<Vec<String>> {
        self.strings("SELECT id FROM layers ORDER BY id")
    }

    pub fn delete_layer_row(&self, id: &str) -> Result<()> {
        self.write("DELETE FROM layers WHERE id = ?1", [id])
    }

    /// Every blob as (sha256, uuid, size, created_at), newest first.
    pub fn blob_rows(&self) -> Result<Vec<(String, String, u64, String)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT sha256, uuid, size, created_at FROM blobs ORDER BY created_at DESC, sha256",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn blob_shas(&self) -> Result<Vec<String>> {
        self.strings("SELECT sha256 FROM blobs ORDER BY sha256")
    }

    pub fn delete_blob_row(&self, sha256: &str) -> Result<()> {
        self.write("DELETE FROM blobs WHERE sha256 = ?1", [sha256])
    }

    // ---- blobs --------------------------------------------------------------------------

    /// The uuid of a stored blob with this digest.
    pub fn blob_uuid(&self, sha256: &str) -> Result<Option<String>> {
        // Cached statements: a run attaching 10,000 files asks 10,000 times.
        Ok(self
            .conn()?
            .prepare_cached("SELECT uuid FROM blobs WHERE sha256 = ?1")?
            .query_row([sha256], |r| r.get(0))
            .optional()?)
    }

    /// Runs `f` inside one read transaction: many lookups then share one snapshot and one
    /// round of WAL locking instead of one each.
    pub fn reading<T>(&self, f: impl FnOnce() -> T) -> T {
        // Held across `f`: another thread's statements would otherwise join the transaction.
        let _lock = self.conn.lock();
        let began = self
            .conn()
            .is_ok_and(|c| c.execute_batch("BEGIN DEFERRED").is_ok());
        let out = f();
        if began {
            if let Ok(c) = self.conn() {
                let _ = c.execute_batch("COMMIT");
            }
        }
        out
    }

    pub fn blob_by_uuid(&self, uuid: &str) -> Result<Option<(String, u64)>> {
        Ok(self
            .conn()?
            .prepare_cached("SELECT sha256, size FROM blobs WHERE uuid = ?1")?
            .query_row([uuid.to_ascii_lowercase()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .optional()?)
    }

    /// Stores `source`'s content as the blob `sha256` unless it is already there; returns
    /// the blob's uuid. The copy lands under a temporary name and is renamed into place.
    pub fn put_blob(&self, sha256: &str, source: &Path) -> Result<String> {
        self.put_blob_counted(sha256, source, None)
    }

    /// `put_blob`, counting the bytes copied on `bar`.
    pub fn put_blob_counted(
        &self,
        sha256: &str,
        source: &Path,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<String> {
        if let Some(uuid) = self.blob_uuid(sha256)? {
            if self.blob_path(sha256).exists() {
                return Ok(uuid);
            }
        }
        let target = self.blob_path(sha256);
        let mut tmp = self
            .layout
            .staging_file(&format!(".blob-{}", uuid::Uuid::new_v4().simple()))
            .map_err(io_err(self.root.join("tmp")))?;
        let copied = crate::progress::copy(source, tmp.path(), bar).map_err(|e| {
            if disk_full(&e) {
                StoreError::Full {
                    what: format!("the content of {}", source.display()),
                    source: e,
                }
            } else {
                StoreError::Io {
                    path: source.to_path_buf(),
                    source: e,
                }
            }
        });
        let size = match copied.and_then(|size| {
            tmp.rename(&target).map_err(io_err(&target))?;
            Ok(size)
        }) {
            Ok(size) => size,
            Err(e) => {
                let _ = tmp.remove();
                return Err(e);
            }
        };
        let uuid = uuid::Uuid::new_v4().to_string();
        self.conn()?.execute(
            "INSERT INTO blobs(sha256, uuid, size, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(sha256) DO NOTHING",
            params![sha256, uuid, size as i64, wire::now_ts()],
        )?;
        Ok(self.blob_uuid(sha256)?.unwrap_or(uuid))
    }

    /// Runs `f` inside one IMMEDIATE transaction (for commits that touch several tables).
    pub fn transaction<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn()?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&conn) {
            Ok(v) => {
                conn.execute_batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's threads share one store: a statement of one thread never lands inside
    /// another's transaction (where that transaction's rollback would undo it).
    #[test]
    fn a_transaction_is_never_joined_by_another_threads_statement() {
        let (_dir, root) = crate::paths::temp_path("store");
        let store = Store::open(&root).unwrap();
        let host = store.find_tag(HOST_TAG).unwrap().unwrap();
        let (began, begun) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let store = &store;
            let host = host.as_str();
            s.spawn(move || {
                let _ = store.transaction(|c| {
                    c.execute("INSERT INTO tags(tag, image) VALUES ('undone', ?1)", [host])?;
                    began.send(()).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    Err::<(), _>(StoreError::Db(rusqlite::Error::InvalidQuery))
                });
            });
            begun.recv().unwrap();
            store.set_tag(host, "kept").unwrap();
        });
        assert_eq!(store.find_tag("undone").unwrap(), None);
        assert_eq!(
            store.find_tag("kept").unwrap().as_deref(),
            Some(host.as_str())
        );
    }
}
