//! Opening the SQLite databases (store, sessions, digest cache) the same way.
//!
//! WAL so readers never wait for a writer; `synchronous=NORMAL` because WAL keeps commits
//! atomic and only the last ones may be lost on power failure; a busy handler so concurrent
//! processes queue instead of failing.
//!
//! Checkpoints stay off the path of a run. By default the last connection to close copies
//! the WAL back into the database, with two fsyncs, under an exclusive lock that the next
//! command then waits on: with runs back to back, that was most of a run's cost. So no
//! connection checkpoints when it closes (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE); instead
//! `checkpoint_if_large` truncates the WAL once it passes `WAL_LIMIT`, called where nobody
//! waits for it (a supervisor after `completion`). The WAL stays small, which matters
//! because the first process to open a database rebuilds the WAL index by reading all of
//! it. The WAL file itself is kept (SQLITE_FCNTL_PERSIST_WAL): recreating it costs the next
//! writer a directory fsync.

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The WAL size past which `checkpoint_if_large` checkpoints.
pub const WAL_LIMIT: u64 = 256 << 10;

/// `$CONTREE_DB_TIMEOUT` seconds (fractions allowed), else 30 s.
pub fn busy_timeout() -> Duration {
    static TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TIMEOUT.get_or_init(read_busy_timeout)
}

fn read_busy_timeout() -> Duration {
    std::env::var("CONTREE_DB_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(Duration::from_secs(30))
}

/// SQLite's own busy handler sleeps 1, 2, 5, 10 ms...: waiting out a lock held for 1.5 ms
/// costs 3 ms. This one polls from 50 µs, doubling to at most 2 ms, for up to
/// `busy_timeout()` in all.
fn wait_for_lock(attempt: i32) -> bool {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let since = SINCE.with(|s| {
        if attempt == 0 || s.get().is_none() {
            s.set(Some(now));
        }
        s.get().unwrap_or(now)
    });
    if now.duration_since(since) >= busy_timeout() {
        return false;
    }
    let micros = 50u64 << attempt.clamp(0, 6);
    std::thread::sleep(Duration::from_micros(micros.min(2000)));
    true
}

/// Copies the WAL into the database and empties it, if it has grown past `WAL_LIMIT`.
/// Waits for other writers (not readers) while it runs: call it off any run's path.
pub fn checkpoint_if_large(conn: &Connection, db_path: &Path) {
    let mut wal = db_path.as_os_str().to_owned();
    wal.push("-wal");
    let large = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_LIMIT);
    if large {
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

/// A database only the CLI writes (sessions, the digest cache): it keeps the WAL short on
/// its way out, when dropped (rarely does any work: see `checkpoint_if_large`).
pub struct CliDb {
    conn: Connection,
    path: PathBuf,
}

impl CliDb {
    /// `open`, remembering the path for the checkpoint.
    pub fn open(path: &Path) -> rusqlite::Result<CliDb> {
        Ok(CliDb {
            conn: open(path)?,
            path: path.to_path_buf(),
        })
    }
}

impl std::ops::Deref for CliDb {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for CliDb {
    fn drop(&mut self) {
        checkpoint_if_large(&self.conn, &self.path);
    }
}

/// Opens (creating) a database. Setting up a brand-new file takes locks that the busy
/// handler does not always wait for, so two processes creating it at once are retried.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    open_with(path, rusqlite::OpenFlags::default())
}

/// Opens a database that exists, and fails rather than create one.
pub fn open_existing(path: &Path) -> rusqlite::Result<Connection> {
    open_with(
        path,
        rusqlite::OpenFlags::default() - rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
    )
}

fn open_with(path: &Path, flags: rusqlite::OpenFlags) -> rusqlite::Result<Connection> {
    let deadline = std::time::Instant::now() + busy_timeout();
    loop {
        match open_once(path, flags) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn open_once(path: &Path, flags: rusqlite::OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    // Set before switching to WAL, which itself needs a lock another process may hold.
    conn.busy_handler(Some(wait_for_lock))?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.query_row("PRAGMA journal_size_limit=0", [], |_| Ok(()))?;
    // SAFETY: a plain db_config call on the open connection.
    unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            1 as std::ffi::c_int,
            std::ptr::null_mut::<std::ffi::c_int>(),
        );
    }
    let mut on: std::ffi::c_int = 1;
    // SAFETY: a file control on the open connection's main database; `on` outlives the call.
    unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut std::ffi::c_int).cast(),
        );
    }
    Ok(conn)
}
