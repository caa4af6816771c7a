//! Content hashes of attachments, with a local cache so unchanged files are never read again.
//!
//! The cache key is (absolute path, inode, mtime_ns, size) taken from `stat` before hashing, so
//! a file changed while being hashed misses next time instead of keeping a stale hash. The
//! cache only ever maps that key to a sha256; it knows nothing about uploads or backends.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::ProgressBar;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::AttachError;
use crate::progress::{self, Show};

/// Large reads keep syscall overhead negligible next to hashing.
const READ_BUF: usize = 1 << 20;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS attach_digest (
    path     BLOB    PRIMARY KEY,
    inode    INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    sha256   TEXT    NOT NULL
) WITHOUT ROWID;
";

const LOOKUP: &str =
    "SELECT sha256 FROM attach_digest WHERE path = ?1 AND inode = ?2 AND mtime_ns = ?3 AND size = ?4";

// One row per path: a changed file replaces its old entry, so the table never grows stale rows.
const RECORD: &str = "INSERT OR REPLACE INTO attach_digest (path, inode, mtime_ns, size, sha256)
                      VALUES (?1, ?2, ?3, ?4, ?5)";

/// SHA-256 of a file's content, streamed in 1 MiB reads; lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut buf = Vec::new();
    sha256_file_with(path, &mut buf, None)
}

