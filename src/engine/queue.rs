//! The server's queue of operations: an operation recorded now (PENDING, owned by this
//! process) and started, or ended, later; and operations this process runs itself (a
//! registry import) rather than a supervisor. `finish_here` also gives an abandoned
//! operation its ending (see `recovery`).

use super::eventlog::{self, LogWriter};
use super::launch::{Handover, Stdin};
use super::{lock, supervisor, LocalEngine};
use crate::backend::BackendError;
use crate::procfs::process_start_time;
use crate::wire::{SpawnRequest, Status};
use std::os::fd::BorrowedFd;

impl LocalEngine {
    /// Records an operation that waits for a free slot (PENDING) without starting it; the
    /// caller starts it later with `start_queued` or ends it with `end_queued`. Its row names
    /// this process as its supervisor: recovery leaves it alone while this process lives,
    /// and fails it if this process dies with the operation still waiting.
    pub fn enqueue(&self, req: &SpawnRequest) -> Result<String, BackendError> {
        self.store.reading(|| self.validate(req))?;
        self.record_here("instance", Some(req)).map(|(op, _, _)| op)
    }

    /// A new PENDING operation (dir, empty event log, row) whose owner is this process;
    /// returns it with this process's pid and start time.
    fn record_here(
        &self,
        kind: &str,
        req: Option<&SpawnRequest>,
    ) -> Result<(String, i32, u64), BackendError> {
        let op = uuid::Uuid::new_v4().to_string();
        let log = self.new_op_dir(&op)?;
        self.store
            .create_op(&op, kind, req.map(|r| r.image.as_str()), req)?;
        lock(&self.owned).insert(op.clone(), log);
        let pid = std::process::id() as i32;
        let start = process_start_time(pid).unwrap_or(0);
        self.store.set_supervisor(&op, pid, start)?;
        Ok((op, pid, start))
    }

    /// Starts an operation recorded by `enqueue`, its stdin read from `stdin` after the
    /// request's bytes (see `spawn_piped`), else nothing more. If it cannot start (its
    /// image is gone, say), the operation is failed with the reason, and that is returned
    /// too.
    pub fn start_queued(
        &self,
        op: &str,
        req: &SpawnRequest,
        stdin: Option<BorrowedFd<'_>>,
    ) -> Result<(), BackendError> {
        let stdin = stdin.map_or(Stdin::Null, Stdin::Fd);
        let started = self
            .store
            .reading(|| self.validate(req))
            .and_then(|(image, blobs, _)| {
                let job = supervisor::Job {
                    op: op.to_string(),
                    request: req.clone(),
                    image,
                    blobs,
                    created_at: None,
                    userns: self.userns(),
                    limits: self.run_limits(req)?,
                };
                let handover = Handover {
                    log: lock(&self.owned).remove(op),
                    scratch: None,
                };
                let started = self.spawn_supervisor(&job, stdin, &handover);
                if started.is_err() {
                    if let Some(log) = handover.log {
                        lock(&self.owned).insert(op.to_string(), log);
                    }
                }
                started
            });
        if let Err(e) = &started {
            self.end_queued(op, Status::Failed, &e.to_string());
        }
        started
    }

    /// Ends an operation recorded by `enqueue` that never started (cancelled, or the server
    /// shutting down): its terminal state, then `completion`.
    pub fn end_queued(&self, op: &str, status: Status, error: &str) {
        self.finish_here(op, status, Some(error), None);
    }

    /// Records an operation this process runs itself (a server's registry import) rather
    /// than a supervisor: PENDING, with this process as its owner (see `enqueue`).
    pub fn begin_here(&self, kind: &str) -> Result<String, BackendError> {
        let (op, pid, start) = self.record_here(kind, None)?;
        self.store.mark_executing(&op, pid, start)?;
        Ok(op)
    }

    /// Ends an operation this process ran or queued: its terminal state, then `completion`.
    pub fn finish_here(
        &self,
        op: &str,
        status: Status,
        error: Option<&str>,
        result_image: Option<&str>,
    ) {
        let path = self.store.op_dir(op).join("events");
        // Ours (queued, or run here), else only if its owner is gone: a live supervisor
        // writes its own ending.
        let owned = lock(&self.owned).remove(op);
        let log = match owned {
            Some(file) => LogWriter::adopt(file, &path).ok(),
            None => std::fs::create_dir_all(self.store.op_dir(op))
                .and_then(|_| LogWriter::take_over(&path))
                .ok()
                .flatten(),
        };
        let Some(mut log) = log else {
            return;
        };
        // A supervisor that died between its `completion` and its row: the log says how
        // the operation ended (see `supervisor::Run::finish`).
        if let Some(done) = log.ending() {
            let text = |k: &str| done.get(k).and_then(|v| v.as_str());
            let ended = text("status").and_then(Status::parse).unwrap_or(status);
            let _ = self.store.finish_op(
                op,
                ended,
                text("error"),
                done.get("duration_ms")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0)
                    / 1000.0,
                text("result_image_uuid"),
                log.exit().map(|(code, _)| code),
                log.exit().is_some_and(|(_, timed_out)| timed_out),
                done.get("image_size_bytes").and_then(|v| v.as_u64()),
            );
            return;
        }
        if let Ok(true) =
            self.store
                .finish_op(op, status, error, 0.0, result_image, None, false, None)
        {
            let data = eventlog::completion(status, 0, result_image, error, 0);
            let _ = log.append("completion", None, data);
        }
    }
}
