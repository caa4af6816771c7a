//! A file or a directory of an image as a tar stream: `Backend::archive` (`contree
//! export`) and serve's `GET/HEAD /v1/inspect/{image}/archive?path=P` write the same bytes.
//! A directory becomes the archive root (entries relative to it); a regular file becomes a
//! one-entry archive. Symlinks are stored as links, never followed; devices, sockets and
//! fifos are left out. A mount point of another filesystem is stored as the empty directory
//! it is in the image, never entered (see `engine::inspect`).

use super::inspect::{Found, InspectError, View};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What `path` is, checked before the 200 is sent: 404 missing, 422 neither file nor dir.
pub fn check(view: &View, path: &str) -> Result<bool, InspectError> {
    let (_, found) = view.resolve(path, true)?;
    if found.meta.is_dir() {
        Ok(true)
    } else if found.meta.is_file() {
        Ok(false)
    } else {
        Err(InspectError::NotAFile(path.to_string()))
    }
}

/// Writes the archive of `path` to `out`, gzip-compressed (fast level, as the server sends
/// it on the wire) when `gzip`.
pub fn write_maybe_gzip(
    view: &View,
    path: &str,
    gzip: bool,
    out: impl Write,
) -> std::io::Result<()> {
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        write(view, path, &mut gz)?;
        gz.finish()?.flush()
    } else {
        write(view, path, out)
    }
}

/// Writes the archive of `path` to `out`.
pub fn write(view: &View, path: &str, out: impl Write) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let (_, found) = view.resolve(path, true).map_err(std::io::Error::other)?;
    if found.meta.is_dir() {
        view.walk(path, &mut |rel, found| add_entry(&mut tar, rel, found))?;
    } else {
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "file".into());
        add_entry(&mut tar, Path::new(&name), &found)?;
    }
    tar.into_inner()?.flush()
}

fn add_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    rel: &Path,
    found: &Found,
) -> std::io::Result<()> {
    let m = &found.meta;
    let mut header = tar::Header::new_gnu();
    header.set_mode(m.mode() & 0o7777);
    header.set_uid(m.uid() as u64);
    header.set_gid(m.gid() as u64);
    header.set_mtime(m.mtime().max(0) as u64);
    let ft = m.file_type();
    if ft.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        tar.append_data(&mut header, rel, std::io::empty())
    } else if ft.is_file() {
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(m.len());
        let file = found.open().map_err(std::io::Error::other)?;
        tar.append_data(&mut header, rel, file)
    } else if ft.is_symlink() {
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        let target = found.link_target().map_err(std::io::Error::other)?;
        tar.append_link(&mut header, rel, target)
    } else {
        Ok(())
    }
}
