//! Attachments as a layer: the files of a run's `files` map are hard-linked from the blob
//! store into a directory that joins the overlay as a lower layer, instead of being copied
//! into every sandbox.
//!
//! A lower layer is never written (a change in the sandbox copies the file up), so sharing
//! inodes with the store is safe. Because a hard link shares its inode's owner and mode,
//! each (content, uid, gid, mode) gets its own read-only copy of the blob, made once
//! ("variant"). The layer is named by a hash of everything it holds, so an unchanged
//! re-run finds it already built and does no per-file work at all. A committed run keeps
//! it in the new image's chain, so the files persist like anything the command wrote.
//!
//! Paths are placed through the image's own symlinks (`/bin/x` on a merged-/usr image
//! lands in `usr/bin/x`), and directories the layer creates copy the metadata of the
//! image's directory at that place, so attaching never changes what else is visible.

use super::inspect::View;
use super::store::Layout;
use crate::progress::{self, Show};
use crate::wire::FileRef;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the attachment layer of a run could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AttachLayerError {
    /// The request names a file the store has no blob for.
    #[error("file {uuid} for {path} not found")]
    UnknownFile { uuid: String, path: String },
    #[error("file path '{0}' has no name")]
    NoName(String),
    #[error("building the attachment layer: {0}")]
    Build(#[source] io::Error),
}

/// One entry to place, resolved.
struct Placed {
    /// Relative path inside the layer (after the image's symlinks).
    rel: PathBuf,
    kind: Kind,
    uid: u32,
    gid: u32,
    mode: u32,
}

/// What one entry of an attachment layer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file: the sha256 of its blob.
    File(String),
    /// A directory, with the entry's owner and mode (also when the image has one there).
    Dir,
    /// A symbolic link to this target, as written.
    Symlink(String),
}

/// One entry of a layer built by `ensure_entries`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Absolute path in the image.
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub kind: Kind,
}

/// Directory metadata (mode, uid, gid) for the layer's directories.
type DirMeta = BTreeMap<PathBuf, (u32, u32, u32)>;

/// Returns the id of a layer holding `files` (building it unless it exists).
pub fn ensure(
    layout: &Layout,
    view: &View,
    files: &BTreeMap<String, FileRef>,
    blobs: &BTreeMap<String, String>,
) -> Result<String, AttachLayerError> {
    ensure_with(layout, view, files, blobs, Show::Never)
}

/// `ensure`, with a progress bar while a big layer is built (see `progress`).
pub fn ensure_with(
    layout: &Layout,
    view: &View,
    files: &BTreeMap<String, FileRef>,
    blobs: &BTreeMap<String, String>,
    show: Show,
) -> Result<String, AttachLayerError> {
    let mut entries = Vec::with_capacity(files.len());
    for (path, file) in files {
        let sha = blobs
            .get(&file.uuid)
            .ok_or_else(|| AttachLayerError::UnknownFile {
                uuid: file.uuid.clone(),
                path: path.clone(),
            })?;
        entries.push(Entry {
            path: path.clone(),
            uid: file.uid,
            gid: file.gid,
            mode: file.permissions().unwrap_or(0o644),
            kind: Kind::File(sha.clone()),
        });
    }
    ensure_entries(layout, view, &entries, show)
}