/// Like [`sha256_file`] but reuses `buf`, so hashing many small files allocates once, and
/// counts the bytes read on `bar`.
fn sha256_file_with(
    path: &Path,
    buf: &mut Vec<u8>,
    bar: Option<&ProgressBar>,
) -> io::Result<String> {
    if buf.len() < READ_BUF {
        buf.resize(READ_BUF, 0);
    }
    let mut file = File::open(path)?;
    // sha2 picks the SHA-NI/AVX2 backend at runtime.
    let mut hasher = Sha256::new();
    loop {
        match file.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                if let Some(bar) = bar {
                    bar.inc(n as u64);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(crate::sha256::hex(&hasher.finalize()))
}

/// What identifies one version of a file without reading it.
struct FileKey {
    path: Vec<u8>,
    inode: i64,
    mtime_ns: i64,
    size: i64,
}

impl FileKey {
    fn of(path: &Path) -> Result<FileKey, AttachError> {
        let read_err = |source| AttachError::Read {
            path: path.display().to_string(),
            source,
        };
        // Absolute without resolving symlinks: two links to one file may have different keys,
        // which only costs a hash, never a wrong answer (the inode is the target's).
        let abs = std::path::absolute(path).map_err(read_err)?;
        let meta = fs::metadata(path).map_err(read_err)?;
        // SQLite integers are i64; the bit pattern of the u64 inode is all that matters.
        Ok(FileKey {
            path: abs.as_os_str().as_bytes().to_vec(),
            inode: meta.ino() as i64,
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            size: meta.len() as i64,
        })
    }
}

/// The sha256 of each of `paths`, in order, through the digest cache of the data directory
/// `data` (`cache/digests.db`, not opened for no paths), hashing what it misses on every
/// core, with a progress bar on a terminal.
pub fn digest_files(data: &Path, paths: &[&Path]) -> Result<Vec<String>, AttachError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let cache = DigestCache::open(&data.join("cache").join("digests.db"))?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    cache.digest_all(paths, threads, Show::OnTerminal)
}

/// Remembers content hashes keyed by (absolute path, inode, mtime_ns, size).
pub struct DigestCache {
    conn: crate::db::CliDb,
}

impl DigestCache {
    /// Opens (creating) the cache database at `path` (see `db::open`), table created if
    /// missing. The parent directory is created too.
    pub fn open(path: &Path) -> Result<DigestCache, AttachError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::paths::create_private(dir).map_err(|source| AttachError::CacheDir {
                dir: dir.display().to_string(),
                source,
            })?;
        }
        let conn = crate::db::CliDb::open(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(DigestCache { conn })
    }

    /// Returns the sha256 of `path`: from the cache when path, inode, mtime_ns and size match,
    /// else by hashing and recording it.
    pub fn digest(&self, path: &Path) -> Result<String, AttachError> {
        let mut all = self.digest_all(&[path], 1, Show::Never)?;
        // digest_all returns exactly one result per input.
        Ok(all.pop().unwrap_or_default())
    }

    /// Hashes many files, using up to `threads` worker threads for the misses, and returns the
    /// hashes in input order. Lookups and inserts each happen in one transaction. Misses that
    /// add up to much get a progress bar (see `progress`).
    ///
    /// On failure the first error in input order is returned; hashes that did succeed are
    /// still recorded.
    pub fn digest_all(
        &self,
        paths: &[&Path],
        threads: usize,
        show: Show,
    ) -> Result<Vec<String>, AttachError> {
        let keys = paths
            .iter()
            .map(|p| FileKey::of(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut found = self.lookup(&keys)?;
        let misses: Vec<usize> = (0..paths.len()).filter(|&i| found[i].is_none()).collect();
        if misses.is_empty() {
            return Ok(found.into_iter().flatten().collect());
        }

        let bytes: u64 = misses.iter().map(|&i| keys[i].size as u64).sum();
        let bar = progress::bar(show, bytes, || format!("hashing {} file(s)", misses.len()));
        let hashed = hash_parallel(paths, &misses, threads, bar.as_ref());
        drop(bar);
        let mut first_err = None;
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut record = tx.prepare_cached(RECORD)?;
            for (&i, result) in misses.iter().zip(hashed) {
                match result {
                    Ok(sha) => {
                        let k = &keys[i];
                        record.execute(params![k.path, k.inode, k.mtime_ns, k.size, sha])?;
                        found[i] = Some(sha);
                    }
                    Err(source) if first_err.is_none() => {
                        first_err = Some(AttachError::Read {
                            path: paths[i].display().to_string(),
                            source,
                        });
                    }
                    Err(_) => {}
                }
            }
        }
        tx.commit()?;
        match first_err {
            Some(err) => Err(err),
            None => Ok(found.into_iter().flatten().collect()),
        }
    }

    /// Removes (`dry_run`: only finds) the entries that can never be hit again: their file
    /// is gone, or is another version than the one hashed (its next digest would replace
    /// the entry anyway). Returns each one's path and about what its row takes.
    pub fn forget_stale(&self, dry_run: bool) -> Result<Vec<(String, u64)>, AttachError> {
        let rows: Vec<(Vec<u8>, i64, i64, i64)> = self
            .conn
            .prepare("SELECT path, inode, mtime_ns, size FROM attach_digest")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let stale: Vec<Vec<u8>> = rows
            .into_iter()
            .filter(|(path, inode, mtime_ns, size)| {
                let path = Path::new(std::ffi::OsStr::from_bytes(path));
                !FileKey::of(path)
                    .is_ok_and(|k| (k.inode, k.mtime_ns, k.size) == (*inode, *mtime_ns, *size))
            })
            .map(|(path, ..)| path)
            .collect();
        if !dry_run {
            let tx = self.conn.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare("DELETE FROM attach_digest WHERE path = ?1")?;
                for path in &stale {
                    stmt.execute([path])?;
                }
            }
            tx.commit()?;
        }
        // A row: its path, three integers and a 64-character hash.
        Ok(stale
            .into_iter()
            .map(|p| {
                let bytes = p.len() as u64 + 88;
                (String::from_utf8_lossy(&p).into_owned(), bytes)
            })
            .collect())
    }

    fn lookup(&self, keys: &[FileKey]) -> Result<Vec<Option<String>>, AttachError> {
        // One read transaction: a consistent snapshot and no per-row lock round trips.
        let tx = self.conn.unchecked_transaction()?;
        let found = {
            let mut stmt = tx.prepare_cached(LOOKUP)?;
            keys.iter()
                .map(|k| {
                    stmt.query_row(params![k.path, k.inode, k.mtime_ns, k.size], |row| {
                        row.get(0)
                    })
                    .optional()
                })
                .collect::<Result<Vec<Option<String>>, _>>()?
        };
        tx.commit()?;
        Ok(found)
    }
}

