//! Event-log pruning: the logs of finished operations cut down to their `completion`, by
//! age and by total size. The operations themselves stay.

use super::eventlog::{self, LogReader, LogWriter};
use super::{store, LocalEngine};
use crate::backend::BackendError;
use crate::wire::Status;
use std::time::Duration;

impl LocalEngine {
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
        let (mut cut, mut freed) = (0, 0);
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
            let Some(new_size) = self.cut_log(&row, size) else {
                continue;
            };
            total -= size - new_size;
            freed += size - new_size;
            cut += 1;
        }
        Ok((cut, freed))
    }

    /// Replaces an operation's log by its `completion` alone; the new size, or `None` when
    /// there was nothing to cut.
    fn cut_log(&self, row: &store::OpRow, size: u64) -> Option<u64> {
        let dir = self.store.op_dir(&row.uuid);
        let mut frames = LogReader::open(&dir.join("events")).ok()?;
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
        let data = completion.unwrap_or_else(|| {
            eventlog::completion(
                row.status,
                (row.duration.unwrap_or(0.0) * 1000.0) as u64,
                row.result_image.as_deref(),
                row.error.as_deref(),
                row.image_size.unwrap_or(0),
            )
        });
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
