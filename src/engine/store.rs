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

use crate::wire::{self, Operation, SpawnRequest, Status};
use rusqlite::{params, Connection, OptionalExtension};
use std::cell::{Ref, RefCell};
use std::collections::BTreeMap;
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
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// The store's filesystem is out of space: `what` was not kept.
    #[error("the store's disk is full ({source}): {what} was not kept; free space under the store and try again")]
    Full {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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

/// What the engine records about an operation besides the wire fields.
#[derive(Debug, Clone)]
pub struct OpRow {
    pub uuid: String,
    pub kind: String,
    pub status: Status,
    pub created_at: String,
    pub duration: Option<f64>,
    pub image: Option<String>,
    pub result_image: Option<String>,
    pub error: Option<String>,
    pub request: Option<SpawnRequest>,
    pub supervisor_pid: Option<i32>,
    pub supervisor_start: Option<u64>,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub image_size: Option<u64>,
    /// CPU seconds and peak memory (KiB) of the sandbox (see `cgroup`).
    pub consumed_cpu: Option<f64>,
    pub consumed_memory: Option<u64>,
    /// The limits the run had and which of them it hit (see `set_op_resources`).
    pub resources: Option<serde_json::Value>,
}

impl OpRow {
    /// The `OperationResponse` shape; `metadata` carries the request echo and the result state.
    pub fn to_wire(&self) -> Operation {
        let mut metadata = None;
        if let Some(req) = &self.request {
            let mut meta = serde_json::to_value(req).unwrap_or_default();
            if let Some(obj) = meta.as_object_mut() {
                obj.remove("stdin");
                if self.status.is_terminal() {
                    let mut state = serde_json::Map::new();
                    if let Some(code) = self.exit_code {
                        state.insert("exit_code".into(), code.into());
                        state.insert("timed_out".into(), self.timed_out.into());
                    }
                    let mut result = serde_json::Map::new();
                    if let Some(res) = self.resources.as_ref().and_then(|r| r.as_object()) {
                        for key in ["oom", "layer_limit_hit"] {
                            if let Some(v) = res.get(key) {
                                state.insert(key.into(), v.clone());
                            }
                        }
                        if let Some(limits) = res.get("limits") {
                            result.insert("limits".into(), limits.clone());
                        }
                    }
                    result.insert("state".into(), serde_json::Value::Object(state));
                    obj.insert("result".into(), serde_json::Value::Object(result));
                }
            }
            metadata = Some(meta);
        }
        Operation {
            uuid: self.uuid.clone(),
            kind: self.kind.clone(),
            status: self.status,
            error: self.error.clone(),
            created_at: Some(self.created_at.clone()),
            duration: self.duration,
            image_size: self.image_size,
            image_uuid: self.image.clone(),
            result_image_uuid: self.result_image.clone(),
            consumed_cpu: self.consumed_cpu,
            consumed_memory: self.consumed_memory,
            metadata,
            result: Some(wire::OperationResult {
                image: self.result_image.clone(),
                tag: None,
            }),
        }
    }
}

/// Where things live under the store root; pure path arithmetic, no database.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
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
    conn: RefCell<Option<Connection>>,
}

