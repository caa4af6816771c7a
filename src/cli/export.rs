//! `contree export [PATH]`: the session image's root filesystem (or PATH) as a tar stream,
//! tar.gz unless `--decompress` or `-F *.tar` (see `crate::export`).

use super::args::ExportFlags;
use super::inspect::resolve_path;
use crate::context::Context;
use crate::error::CommandResult;
use crate::export::{export as write_archive, gzip_for, Dest, Export};
use crate::format::{human, Format};
use std::path::PathBuf;

pub fn export(ctx: &Context, flags: ExportFlags) -> CommandResult<i32> {
    if ctx.format != Format::Default {
        crate::warn!("export writes the archive itself; --format is ignored");
    }
    let info = ctx.require_session()?;
    // `/` unless a path is given: the whole image, wherever the session's cd is.
    let path = match &flags.path {
        Some(p) => resolve_path(ctx.sessions.cwd(&ctx.session_key)?.as_deref(), p),
        None => "/".to_string(),
    };
    let file = flags.file.as_deref().filter(|f| !f.is_empty() && *f != "-");
    let gzip = gzip_for(flags.decompress, file.map(std::path::Path::new));
    let dest = match file {
        Some(f) => Dest::File(PathBuf::from(f)),
        None => Dest::Stdout,
    };
    let req = Export {
        image: info.current_image,
        path,
        gzip,
        dest,
    };
    let started = std::time::Instant::now();
    let bytes = write_archive(ctx.backend.as_ref(), &req)?;
    if let Dest::File(f) = &req.dest {
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        crate::info!(
            "Written {} of {} to {} ({}/s)",
            human(bytes as f64),
            req.path,
            f.display(),
            human(bytes as f64 / secs)
        );
    }
    Ok(0)
}
