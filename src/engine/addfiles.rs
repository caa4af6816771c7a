//! Files into an image without a sandbox (`Backend::add_files`, `contree build`'s COPY):
//! the entries become one attachment layer (`attachlayer`, the same layer a run with those
//! files attached would mount), and the new image is that layer on top of the image's
//! chain. No process starts, so an image with no programs at all (`FROM scratch`) takes
//! files too.
//!
//! Crash safety is a run's commit's: the layer is staged in `tmp/` and renamed into
//! `layers/`, then one transaction records its row and the image. `gc` is held off (a
//! shared `gc.lock`) from the blob lookup to that commit, since until then the blobs,
//! their variants and the layer directory are referenced by no row; a crash in between
//! leaves a layer directory without a row, which `gc` frees. It must never write into a
//! committed layer: a layer already on disk is reused as it is.

use super::attachlayer::{self, Entry, Kind};
use super::claim::Claim;
use super::store::ImageRow;
use super::{inspect, layers, LocalEngine};
use crate::backend::{BackendError, Cause, Content, Placement};
use crate::progress::Show;
use crate::wire;

impl LocalEngine {
    pub(super) fn place(&self, image: &str, entries: &[Placement]) -> Result<String, BackendError> {
        let _hold = self.gc_lock(false)?;
        let row = self
            .store
            .image(image)?
            .ok_or_else(|| BackendError::NotFound(format!("image {image} not found").into()))?;
        if entries.is_empty() {
            return Ok(row.uuid);
        }
        let entries = self.store.reading(|| self.resolve_entries(entries))?;
        self.ensure_host_mask(&row)?;
        let layout = self.store.layout();
        let view = inspect::View::new(layout, &row.layers);
        let mut id = attachlayer::ensure_entries(layout, &view, &entries, Show::OnTerminal)?;
        if row.layers.first() == Some(&id) {
            // The same entries on top already: nothing would change.
            return Ok(row.uuid);
        }
        let store_err = |what: &str, e| BackendError::Io(Cause::io(what.to_string(), e));
        if row.layers.contains(&id) {
            // Deeper in the chain (something above may hide its entries): overlayfs takes a
            // directory once, so the top gets a copy.
            id = layers::copy_layer(layout, &id)
                .map_err(|e| store_err(&format!("copying layer {id}"), e))?;
        }
        let mut chain = row.layers.clone();
        chain.insert(0, id.clone());
        let mut new_layers = vec![(id.clone(), layers::layer_size(&layout.layer_dir(&id)))];
        let mut claims: Vec<Claim> = Vec::new();
        if let Some((flat, claim)) =
            layers::shorten(layout, &mut chain).map_err(|e| store_err("flattening layers", e))?
        {
            new_layers.push(flat);
            claims.push(claim);
        }
        let new = ImageRow {
            uuid: uuid::Uuid::new_v4().to_string(),
            created_at: wire::now_ts(),
            parent: Some(row.uuid.clone()),
            operation: None,
            layers: chain,
            env: row.env.clone(),
            tags: Vec::new(),
        };
        if let Err(e) = self.store.insert_image(&new, &new_layers) {
            // A flattened layer is ours alone; the attachment layer may be shared, and an
            // unreferenced one is `gc`'s.
            for claim in claims {
                let _ = claim.remove();
            }
            return Err(self.full_store(e.into()));
        }
        Ok(new.uuid)
    }

    /// Checks the entries and finds their blobs: what `attachlayer` builds from.
    fn resolve_entries(&self, entries: &[Placement]) -> Result<Vec<Entry>, BackendError> {
        entries
            .iter()
            .map(|p| {
                let path = p.path.trim_end_matches('/');
                if !p.path.starts_with('/') || path.is_empty() || path.split('/').any(|c| c == "..")
                {
                    return Err(BackendError::Invalid(
                        format!(
                            "path '{}' must be absolute, below / and without '..'",
                            p.path
                        )
                        .into(),
                    ));
                }
                if p.mode > 0o7777 {
                    return Err(BackendError::Invalid(
                        format!("mode {:o} for {path} is not a permission mode", p.mode).into(),
                    ));
                }
                let kind = match &p.content {
                    Content::File(uuid) => match self.store.blob_by_uuid(uuid)? {
                        Some((sha, _)) if self.store.blob_path(&sha).exists() => Kind::File(sha),
                        _ => {
                            return Err(BackendError::NotFound(
                                format!("file {uuid} (for {path}) not found").into(),
                            ))
                        }
                    },
                    Content::Dir => Kind::Dir,
                    Content::Symlink(target) if target.is_empty() => {
                        return Err(BackendError::Invalid(
                            format!("symlink {path} has an empty target").into(),
                        ))
                    }
                    Content::Symlink(target) => Kind::Symlink(target.clone()),
                };
                Ok(Entry {
                    path: path.to_string(),
                    uid: p.uid,
                    gid: p.gid,
                    mode: p.mode,
                    kind,
                })
            })
            .collect()
    }
}