/// 2: what a run consumed (`consumed_cpu`, `consumed_memory`) and its limits; every opaque
/// directory of every layer carries both overlay markers (see `layers`).
const SCHEMA_VERSION: i64 = 2;

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
    /// Opens the store at `root`, creating its directories, schema and the `host` image.
    pub fn open(root: &Path) -> Result<Store> {
        let db = root.join("contree.db");
        // Private to its user, so no one else reaches a setuid file a run left in a layer.
        if crate::paths::private_dir(root).map_err(io_err(root))? {
            tighten(root)?;
        }
        let conn = crate::db::open(&db)?;
        crate::log::trace("db open");
        let store = Store {
            root: root.to_path_buf(),
            layout: Layout {
                root: root.to_path_buf(),
            },
            conn: RefCell::new(Some(conn)),
        };
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

    /// The connection, opened again if `close` dropped it.
    fn conn(&self) -> Result<Ref<'_, Connection>> {
        if self.conn.borrow().is_none() {
            let conn = crate::db::open(&self.root.join("contree.db"))?;
            *self.conn.borrow_mut() = Some(conn);
        }
        Ok(Ref::map(self.conn.borrow(), |c| {
            c.as_ref().expect("opened just above")
        }))
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
        if let Some(conn) = self.conn.borrow_mut().take() {
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

    // ---- images -------------------------------------------------------------------------

    fn image_from_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRow> {
        let layers: String = r.get(4)?;
        let env: String = r.get(5)?;
        Ok(ImageRow {
            uuid: r.get(0)?,
            created_at: r.get(1)?,
            parent: r.get(2)?,
            operation: r.get(3)?,
            layers: serde_json::from_str(&layers).unwrap_or_default(),
            env: serde_json::from_str(&env).unwrap_or_default(),
            tags: Vec::new(),
        })
    }

    pub fn image(&self, uuid: &str) -> Result<Option<ImageRow>> {
        let row = self
            .conn()?
            .query_row(
                "SELECT uuid, created_at, parent, operation, layers, env FROM images WHERE uuid = ?1",
                [uuid.to_ascii_lowercase()],
                |r| self.image_from_row(r),
            )
            .optional()?;
        match row {
            Some(mut img) => {
                img.tags = self.tags_of(&img.uuid)?;
                Ok(Some(img))
            }
            None => Ok(None),
        }
    }

    fn tags_of(&self, uuid: &str) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached("SELECT tag FROM tags WHERE image = ?1 ORDER BY tag")?;
        let tags = stmt
            .query_map([uuid], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(tags)
    }

    pub fn find_tag(&self, tag: &str) -> Result<Option<String>> {
        Ok(self
            .conn()?
            .query_row("SELECT image FROM tags WHERE tag = ?1", [tag], |r| r.get(0))
            .optional()?)
    }

    /// All images, newest first, with their tags.
    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT uuid, created_at, parent, operation, layers, env FROM images ORDER BY created_at DESC, rowid DESC",
        )?;
        let rows = stmt
            .query_map([], |r| self.image_from_row(r))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        drop(stmt);
        let mut out = Vec::with_capacity(rows.len());
        for mut img in rows {
            img.tags = self.tags_of(&img.uuid)?;
            out.push(img);
        }
        Ok(out)
    }

    /// Marks `image` as made by operation `op` (who may see it follows the operation).
    pub fn set_image_operation(&self, image: &str, op: &str) -> Result<()> {
        self.conn()?.execute(
            "UPDATE images SET operation = ?2 WHERE uuid = ?1",
            params![image, op],
        )?;
        Ok(())
    }

    /// The images pulled from the manifest with this digest that still exist, oldest first.
    pub fn images_from_manifest(&self, digest: &str) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT i.uuid FROM image_sources s JOIN images i ON i.uuid = s.image
             WHERE s.digest = ?1 ORDER BY i.created_at",
        )?;
        let rows = stmt.query_map([digest], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records that `image` was pulled from the manifest with this digest.
    pub fn set_image_manifest(&self, image: &str, digest: &str) -> Result<()> {
        self.conn()?.execute(
            "INSERT OR IGNORE INTO image_sources(digest, image) VALUES (?1, ?2)",
            params![digest, image],
        )?;
        Ok(())
    }

    /// Points `tag` at `image` (moving it if another image had it).
    pub fn set_tag(&self, image: &str, tag: &str) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO tags(tag, image) VALUES (?1, ?2) ON CONFLICT(tag) DO UPDATE SET image = excluded.image",
            params![tag, image],
        )?;
        Ok(())
    }

    pub fn remove_tag(&self, image: &str, tag: &str) -> Result<bool> {
        Ok(self.conn()?.execute(
            "DELETE FROM tags WHERE tag = ?1 AND image = ?2",
            params![tag, image],
        )? > 0)
    }

    /// Records a new layer directory (already renamed into place) and an image on top of it
    /// in one transaction.
    pub fn insert_image(&self, image: &ImageRow, new_layers: &[(String, u64)]) -> Result<()> {
        self.transaction(|tx| {
        for (id, size) in new_layers {
            tx.execute(
                // Attachment layers are shared by every run that attaches the same files.
                "INSERT OR IGNORE INTO layers(id, created_at, size) VALUES (?1, ?2, ?3)",
                params![id, wire::now_ts(), *size as i64],
            )?;
        }
        tx.execute(
            "INSERT INTO images(uuid, created_at, parent, operation, layers, env) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                image.uuid,
                image.created_at,
                image.parent,
                image.operation,
                serde_json::to_string(&image.layers).unwrap_or_default(),
                serde_json::to_string(&image.env).unwrap_or_default(),
            ],
        )?;
        for tag in &image.tags {
            tx.execute(
                "INSERT INTO tags(tag, image) VALUES (?1, ?2) ON CONFLICT(tag) DO UPDATE SET image = excluded.image",
                params![tag, image.uuid],
            )?;
        }
        Ok(())
        })
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
        self.conn()?
            .execute("DELETE FROM layers WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn blob_shas(&self) -> Result<Vec<String>> {
        self.strings("SELECT sha256 FROM blobs ORDER BY sha256")
    }

    pub fn delete_blob_row(&self, sha256: &str) -> Result<()> {
        self.conn()?
            .execute("DELETE FROM blobs WHERE sha256 = ?1", [sha256])?;
        Ok(())
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

    // ---- operations ---------------------------------------------------------------------

    pub fn create_op(
        &self,
        uuid: &str,
        kind: &str,
        image: Option<&str>,
        request: Option<&SpawnRequest>,
    ) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO operations(uuid, kind, status, created_at, image, request) VALUES (?1, ?2, 'PENDING', ?3, ?4, ?5)",
            params![
                uuid,
                kind,
                wire::now_ts(),
                image,
                request.map(|r| serde_json::to_string(r).unwrap_or_default())
            ],
        )?;
        Ok(())
    }

    /// Records an operation its supervisor already runs (see `Job::created_at`); a row
    /// that exists (created by the spawner) is marked EXECUTING instead.
    #[allow(clippy::too_many_arguments)]
    pub fn create_executing_op(
        &self,
        uuid: &str,
        kind: &str,
        created_at: &str,
        image: Option<&str>,
        request: Option<&SpawnRequest>,
        pid: i32,
        start: u64,
    ) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO operations(uuid, kind, status, created_at, image, request, supervisor_pid, supervisor_start)
             VALUES (?1, ?2, 'EXECUTING', ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(uuid) DO UPDATE SET status = 'EXECUTING', supervisor_pid = ?6, supervisor_start = ?7
             WHERE status IN ('PENDING', 'ASSIGNED')",
            params![
                uuid,
                kind,
                created_at,
                image,
                request.map(|r| serde_json::to_string(r).unwrap_or_default()),
                pid,
                start as i64
            ],
        )?;
        Ok(())
    }

    pub fn delete_op(&self, uuid: &str) -> Result<()> {
        self.conn()?
            .execute("DELETE FROM operations WHERE uuid = ?1", [uuid])?;
        Ok(())
    }

    fn op_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OpRow> {
        let status: String = r.get(2)?;
        let request: Option<String> = r.get(8)?;
        Ok(OpRow {
            uuid: r.get(0)?,
            kind: r.get(1)?,
            status: Status::parse(&status).unwrap_or(Status::Failed),
            created_at: r.get(3)?,
            duration: r.get(4)?,
            image: r.get(5)?,
            result_image: r.get(6)?,
            error: r.get(7)?,
            request: request.and_then(|t| serde_json::from_str(&t).ok()),
            supervisor_pid: r.get(9)?,
            supervisor_start: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
            exit_code: r.get(11)?,
            timed_out: r.get::<_, i64>(12)? != 0,
            image_size: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
            consumed_cpu: r.get(14)?,
            consumed_memory: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
            resources: r
                .get::<_, Option<String>>(16)?
                .and_then(|t| serde_json::from_str(&t).ok()),
        })
    }

    const OP_COLUMNS: &'static str = "uuid, kind, status, created_at, duration, image, result_image, error, request, supervisor_pid, supervisor_start, exit_code, timed_out, image_size, consumed_cpu, consumed_memory, resources";

    /// What a run consumed and the limits it had (see `cgroup::Usage`), before its ending.
    pub fn set_op_resources(
        &self,
        uuid: &str,
        consumed_cpu: Option<f64>,
        consumed_memory: Option<u64>,
        resources: &serde_json::Value,
    ) -> Result<()> {
        self.conn()?.execute(
            "UPDATE operations SET consumed_cpu = ?2, consumed_memory = ?3, resources = ?4 WHERE uuid = ?1",
            params![uuid, consumed_cpu, consumed_memory.map(|m| m as i64), resources.to_string()],
        )?;
        Ok(())
    }

    pub fn op(&self, uuid: &str) -> Result<Option<OpRow>> {
        let sql = format!(
            "SELECT {} FROM operations WHERE uuid = ?1",
            Self::OP_COLUMNS
        );
        Ok(self
            .conn()?
            .query_row(&sql, [uuid.to_ascii_lowercase()], Self::op_from_row)
            .optional()?)
    }

    /// Operations, newest first, optionally only those with one of `statuses`.
    pub fn ops(&self, statuses: &[Status], kind: Option<&str>) -> Result<Vec<OpRow>> {
        // Filtered in SQL (on the status index): every command looks for active
        // operations, and the table grows with every run.
        let mut sql = format!("SELECT {} FROM operations WHERE 1", Self::OP_COLUMNS);
        let mut params: Vec<String> = Vec::new();
        if !statuses.is_empty() {
            let marks = vec!["?"; statuses.len()].join(",");
            sql.push_str(&format!(" AND status IN ({marks})"));
            params.extend(statuses.iter().map(|s| s.as_str().to_string()));
        }
        if let Some(k) = kind {
            sql.push_str(" AND kind = ?");
            params.push(k.to_string());
        }
        sql.push_str(" ORDER BY created_at DESC, rowid DESC");
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params.iter()), Self::op_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// PENDING → EXECUTING, recording who supervises the operation.
    pub fn mark_executing(&self, uuid: &str, pid: i32, start: u64) -> Result<bool> {
        Ok(self.conn()?.execute(
            "UPDATE operations SET status = 'EXECUTING', supervisor_pid = ?2, supervisor_start = ?3 WHERE uuid = ?1 AND status IN ('PENDING', 'ASSIGNED')",
            params![uuid, pid, start as i64],
        )? > 0)
    }

    pub fn set_supervisor(&self, uuid: &str, pid: i32, start: u64) -> Result<()> {
        self.conn()?.execute(
            "UPDATE operations SET supervisor_pid = ?2, supervisor_start = ?3 WHERE uuid = ?1",
            params![uuid, pid, start as i64],
        )?;
        Ok(())
    }

    /// Moves an active operation to a terminal status. Returns false if it already was
    /// terminal (someone else finished it), so exactly one writer appends `completion`.
    #[allow(clippy::too_many_arguments)]
    pub fn finish_op(
        &self,
        uuid: &str,
        status: Status,
        error: Option<&str>,
        duration: f64,
        result_image: Option<&str>,
        exit_code: Option<i32>,
        timed_out: bool,
        image_size: Option<u64>,
    ) -> Result<bool> {
        Ok(self.conn()?.execute(
            "UPDATE operations SET status = ?2, error = ?3, duration = ?4, result_image = ?5, exit_code = ?6, timed_out = ?7, image_size = ?8
             WHERE uuid = ?1 AND status IN ('PENDING', 'ASSIGNED', 'EXECUTING')",
            params![uuid, status.as_str(), error, duration, result_image, exit_code, timed_out as i64, image_size.map(|s| s as i64)],
        )? > 0)
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
