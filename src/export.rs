//! `contree export`: an image's root filesystem, or a subtree of it, as a tar stream
//! (`Backend::archive`: built from the layer chain locally, the API's archive endpoint
//! through a profile). It goes to a file, written beside it and renamed into place so that
//! a failed export leaves nothing behind, or to stdout, which must not be a terminal (the
//! stream is binary). This module never prints.

use crate::backend::{Archive, Backend, BackendError};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Where the archive goes.
#[derive(Debug, Clone)]
pub enum Dest {
    Stdout,
    File(PathBuf),
}

/// One export: what, where, compressed or not.
#[derive(Debug, Clone)]
pub struct Export {
    pub image: String,
    /// Absolute path inside the image.
    pub path: String,
    pub gzip: bool,
    pub dest: Dest,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("refusing to write a tar archive to a terminal")]
    Terminal,
    /// The archive file (or its temporary name beside it) could not be written.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the archive to stdout: {0}")]
    Stdout(#[source] io::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// tar.gz unless `decompress`, or the file is named `*.tar` (as `tar` itself reads it).
pub fn gzip_for(decompress: bool, file: Option<&Path>) -> bool {
    let plain_name = file
        .and_then(|f| f.file_name())
        .is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().ends_with(".tar"));
    !(decompress || plain_name)
}

/// Writes the archive; the number of bytes written. A reader of stdout that goes away
/// (`| head`) has what it wanted: not an error.
pub fn export(backend: &dyn Backend, req: &Export) -> Result<u64, ExportError> {
    let archive = Archive {
        image: &req.image,
        path: &req.path,
        gzip: req.gzip,
    };
    match &req.dest {
        Dest::Stdout => {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                return Err(ExportError::Terminal);
            }
            let mut out = Tracked::new(io::BufWriter::with_capacity(256 * 1024, stdout.lock()));
            let result = backend
                .archive(archive, &mut out)
                .map_err(ExportError::from)
                .and_then(|()| out.flush().map_err(ExportError::Stdout));
            match (result, out.failed.take()) {
                (_, Some(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(out.written),
                (_, Some(e)) => Err(ExportError::Stdout(e)),
                (Err(ExportError::Stdout(e)), None) if e.kind() == io::ErrorKind::BrokenPipe => {
                    Ok(out.written)
                }
                (result, None) => result.map(|()| out.written),
            }
        }
        Dest::File(path) => {
            let file_err = |source| ExportError::File {
                path: path.clone(),
                source,
            };
            let mut tmp = crate::paths::temp_beside(path).map_err(file_err)?;
            let mut out = Tracked::new(io::BufWriter::with_capacity(256 * 1024, tmp.as_file_mut()));
            let result = backend.archive(archive, &mut out);
            if let Some(e) = out.failed.take() {
                return Err(file_err(e));
            }
            result?;
            out.flush().map_err(file_err)?;
            let written = out.written;
            drop(out);
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(file_err)?;
            tmp.persist(path).map_err(|e| file_err(e.error))?;
            Ok(written)
        }
    }
}

/// A writer that counts what it wrote and keeps its own error: the backend's error for a
/// failed write says only that archiving failed, this says it was the output.
struct Tracked<W: Write> {
    inner: W,
    written: u64,
    failed: Option<io::Error>,
}

impl<W: Write> Tracked<W> {
    fn new(inner: W) -> Self {
        Tracked {
            inner,
            written: 0,
            failed: None,
        }
    }

    fn keep<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        r.map_err(|e| {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.failed.get_or_insert(e);
            copy
        })
    }
}

impl<W: Write> Write for Tracked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        let n = self.keep(r)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.keep(r)
    }
}

#[cfg(test)]
mod tests {
    use super::gzip_for;
    use std::path::Path;

    #[test]
    fn a_tar_name_or_decompress_means_plain_tar() {
        assert!(gzip_for(false, None));
        assert!(gzip_for(false, Some(Path::new("root.tar.gz"))));
        assert!(gzip_for(false, Some(Path::new("root.tgz"))));
        assert!(!gzip_for(false, Some(Path::new("out/app.TAR"))));
        assert!(!gzip_for(true, Some(Path::new("root.tar.gz"))));
        assert!(!gzip_for(true, None));
    }
}
