//! Importing a base image into the local store: a root filesystem directory, or a tar /
//! tar.gz archive of one. The result is a single layer and an image (optionally tagged).
//! OCI image layouts and `docker save` archives are recognised here and handed to `oci`.

// The importers' error lives in `oci`, which every importer reaches, so `oci` needs nothing here.
pub use super::oci::ImportError;
use super::store::{ImageRow, Store};
use crate::progress::{self, Counted, Meter, Show};
use crate::wire;
use indicatif::ProgressBar;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Imports `source` and returns the new image's uuid. Big imports show progress (see
/// `progress`).
pub fn import(
    store: &Store,
    source: &Path,
    tag: Option<&str>,
    show: Show,
) -> Result<String, ImportError> {
    let shown = source.display().to_string();
    let io_err = |e: io::Error| ImportError::io(&shown, e);
    let store_io = |e: io::Error| ImportError::StoreWrite {
        path: shown.clone(),
        source: e,
    };
    let meta = fs::metadata(source).map_err(io_err)?;
    if meta.is_dir() && super::oci::is_image_dir(source) {
        return super::oci::import_dir(store, source, tag, show);
    }
    if meta.is_file() && super::oci::is_image_archive(source) {
        let unpacked = store
            .layout()
            .staging_dir(&format!("import-archive-{}", uuid::Uuid::new_v4()))
            .map_err(store_io)?;
        let result = super::oci::unpack_archive(source, unpacked.path(), show)
            .map_err(io_err)
            .and_then(|_| super::oci::import_dir(store, unpacked.path(), tag, show));
        let _ = unpacked.remove();
        return result;
    }
    let id = format!("import-{}", uuid::Uuid::new_v4());
    let mut staging = store.layout().staging_dir(&id).map_err(store_io)?;
    let result = if meta.is_dir() {
        let mut meter = Meter::new(show, format!("importing {shown}"));
        copy_tree(source, staging.path(), &mut meter).map_err(io_err)
    } else if meta.is_file() {
        let bar = progress::bar(show, meta.len(), || format!("importing {shown}"));
        unpack(source, staging.path(), &shown, bar)
    } else {
        Err(ImportError::Unsupported(shown.clone()))
    };
    if let Err(e) = result {
        let _ = staging.remove();
        return Err(e);
    }
    let size = super::layers::layer_size(staging.path());
    let dest = store.layer_dir(&id);
    // Still claimed once in `layers/`, until its row is committed: `gc` leaves alone a
    // layer dir without a row that someone holds.
    if let Err(e) = staging.rename(&dest) {
        let _ = staging.remove();
        return Err(store_io(e));
    }
    crate::failpoint::hit("import:layer-moved");
    let image = ImageRow {
        uuid: uuid::Uuid::new_v4().to_string(),
        created_at: wire::now_ts(),
        parent: None,
        operation: None,
        layers: vec![id.clone()],
        env: Default::default(),
        tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
    };
    if let Err(e) = store.insert_image(&image, &[(id.clone(), size)]) {
        let _ = staging.remove();
        return Err(e.into());
    }
    Ok(image.uuid)
}

/// Unpacks the tar or tar.gz `source` into `dest`, counting the bytes read on `bar`.
fn unpack(
    source: &Path,
    dest: &Path,
    shown: &str,
    bar: Option<ProgressBar>,
) -> Result<(), ImportError> {
    let io_err = |e: io::Error| ImportError::io(shown, e);
    let mut magic = [0u8; 262];
    let n = fs::File::open(source)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(io_err)?;
    let file = Counted::new(fs::File::open(source).map_err(io_err)?, bar);
    let reader: Box<dyn Read> = if n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b {
        Box::new(flate2::read::GzDecoder::new(io::BufReader::new(file)))
    } else if n >= 262 && &magic[257..262] == b"ustar" {
        Box::new(io::BufReader::new(file))
    } else {
        return Err(ImportError::Unsupported(shown.to_string()));
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    archive.unpack(dest).map_err(io_err)
}

/// Copies a directory tree keeping modes, owners and symlinks (not following them),
/// counting the bytes of the files copied on `meter`.
pub fn copy_tree(src: &Path, dst: &Path, meter: &mut Meter) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(src).min_depth(1) {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        let target = dst.join(rel);
        let meta = entry.path().symlink_metadata()?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&target)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else if ft.is_file() {
            progress::copy(entry.path(), &target, meter.next(meta.len()))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
                .map_err(io::Error::other)?;
            // SAFETY: recreating a special file with the source's mode and device number.
            if unsafe { libc::mknod(c.as_ptr(), meta.mode(), meta.rdev()) } != 0 {
                let e = io::Error::last_os_error();
                // Rootless, no device but a whiteout can be made: left out of the image.
                if crate::rootless::active() && e.raw_os_error() == Some(libc::EPERM) {
                    crate::warn!(
                        "{}: a device node, left out (rootless)",
                        entry.path().display()
                    );
                    continue;
                }
                return Err(e);
            }
        } else {
            continue;
        }
        crate::rootless::lchown(&target, meta.uid(), meta.gid())?;
        if !ft.is_symlink() {
            fs::set_permissions(&target, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    Ok(())
}
