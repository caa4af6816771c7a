//! Who owns a piece of the store's scratch space: whoever holds an `flock` on it.
//!
//! Runs, imports, pulls, uploads and layer merges all work in entries under `store/tmp/`
//! (a run's upper and work dirs, a layer being staged, a blob being copied in). A crash
//! leaves such entries behind, and recovery removes them. It must never remove one that a
//! live process is still using, whatever its age or name: an import may stage for an hour,
//! and a spare scratch dir keeps the mtime it had in the pool. So every entry is created
//! *claimed* (an exclusive `flock` on the entry itself, held for as long as the owner
//! works in it), and recovery removes only what it can claim: the kernel drops a lock when
//! its last holder dies, so an entry nobody can be holding is exactly an abandoned one.
//!
//! A claim must never be released while the entry is still in use, and it must never be
//! taken over by a process that did not create or `take` the entry.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An entry of the store's scratch space that this process owns (see the module's doc).
/// Dropping it closes the descriptor, which lets go of the lock unless a process this one
/// forked still holds a copy. (Never an explicit unlock: that would take the lock away from
/// every such copy too.)
#[derive(Debug)]
pub struct Claim {
    lock: File,
    path: PathBuf,
}

impl Claim {
    /// Creates the directory `path` (its parent must exist) and claims it.
    pub fn create_dir(path: &Path) -> io::Result<Claim> {
        Self::create(path, false, |p| std::fs::create_dir(p))
    }

    /// Creates the empty file `path` and claims it; write to it with `file`.
    pub fn create_file(path: &Path) -> io::Result<Claim> {
        Self::create(path, true, |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .map(drop)
        })
    }

    /// Makes the entry with `make`, then locks it. Between the two, a recovery pass may
    /// find it unlocked and remove it: then the path no longer leads to what we locked, and
    /// we make it again. (Locking first is impossible: an entry has no lock before it exists.)
    fn create(
        path: &Path,
        write: bool,
        make: impl Fn(&Path) -> io::Result<()>,
    ) -> io::Result<Claim> {
        for _ in 0..16 {
            make(path)?;
            match Self::open_locked(path, true, write) {
                Ok(Some(lock)) if leads_to(path, &lock) => {
                    return Ok(Claim {
                        lock,
                        path: path.to_path_buf(),
                    })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "{}: removed by another process as soon as it was made",
            path.display()
        )))
    }

    /// Takes the unclaimed entry `from` (a spare scratch dir) and moves it to `to`, claimed.
    /// `None` when another process holds it or took it first.
    pub fn take(from: &Path, to: &Path) -> io::Result<Option<Claim>> {
        let lock = match Self::lock(from, false) {
            Ok(Some(lock)) => lock,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Whoever held it before us may have moved it away and let go: then `from` is
        // somebody else's entry, or nothing.
        if !leads_to(from, &lock) {
            return Ok(None);
        }
        match std::fs::rename(from, to) {
            Ok(()) => Ok(Some(Claim {
                lock,
                path: to.to_path_buf(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Locks the entry at `path`: waiting for the lock when `wait`, else `None` if it is
    /// held. Directories and files alike (flock works on any open descriptor).
    fn lock(path: &Path, wait: bool) -> io::Result<Option<File>> {
        Self::open_locked(path, wait, false)
    }

    fn open_locked(path: &Path, wait: bool, write: bool) -> io::Result<Option<File>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(lock_file(&file, wait)?.then_some(file))
    }

    /// The claim on `path` whose locked descriptor `lock` this process was handed (by the
    /// process that forked or executed it).
    pub fn adopt(lock: File, path: &Path) -> Claim {
        Claim {
            lock,
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The claimed file, for writing (for a directory: its descriptor).
    pub fn file(&self) -> &File {
        &self.lock
    }

    /// Moves the entry to `to` (a final place, or back to the spare pool), still claimed.
    pub fn rename(&mut self, to: &Path) -> io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.path = to.to_path_buf();
        Ok(())
    }

    /// Removes the entry, then lets go of it.
    pub fn remove(self) -> io::Result<()> {
        remove_entry(&self.path)
    }
}

/// Takes an exclusive flock(2) on `file`: waiting for it when `wait`; false if it is held
/// elsewhere (only without `wait`).
pub fn lock_file(file: &File, wait: bool) -> io::Result<bool> {
    let how = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Whether `path` still names the file that `lock` holds.
fn leads_to(path: &Path, lock: &File) -> bool {
    match (std::fs::symlink_metadata(path), lock.metadata()) {
        (Ok(at), Ok(held)) => at.dev() == held.dev() && at.ino() == held.ino(),
        _ => false,
    }
}

fn remove_entry(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether some live process holds the entry at `path` (see the module's doc).
pub fn held(path: &Path) -> bool {
    matches!(Claim::lock(path, false), Ok(None))
}

/// Removes the entry at `path` if nobody holds it; whether it is gone.
pub fn remove_if_abandoned(path: &Path) -> bool {
    let lock = match Claim::lock(path, false) {
        Ok(Some(lock)) => Some(lock),
        Ok(None) => return false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
        Err(_) => None,
    };
    // Held while it is removed, so that no creator's retry can race with us for it.
    lock.as_ref().is_none_or(|l| leads_to(path, l)) && remove_entry(path).is_ok()
}

/// Removes every entry of `dir` that nobody holds; returns their paths. An entry that
/// cannot be opened to be locked (a symlink, a socket: nothing of ours) is removed too.
pub fn reap(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if std::fs::symlink_metadata(&path).is_ok() && remove_if_abandoned(&path) {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_entry_survives_reaping_and_an_abandoned_one_does_not() {
        let t = tempfile::tempdir().unwrap();
        let mine = Claim::create_dir(&t.path().join("mine")).unwrap();
        std::fs::create_dir(mine.path().join("upper")).unwrap();
        std::fs::create_dir(t.path().join("abandoned")).unwrap();
        let file = Claim::create_file(&t.path().join("blob")).unwrap();
        let removed = reap(t.path());
        assert_eq!(removed, vec![t.path().join("abandoned")]);
        assert!(mine.path().join("upper").is_dir());
        assert!(held(mine.path()) && held(file.path()));
        drop(mine);
        assert!(!held(&t.path().join("mine")));
        assert_eq!(reap(t.path()), vec![t.path().join("mine")]);
    }

    #[test]
    fn a_spare_is_taken_once_and_keeps_its_lock_when_moved() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("spare")).unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        let mut taken = Claim::take(&t.path().join("spare"), &a).unwrap().unwrap();
        assert!(Claim::take(&t.path().join("spare"), &b).unwrap().is_none());
        assert!(held(&a));
        taken.rename(&b).unwrap();
        assert!(held(&b) && !a.exists());
        taken.remove().unwrap();
        assert!(!b.exists());
    }
}
