//! Files staged for a session's next run (`file cp`, `file edit`): the content is put in
//! the backend at once (`Backend::put_file`, deduplicated by sha256) and recorded on the
//! session's current branch (`SessionStore::add_file`: a `file` entry in its history). The
//! next `run` sends them with its own attachments, which win on the same path; once a run
//! has baked them in they are no longer pending (`SessionStore::pending_files`). Another
//! branch does not see them. This module never prints.

use crate::backend::BackendError;
use crate::context::Context;
use crate::session::SessionError;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One staged file, as recorded.
#[derive(Debug, Clone)]
pub struct Staged {
    /// Absolute path inside the sandbox.
    pub path: String,
    pub uuid: String,
    pub sha256: String,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// Octal text, as the wire wants it (`0644`).
    pub mode: String,
}

/// What `edit` came to.
#[derive(Debug)]
pub enum Edited {
    /// The editor left the content as it was: nothing staged.
    Unchanged,
    Staged(Staged),
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The local file to stage cannot be read (missing, not ours).
    #[error("{}: {source}", path.display())]
    Source {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a regular file (file cp stages one file; a directory goes with `run -F DIR:/dest`)", .0.display())]
    NotAFile(PathBuf),
    /// The image's copy of the file to edit broke off while it was read.
    #[error("reading {path} of the image: {source}")]
    ReadImage {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The scratch copy the editor works on.
    #[error("the copy to edit, {}: {source}", path.display())]
    Scratch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the editor `{editor}`: {source}")]
    EditorStart {
        editor: String,
        #[source]
        source: io::Error,
    },
    #[error("the editor `{editor}` exited with {status}: nothing was staged")]
    EditorFailed {
        editor: String,
        status: std::process::ExitStatus,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// `file cp SRC DEST`: stages local file `src` at `dest` (absolute) with its permission
/// bits, owned by root.
pub fn copy_in(ctx: &Context, src: &Path, dest: &str) -> Result<Staged, StageError> {
    let source = |source| StageError::Source {
        path: src.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(src).map_err(source)?;
    if !meta.is_file() {
        return Err(StageError::NotAFile(src.to_path_buf()));
    }
    let sha256 = file_sha256(src).map_err(source)?;
    stage(ctx, src, sha256, dest, (0, 0), meta.mode())
}

/// `file edit PATH`: the image's file (absolute `path`) in `editor` (a shell command line,
/// like `$EDITOR`), staged at the same path with the same owner and mode when it changed.
pub fn edit(ctx: &Context, image: &str, path: &str, editor: &str) -> Result<Edited, StageError> {
    let (mut reader, read_mode) = ctx.backend.read_file(image, path)?;
    let mut original = Vec::new();
    reader
        .read_to_end(&mut original)
        .map_err(|source| StageError::ReadImage {
            path: path.to_string(),
            source,
        })?;
    let (owner, mode) = owner_and_mode(ctx, image, path, read_mode);

    // The copy keeps the file's name, so an editor picks its syntax from the extension.
    let scratch = tempfile::Builder::new()
        .prefix("contree-edit-")
        .tempdir()
        .map_err(|source| StageError::Scratch {
            path: std::env::temp_dir(),
            source,
        })?;
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "file".into());
    let copy = scratch.path().join(name);
    let scratch_err = |source| StageError::Scratch {
        path: copy.clone(),
        source,
    };
    std::fs::write(&copy, &original).map_err(scratch_err)?;

    // `$EDITOR` may carry arguments (`code -w`): the shell splits it, the path goes as $1.
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("contree-edit")
        .arg(&copy)
        .status()
        .map_err(|source| StageError::EditorStart {
            editor: editor.to_string(),
            source,
        })?;
    if !status.success() {
        return Err(StageError::EditorFailed {
            editor: editor.to_string(),
            status,
        });
    }
    let edited = std::fs::read(&copy).map_err(scratch_err)?;
    if edited == original {
        return Ok(Edited::Unchanged);
    }
    let sha256 = crate::sha256::of(&edited);
    Ok(Edited::Staged(stage(
        ctx, &copy, sha256, path, owner, mode,
    )?))
}

/// The owner and mode of the image's file: from its directory's listing (both backends
/// give them there), else the mode `read_file` said, owned by root.
fn owner_and_mode(
    ctx: &Context,
    image: &str,
    path: &str,
    read_mode: Option<u32>,
) -> ((u32, u32), u32) {
    let (dir, name) = match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => ("/", path),
    };
    let listed = ctx.backend.list_dir(image, dir).ok().and_then(|list| {
        list.files
            .into_iter()
            .find(|f| f.path.trim_end_matches('/') == name && f.is_regular)
    });
    match listed {
        Some(f) => ((f.uid, f.gid), f.mode),
        None => ((0, 0), read_mode.unwrap_or(0o644)),
    }
}

/// Puts `host` (whose content has `sha256`) in the backend and records it at `dest`.
fn stage(
    ctx: &Context,
    host: &Path,
    sha256: String,
    dest: &str,
    (uid, gid): (u32, u32),
    mode: u32,
) -> Result<Staged, StageError> {
    let size = std::fs::metadata(host).map(|m| m.len()).unwrap_or(0);
    let (uuid, _) = ctx.backend.put_file(host, &sha256)?;
    let mode = crate::attach::mode_string(mode);
    ctx.sessions
        .add_file(&ctx.session_key, dest, &uuid, uid, gid, &mode)?;
    Ok(Staged {
        path: dest.to_string(),
        uuid,
        sha256,
        size,
        uid,
        gid,
        mode,
    })
}

fn file_sha256(path: &Path) -> io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(crate::sha256::hex(&hasher.finalize()))
}
