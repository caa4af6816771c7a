//! `ls`, `cat`, `cp`: reading the session's image without starting a sandbox.

use crate::backend::{BackendError, Cause};
use crate::context::Context;
use crate::engine::inspect::InspectError;
use crate::error::{CommandError, CommandResult, Kind};
use crate::format::{human, print_records, Format, Record};
use crate::wire::FileItem;
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

/// `path` made absolute against the session's working directory, `..` and `.` folded.
pub fn resolve_path(cwd: Option<&str>, path: &str) -> String {
    crate::imagepath::resolve(cwd.unwrap_or("/"), path)
}

fn image_and_path(ctx: &Context, path: &str) -> CommandResult<(String, String)> {
    let info = ctx.require_session()?;
    let cwd = ctx.sessions.cwd(&ctx.session_key)?;
    Ok((info.current_image, resolve_path(cwd.as_deref(), path)))
}

fn item_record(item: &FileItem) -> Record {
    let mut rec = match serde_json::to_value(item) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => Record::new(),
    };
    rec.insert("mode".into(), format!("{:o}", item.mode).into());
    rec.insert(
        "mtime".into(),
        chrono::DateTime::from_timestamp(item.mtime, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
            .into(),
    );
    let kind = if item.is_dir {
        "d"
    } else if item.is_symlink {
        "l"
    } else {
        "-"
    };
    rec.insert("type".into(), kind.into());
    rec
}

pub fn ls(ctx: &Context, path: Option<&str>) -> CommandResult<i32> {
    let (image, path) = image_and_path(ctx, path.unwrap_or("."))?;
    let list = ctx.backend.list_dir(&image, &path)?;
    if ctx.format == Format::Default {
        let text = crate::wire::text_listing(&list.files);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
        return Ok(0);
    }
    let records: Vec<Record> = list.files.iter().map(item_record).collect();
    print_records(ctx.format, &records)?;
    Ok(0)
}

pub fn cat(ctx: &Context, path: &str) -> CommandResult<i32> {
    if ctx.format != Format::Default {
        crate::warn!("cat always outputs raw content; --format is ignored");
    }
    let (image, path) = image_and_path(ctx, path)?;
    let (mut reader, _) = ctx.backend.read_file(&image, &path)?;
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| CommandError::new(Kind::Io, format!("reading {path}: {e}")))?;
    if std::io::stdout().is_terminal() && std::str::from_utf8(&bytes).is_err() {
        return Err(CommandError::user(
            "Binary content - refusing to write to terminal. Use shell redirection or `contree cp`.",
        ));
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&bytes).and_then(|_| out.flush());
    Ok(0)
}

/// Copies a file (or, recursively, a directory) out of the image. Each file is written to
/// a temporary name beside its destination and renamed into place, so a reader never sees
/// half a file and an interrupted copy leaves no partial one.
pub fn cp(ctx: &Context, path: &str, dest: &str) -> CommandResult<i32> {
    let (image, path) = image_and_path(ctx, path)?;
    let name = Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    let mut target = PathBuf::from(dest);
    if target.is_dir() {
        target.push(&name);
    }
    let started = std::time::Instant::now();
    let bytes = copy_out(ctx, &image, &path, &target)?;
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    crate::info!(
        "Written {} to {} ({}/s)",
        human(bytes as f64),
        target.display(),
        human(bytes as f64 / secs)
    );
    let mut rec = Record::new();
    rec.insert("path".into(), path.into());
    rec.insert("dest".into(), target.display().to_string().into());
    rec.insert("size".into(), json!(bytes));
    if ctx.format != Format::Default {
        print_records(ctx.format, &[rec])?;
    }
    Ok(0)
}

fn copy_out(ctx: &Context, image: &str, path: &str, target: &Path) -> CommandResult<u64> {
    let io = |e: std::io::Error| CommandError::new(Kind::Io, format!("{}: {e}", target.display()));
    match ctx.backend.read_file(image, path) {
        Ok((mut reader, mode)) => {
            let mut tmp = crate::paths::temp_beside(target).map_err(io)?;
            let n = std::io::copy(&mut reader, tmp.as_file_mut()).map_err(io)?;
            use std::os::unix::fs::PermissionsExt;
            let perms = std::fs::Permissions::from_mode(mode.unwrap_or(0o644));
            tmp.as_file().set_permissions(perms).map_err(io)?;
            tmp.persist(target).map_err(|e| io(e.error))?;
            Ok(n)
        }
        // A directory of the image (the local engine says so; a remote API's answer is
        // only text, and a directory fails there).
        Err(BackendError::NotFound(Cause::Inspect(InspectError::NotAFile(_)))) => {
            let list = ctx.backend.list_dir(image, path)?;
            std::fs::create_dir_all(target).map_err(io)?;
            let mut total = 0;
            for item in &list.files {
                let child = format!("{}/{}", path.trim_end_matches('/'), item.path);
                if item.is_dir || item.is_regular {
                    total += copy_out(ctx, image, &child, &target.join(&item.path))?;
                } else if item.is_symlink {
                    let link = target.join(&item.path);
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(&item.symlink_to, &link).map_err(io)?;
                }
            }
            Ok(total)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_path;

    #[test]
    fn paths_fold_against_the_session_cwd() {
        assert_eq!(resolve_path(None, "."), "/");
        assert_eq!(resolve_path(Some("/work"), "src/../lib"), "/work/lib");
        assert_eq!(resolve_path(Some("/work"), "/etc//x/."), "/etc/x");
        assert_eq!(resolve_path(Some("/a"), "../../.."), "/");
    }
}