/// The id of a layer holding `entries` over the image `view` shows (built unless it
/// exists): files, directories and symlinks, in order (a later entry at the same path
/// wins).
pub fn ensure_entries(
    layout: &Layout,
    view: &View,
    entries: &[Entry],
    show: Show,
) -> Result<String, AttachLayerError> {
    let mut placed = Vec::with_capacity(entries.len());
    let mut dirs: DirMeta = BTreeMap::new();
    let mut parents: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    // Directories asked for keep their own metadata, whatever placing the others records.
    let mut asked: DirMeta = BTreeMap::new();
    for entry in entries {
        let p = Path::new(&entry.path);
        let name = p
            .file_name()
            .ok_or_else(|| AttachLayerError::NoName(entry.path.clone()))?;
        if entry.kind == Kind::Dir {
            let rel = place_dir(view, p, &mut dirs);
            asked.insert(rel, (entry.mode, entry.uid, entry.gid));
            continue;
        }
        let parent = p.parent().unwrap_or(Path::new("/")).to_path_buf();
        let real_parent = match parents.get(&parent) {
            Some(r) => r.clone(),
            None => {
                let r = place_dir(view, &parent, &mut dirs);
                parents.insert(parent.clone(), r.clone());
                r
            }
        };
        placed.push(Placed {
            rel: real_parent.join(name),
            kind: entry.kind.clone(),
            uid: entry.uid,
            gid: entry.gid,
            mode: entry.mode,
        });
    }
    dirs.extend(asked);
    let id = format!("attach-{}", key(&placed, &dirs));
    let dest = layout.layer_dir(&id);
    if dest.exists() {
        return Ok(id);
    }
    let mut staging = layout
        .staging_dir(&format!("{id}.{}", uuid::Uuid::new_v4().simple()))
        .map_err(AttachLayerError::Build)?;
    let bar = match show {
        Show::Never => None,
        Show::OnTerminal => {
            let bytes = placed
                .iter()
                .filter_map(|p| match &p.kind {
                    Kind::File(sha) => fs::metadata(layout.blob_path(sha)).ok(),
                    _ => None,
                })
                .map(|m| m.len())
                .sum();
            progress::bar(show, bytes, || format!("staging {} file(s)", placed.len()))
        }
    };
    if let Err(e) = build(layout, staging.path(), &placed, &dirs, bar.as_ref()) {
        let _ = staging.remove();
        return Err(AttachLayerError::Build(e));
    }
    if let Err(e) = staging.rename(&dest) {
        let _ = staging.remove();
        // Someone else built the same layer meanwhile: theirs is as good as ours.
        if !dest.exists() {
            return Err(AttachLayerError::Build(e));
        }
    }
    Ok(id)
}

/// Resolves a directory path through the image's symlinks and records, for it and each
/// ancestor, the metadata it has in the image (or root-owned 0755 where it does not exist
/// yet, as `mkdir -p` would make it). Returns the relative path inside the layer.
fn place_dir(view: &View, dir: &Path, dirs: &mut DirMeta) -> PathBuf {
    // The deepest existing ancestor, resolved inside the image; the rest is created.
    let mut existing = dir.to_path_buf();
    let mut missing = Vec::new();
    let resolved = loop {
        match view.resolve(&existing.to_string_lossy(), true) {
            Ok((rel, found)) if found.meta.is_dir() => break rel,
            _ => {
                let Some(name) = existing.file_name() else {
                    break PathBuf::new();
                };
                missing.push(name.to_os_string());
                existing.pop();
            }
        }
    };
    let mut cur = PathBuf::new();
    for comp in resolved.components() {
        cur.push(comp);
        if let Ok((_, found)) = view.resolve(&format!("/{}", cur.display()), true) {
            let m = &found.meta;
            dirs.insert(cur.clone(), (m.mode() & 0o7777, m.uid(), m.gid()));
        }
    }
    for name in missing.into_iter().rev() {
        cur.push(name);
        dirs.entry(cur.clone()).or_insert((0o755, 0, 0));
    }
    cur
}

fn key(placed: &[Placed], dirs: &DirMeta) -> String {
    let mut h = Sha256::new();
    // A layer of files only has the key it had before directories and links were placed.
    for p in placed {
        match &p.kind {
            Kind::File(sha) => h.update(format!(
                "f\0{}\0{sha}\0{}\0{}\0{:o}\n",
                p.rel.display(),
                p.uid,
                p.gid,
                p.mode
            )),
            Kind::Symlink(target) => h.update(format!(
                "l\0{}\0{target}\0{}\0{}\n",
                p.rel.display(),
                p.uid,
                p.gid
            )),
            Kind::Dir => {}
        }
    }
    for (d, (mode, uid, gid)) in dirs {
        h.update(format!("d\0{}\0{uid}\0{gid}\0{mode:o}\n", d.display()));
    }
    crate::sha256::hex(&h.finalize()[..16])
}

/// Lays the files out under `staging`, counting each file's bytes on `bar` once placed.
fn build(
    layout: &Layout,
    staging: &Path,
    placed: &[Placed],
    dirs: &DirMeta,
    bar: Option<&ProgressBar>,
) -> io::Result<()> {
    fs::create_dir_all(staging)?;
    for d in dirs.keys() {
        fs::create_dir_all(staging.join(d))?;
    }
    let mut made = BTreeSet::new();
    for p in placed {
        let target = staging.join(&p.rel);
        let _ = fs::remove_file(&target);
        match &p.kind {
            Kind::File(sha) => fs::hard_link(variant(layout, p, sha, &mut made, bar)?, &target)?,
            Kind::Symlink(to) => {
                std::os::unix::fs::symlink(to, &target)?;
                crate::rootless::lchown(&target, p.uid, p.gid)?;
            }
            Kind::Dir => {}
        }
    }
    // Directory metadata last: a 0500 directory would refuse the links above.
    for (d, (mode, uid, gid)) in dirs.iter().rev() {
        let path = staging.join(d);
        crate::rootless::lchown(&path, *uid, *gid)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
    }
    Ok(())
}