/// Hashes `paths[i]` for each `i` in `todo`, results aligned with `todo`.
fn hash_parallel(
    paths: &[&Path],
    todo: &[usize],
    threads: usize,
    bar: Option<&ProgressBar>,
) -> Vec<io::Result<String>> {
    let workers = threads.clamp(1, todo.len().max(1));
    if workers == 1 {
        let mut buf = Vec::new();
        return todo
            .iter()
            .map(|&i| sha256_file_with(paths[i], &mut buf, bar))
            .collect();
    }
    // Workers pull the next index, so one huge file does not hold up a fixed share of the rest.
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<io::Result<String>>> = (0..todo.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut buf = Vec::new();
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = todo.get(k) else { break };
                        done.push((k, sha256_file_with(paths[i], &mut buf, bar)));
                    }
                    done
                })
            })
            .collect();
        for handle in handles {
            let done = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (k, result) in done {
                out[k] = Some(result);
            }
        }
    });
    // Every index below todo.len() was claimed by exactly one worker.
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("file was not hashed"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const XYZ: &str = "3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282";
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn cache(dir: &Path) -> DigestCache {
        DigestCache::open(&dir.join("state/cache.db")).unwrap()
    }

    /// Rewrites content while keeping the inode and size, then sets mtime explicitly.
    fn rewrite(path: &Path, content: &str, mtime: SystemTime) {
        fs::write(path, content).unwrap();
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    /// A fresh directory with a cache and a file `f` there holding "abc", modified at `mtime`.
    fn abc_file(mtime: SystemTime) -> (tempfile::TempDir, DigestCache, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        let f = tmp.path().join("f");
        rewrite(&f, "abc", mtime);
        (tmp, cache, f)
    }

    /// An mtime in whole seconds.
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)
    }

    #[test]
    fn sha256_of_known_strings() {
        let (_tmp, f) = crate::paths::temp_path("f");
        fs::write(&f, "abc").unwrap();
        assert_eq!(sha256_file(&f).unwrap(), ABC);
        fs::write(&f, "").unwrap();
        assert_eq!(sha256_file(&f).unwrap(), EMPTY);
    }

    #[test]
    fn content_larger_than_the_read_buffer_hashes_whole() {
        let (_tmp, f) = crate::paths::temp_path("big");
        let data: Vec<u8> = (0..READ_BUF * 2 + 12345).map(|i| (i % 251) as u8).collect();
        fs::write(&f, &data).unwrap();
        assert_eq!(sha256_file(&f).unwrap(), crate::sha256::of(&data));
    }

    #[test]
    fn cache_hit_does_not_read_the_file_and_mtime_change_rehashes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let (_tmp, cache, f) = abc_file(t0);
        assert_eq!(cache.digest(&f).unwrap(), ABC);

        // Same inode, size and mtime: the cached hash is returned without reading,
        // which proves the key is all that is consulted.
        rewrite(&f, "xyz", t0);
        assert_eq!(cache.digest(&f).unwrap(), ABC);

        // Touching the mtime (even by a nanosecond) misses and re-hashes.
        rewrite(&f, "xyz", t0 + Duration::from_nanos(1));
        assert_eq!(cache.digest(&f).unwrap(), XYZ);
    }

    #[test]
    fn modified_file_gets_a_new_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        let f = tmp.path().join("f");
        fs::write(&f, "abc").unwrap();
        assert_eq!(cache.digest(&f).unwrap(), ABC);
        fs::write(&f, "abcd").unwrap();
        assert_eq!(cache.digest(&f).unwrap(), sha256_file(&f).unwrap());
        assert_ne!(cache.digest(&f).unwrap(), ABC);
    }

    #[test]
    fn replaced_file_with_same_size_and_mtime_misses_on_inode() {
        let (tmp, cache, f) = abc_file(t0());
        assert_eq!(cache.digest(&f).unwrap(), ABC);
        // Keep the old inode alive so the new file cannot reuse its number.
        let keep = tmp.path().join("keep");
        fs::rename(&f, &keep).unwrap();
        rewrite(&f, "xyz", t0());
        assert_eq!(cache.digest(&f).unwrap(), XYZ);
    }

    #[test]
    fn stale_entries_are_forgotten_and_live_ones_kept() {
        let (dir, cache, path) = abc_file(t0());
        cache.digest(&path).unwrap();
        let gone = dir.path().join("gone");
        std::fs::write(&gone, "x").unwrap();
        cache.digest(&gone).unwrap();
        let changed = dir.path().join("changed");
        rewrite(&changed, "one", t0());
        cache.digest(&changed).unwrap();
        std::fs::remove_file(&gone).unwrap();
        rewrite(&changed, "two", t0() + std::time::Duration::from_secs(5));
        let names = |v: Vec<(String, u64)>| {
            let mut n: Vec<String> = v.into_iter().map(|(p, _)| p).collect();
            n.sort();
            n
        };
        let want = names(vec![
            (changed.display().to_string(), 0),
            (gone.display().to_string(), 0),
        ]);
        assert_eq!(
            names(cache.forget_stale(true).unwrap()),
            want,
            "dry run names them"
        );
        assert_eq!(names(cache.forget_stale(false).unwrap()), want);
        assert!(
            cache.forget_stale(false).unwrap().is_empty(),
            "and they are gone"
        );
        // The live entry is still a hit.
        assert!(cache.lookup(&[FileKey::of(&path).unwrap()]).unwrap()[0].is_some());
    }

    #[test]
    fn cache_persists_across_opens() {
        let (tmp, f) = crate::paths::temp_path("f");
        rewrite(&f, "abc", t0());
        assert_eq!(cache(tmp.path()).digest(&f).unwrap(), ABC);
        rewrite(&f, "xyz", t0());
        assert_eq!(cache(tmp.path()).digest(&f).unwrap(), ABC);
    }

    #[test]
    fn digest_all_keeps_input_order_across_hits_and_misses() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        let files: Vec<PathBuf> = (0..50).map(|i| tmp.path().join(format!("f{i}"))).collect();
        for (i, f) in files.iter().enumerate() {
            fs::write(f, format!("content {i}")).unwrap();
        }
        let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        // Warm half the cache so the batch mixes hits and misses.
        cache.digest_all(&paths[..25], 3, Show::Never).unwrap();
        let got = cache.digest_all(&paths, 4, Show::Never).unwrap();
        let expected: Vec<String> = paths.iter().map(|p| sha256_file(p).unwrap()).collect();
        assert_eq!(got, expected);
        assert_eq!(cache.digest_all(&paths, 1, Show::Never).unwrap(), expected);
        assert!(cache.digest_all(&[], 4, Show::Never).unwrap().is_empty());
    }

    #[test]
    fn unreadable_or_missing_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        let missing = tmp.path().join("missing");
        let err = cache.digest(&missing).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot read host file '{}': No such file or directory (os error 2)",
                missing.display()
            )
        );
        // A directory stats fine but cannot be read as content.
        let err = cache.digest(tmp.path()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot read host file '{}': ",
                tmp.path().display()
            )),
            "{err}"
        );
    }

    #[test]
    fn failed_batch_still_records_the_files_that_hashed() {
        let (tmp, cache, f) = abc_file(t0());
        assert!(cache.digest_all(&[&f, tmp.path()], 2, Show::Never).is_err());
        rewrite(&f, "xyz", t0());
        assert_eq!(cache.digest(&f).unwrap(), ABC);
    }

    #[test]
    fn cache_errors_are_prefixed() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where the database file should be.
        let err = DigestCache::open(tmp.path()).err().unwrap().to_string();
        assert!(err.starts_with("attachment cache error: "), "{err}");
    }
}
