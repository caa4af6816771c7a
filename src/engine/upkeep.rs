//! A local store's upkeep after a run, like `git gc --auto`: at most once a minute, off the
//! run's path (its supervisor does it once the `completion` is written and its CLI has gone
//! on), the event logs are pruned (`prune`) and, when the store takes more than its budget
//! (config.toml's `[store] max_size`), what nothing uses is collected (`gc`) and the CLI's
//! caches are trimmed (`Keeper`). Never anything a session, a tag, a detached run not
//! applied yet or a running operation uses: the collection is `gc`'s own, under its lock.

use super::LocalEngine;
use crate::backend::{BackendError, Freed, References};
use crate::config::{SettingError, ValueError};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// How often a run's upkeep happens, at most (the stamp's mtime says when it last did).
const EVERY: Duration = Duration::from_secs(60);

/// What the engine cannot see by itself and the upkeep needs: the images and files the
/// CLI's sessions keep, and the caches the CLI keeps beside the store. Given by the CLI
/// (`LocalEngine::keeper`); a server's engine has none, so its clients' images are never
/// collected behind their backs.
pub trait Keeper: Send + Sync {
    /// What the sessions keep alive (see `backend::Refs`).
    fn references(&self) -> Result<References, BackendError>;
    /// Removes (`dry_run`: names) cache entries that serve no file any more, one entry each
    /// (kind `cache`).
    fn trim_caches(&self, dry_run: bool) -> Vec<Freed>;
}

/// The most the store may take before the upkeep collects: `[store] max_size`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    None,
    Bytes(u64),
    /// A share (0–1] of the filesystem the store is on.
    Share(f64),
}

impl Budget {
    /// `none`, a size (`20G`) or a share of the filesystem (`10%`).
    pub fn parse(text: &str) -> Result<Budget, ValueError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("none") {
            return Ok(Budget::None);
        }
        if let Some(pct) = text.strip_suffix('%') {
            return match pct.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(Budget::Share(p / 100.0)),
                _ => Err(ValueError::Share(text.to_string())),
            };
        }
        crate::wire::limits::parse_size(text)
            .map(Budget::Bytes)
            .map_err(|e| ValueError::Budget(Box::new(e)))
    }

    /// Built-in < config.toml `[store]` < `CONTREE_STORE_MAX_SIZE`; a bad value names where
    /// it came from.
    pub fn load(config_dir: &Path) -> Result<Budget, SettingError> {
        crate::config::Config::load_in(config_dir)?
            .read(&crate::config::STORE_MAX_SIZE, Budget::parse)
    }

    /// In bytes, for a store at `root`; `None` without a budget (or when the filesystem's
    /// size cannot be had).
    pub fn bytes(self, root: &Path) -> Option<u64> {
        match self {
            Budget::None => None,
            Budget::Bytes(n) => Some(n),
            Budget::Share(share) => {
                let fs = nix::sys::statvfs::statvfs(root).ok()?;
                let size = fs.blocks() as f64 * fs.fragment_size() as f64;
                Some((size * share) as u64)
            }
        }
    }

    /// How the budget, `bytes` here (see `bytes`), reads in a report: `20.0 GiB` or
    /// `10% of the filesystem: 20.0 GiB`.
    pub fn describe(self, bytes: u64) -> String {
        let human = crate::format::human(bytes as f64);
        match self {
            Budget::Share(share) => format!(
                "{}% of the filesystem: {human}",
                (share * 1000.0).round() / 10.0
            ),
            _ => human,
        }
    }
}

impl LocalEngine {
    /// Gives the engine what its upkeep needs to collect (see `Keeper`); without one, a
    /// run's upkeep only prunes event logs.
    pub fn keeper(mut self, keeper: Box<dyn Keeper>) -> Self {
        self.keeper = Some(keeper.into());
        self
    }

    /// This engine with a store connection of its own, for a forked supervisor: SQLite's
    /// connections must not cross a fork (the copy's view of its locks is the parent's). It
    /// creates nothing: a store removed since the run (its data dir deleted) stays gone.
    pub(super) fn reopened(&self) -> Result<LocalEngine, BackendError> {
        let store = super::store::Store::reopen(&self.store.root)?;
        let mut engine = LocalEngine::with_store(store, &self.data_dir, &self.config_dir);
        engine.private = self.private.clone();
        engine.keeper = self.keeper.clone();
        Ok(engine)
    }