/// The read-only copy of a blob with the file's owner and mode, made on first use.
fn variant(
    layout: &Layout,
    file: &Placed,
    sha: &str,
    made: &mut BTreeSet<PathBuf>,
    bar: Option<&ProgressBar>,
) -> io::Result<PathBuf> {
    let Placed { uid, gid, mode, .. } = file;
    let dir = layout.root.join("blobs/variants");
    let path = dir.join(format!("{sha}.{uid}.{gid}.{mode:o}"));
    if made.contains(&path) || path.exists() {
        if let Some(bar) = bar {
            bar.inc(fs::metadata(&path).map_or(0, |m| m.len()));
        }
        return Ok(path);
    }
    fs::create_dir_all(&dir)?;
    let mut tmp = layout.staging_file(&format!(".variant-{}", uuid::Uuid::new_v4().simple()))?;
    let made_here = progress::copy(&layout.blob_path(sha), tmp.path(), bar)
        // chown first: it clears setuid/setgid bits that the mode may set.
        .and_then(|_| crate::rootless::lchown(tmp.path(), *uid, *gid))
        .and_then(|_| fs::set_permissions(tmp.path(), fs::Permissions::from_mode(*mode)))
        .and_then(|_| tmp.rename(&path));
    if let Err(e) = made_here {
        let _ = tmp.remove();
        return Err(e);
    }
    made.insert(path.clone());
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_land_through_image_symlinks_and_the_layer_is_reused() {
        let (t, layout) = Layout::temp();
        let base = layout.layer_dir("base");
        fs::create_dir_all(base.join("usr/bin")).unwrap();
        fs::create_dir_all(base.join("root")).unwrap();
        fs::set_permissions(base.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("usr/bin", base.join("bin")).unwrap();
        fs::create_dir_all(t.path().join("blobs/sha256")).unwrap();
        fs::create_dir_all(t.path().join("tmp")).unwrap();
        fs::write(layout.blob_path("abc"), "content").unwrap();
        let view = View::new(&layout, &["base".to_string()]);
        let mut files = BTreeMap::new();
        let file = |mode: &str| FileRef {
            uuid: "u1".into(),
            uid: 0,
            gid: 0,
            mode: mode.into(),
        };
        files.insert("/bin/tool".to_string(), file("0755"));
        files.insert("/root/new/dir/x".to_string(), file("0600"));
        let blobs = BTreeMap::from([("u1".to_string(), "abc".to_string())]);
        let id = ensure(&layout, &view, &files, &blobs).unwrap();
        let dir = layout.layer_dir(&id);
        assert!(dir.join("usr/bin/tool").is_file());
        assert!(
            !dir.join("bin").exists(),
            "the image's /bin symlink must not be shadowed"
        );
        let mode = |p: &str| fs::metadata(dir.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("usr/bin/tool"), 0o755);
        assert_eq!(mode("root/new/dir/x"), 0o600);
        assert_eq!(
            mode("root"),
            0o700,
            "an existing directory keeps the image's mode"
        );
        assert_eq!(mode("root/new"), 0o755);
        assert_eq!(ensure(&layout, &view, &files, &blobs).unwrap(), id);
    }

    #[test]
    fn directories_and_symlinks_are_placed_with_their_metadata() {
        let (t, layout) = Layout::temp();
        fs::create_dir_all(layout.layer_dir("base")).unwrap();
        fs::create_dir_all(t.path().join("tmp")).unwrap();
        let view = View::new(&layout, &["base".to_string()]);
        let entry = |path: &str, mode, kind| Entry {
            path: path.into(),
            uid: 0,
            gid: 0,
            mode,
            kind,
        };
        let entries = vec![
            entry("/d/empty", 0o700, Kind::Dir),
            entry("/d/link", 0o777, Kind::Symlink("../target".into())),
        ];
        let id = ensure_entries(&layout, &view, &entries, Show::Never).unwrap();
        let dir = layout.layer_dir(&id);
        assert_eq!(
            fs::metadata(dir.join("d/empty")).unwrap().mode() & 0o7777,
            0o700
        );
        assert_eq!(fs::metadata(dir.join("d")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read_link(dir.join("d/link")).unwrap(),
            Path::new("../target")
        );
        // Another target is another layer.
        let other = vec![entry("/d/link", 0o777, Kind::Symlink("elsewhere".into()))];
        assert_ne!(
            ensure_entries(&layout, &view, &other, Show::Never).unwrap(),
            id
        );
    }
}
