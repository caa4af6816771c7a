//! Garbage collection of the local store (`contree gc`, `contree images rm`).
//!
//! Live = tagged images, every image in any session's history, the image of a running
//! operation and both images of a detached run not applied yet; their layers; blobs staged
//! for a next run or attached by a running operation. Everything else goes. The decision
//! and the row deletions happen in one write transaction, so no run can commit an image
//! on a layer being removed; directories and files are removed after the commit (a crash
//! in between leaves orphans that the next `gc` finds). It must never remove anything a
//! session or a running operation uses; `store/gc.lock` keeps it apart from runs that are
//! starting (see `gc_lock`).

use super::store::{ImageRow, HOST_LAYER};
use super::LocalEngine;
use crate::backend::{BackendError, Cause, Freed, GcReport};
use crate::wire::Status;
use rusqlite::params;
use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

impl LocalEngine {
    /// `store/gc.lock`, locked shared (a run starting) or exclusive (`gc`). A run's blobs
    /// are in no row until its operation has one, and its layers in no image until it
    /// commits; from its upload until it is in flight (its scratch dir claimed, or its row
    /// written: see `start`) it holds `gc` off, so nothing it is about to use is freed.
    pub fn gc_lock(&self, exclusive: bool) -> Result<std::fs::File, BackendError> {
        let how = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        self.store_lock("gc.lock", how)
    }

    /// `store/NAME`, created if need be, locked with flock(2) `how` (waiting for it); the
    /// lock goes with the file.
    pub(super) fn store_lock(&self, name: &str, how: i32) -> Result<std::fs::File, BackendError> {
        let path = self.store.root.join(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| BackendError::Io(Cause::file(&path, e)))?;
        loop {
            // SAFETY: flock(2) on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
                return Ok(file);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(BackendError::Io(Cause::file(&path, e)));
            }
        }
    }

    /// Holds `gc` off until this run is in flight (see `gc_lock`). A CLI's run holds it
    /// from its upload to its start, in the engine (`start` lets it go); any other caller
    /// (a server's threads, each with its own calls) for as long as it keeps the answer.
    pub(super) fn hold_gc_off(&self) -> Result<Option<std::fs::File>, BackendError> {
        if !self.fork {
            return self.gc_lock(false).map(Some);
        }
        let mut starting = super::lock(&self.starting);
        if starting.is_none() {
            *starting = Some(self.gc_lock(false)?);
        }
        Ok(None)
    }
}

pub enum Mode<'a> {
    /// Everything unreferenced.
    All { dry_run: bool },
    /// This image (refused when referenced), then the layers no remaining image needs.
    Image(&'a str),
}

/// Whether a run is in flight without a row yet: its scratch dir (`tmp/<uuid>`) is claimed
/// and its operation not recorded. (A supervisor that has recorded its ending and is only
/// giving its scratch dir back does not count.)
fn starting(engine: &LocalEngine) -> Result<bool, super::store::StoreError> {
    let Ok(entries) = std::fs::read_dir(engine.store.root.join("tmp")) else {
        return Ok(false);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if crate::backend::is_uuid(&name) && super::claim::held(&entry.path()) {
            match engine.store.op(&name)? {
                Some(row) if row.status.is_terminal() => {}
                _ => return Ok(true),
            }
        }
    }
    Ok(false)
}