    /// After a local run, off its path: prunes with config.toml's policy and, past the
    /// store's budget, collects, unless this store's upkeep ran less than a minute ago or
    /// is running now. What it costs the other times is one `open` and one `fstat` of
    /// `store/prune.stamp`. A bad config is left for `gc` to report.
    pub fn upkeep(&self) {
        let path = self.store.root.join("prune.stamp");
        // A stamp made now: this store never had its upkeep (or by a version before this).
        let (stamp, new) = match std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
        {
            Ok(file) => (file, true),
            Err(_) => match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(file) => (file, false),
                Err(_) => return,
            },
        };
        let recent = !new
            && stamp
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < EVERY);
        // SAFETY: flock(2) on a descriptor we own; never waits (another pruner is at it).
        if recent || unsafe { libc::flock(stamp.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return;
        }
        // Called in a forked supervisor: see `reopened`.
        let Ok(engine) = self.reopened() else {
            return;
        };
        if let Ok(policy) = super::Retention::load(&self.config_dir) {
            let _ = engine.prune_locked(policy.max_age, policy.max_bytes, false);
        }
        let _ = stamp.set_modified(std::time::SystemTime::now());
        // Pruning is done: the stamp's lock is let go before collecting, which waits for
        // runs being started (see `gc_lock`), and one of those may prune at its end.
        drop(stamp);
        engine.collect_past_budget();
    }

    /// `gc` when the store takes more than its budget, with the keeper's references; and
    /// the keeper's caches trimmed. Not while a server uses this store: its clients' images
    /// are in no session here.
    fn collect_past_budget(&self) {
        let Some(keeper) = self.keeper.as_deref() else {
            return;
        };
        let Ok(budget) = Budget::load(&self.config_dir) else {
            return;
        };
        let Some(limit) = budget.bytes(&self.store.root) else {
            return;
        };
        let used: u64 = self.sizes().iter().map(|(_, bytes)| bytes).sum();
        if used <= limit || self.served() {
            return;
        }
        crate::log::trace("upkeep: past the store's budget, collecting");
        let refs = || keeper.references();
        match super::gc::collect(self, &refs, super::gc::Mode::All { dry_run: false }) {
            Err(e) => crate::warn!("upkeep: gc: {e}"),
            Ok(report) => crate::debug!(
                "upkeep: the store took {} of {}; freed {}",
                crate::format::human(used as f64),
                crate::format::human(limit as f64),
                crate::format::human(report.bytes() as f64)
            ),
        }
        keeper.trim_caches(false);
    }

    /// Marks this store as a server's for as long as the returned file is open: a CLI's
    /// upkeep then never collects (see `served`).
    pub fn serving(&self) -> Result<std::fs::File, BackendError> {
        self.store_lock("serve.lock", libc::LOCK_SH)
    }

    /// Whether a server holds this store (see `serving`).
    fn served(&self) -> bool {
        let Ok(file) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.store.root.join("serve.lock"))
        else {
            return false;
        };
        // SAFETY: flock(2) on a descriptor we own; never waits. The lock goes with `file`.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_as_none_a_size_or_a_share() {
        assert_eq!(Budget::parse("none"), Ok(Budget::None));
        assert_eq!(Budget::parse(" 10% "), Ok(Budget::Share(0.1)));
        assert_eq!(Budget::parse("100%"), Ok(Budget::Share(1.0)));
        assert_eq!(Budget::parse("2K"), Ok(Budget::Bytes(2048)));
        for bad in ["0%", "101%", "ten%", "lots", ""] {
            assert!(Budget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_share_is_of_the_filesystem_the_store_is_on() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = nix::sys::statvfs::statvfs(tmp.path()).unwrap();
        let size = fs.blocks() * fs.fragment_size();
        let half = Budget::Share(0.5).bytes(tmp.path()).unwrap();
        assert!(half.abs_diff(size / 2) <= 1, "{half} vs {size}");
        assert_eq!(Budget::None.bytes(tmp.path()), None);
        assert_eq!(Budget::Bytes(7).bytes(tmp.path()), Some(7));
        assert!(Budget::Share(0.1)
            .describe(size / 10)
            .starts_with("10% of the filesystem: "));
    }
}
