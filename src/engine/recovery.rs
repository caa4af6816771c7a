//! Telling operations that still have an owner from abandoned ones, and ending the
//! abandoned: a supervisor that died leaves a row without an ending and a scratch dir,
//! which the next command that looks (or the next forked supervisor, after its run)
//! cleans up. Ownership is decided by locks only a live process holds, never by ages.

use super::eventlog::{LogReader, LogWriter};
use super::{cgroup, claim, lock, store, LocalEngine};
use crate::backend::BackendError;
use crate::procfs::process_start_time;
use crate::wire::{Operation, Status};
use nix::unistd::Pid;

impl LocalEngine {
    /// Whether an unfinished operation still has an owner: the process that holds its event
    /// log's lock (see `LogWriter::own`), or, for a row written before that lock existed,
    /// the supervisor process it names (pid and start time, so a recycled pid is no match).
    pub(super) fn supervisor_alive(&self, row: &store::OpRow) -> bool {
        self.reap();
        if lock(&self.owned).contains_key(&row.uuid) {
            return true;
        }
        if let (Some(pid), Some(start)) = (row.supervisor_pid, row.supervisor_start) {
            if process_start_time(pid) == Some(start) {
                return true;
            }
        }
        LogWriter::owned(&self.store.op_dir(&row.uuid).join("events"))
    }

    /// Collects the exit status of supervisors that have finished (a long-lived process
    /// such as `contree serve` calls this now and then so none stays a zombie). A server's
    /// notify pipe of a finished supervisor that nobody followed goes too: its log is
    /// whole, and a follower reads it without.
    pub fn reap(&self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let mut exited = lock(&self.exited);
        let mut gone = Vec::new();
        lock(&self.children).retain(
            |(op, pid)| match waitpid(*pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => true,
                Ok(status) => {
                    exited.insert(op.clone(), status);
                    gone.push(op.clone());
                    false
                }
                Err(_) => false,
            },
        );
        // Not a CLI's: its own run's follower may not have opened the pipe yet, and needs
        // it to wait for a log its supervisor was to create.
        if !self.fork && !gone.is_empty() {
            let mut notify = lock(&self.notify);
            for op in &gone {
                notify.remove(op);
            }
        }
    }

    /// Why a supervisor we started is gone, in words, if we know.
    pub(super) fn exit_of(&self, op: &str) -> Option<String> {
        use nix::sys::wait::WaitStatus;
        self.reap();
        let status = *lock(&self.exited).get(op)?;
        match status {
            WaitStatus::Exited(_, code) if code == crate::error::exit::IO => {
                Some("it could not write to the store (is the store's disk full?)".to_string())
            }
            WaitStatus::Exited(_, code) => Some(format!("it exited with code {code}")),
            WaitStatus::Signaled(_, signal, _) => Some(format!("it was killed by {signal}")),
            _ => None,
        }
    }

    /// Pid of a supervisor this engine started for `op`, if it is still ours to reap.
    pub(super) fn own_supervisor(&self, op: &str) -> Option<Pid> {
        self.reap();
        lock(&self.children)
            .iter()
            .find(|(o, _)| o == op)
            .map(|(_, pid)| *pid)
    }

    /// Fails an active operation whose supervisor is gone, appending the `completion` the
    /// supervisor never wrote, and removes its scratch dir.
    pub(super) fn recover_op(&self, row: &store::OpRow) {
        if row.status.is_terminal() || self.supervisor_alive(row) {
            return;
        }
        self.finish_here(
            &row.uuid,
            Status::Failed,
            Some("the operation's supervisor exited unexpectedly"),
            None,
        );
        claim::remove_if_abandoned(&self.store.scratch_dir(&row.uuid));
    }

    /// Cleans up after crashed runs: operations whose owner died, and whatever they left
    /// in `tmp/` (scratch dirs, staged layers and blobs). Ownership is decided by locks
    /// that only a live process can hold (see `claim`, `LogWriter::own`), never by ages.
    pub(super) fn recover(&self) {
        if let Ok(active) = self.store.ops(
            &[Status::Pending, Status::Assigned, Status::Executing],
            None,
        ) {
            for row in &active {
                self.recover_op(row);
            }
        }
        claim::reap(&self.store.root.join("tmp"));
        cgroup::Host::usable().reap(true);
    }

    /// Whether any run has a scratch dir: after its own run (whose scratch dir is gone by
    /// then), a supervisor recovers only if so. An operation whose supervisor died without
    /// one is recovered by the next command that looks at operations.
    pub(super) fn scratch_in_use(&self) -> bool {
        std::fs::read_dir(self.store.root.join("tmp"))
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false)
    }

    /// An operation without a row: a foreground run whose supervisor records it while its
    /// sandbox starts, seen before that (it has claimed its scratch dir or holds its log:
    /// EXECUTING), or one whose supervisor could write its log but not its row (the log's
    /// ending). Anything else is no operation at all.
    pub(super) fn unrecorded(&self, op: &str) -> Result<Operation, BackendError> {
        let log = self.store.op_dir(op).join("events");
        let mut row = store::OpRow::instance(op, Status::Executing);
        if crate::backend::is_uuid(op)
            && (LogWriter::owned(&log) || claim::held(&self.store.scratch_dir(op)))
        {
            return Ok(row.to_wire());
        }
        let ending = LogReader::open(&log).ok().and_then(|mut reader| {
            reader.skip_stream_payloads();
            let mut ending = None;
            while let Ok(Some(ev)) = reader.next() {
                if ev.header.kind == "completion" {
                    ending = Some(ev.header.data);
                }
            }
            ending
        });
        let Some(done) = ending else {
            return Err(BackendError::NotFound(
                format!("operation {op} not found").into(),
            ));
        };
        let text = |k: &str| done.get(k).and_then(|v| v.as_str()).map(String::from);
        row.status = text("status")
            .as_deref()
            .and_then(Status::parse)
            .unwrap_or(Status::Failed);
        row.error = text("error");
        row.result_image = text("result_image_uuid");
        row.duration = done
            .get("duration_ms")
            .and_then(|v| v.as_f64())
            .map(|ms| ms / 1000.0);
        Ok(row.to_wire())
    }
}