pub fn collect(
    engine: &LocalEngine,
    refs: crate::backend::Refs<'_>,
    mode: Mode<'_>,
) -> Result<GcReport, BackendError> {
    let store = &engine.store;
    let dry_run = matches!(mode, Mode::All { dry_run: true });
    // Runs between their upload and their scratch claim wait, and we wait for them, until
    // what we decided to remove is gone (see `LocalEngine::hold_gc_off`).
    let _exclusive = engine.gc_lock(true)?;
    let mut doomed_paths: Vec<PathBuf> = Vec::new();
    let report = store.transaction(|conn| {
        let active = store.ops(
            &[Status::Pending, Status::Assigned, Status::Executing],
            None,
        )?;
        // Only now: no run can end while this transaction holds the store (its ending is a
        // write), so one that is not in `active` had ended, and is on its session's pending
        // list or in its history, in one picture, as the sessions apply runs atomically.
        let refs = match refs() {
            Ok(refs) => refs,
            Err(e) => return Ok(Err(e)),
        };
        let refs = &refs;
        // Why each image must stay, for the `images rm` refusal.
        let mut users: HashMap<String, String> = refs
            .images
            .iter()
            .map(|(img, key)| (img.clone(), format!("session '{key}'")))
            .collect();
        let mut blobs_used: HashSet<String> = refs.files.clone();
        let active_ids: HashSet<&str> = active.iter().map(|op| op.uuid.as_str()).collect();
        for op in &active {
            if let Some(img) = &op.image {
                users.insert(img.clone(), format!("running operation {}", op.uuid));
            }
            for file in op.request.iter().flat_map(|r| r.files.iter().flatten()) {
                blobs_used.insert(file.1.uuid.clone());
            }
        }
        for uuid in &refs.ops {
            if let Some(op) = store.op(uuid)? {
                for img in [op.image, op.result_image].into_iter().flatten() {
                    users.entry(img).or_insert_with(|| {
                        format!("detached run {uuid} (see `contree session wait`)")
                    });
                }
            }
        }
        let images = store.images()?;
        // The snapshot of a run that is still ending (committed, its row not finished yet)
        // or not applied to its session yet: its image names the operation.
        for img in &images {
            if let Some(op) = img.operation.as_deref() {
                if active_ids.contains(op) || refs.ops.contains(op) {
                    users
                        .entry(img.uuid.clone())
                        .or_insert_with(|| format!("operation {op}, not applied yet"));
                }
            }
        }
        let doomed_images: Vec<&ImageRow> = match mode {
            Mode::All { .. } => images
                .iter()
                .filter(|i| i.tags.is_empty() && !users.contains_key(&i.uuid))
                .collect(),
            Mode::Image(target) => {
                let Some(row) = images.iter().find(|i| i.uuid == target) else {
                    return Ok(Err(BackendError::NotFound(
                        format!("image {target} not found").into(),
                    )));
                };
                if let Some(user) = users.get(target) {
                    return Ok(Err(BackendError::Invalid(
                        format!("image {target} is used by {user}; it stays").into(),
                    )));
                }
                if row.tags.iter().any(|t| t == super::store::HOST_TAG) {
                    return Ok(Err(BackendError::Invalid(
                        "the built-in host image cannot be removed".into(),
                    )));
                }
                vec![row]
            }
        };
        let doomed_ids: HashSet<&str> = doomed_images.iter().map(|i| i.uuid.as_str()).collect();
        let mut live_layers: HashSet<&str> = HashSet::from([HOST_LAYER]);
        for img in images
            .iter()
            .filter(|i| !doomed_ids.contains(i.uuid.as_str()))
        {
            live_layers.extend(img.layers.iter().map(String::as_str));
        }
        let mut freed = Vec::new();
        for img in &doomed_images {
            freed.push(Freed {
                kind: "image",
                id: img.uuid.clone(),
                bytes: 0,
            });
        }
        let table_layers: Vec<(String, i64)> = conn
            .prepare("SELECT id, size FROM layers ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let known: HashSet<String> = table_layers.iter().map(|l| l.0.clone()).collect();
        let mut doomed_layers = Vec::new();
        for (id, size) in &table_layers {
            if !live_layers.contains(id.as_str()) {
                doomed_layers.push(id.clone());
                freed.push(Freed {
                    kind: "layer",
                    id: id.clone(),
                    bytes: (*size).max(0) as u64,
                });
            }
        }
        // Nothing running, recorded or not yet (a foreground run's supervisor records its
        // row while its sandbox starts, and has claimed its scratch dir before that).
        let quiet = active.is_empty() && !starting(engine)?;
        if matches!(mode, Mode::All { .. }) && quiet {
            // Directories that never made it into the table (a crash between rename and
            // commit). Only with nothing running: a run builds its attachment layer
            // before its image exists.
            if let Ok(rd) = std::fs::read_dir(store.root.join("layers")) {
                for entry in rd.flatten() {
                    let id = entry.file_name().to_string_lossy().into_owned();
                    // Held: an import or commit that has not written its row yet.
                    if !known.contains(&id)
                        && !live_layers.contains(id.as_str())
                        && !super::claim::held(&entry.path())
                    {
                        freed.push(Freed {
                            kind: "layer",
                            id: id.clone(),
                            bytes: super::layers::layer_size(&entry.path()),
                        });
                        doomed_paths.push(entry.path());
                    }
                }
            }
        }
        let mut doomed_blobs = Vec::new();
        if matches!(mode, Mode::All { .. }) {
            let blobs: Vec<(String, String, i64)> = conn
                .prepare("SELECT sha256, uuid, size FROM blobs ORDER BY sha256")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            // A run not recorded yet may attach any blob: none goes while one is in flight
            // (a run about to start holds `gc` off, see `LocalEngine::hold_gc_off`).
            for (sha, uuid, size) in blobs.into_iter().filter(|_| quiet) {
                if !blobs_used.contains(&uuid) {
                    freed.push(Freed {
                        kind: "blob",
                        id: sha.clone(),
                        bytes: size.max(0) as u64,
                    });
                    doomed_paths.push(store.blob_path(&sha));
                    doomed_blobs.push(sha);
                }
            }
            // Content whose row a crash removed (a `gc` that died between its commit and
            // its deletions) or never wrote (an upload that died before its row).
            if quiet {
                let known: HashSet<String> = conn
                    .prepare("SELECT sha256 FROM blobs")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                if let Ok(rd) = std::fs::read_dir(store.root.join("blobs/sha256")) {
                    for entry in rd.flatten() {
                        let sha = entry.file_name().to_string_lossy().into_owned();
                        if !known.contains(&sha) {
                            freed.push(Freed {
                                kind: "blob",
                                id: sha,
                                bytes: entry.metadata().map(|m| m.len()).unwrap_or(0),
                            });
                            doomed_paths.push(entry.path());
                        }
                    }
                }
            }
            // A variant is hard-linked into the attachment layers built from it; with a
            // link count of 1 none is left. Not while a run may be linking one.
            if quiet {
                if let Ok(rd) = std::fs::read_dir(store.root.join("blobs/variants")) {
                    for entry in rd.flatten() {
                        let Ok(meta) = entry.path().symlink_metadata() else {
                            continue;
                        };
                        if meta.is_file() && meta.nlink() == 1 {
                            freed.push(Freed {
                                kind: "variant",
                                id: entry.file_name().to_string_lossy().into_owned(),
                                bytes: meta.len(),
                            });
                            doomed_paths.push(entry.path());
                        }
                    }
                }
            }
        }
        for id in &doomed_layers {
            doomed_paths.push(store.layer_dir(id));
        }
        if !dry_run {
            for img in &doomed_images {
                conn.execute("DELETE FROM tags WHERE image = ?1", [&img.uuid])?;
                conn.execute("DELETE FROM images WHERE uuid = ?1", [&img.uuid])?;
                conn.execute("DELETE FROM image_sources WHERE image = ?1", [&img.uuid])?;
            }
            for id in &doomed_layers {
                conn.execute("DELETE FROM layers WHERE id = ?1", params![id])?;
            }
            for sha in &doomed_blobs {
                conn.execute("DELETE FROM blobs WHERE sha256 = ?1", params![sha])?;
            }
        }
        Ok(Ok(GcReport { freed }))
    })??;
    if !dry_run {
        crate::failpoint::hit("gc:committed");
        for path in doomed_paths {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    Ok(report)
}
