//! The end of a run: its upper dir committed as the new image's top layer (by a rename,
//! never a copy; the chain flattened when it grows long), then `completion` and the row.
//! A snapshot that is not kept leaves nothing behind.

use super::resources::ResourceError;
use super::{diag, DbError, Outcome, Run};
use crate::engine::claim::Claim;
use crate::engine::eventlog;
use crate::engine::layers;
use crate::engine::store::ImageRow;
use crate::wire::{self, Status};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

/// Why a snapshot was not kept (the operation's `error` says `snapshot failed: ` and this).
#[derive(Debug, thiserror::Error)]
enum CommitError {
    #[error(transparent)]
    Resources(#[from] ResourceError),
    /// The upper dir could not be read.
    #[error("{}: {source}", path.display())]
    Upper {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("moving the layer into place: {0}")]
    Move(#[source] std::io::Error),
    #[error("moving the layer into place: {} is gone", .0.display())]
    UpperGone(PathBuf),
    #[error("flattening layers: {0}")]
    Flatten(#[source] std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Run {
    /// Commits the snapshot (for a successful, non-disposable run), appends `completion`,
    /// records the terminal state, gives the scratch dir back. Returns the supervisor's exit
    /// code: 0, or `exit::IO` when the result could not be recorded (a follower that finds
    /// no `completion` says so).
    ///
    /// The log comes before the row: a follower learns the result from `completion` at
    /// once, and if this process dies in between, recovery finds the log complete and
    /// copies its ending into the row (see `LocalEngine::finish_here`).
    pub(super) fn finish(&mut self, outcome: Outcome, started: Instant) -> i32 {
        let mut result_image = None;
        let mut image_size = None;
        let mut error = outcome.error.clone();
        let mut status = outcome.status;
        let mut snapshot_failed = false;
        let disposable = self.job.request.disposable;
        if status == Status::Success && !disposable {
            match self.commit() {
                Ok((image, size)) => {
                    result_image = Some(image);
                    image_size = Some(size);
                }
                Err(e) => {
                    status = Status::Failed;
                    error = Some(format!("snapshot failed: {e}"));
                    snapshot_failed = true;
                    // Nothing of the run is kept: its space goes back before anything else
                    // is written (a full disk is the usual reason a snapshot fails).
                    drop(self.mounted.take());
                    let _ = std::fs::remove_dir_all(self.scratch.join("upper"));
                }
            }
        }
        crate::log::trace("committed");
        let duration = started.elapsed().as_secs_f64();
        let op = self.job.op.clone();
        let diag_log = self.layout.op_dir(&op).join("supervisor.log");
        // The row must exist (a foreground run's is made here if the sandbox never started).
        if let Err(e) = self.db() {
            diag(&diag_log, &format!("opening the store failed: {e}"));
            if error.is_none() || status == Status::Success {
                status = Status::Failed;
                error = Some(format!("recording the result failed: {e}"));
            }
        }
        let mut data = eventlog::completion(
            status,
            (duration * 1000.0) as u64,
            result_image.as_deref(),
            error.as_deref(),
            image_size.unwrap_or(0),
        );
        if snapshot_failed {
            data.insert("snapshot_failed".into(), Value::Bool(true));
        }
        // A run that failed before its command could end, on a store with no room left:
        // most likely why (SQLite may say only "disk I/O error"), and what the CLI tells.
        if status == Status::Failed
            && outcome.exit_code.is_none()
            && crate::engine::store::no_room(&self.layout.root)
        {
            data.insert("store_full".into(), Value::Bool(true));
        }
        if let Some(init) = self.init.take() {
            self.event("init", Some(0), init);
        }
        let mut code = 0;
        if let Err(e) = self.log.append_now("completion", None, data) {
            diag(&diag_log, &format!("writing completion failed: {e}"));
            code = crate::error::exit::IO;
        }
        crate::log::trace("completion written");
        crate::failpoint::hit("supervisor:completion-written");
        // After `completion`: the follower need not wait for this write. (The run is still
        // unfinished in its row, so `gc` keeps its new image: see `gc::collect`.)
        self.record_usage();
        // (For the supervisor's log only.)
        let failed = match &self.store {
            Some(db) => db
                .finish_op(
                    &op,
                    status,
                    error.as_deref(),
                    duration,
                    result_image.as_deref(),
                    outcome.exit_code,
                    outcome.timed_out,
                    image_size,
                )
                .err()
                .map(|e| e.to_string()),
            None => Some("the store is not open".to_string()),
        };
        if let Some(e) = failed {
            diag(&diag_log, &format!("recording the result failed: {e}"));
            code = crate::error::exit::IO;
        }
        drop(self.network.take());
        drop(self.mounted.take());
        crate::log::trace("unmounted");
        self.release_scratch();
        crate::log::trace("released");
        self.leave_cgroup();
        if let Some(store) = &self.store {
            store.checkpoint();
        }
        crate::log::trace("checkpointed");
        code
    }

    /// Turns the upper dir into the new image's top layer by a rename (never a copy).
    fn commit(&mut self) -> Result<(String, u64), CommitError> {
        let req = self.job.request.clone();
        let image = self.job.image.clone();
        let upper = self.scratch.join("upper");
        if let Some(m) = self.mounted.as_mut() {
            m.drop_unused_dirs();
        }
        self.layer_into_store(&upper)?;
        let mut env = image.env.clone();
        if req.preserve_env {
            for (k, v) in req.env.iter().flatten() {
                if v.is_empty() {
                    env.remove(k);
                } else {
                    env.insert(k.clone(), v.clone());
                }
            }
        }
        let unchanged = layers::is_empty_dir(&upper).map_err(|source| CommitError::Upper {
            path: upper.clone(),
            source,
        })?;
        if unchanged && env == image.env && self.attach.is_none() {
            return Ok((image.uuid, 0));
        }
        // The overlay must be gone before its upper dir becomes a layer.
        drop(self.mounted.take());
        let mut chain = image.layers.clone();
        let mut new_layers: Vec<(String, u64)> = Vec::new();
        if let Some(id) = &self.attach {
            chain.insert(0, id.clone());
            new_layers.push((id.clone(), layers::layer_size(&self.layout.layer_dir(id))));
        }
        // The new layer dirs, claimed until their rows are committed (`gc` leaves them
        // alone) and removed if that fails: a snapshot that is not kept leaves nothing.
        let mut claims: Vec<Claim> = Vec::new();
        let mut size = 0;
        if !unchanged {
            let id = self.job.op.clone();
            let dest = self.layout.layer_dir(&id);
            size = layers::seal(&upper);
            self.check_layer_size(size)?;
            let claim = Claim::take(&upper, &dest)
                .map_err(CommitError::Move)?
                .ok_or_else(|| CommitError::UpperGone(upper.clone()))?;
            claims.push(claim);
            chain.insert(0, id.clone());
            new_layers.push((id, size));
            crate::failpoint::hit("commit:layer-moved");
        }
        let undo = |claims: Vec<Claim>| {
            for claim in claims {
                let _ = claim.remove();
            }
        };
        // Flattened before the image exists, so no run ever starts from a long chain.
        match self.shorten(&mut chain) {
            Ok(Some((flat, claim))) => {
                new_layers.push(flat);
                claims.push(claim);
            }
            Ok(None) => {}
            Err(e) => {
                undo(claims);
                return Err(e);
            }
        }
        let row = ImageRow {
            uuid: uuid::Uuid::new_v4().to_string(),
            created_at: wire::now_ts(),
            parent: Some(image.uuid.clone()),
            operation: Some(self.job.op.clone()),
            layers: chain,
            env,
            tags: Vec::new(),
        };
        let inserted = self
            .db()
            .and_then(|db| Ok(db.insert_image(&row, &new_layers)?));
        if let Err(e) = inserted {
            undo(claims);
            return Err(e.into());
        }
        crate::failpoint::hit("commit:image-inserted");
        Ok((row.uuid, size))
    }

    /// Keeps a layer chain short (see `layers::shorten`); the new layer, if any.
    #[allow(clippy::type_complexity)]
    fn shorten(
        &mut self,
        chain: &mut Vec<String>,
    ) -> Result<Option<((String, u64), Claim)>, CommitError> {
        layers::shorten(&self.layout, chain).map_err(CommitError::Flatten)
    }
}
