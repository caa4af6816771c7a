//! `contree doctor`: checks that the store is whole, and repairs what can be repaired
//! without losing anything.
//!
//! Every check reads; with `repair` the repairable findings are fixed, under the `gc` lock
//! so that no run starts while files nobody references are removed. A repair only ever
//! removes what nothing references (scratch nobody holds, orphan files), ends operations
//! whose owner is gone (as recovery would) or completes event logs from their rows: it never
//! touches an image, a session or a file a run may still use. Garbage (unreferenced images
//! and layers) is `gc`'s, and is only counted here.

mod limits;

use super::eventlog::{LogReader, LogWriter};
use super::store::HOST_LAYER;
use super::{claim, LocalEngine};
use crate::backend::{BackendError, Finding};
use crate::wire::Status;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub fn check(engine: &LocalEngine, repair: bool) -> Result<Vec<Finding>, BackendError> {
    let _exclusive = if repair {
        Some(engine.gc_lock(true)?)
    } else {
        None
    };
    let mut out = vec![isolation(engine)];
    if !crate::rootless::active() {
        out.push(rootless_users());
    }
    out.push(database(engine));
    out.push(operations(engine, repair)?);
    out.push(event_logs(engine, repair)?);
    out.push(images(engine)?);
    out.extend(layers(engine, repair)?);
    out.push(blobs(engine, repair)?);
    out.push(scratch(engine, repair));
    out.push(mounts(engine));
    out.push(permissions(engine));
    out.push(super::network::doctor());
    out.extend(limits::doctor(engine, repair));
    out.extend(super::harden::doctor::findings(
        &engine.store.root.join("mnt"),
    ));
    Ok(out)
}

fn finding(check: &'static str, ok_detail: &str) -> Finding {
    Finding {
        check,
        detail: ok_detail.to_string(),
        ..Default::default()
    }
}

/// Which isolation sandboxes get here (see `idmap`): a level, not a problem.
fn isolation(engine: &LocalEngine) -> Finding {
    let range = super::idmap::Range::for_contree();
    let detail = if crate::rootless::active() {
        format!(
            "rootless: contree runs in a user namespace of its user's ({}); sandboxes share it, so root inside is that user outside; store at {}, never shared with root's",
            crate::rootless::current_mapping(),
            engine.store.root.display()
        )
    } else if std::env::var_os("CONTREE_USERNS").is_some_and(|v| v == "0") {
        "no user namespace: turned off by CONTREE_USERNS=0 (root inside is root outside)"
            .to_string()
    } else {
        match engine.isolation(range) {
            Ok(()) => format!(
                "user namespace with idmapped mounts: ids 0-{} inside are host ids {}-{} (uids) and {}-{} (gids)",
                range.count - 1,
                range.uid,
                range.uid as u64 + range.count as u64 - 1,
                range.gid,
                range.gid as u64 + range.count as u64 - 1,
            ),
            Err(why) => format!(
                "no user namespace: this machine cannot give one ({why}); root inside is root outside"
            ),
        }
    };
    finding("isolation", &detail)
}

/// Run as root: whether an ordinary user could run contree here, by the kernel's settings
/// (a level, not a problem of this store).
fn rootless_users() -> Finding {
    let knobs = crate::rootless::Knobs::read();
    let detail = match crate::rootless::forbidding_setting(&knobs) {
        None => {
            let ids = if crate::rootless::id_helpers_installed() {
                "users with /etc/subuid and /etc/subgid entries get ids 0-65535, others their own id only"
            } else {
                "newuidmap/newgidmap are not installed (Debian/Ubuntu: apt install uidmap): users get their own id only"
            };
            format!("ordinary users can run contree without root (user namespaces allowed; {ids})")
        }
        Some(why) => format!("ordinary users cannot run contree here: {why}"),
    };
    finding("rootless", &detail)
}

fn database(engine: &LocalEngine) -> Finding {
    let mut f = finding("database", "contree.db passes SQLite's integrity check");
    match engine.store.integrity_check() {
        Ok(problems) if problems.is_empty() => {}
        Ok(problems) => {
            f.detail = "contree.db fails SQLite's integrity check".into();
            f.problems = problems;
        }
        Err(e) => {
            f.detail = "contree.db cannot be checked".into();
            f.problems = vec![e.to_string()];
        }
    }
    f
}

/// Unfinished operations whose owner is gone (recovery would end them).
fn operations(engine: &LocalEngine, repair: bool) -> Result<Finding, BackendError> {
    let mut f = finding("operations", "every unfinished operation has a live owner");
    let active = engine.store.ops(
        &[Status::Pending, Status::Assigned, Status::Executing],
        None,
    )?;
    for row in active.iter().filter(|row| !engine.supervisor_alive(row)) {
        f.problems.push(format!(
            "operation {} is {} but its supervisor is gone",
            row.uuid, row.status
        ));
        if repair {
            engine.recover_op(row);
        }
    }
    repairable(
        &mut f,
        repair,
        "--repair ends them (FAILED, or as their log says), as recovery does",
        "ended (FAILED, or as their log says), as recovery does",
    );
    Ok(f)
}

