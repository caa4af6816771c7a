//! Event-log pruning: the logs of finished operations cut down to their `completion`, by
//! age and by total size. The operations themselves stay. `serve` prunes on its own
//! schedule; a local store is pruned by `gc` and by a run's `upkeep`, with the policy
//! config.toml's `[store]` gives (`Retention`).
//! Never the log of an operation that is not finished.

use super::eventlog::{self, LogReader, LogWriter};
use super::{store, LocalEngine};
use crate::backend::{BackendError, Freed};
use crate::config::SettingError;
use crate::wire::Status;
use serde_json::Value;
use std::time::Duration;

/// How long and how much of the finished operations' logs a local store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Retention {
    /// Built-in < config.toml `[store]` < `CONTREE_STORE_*`; a bad value names where it
    /// came from.
    pub fn load(config_dir: &std::path::Path) -> Result<Retention, SettingError> {
        use crate::config::{STORE_EVENTS_MAX_AGE, STORE_EVENTS_MAX_BYTES};
        let config = crate::config::Config::load_in(config_dir)?;
        Ok(Retention {
            max_age: config.read(&STORE_EVENTS_MAX_AGE, crate::config::parse_age)?,
            max_bytes: config.read(&STORE_EVENTS_MAX_BYTES, |text| {
                Ok(crate::wire::limits::parse_size(text)?)
            })?,
        })
    }
}

/// What one pass cut (or, dry, would cut): an entry per log.
pub type Cut = Vec<Freed>;

impl LocalEngine {
    /// `gc`'s part: the logs `policy` cuts (`dry_run`: would cut), one entry each.
    pub fn prune_for_gc(&self, policy: Retention, dry_run: bool) -> Result<Cut, BackendError> {
        // A dry run cuts nothing: it keeps no run's upkeep from pruning.
        let _lock = if dry_run {
            None
        } else {
            Some(self.prune_lock()?)
        };
        self.prune_locked(policy.max_age, policy.max_bytes, dry_run)
    }

    /// Bounds the event logs of finished operations: a log older than `max_age`, or among
    /// the oldest while all of them together exceed `max_bytes`, is cut down to its
    /// `completion` (rebuilt from the operation's row, so followers and `show` still see
    /// how it ended). The operation itself stays. Returns how many logs were cut, and the
    /// bytes freed.
    pub fn prune_event_logs(
        &self,
        max_age: Duration,
        max_bytes: u64,
    ) -> Result<(usize, u64), BackendError> {
        let _lock = self.prune_lock()?;
        let cut = self.prune_locked(max_age, max_bytes, false)?;
        Ok((cut.len(), cut.iter().map(|f| f.bytes).sum()))
    }

    /// One pruner at a time (a run's, `gc`'s, `serve`'s): two would race on a log's
    /// `events.cut`.
    fn prune_lock(&self) -> Result<std::fs::File, BackendError> {
        self.store_lock("prune.stamp", libc::LOCK_EX)
    }

    pub(super) fn prune_locked(
        &self,
        max_age: Duration,
        max_bytes: u64,
        dry_run: bool,
    ) -> Result<Cut, BackendError> {
        let rows = self
            .store
            .ops(&[Status::Success, Status::Failed, Status::Cancelled], None)?;
        // Oldest first, with the size of each log.
        let mut logs: Vec<(store::OpRow, u64)> = rows
            .into_iter()
            .rev()
            .filter_map(|row| {
                let size = std::fs::metadata(self.store.op_dir(&row.uuid).join("events"))
                    .ok()?
                    .len();
                Some((row, size))
            })
            .collect();
        let mut total: u64 = logs.iter().map(|(_, size)| size).sum();
        let now = chrono::Utc::now();
        let mut cut = Vec::new();
        for (row, size) in logs.drain(..) {
            let old = chrono::DateTime::parse_from_rfc3339(&row.created_at)
                .map(|t| {
                    let ended = t.with_timezone(&chrono::Utc)
                        + chrono::Duration::milliseconds(
                            (row.duration.unwrap_or(0.0) * 1000.0) as i64,
                        );
                    now.signed_duration_since(ended)
                        .to_std()
                        .unwrap_or_default()
                        > max_age
                })
                .unwrap_or(false);
            if !old && total <= max_bytes {
                continue;
            }
            let Some(new_size) = self.cut_log(&row, size, dry_run) else {
                continue;
            };
            let freed = size.saturating_sub(new_size);
            total -= freed;
            cut.push(Freed {
                kind: "log",
                id: row.uuid.clone(),
                bytes: freed,
            });
        }
        Ok(cut)
    }

    /// Replaces an operation's log by its `completion` alone, marked `output_pruned`; the
    /// new size (`dry_run`: about what it would be), or `None` when there was nothing to
    /// cut. Stream payloads are skipped, not read: a cut costs the log's frame headers.
    fn cut_log(&self, row: &store::OpRow, size: u64, dry_run: bool) -> Option<u64> {
        let dir = self.store.op_dir(&row.uuid);
        let mut frames = LogReader::open(&dir.join("events")).ok()?;
        frames.skip_stream_payloads();
        let mut completion = None;
        let mut count = 0;
        let mut last_id = 0;
        while let Ok(Some(ev)) = frames.next() {
            count += 1;
            last_id = ev.header.id;
            if ev.header.kind == "completion" {
                completion = Some(ev.header.data);
            }
        }
        if count <= 1 {
            return None;
        }
        let mut data = completion.unwrap_or_else(|| {
            eventlog::completion(
                row.status,
                (row.duration.unwrap_or(0.0) * 1000.0) as u64,
                row.result_image.as_deref(),
                row.error.as_deref(),
                row.image_size.unwrap_or(0),
            )
        });
        data.insert("output_pruned".into(), Value::Bool(true));
        if dry_run {
            // A frame's two lengths, its header and its id and time.
            let header = serde_json::to_vec(&data).map_or(0, |v| v.len() as u64);
            return Some((8 + 64 + header).min(size));
        }
        let tmp = dir.join("events.cut");
        let _ = std::fs::remove_file(&tmp);
        let mut log = LogWriter::open(&tmp).ok()?;
        // The same id as before: a follower resuming after it sees nothing new.
        log.continue_from(last_id.max(1));
        log.append("completion", None, data).ok()?;
        drop(log);
        std::fs::rename(&tmp, dir.join("events")).ok()?;
        Some(
            std::fs::metadata(dir.join("events"))
                .map(|m| m.len())
                .unwrap_or(size),
        )
    }
}
