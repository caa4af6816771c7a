//! Where contree keeps its data and configuration.
//!
//! `$CONTREE_HOME` holds everything when set (as the official client does for its config);
//! otherwise data goes to the XDG data dir and configuration to the XDG config dir.
//!
//! What contree keeps is private to its user: a run may leave a setuid-root file in a layer,
//! which no other local user may reach. Every directory contree creates is 0700 (as the XDG
//! base directory spec asks), and `Paths::make_private` tightens the ones it owns when they
//! are looser (a store an older version made): never recursively, a `stat` each otherwise.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    /// The local engine's store and the session databases.
    pub data: PathBuf,
    /// `auth.ini`, hook files, the config file.
    pub config: PathBuf,
    /// `data` is contree's own directory (the XDG default `…/contree`), not one the user
    /// named with `$CONTREE_HOME`, which may hold other things and keeps its mode once it
    /// exists.
    pub owns_data: bool,
}

impl Paths {
    pub fn from_env() -> Paths {
        if let Some(home) = non_empty("CONTREE_HOME") {
            let home = absolute(PathBuf::from(home));
            return Paths {
                data: home.clone(),
                config: home,
                owns_data: false,
            };
        }
        let user_home = non_empty("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/root".into());
        let data = non_empty("XDG_DATA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| user_home.join(".local/share"))
            .join("contree");
        let config = non_empty("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| user_home.join(".config"))
            .join("contree");
        Paths {
            data: absolute(data),
            config: absolute(config),
            owns_data: true,
        }
    }

    /// Makes contree's part of the data dir private to its user: the data dir itself when
    /// contree owns it or creates it now, and `sessions/` and `cache/` in it, created 0700
    /// or tightened to it. (`Store::open` does the same for `store/` and its directories.)
    pub fn make_private(&self) -> io::Result<()> {
        if self.owns_data || !self.data.exists() {
            private_dir(&self.data)?;
        }
        for sub in ["sessions", "cache"] {
            private_dir(&self.data.join(sub))?;
        }
        Ok(())
    }

    pub fn store(&self) -> PathBuf {
        self.data.join("store")
    }

    pub fn session_db(&self, profile: &str) -> PathBuf {
        if let Some(path) = non_empty("CONTREE_SESSION_DB") {
            return PathBuf::from(path);
        }
        self.data.join("sessions").join(format!("{profile}.db"))
    }
}

/// Creates `dir` and its missing parents 0700.
pub fn create_private(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `dir` (see `create_private`), or takes group and other access away from it when
/// it has any. Returns whether it was looser. One `stat` when all is well. A directory this
/// user may not even look at is not theirs to fix: left to whatever opens it next, which
/// says why it cannot.
pub fn private_dir(dir: &Path) -> io::Result<bool> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match create_private(dir) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(false),
            other => other.map(|()| false),
        },
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(false),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `bytes` through `tmp` (created with `mode`, synced, then renamed),
/// so a reader never sees half a file and a crash leaves the old one.
pub fn write_atomic(path: &Path, tmp: &Path, mode: u32, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

fn non_empty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// A temporary file in `target`'s directory, named after it (`.NAME.xxxxxx`), to be renamed
/// onto it once whole: a reader never sees half a file, and a failure leaves none.
pub fn temp_beside(target: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{base}."))
        .tempfile_in(dir)
}

/// For tests: a fresh temporary directory (removed when dropped) and `rel` below it, not
/// created.
#[cfg(test)]
pub fn temp_path(rel: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(rel);
    (dir, path)
}
