//! The `host` image's root when rootless: inside a user namespace the kernel refuses an
//! overlay with `lowerdir=/` (its submounts, /proc and the others, are locked to it and
//! cannot be cloned: `overlayfs: failed to clone lowerpath`). So the host enters the root in
//! pieces: a skeleton of `/`'s top level (empty directories and its symlinks) as the
//! lowest layer of the root overlay, and one overlay per host directory that carries no
//! mount beneath it (`/usr`, `/etc`...), mounted over the root at that directory, whose
//! layers are the image's own layers' copies of it above the host's.
//!
//! A directory with a mount (or the store) somewhere beneath it is split into its entries
//! the same way; a mount point itself shows empty, as root mode's view of `/` shows it.
//! What the mask layer hides (home directories, /tmp, secrets, the data dir) gets no view:
//! the root overlay alone shows it, masked. Limits of this construction: regular files
//! directly in a split directory are not shown, and a viewed directory itself cannot be
//! removed or renamed (it is a mount point).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One overlay over the root: the host directory `rel` (relative to `/`) with the
/// image's layers' copies of it above (`lowers`, top first, the host's last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub rel: PathBuf,
    pub lowers: Vec<PathBuf>,
}

/// Fills `skeleton` (an empty directory) with the parts of `/` that the views do not
/// cover and returns the views. `above` are the layers over the host (top first; the mask
/// among them); `avoid` are paths no view may contain (the store: overlayfs refuses a
/// lower dir that holds another layer).
pub fn plan(skeleton: &Path, above: &[PathBuf], avoid: &[PathBuf]) -> io::Result<Vec<View>> {
    let mounts = mount_points();
    let mut views = Vec::new();
    split(Path::new(""), skeleton, above, &mounts, avoid, &mut views)?;
    Ok(views)
}

/// `rel`, a host directory that cannot be one view: its entries go into the skeleton, and
/// each directory among them becomes a view or is split in turn.
fn split(
    rel: &Path,
    skeleton: &Path,
    above: &[PathBuf],
    mounts: &[PathBuf],
    avoid: &[PathBuf],
    views: &mut Vec<View>,
) -> io::Result<()> {
    for entry in fs::read_dir(Path::new("/").join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        let child = rel.join(&name);
        let host = Path::new("/").join(&child);
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        let at = skeleton.join(&child);
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&host)?, &at)?;
            continue;
        }
        if !meta.is_dir() {
            continue;
        }
        fs::create_dir(&at)?;
        fs::set_permissions(&at, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        if mounts.iter().any(|m| m == &host) || avoid.iter().any(|a| a == &host) {
            // A mount point shows the (empty) directory under it, as root mode's view does.
            continue;
        }
        let Some(lowers) = lowers_for(&child, above) else {
            // A layer above hides the host's: the root overlay alone shows it right.
            continue;
        };
        let beneath = |p: &PathBuf| p.starts_with(&host) && p != &host;
        if mounts.iter().any(beneath) || avoid.iter().any(beneath) {
            split(&child, skeleton, above, mounts, avoid, views)?;
        } else {
            views.push(View { rel: child, lowers });
        }
    }
    Ok(())
}

/// What a layer holds at a path.
#[derive(Debug, PartialEq, Eq)]
enum Reach {
    /// Nothing: the layers below show through.
    Absent,
    /// A plain directory, merged with the ones below.
    Dir,
    /// A whiteout, a file, or an opaque directory on the way: nothing below shows.
    Hidden,
}

fn reach(layer: &Path, rel: &Path) -> Reach {
    let mut at = layer.to_path_buf();
    for comp in rel.components() {
        at.push(comp);
        match fs::symlink_metadata(&at) {
            Err(_) => return Reach::Absent,
            Ok(m) if !m.is_dir() => return Reach::Hidden,
            Ok(_) if super::layers::is_opaque(&at) => return Reach::Hidden,
            Ok(_) => {}
        }
    }
    Reach::Dir
}

/// The lower dirs of the view of `rel`, or `None` when a layer in `above` hides the host's.
fn lowers_for(rel: &Path, above: &[PathBuf]) -> Option<Vec<PathBuf>> {
    let mut lowers = Vec::new();
    for layer in above {
        match reach(layer, rel) {
            Reach::Absent => {}
            Reach::Dir => lowers.push(layer.join(rel)),
            Reach::Hidden => return None,
        }
    }
    lowers.push(Path::new("/").join(rel));
    Some(lowers)
}

/// The mount points of this mount namespace (`/proc/self/mountinfo`'s fifth field).
fn mount_points() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mount_points(&text)
}

fn parse_mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(n) = u8::from_str_radix(digits, 8) {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_with_their_escapes() {
        let text =
            "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n30 22 0:5 / /mnt/my\\040disk rw - vfat x rw\n";
        assert_eq!(
            parse_mount_points(text),
            [PathBuf::from("/"), PathBuf::from("/mnt/my disk")]
        );
    }

    #[test]
    fn a_layer_hides_the_host_with_a_whiteout_a_file_or_an_opaque_dir() {
        let dir = tempfile::tempdir().unwrap();
        // Layer a holds the directory usr/lib; layer b a file where usr is.
        let a = dir.path().join("a");
        fs::create_dir_all(a.join("usr/lib")).unwrap();
        let b = dir.path().join("b");
        fs::create_dir_all(&b).unwrap();
        fs::write(b.join("usr"), "").unwrap();
        for (layer, rel, want) in [
            (&a, "usr/lib", Reach::Dir),
            (&a, "etc", Reach::Absent),
            (&b, "usr/lib", Reach::Hidden),
        ] {
            assert_eq!(reach(layer, Path::new(rel)), want, "{rel}");
        }
        assert_eq!(
            lowers_for(Path::new("usr/lib"), std::slice::from_ref(&a)),
            Some(vec![a.join("usr/lib"), PathBuf::from("/usr/lib")])
        );
        assert_eq!(lowers_for(Path::new("usr/lib"), &[a, b]), None);
    }
}