/// Every finished operation's log ends in `completion`.
fn event_logs(engine: &LocalEngine, repair: bool) -> Result<Finding, BackendError> {
    let mut f = finding(
        "event logs",
        "every finished operation's log ends in completion",
    );
    let done = engine
        .store
        .ops(&[Status::Success, Status::Failed, Status::Cancelled], None)?;
    let mut incomplete = Vec::new();
    for row in done {
        let path = engine.store.op_dir(&row.uuid).join("events");
        if !ends_in_completion(&path) {
            f.problems.push(format!(
                "operation {} ({}): its log has no completion",
                row.uuid, row.status
            ));
            incomplete.push(row);
        }
    }
    if repair {
        for row in &incomplete {
            let dir = engine.store.op_dir(&row.uuid);
            let log = std::fs::create_dir_all(&dir)
                .and_then(|_| LogWriter::take_over(&dir.join("events")));
            if let Ok(Some(mut log)) = log {
                let data = super::eventlog::completion(
                    row.status,
                    (row.duration.unwrap_or(0.0) * 1000.0) as u64,
                    row.result_image.as_deref(),
                    row.error.as_deref(),
                    row.image_size.unwrap_or(0),
                );
                let _ = log.append("completion", None, data);
            }
        }
    }
    repairable(
        &mut f,
        repair,
        "--repair appends completion from the operation's row",
        "completion appended from the operation's row",
    );
    Ok(f)
}

fn ends_in_completion(path: &Path) -> bool {
    let Ok(mut reader) = LogReader::open(path) else {
        return false;
    };
    reader.skip_stream_payloads();
    let mut last = None;
    while let Ok(Some(ev)) = reader.next() {
        last = Some(ev.header.kind);
    }
    last.as_deref() == Some("completion")
}

/// Every image's layers exist (a missing one cannot be made again: reported, never repaired).
fn images(engine: &LocalEngine) -> Result<Finding, BackendError> {
    let images = engine.store.images()?;
    let known: HashSet<String> = engine.store.layer_ids()?.into_iter().collect();
    let mut f = finding("images", "");
    for img in &images {
        for layer in img.layers.iter().filter(|l| *l != HOST_LAYER) {
            if !known.contains(layer) {
                f.problems
                    .push(format!("image {}: layer {layer} has no row", img.uuid));
            } else if !engine.store.layer_dir(layer).is_dir() {
                f.problems.push(format!(
                    "image {}: layer {layer} is missing on disk",
                    img.uuid
                ));
            }
        }
    }
    f.detail = if f.problems.is_empty() {
        format!("{} images, every layer present", images.len())
    } else {
        "images with missing layers cannot be repaired; `contree images rm` removes them".into()
    };
    Ok(f)
}

/// Layer rows without a directory, and directories without a row that nobody holds.
fn layers(engine: &LocalEngine, repair: bool) -> Result<Vec<Finding>, BackendError> {
    let used: HashSet<String> = engine
        .store
        .images()?
        .into_iter()
        .flat_map(|i| i.layers)
        .collect();
    let ids = engine.store.layer_ids()?;
    let mut rows = finding("layer rows", "every layer row has its directory");
    for id in &ids {
        if !engine.store.layer_dir(id).is_dir() && !used.contains(id) {
            rows.problems.push(format!("layer {id}: no directory"));
            if repair {
                let _ = engine.store.delete_layer_row(id);
            }
        }
    }
    let n = rows.problems.len();
    repairable(
        &mut rows,
        repair,
        &format!("--repair removes {n}"),
        &format!("removed {n}"),
    );
    // A layer dir without a row is what a run, import or merge interrupted between its
    // rename and its commit leaves: garbage, which `gc` frees (and a run still building on
    // one holds it or has it in flight), not damage.
    let known: HashSet<&String> = ids.iter().collect();
    let mut orphans = finding("layer dirs", "every layer directory has its row");
    let mut paths = Vec::new();
    for entry in read_dir(&engine.store.root.join("layers")) {
        let id = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !known.contains(&id) && !used.contains(&id) && !claim::held(&entry) {
            paths.push(entry);
        }
    }
    if !paths.is_empty() {
        orphans.detail = format!(
            "{} layer dirs without a row, left by interrupted runs or imports: `contree gc` frees them",
            paths.len()
        );
    }
    Ok(vec![rows, orphans])
}

