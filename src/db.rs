//! Opening the SQLite databases (store, sessions, digest cache) the same way.
//!
//! WAL so readers never wait for a writer; `synchronous=NORMAL` because WAL keeps commits
//! atomic and only the last ones may be lost on power failure; a busy timeout so concurrent
//! processes queue instead of failing. The last connection to close checkpoints the WAL;
//! skipping that (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE) was measured to be slower, since the
//! next process then rebuilds the WAL index by reading the whole WAL. The WAL file itself
//! is kept (SQLITE_FCNTL_PERSIST_WAL): recreating it costs the next writer a directory
//! fsync, on the path of every `run`. But it is truncated after each checkpoint
//! (`journal_size_limit=0`): a large leftover WAL makes the next process rebuild the WAL
//! index by reading all of it, which made commands slower as the history grew.

use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// `$CONTREE_DB_TIMEOUT` seconds (fractions allowed), else 30 s.
pub fn busy_timeout() -> Duration {
    std::env::var("CONTREE_DB_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(Duration::from_secs(30))
}

/// Opens (creating) a database. Setting up a brand-new file takes locks that the busy
/// handler does not always wait for, so two processes creating it at once are retried.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let deadline = std::time::Instant::now() + busy_timeout();
    loop {
        match open_once(path) {
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

fn open_once(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Set before switching to WAL, which itself needs a lock another process may hold.
    conn.busy_timeout(busy_timeout())?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.query_row("PRAGMA journal_size_limit=0", [], |_| Ok(()))?;
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
