//! A run's scratch dir (`tmp/OP`: the overlay's upper and work dirs), claimed for as long
//! as the run needs it and then kept as a spare for the next run: taking a spare is one
//! rename instead of new directories on the store's disk (see `Run::mount_root`).

use super::Run;
use crate::engine::claim::Claim;
use crate::engine::layers;
use crate::engine::store::Layout;
use std::path::PathBuf;

/// Where spare scratch dirs (an empty `upper` and a `work`) wait for the next run, under
/// the store root, and how many are kept.
const SPARES: &str = "spare";
const MAX_SPARES: usize = 4;

/// A scratch dir (or its `upper` or `work`) that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("scratch dir {}: {source}", path.display())]
pub struct ScratchError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Makes `tmp/OP` a directory with an empty `upper` and a `work`, claimed by this process
/// (see `claim`): a spare pair left by an earlier run (one rename), else new ones.
pub(crate) fn claim_scratch(layout: &Layout, op: &str) -> Result<Claim, ScratchError> {
    let scratch = layout.scratch_dir(op);
    let spares = layout.root.join(SPARES);
    if let Ok(entries) = std::fs::read_dir(&spares) {
        for entry in entries.flatten() {
            // Another supervisor may take the same one first: then try the next.
            if let Ok(Some(claim)) = Claim::take(&entry.path(), &scratch) {
                let sound = ["upper", "work"]
                    .iter()
                    .all(|d| scratch.join(d).symlink_metadata().is_ok_and(|m| m.is_dir()));
                if sound {
                    return Ok(claim);
                }
                // Not a pair of ours (something else was put in the pool): gone.
                let _ = claim.remove();
            }
        }
    }
    let claim = Claim::create_dir(&scratch).map_err(|source| ScratchError {
        path: scratch.clone(),
        source,
    })?;
    for path in [scratch.join("upper"), scratch.join("work")] {
        if let Err(source) = std::fs::create_dir(&path) {
            let _ = claim.remove();
            return Err(ScratchError { path, source });
        }
    }
    Ok(claim)
}

impl Run {
    /// The scratch dir, claimed by this supervisor for as long as it runs (see `claim`):
    /// the one its spawner claimed for it, else one claimed now.
    pub(super) fn claim_scratch(&mut self) -> Result<(), ScratchError> {
        if self.scratch_claim.is_none() {
            self.scratch_claim = Some(claim_scratch(&self.layout, &self.job.op)?);
        }
        Ok(())
    }

    /// After `completion`: empties the scratch dir's upper (or makes a new one if the
    /// commit took it) and keeps the pair as a spare, up to `MAX_SPARES`; else removes it.
    pub(super) fn release_scratch(&mut self) {
        let Some(mut claim) = self.scratch_claim.take() else {
            return;
        };
        let upper = self.scratch.join("upper");
        let work = self.scratch.join("work");
        let reusable = match layers::is_empty_dir(&upper) {
            Ok(true) => true,
            Ok(false) => std::fs::remove_dir_all(&upper)
                .and_then(|_| std::fs::create_dir(&upper))
                .is_ok(),
            Err(_) => std::fs::create_dir(&upper).is_ok(),
        }
        // A `volatile` mount leaves a marker in its work dir that makes overlayfs refuse
        // the dir (it cannot know the upper dir is fine): the work dir starts afresh.
        && std::fs::remove_dir_all(&work)
            .and_then(|_| std::fs::create_dir(&work))
            .is_ok();
        let spares = self.layout.root.join(SPARES);
        let room = std::fs::read_dir(&spares)
            .map(|entries| entries.count() < MAX_SPARES)
            .unwrap_or_else(|_| std::fs::create_dir_all(&spares).is_ok());
        // Still claimed while it moves: recovery never sees it unowned in `tmp/`.
        if reusable && room && claim.rename(&spares.join(&self.job.op)).is_ok() {
            return;
        }
        let _ = claim.remove();
    }
}