/// Blob rows without content, and content without a row.
fn blobs(engine: &LocalEngine, repair: bool) -> Result<Finding, BackendError> {
    let mut f = finding(
        "blobs",
        "every blob row has its content and every file its row",
    );
    let rows = engine.store.blob_shas()?;
    let known: HashSet<&String> = rows.iter().collect();
    for sha in &rows {
        if !engine.store.blob_path(sha).is_file() {
            f.problems.push(format!("blob {sha}: content missing"));
            if repair {
                let _ = engine.store.delete_blob_row(sha);
            }
        }
    }
    repairable(
        &mut f,
        repair,
        "--repair drops rows without content (a later upload stores it again)",
        "dropped rows without content (a later upload stores it again)",
    );
    // Content without a row is garbage a crash left (like a layer dir without a row).
    let orphans = read_dir(&engine.store.root.join("blobs/sha256"))
        .into_iter()
        .filter(|p| {
            let sha = p.file_name().unwrap_or_default().to_string_lossy();
            !known.contains(&sha.into_owned())
        })
        .count();
    if orphans > 0 && f.problems.is_empty() {
        f.detail = format!(
            "{orphans} blob files without a row, left by interrupted uploads or gc: `contree gc` frees them"
        );
    }
    Ok(f)
}

/// Entries of `tmp/` nobody holds, and spare scratch dirs that are not one.
fn scratch(engine: &LocalEngine, repair: bool) -> Finding {
    let mut f = finding("scratch", "nothing abandoned in tmp/ or spare/");
    let root = &engine.store.root;
    for entry in read_dir(&root.join("tmp")) {
        if !claim::held(&entry) {
            f.problems.push(format!(
                "tmp/{}: nobody holds it (left by a crash)",
                entry.file_name().unwrap_or_default().to_string_lossy()
            ));
            if repair {
                claim::remove_if_abandoned(&entry);
            }
        }
    }
    for entry in read_dir(&root.join("spare")) {
        let sound = ["upper", "work"]
            .iter()
            .all(|d| entry.join(d).symlink_metadata().is_ok_and(|m| m.is_dir()));
        if !sound && !claim::held(&entry) {
            f.problems.push(format!(
                "spare/{}: not a scratch dir",
                entry.file_name().unwrap_or_default().to_string_lossy()
            ));
            if repair {
                claim::remove_if_abandoned(&entry);
            }
        }
    }
    let n = f.problems.len();
    repairable(
        &mut f,
        repair,
        "--repair removes them",
        &format!("removed {n}"),
    );
    f
}

/// Marks a finding with problems as repairable, and repaired with `repair`, saying so.
fn repairable(f: &mut Finding, repair: bool, todo: &str, done: &str) {
    f.repairable = !f.problems.is_empty();
    f.repaired = repair && f.repairable;
    if f.repairable {
        f.detail = if repair { done } else { todo }.to_string();
    }
}

/// Mounts under the store in this mount namespace: supervisors mount only in their own, so
/// any here was left by something else.
fn mounts(engine: &LocalEngine) -> Finding {
    let mut f = finding("mounts", "nothing of the store is mounted here");
    let root = engine.store.root.to_string_lossy().into_owned();
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in text.lines() {
            if let Some(point) = line.split(' ').nth(4) {
                if point.starts_with(&root) {
                    f.problems.push(format!("{point} is mounted"));
                }
            }
        }
    }
    if !f.problems.is_empty() {
        f.detail = "unmount them (`umount`); contree never leaves mounts here".into();
    }
    f
}

/// The store, the sessions and the cache are private to their user (0700, theirs), so no
/// one else reaches a setuid file a run left in a layer. Every command tightens a looser
/// mode as it opens them; what remains is a directory it could not change, or one another
/// user owns (and so could change back), which is only reported.
fn permissions(engine: &LocalEngine) -> Finding {
    use std::os::unix::fs::MetadataExt;
    let mut f = finding(
        "permissions",
        "the store, sessions and cache are 0700 and yours: no other user reaches a layer",
    );
    let me = nix::unistd::geteuid().as_raw();
    let dirs = [
        engine.store.root.clone(),
        engine.data_dir.join("sessions"),
        engine.data_dir.join("cache"),
    ];
    for dir in dirs {
        match std::fs::metadata(&dir) {
            Ok(m) => {
                if m.mode() & 0o077 != 0 {
                    f.problems.push(format!(
                        "{} is mode {:o}: other users may enter it",
                        dir.display(),
                        m.mode() & 0o7777
                    ));
                }
                if m.uid() != me {
                    f.problems.push(format!(
                        "{} belongs to uid {}, not to you (uid {me})",
                        dir.display(),
                        m.uid()
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => f.problems.push(format!("{}: {e}", dir.display())),
        }
    }
    if !f.problems.is_empty() {
        f.detail = "make them yours and 0700 (`chown`, `chmod 700`)".into();
    }
    f
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
}
