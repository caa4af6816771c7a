//! Layer directories: the host mask, emptiness and size of a run's upper dir, and
//! flattening a long chain into one layer.
//!
//! Layers use overlayfs's own on-disk format (whiteouts are 0/0 character devices, opaque
//! directories carry `trusted.overlay.opaque=y`), so a run's upper dir becomes a layer by a
//! rename, with no conversion. An overlay mounted inside a sandbox's user namespace reads and
//! writes the `user.overlay.*` form instead (the `userxattr` option): every layer carries
//! both markers on its opaque directories, so any chain works in either kind of mount.

use super::claim::Claim;
use super::store::Layout;
use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The opaque marker as an overlay mounted by host root reads it, and as one mounted inside
/// a user namespace (`userxattr`) does.
const OPAQUE: &str = "trusted.overlay.opaque";
const OPAQUE_USER: &str = "user.overlay.opaque";

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

pub fn make_whiteout(path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: mknod with a valid path; a 0/0 char device is overlayfs's whiteout.
    if unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks `dir` opaque, in both forms (see the module's doc).
pub fn set_opaque(dir: &Path) -> io::Result<()> {
    let p = c_path(dir)?;
    // `trusted.*` needs host root: a rootless store (never shared with root's) keeps the
    // one form its overlays, all mounted with `userxattr`, read.
    let markers: &[&str] = if crate::rootless::active() {
        &[OPAQUE_USER]
    } else {
        &[OPAQUE, OPAQUE_USER]
    };
    for marker in markers {
        let name = CString::new(*marker).map_err(io::Error::other)?;
        // SAFETY: valid C strings and a 1-byte value.
        if unsafe { libc::lsetxattr(p.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn has_marker(p: &CString, marker: &str) -> bool {
    let Ok(name) = CString::new(marker) else {
        return false;
    };
    let mut buf = [0u8; 4];
    matches!(lgetxattr(p, &name, &mut buf), Ok(1)) && buf[0] == b'y'
}

/// lgetxattr(2): the value of attribute `name` of `path` (not following a last symlink)
/// into `buf`; its length.
pub(crate) fn lgetxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: NUL-terminated strings, and a buffer of the length given.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether `dir` is opaque, in either form.
pub fn is_opaque(dir: &Path) -> bool {
    let Ok(p) = c_path(dir) else { return false };
    has_marker(&p, OPAQUE) || has_marker(&p, OPAQUE_USER)
}

/// Gives every opaque directory of the layer at `dir` both markers (a run's upper dir has
/// the one its overlay wrote); returns the layer's size in bytes, which the same walk counts.
pub fn seal(dir: &Path) -> u64 {
    let mut size = 0;
    for entry in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        let kind = entry.file_type();
        if kind.is_dir() {
            let Ok(p) = c_path(entry.path()) else {
                continue;
            };
            let (trusted, user) = (has_marker(&p, OPAQUE), has_marker(&p, OPAQUE_USER));
            if trusted != user {
                let _ = set_opaque(entry.path());
            }
        } else if kind.is_file() {
            size += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    size
}

pub fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Top-level host entries that `host` shows; everything else appears as an empty dir.
const HOST_VISIBLE: &[&str] = &[
    "bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "opt", "var", "proc", "dev",
    "sys",
];
/// Directories that always appear, and always empty.
const HOST_EMPTY: &[&str] = &["root", "home", "tmp", "run", "mnt", "media", "srv"];
/// Inside visible trees: directories shown empty and files hidden.
const HOST_EMPTY_NESTED: &[&str] = &[
    "var/log",
    "var/tmp",
    "var/mail",
    "var/spool",
    "etc/ssl/private",
];
const HOST_HIDDEN_FILES: &[&str] = &[
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/security/opasswd",
];

/// Builds the mask layer that turns the host root into the `host` image: secrets are
/// whited out, private trees (home dirs, /tmp, the contree store) are opaque and empty.
pub fn build_host_mask(dest: &Path, data_dir: &Path) -> io::Result<()> {
    build_mask(dest, &[data_dir.to_path_buf()])
}

/// Makes sure the mask at `dest` exists and hides every path of `private` (contree's data
/// and config dirs, the tokens file of `serve`): built when missing, else extended in place
/// with what it does not hide yet (a mask an older version built, a path named since).
/// When nothing is missing this costs a `realpath` and a `stat` or two per path.
///
/// An existing mask may be a lower layer of running sandboxes: adding a whiteout under
/// them is a change to a lower layer as the host root's own changes are (the `host` image
/// reads `/` live); sandboxes started afterwards see it for sure.
pub fn ensure_host_mask(dest: &Path, private: &[PathBuf]) -> io::Result<()> {
    match fs::metadata(dest) {
        Ok(mask) => {
            // A top-level directory made since the mask was (`/`'s mtime is newer) is masked
            // as the build would have: it is not a system one.
            if fs::metadata("/").is_ok_and(|root| root.mtime() >= mask.mtime()) {
                mask_top_level(dest)?;
                touch(dest)?;
            }
        }
        Err(_) => build_mask(dest, private)?,
    }
    for path in private {
        for p in with_real_path(path) {
            hide(dest, &p)?;
        }
    }
    Ok(())
}

/// Masks every top-level entry of the host that is not a system directory (`HOST_VISIBLE`)
/// and not masked yet: an empty opaque directory, or a whiteout for anything else.
fn mask_top_level(mask: &Path) -> io::Result<()> {
    for entry in fs::read_dir("/")? {
        let entry = entry?;
        let name = entry.file_name();
        let name_s = name.to_string_lossy();
        if HOST_VISIBLE.contains(&name_s.as_ref())
            || HOST_EMPTY.contains(&name_s.as_ref())
            || fs::symlink_metadata(mask.join(&name)).is_ok()
        {
            continue;
        }
        let made = if fs::symlink_metadata(entry.path())?.is_dir() {
            empty_dir(mask, Path::new(&name), true)
        } else {
            make_whiteout(&mask.join(&name))
        };
        match made {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
    }
    Ok(())
}

/// Sets `path`'s mtime to now.
fn touch(path: &Path) -> io::Result<()> {
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    nix::sys::stat::utimensat(
        None,
        path,
        &now,
        &now,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// `path`, and the path it really is when a symlink leads there (that one shows in the
/// image too).
fn with_real_path(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    if let Ok(real) = fs::canonicalize(path) {
        if real != path {
            out.push(real);
        }
    }
    out
}

fn build_mask(dest: &Path, private: &[PathBuf]) -> io::Result<()> {
    let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    mask_top_level(&tmp)?;
    for name in HOST_EMPTY {
        empty_dir(&tmp, Path::new(name), true)?;
    }
    for rel in HOST_EMPTY_NESTED {
        if Path::new("/").join(rel).is_dir() {
            empty_dir(&tmp, Path::new(rel), true)?;
        }
    }
    let mut hidden: Vec<PathBuf> = HOST_HIDDEN_FILES.iter().map(PathBuf::from).collect();
    if let Ok(rd) = fs::read_dir("/etc/ssh") {
        for entry in rd.flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            if n.starts_with("ssh_host_") && !n.ends_with(".pub") {
                hidden.push(Path::new("etc/ssh").join(n));
            }
        }
    }
    for rel in hidden {
        if fs::symlink_metadata(Path::new("/").join(&rel)).is_ok() {
            ensure_parents(&tmp, &rel)?;
            make_whiteout(&tmp.join(&rel))?;
        }
    }
    // The store itself must never show, wherever the data dir lives, nor anything else
    // contree keeps private.
    for path in private {
        for p in with_real_path(path) {
            hide(&tmp, &p)?;
        }
    }
    // Several first runs may build the mask at once: the first rename wins, and the others'
    // identical masks are dropped (removing the winner's would pull it from under a mount).
    match fs::rename(&tmp, dest) {
        Err(_) if dest.is_dir() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(())
        }
        other => other,
    }
}

/// Hides the host's `path` in the mask `mask`: an empty opaque directory in place of a
/// directory, a whiteout for anything else. Nothing is added when something above it is
/// hidden already (then it must not appear at all, or an "empty" /var/tmp would show it),
/// when it does not exist, when it is on another mount than `/` (the image never shows
/// those), or when a symlink on its way leads elsewhere in the image (the caller hides the
/// real path too). Safe to run concurrently: what exists is kept.
fn hide(mask: &Path, path: &Path) -> io::Result<()> {
    let Ok(rel) = path.strip_prefix("/") else {
        return Ok(());
    };
    if rel.as_os_str().is_empty() {
        return Ok(());
    }
    let mut prefix = PathBuf::new();
    for comp in rel.components() {
        prefix.push(comp);
        let at = mask.join(&prefix);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() && !is_opaque(&at) => continue,
            // A whiteout, an opaque dir or a file above it (or in its place): hidden.
            Ok(_) => return Ok(()),
            Err(_) => break,
        }
    }
    let host = Path::new("/").join(rel);
    let Ok(meta) = fs::symlink_metadata(&host) else {
        return Ok(());
    };
    // On the root filesystem's mount, as `inspect` decides (the device where the kernel has
    // no mount ids).
    let on_root = match (
        super::mountid::mount_id(Path::new("/")),
        super::mountid::mount_id(&host),
    ) {
        (Some(root), Some(here)) => root == here,
        _ => fs::metadata("/").is_ok_and(|root| root.dev() == meta.dev()),
    };
    if !on_root {
        return Ok(());
    }
    let through_links = rel.ancestors().skip(1).any(|a| {
        !a.as_os_str().is_empty()
            && !fs::symlink_metadata(Path::new("/").join(a)).is_ok_and(|m| m.is_dir())
    });
    if through_links {
        return Ok(());
    }
    ensure_parents(mask, rel)?;
    let made = if meta.is_dir() {
        empty_dir(mask, rel, true)
    } else {
        make_whiteout(&mask.join(rel))
    };
    match made {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Creates `rel` under `root` as an empty directory copying the host's metadata, opaque when
/// asked (so the host's contents never show through).
fn empty_dir(root: &Path, rel: &Path, opaque: bool) -> io::Result<()> {
    ensure_parents(root, rel)?;
    let path = root.join(rel);
    fs::create_dir_all(&path)?;
    copy_dir_meta(&Path::new("/").join(rel), &path, 0o755)?;
    if opaque {
        set_opaque(&path)?;
    }
    Ok(())
}

/// Creates the parent directories of `rel` under `root` with the host's modes and owners,
/// since a directory in an upper layer shows its own metadata, not the host's.
fn ensure_parents(root: &Path, rel: &Path) -> io::Result<()> {
    let mut cur = PathBuf::new();
    let comps: Vec<_> = rel.components().collect();
    for comp in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(comp);
        let path = root.join(&cur);
        if !path.exists() {
            match fs::create_dir(&path) {
                // Another process made it a moment ago (see `ensure_host_mask`).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => other?,
            }
            copy_dir_meta(&Path::new("/").join(&cur), &path, 0o755)?;
        }
    }
    Ok(())
}

fn copy_dir_meta(src: &Path, dst: &Path, default_mode: u32) -> io::Result<()> {
    match fs::metadata(src) {
        Ok(meta) => {
            fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            // Rootless, the host's owners are not ids of the namespace (they show as
            // `nobody`): the mask's directories stay root's of the namespace.
            if crate::rootless::active() {
                return Ok(());
            }
            std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
        }
        Err(_) => fs::set_permissions(dst, fs::Permissions::from_mode(default_mode)),
    }
}

/// Whether a run's upper dir recorded no change at all.
pub fn is_empty_dir(dir: &Path) -> io::Result<bool> {
    Ok(fs::read_dir(dir)?.next().is_none())
}

/// Bytes a layer holds (regular files' sizes).
pub fn layer_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Merges `layers` (top first) into the empty directory `dest`, applying each layer's
/// whiteouts and opaque dirs onto the ones below. Files are hard-linked, not copied, so the
/// cost follows the number of entries, not their bytes. Whiteouts are kept in the result:
/// they may still hide files of the layers below the merged range.
pub fn flatten(layers: &[PathBuf], dest: &Path) -> io::Result<()> {
    for layer in layers.iter().rev() {
        apply_layer(layer, dest)?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn apply_layer(layer: &Path, dest: &Path) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(layer).min_depth(1) {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(layer).map_err(io::Error::other)?;
        let target = dest.join(rel);
        let meta = entry.metadata().map_err(io::Error::other)?;
        if meta.is_dir() {
            let opaque = is_opaque(entry.path());
            let existing = fs::symlink_metadata(&target).ok();
            if opaque || existing.as_ref().is_some_and(|m| !m.is_dir()) {
                remove_any(&target)?;
            }
            if !target.exists() {
                fs::create_dir(&target)?;
            }
            fs::set_permissions(&target, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            crate::rootless::lchown(&target, meta.uid(), meta.gid())?;
            if opaque {
                set_opaque(&target)?;
            }
        } else {
            remove_any(&target)?;
            if is_whiteout(&meta) {
                make_whiteout(&target)?;
            } else if meta.file_type().is_file() || meta.file_type().is_symlink() {
                fs::hard_link(entry.path(), &target)
                    .or_else(|_| copy_entry(entry.path(), &target, &meta))?;
            } else {
                copy_entry(entry.path(), &target, &meta)?;
            }
        }
    }
    Ok(())
}

/// Copies a special file (device, fifo) or falls back to a content copy.
fn copy_entry(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        return std::os::unix::fs::symlink(fs::read_link(src)?, dst);
    }
    if ft.is_file() {
        fs::copy(src, dst)?;
    } else {
        let p = c_path(dst)?;
        // SAFETY: recreating a device node or fifo with the source's mode and rdev.
        if unsafe { libc::mknod(p.as_ptr(), meta.mode(), meta.rdev()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
}

/// Layer chains longer than this (not counting the base) are merged into one layer when an
/// image is made on top of them. The kernel allows 500 lower layers; lookups and mounts
/// slow down long before.
pub const FLATTEN_AT: usize = 24;

/// Keeps a layer chain (top first) short, in two tiers so that the usual merge only
/// touches the few recent layers: past `FLATTEN_AT` layers above the base, the layers on
/// top are merged into one `flat-` layer; once there are `FLATTEN_AT / 2` of those,
/// everything above the base is merged. Returns the new layer (id and size), still claimed
/// in `layers/` until the caller's image row names it, if one was made.
pub fn shorten(
    layout: &Layout,
    chain: &mut Vec<String>,
) -> io::Result<Option<((String, u64), Claim)>> {
    if chain.len() <= FLATTEN_AT + 1 {
        return Ok(None);
    }
    let above_base = chain.len() - 1;
    // Never the base: it may be the host view, which only exists at run time.
    let recent = chain[..above_base]
        .iter()
        .take_while(|l| !l.starts_with("flat-"))
        .count();
    let flats = above_base - recent;
    let merge = if flats + 1 > FLATTEN_AT / 2 || recent < 2 {
        above_base
    } else {
        recent
    };
    let dirs: Vec<PathBuf> = chain[..merge].iter().map(|l| layout.layer_dir(l)).collect();
    let id = format!("flat-{}", uuid::Uuid::new_v4());
    let mut staging = layout.staging_dir(&id)?;
    let made = flatten(&dirs, staging.path()).and_then(|_| {
        let size = layer_size(staging.path());
        staging.rename(&layout.layer_dir(&id)).map(|_| size)
    });
    let size = match made {
        Ok(size) => size,
        Err(e) => {
            let _ = staging.remove();
            return Err(e);
        }
    };
    chain.splice(..merge, [id.clone()]);
    Ok(Some(((id, size), staging)))
}

/// A hard-linked copy of layer `id` under a new id: overlayfs takes a directory only once
/// in a chain, so a layer needed again on top (the same attachments) gets a copy.
pub fn copy_layer(layout: &Layout, id: &str) -> io::Result<String> {
    let copy = format!("{id}-{}", uuid::Uuid::new_v4().simple());
    let mut staging = layout.staging_dir(&copy)?;
    let copied = flatten(&[layout.layer_dir(id)], staging.path())
        .and_then(|_| staging.rename(&layout.layer_dir(&copy)));
    if let Err(e) = copied {
        let _ = staging.remove();
        return Err(e);
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_mask_hides_private_paths_once_even_when_built_earlier() {
        let (t, mask) = crate::paths::temp_path("host-mask");
        // Built by an older version, which knew only the data dir (here under /tmp).
        build_host_mask(&mask, t.path()).unwrap();
        assert!(is_opaque(&mask.join("tmp")) && is_opaque(&mask.join("root")));
        assert!(!mask.join("etc/hostname").exists());
        let private = [
            PathBuf::from("/etc/hostname"),
            PathBuf::from("/usr/share"),
            PathBuf::from("/tmp/anything"),
            PathBuf::from("/proc/self/environ"),
            PathBuf::from("/etc/no-such-file"),
        ];
        ensure_host_mask(&mask, &private).unwrap();
        ensure_host_mask(&mask, &private).unwrap();
        assert!(is_whiteout(
            &fs::symlink_metadata(mask.join("etc/hostname")).unwrap()
        ));
        assert!(is_opaque(&mask.join("usr/share")));
        assert_eq!(fs::read_dir(mask.join("usr/share")).unwrap().count(), 0);
        // Hidden already, on another filesystem, or missing: nothing added.
        assert_eq!(fs::read_dir(mask.join("tmp")).unwrap().count(), 0);
        assert!(!mask.join("proc").exists());
        assert!(!mask.join("etc/no-such-file").exists());
        // A parent made for a hidden path keeps the host's metadata.
        let usr = fs::metadata("/usr").unwrap();
        let made = fs::metadata(mask.join("usr")).unwrap();
        assert_eq!((made.mode(), made.uid()), (usr.mode(), usr.uid()));
        assert!(!is_opaque(&mask.join("usr")));
    }

    #[test]
    fn a_top_level_entry_unknown_to_the_mask_is_masked_when_the_root_changed() {
        let (t, mask) = crate::paths::temp_path("host-mask");
        build_host_mask(&mask, t.path()).unwrap();
        // As if the mask predated every non-system top-level directory, and `/` changed.
        let extra: Vec<PathBuf> = fs::read_dir(&mask)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                !HOST_EMPTY.contains(&name.as_str()) && !HOST_VISIBLE.contains(&name.as_str())
            })
            .collect();
        for p in &extra {
            remove_any(p).unwrap();
        }
        let old = nix::sys::time::TimeSpec::new(0, 0);
        nix::sys::stat::utimensat(
            None,
            &mask,
            &old,
            &old,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        ensure_host_mask(&mask, &[]).unwrap();
        for p in &extra {
            assert!(
                fs::symlink_metadata(p).is_ok(),
                "{} masked again",
                p.display()
            );
        }
        assert!(fs::metadata(&mask).unwrap().mtime() > 0);
    }

    #[test]
    fn flatten_applies_whiteouts_and_opaque_dirs_in_order() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, l3) = (
            t.path().join("l1"),
            t.path().join("l2"),
            t.path().join("l3"),
        );
        fs::create_dir_all(l1.join("d")).unwrap();
        fs::write(l1.join("d/a"), "a").unwrap();
        fs::write(l1.join("keep"), "k").unwrap();
        fs::write(l1.join("gone"), "g").unwrap();
        fs::create_dir_all(&l2).unwrap();
        make_whiteout(&l2.join("gone")).unwrap();
        fs::create_dir_all(l3.join("d")).unwrap();
        set_opaque(&l3.join("d")).unwrap();
        fs::write(l3.join("d/b"), "b").unwrap();
        let out = t.path().join("flat");
        fs::create_dir(&out).unwrap();
        flatten(&[l3, l2, l1], &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("keep")).unwrap(), "k");
        assert!(is_whiteout(
            &fs::symlink_metadata(out.join("gone")).unwrap()
        ));
        assert!(!out.join("d/a").exists());
        assert_eq!(fs::read_to_string(out.join("d/b")).unwrap(), "b");
        assert!(is_opaque(&out.join("d")));
    }
}
