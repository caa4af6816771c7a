//! `contree file cp|edit|ls`: files staged for the session's next run (see
//! `crate::staging`).

use super::args::{FileCommand, FileLsFlags};
use super::inspect::resolve_path;
use crate::backend::FileFilter;
use crate::context::Context;
use crate::error::CommandResult;
use crate::format::{human, print_records, Format, Record};
use crate::staging::{self, Edited, Staged};
use serde_json::json;
use std::path::Path;

pub fn file(ctx: &Context, command: FileCommand) -> CommandResult<i32> {
    match command {
        FileCommand::Cp { src, dest } => cp(ctx, &src, &dest),
        FileCommand::Edit { path, editor } => edit(ctx, &path, editor),
        FileCommand::Ls(flags) => ls(ctx, &flags),
    }
}

fn cp(ctx: &Context, src: &str, dest: &str) -> CommandResult<i32> {
    ctx.require_session()?;
    let cwd = ctx.sessions.cwd(&ctx.session_key)?;
    // `DEST/` is a directory: the file keeps its name there.
    let dest = match (dest.ends_with('/'), Path::new(src).file_name()) {
        (true, Some(name)) => format!("{dest}{}", name.to_string_lossy()),
        _ => dest.to_string(),
    };
    let dest = resolve_path(cwd.as_deref(), &dest);
    let staged = staging::copy_in(ctx, Path::new(src), &dest)?;
    report(ctx, &staged, Some(src))
}

fn edit(ctx: &Context, path: &str, editor: Option<String>) -> CommandResult<i32> {
    let info = ctx.require_session()?;
    let cwd = ctx.sessions.cwd(&ctx.session_key)?;
    let path = resolve_path(cwd.as_deref(), path);
    let editor = editor
        .or_else(|| std::env::var("VISUAL").ok())
        .or_else(|| std::env::var("EDITOR").ok())
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".to_string());
    if ctx
        .sessions
        .pending_files(&ctx.session_key)?
        .iter()
        .any(|f| f.0 == path)
    {
        crate::warn!(
            "{path} is staged already; this edits the image's copy, and replaces the staged one if it changes"
        );
    }
    match staging::edit(ctx, &info.current_image, &path, &editor)? {
        Edited::Unchanged => {
            crate::info!("{path} is unchanged: nothing staged");
            Ok(0)
        }
        Edited::Staged(staged) => report(ctx, &staged, None),
    }
}

/// One line on stderr (the default), or the staged file as a record.
fn report(ctx: &Context, staged: &Staged, source: Option<&str>) -> CommandResult<i32> {
    if ctx.format == Format::Default {
        crate::info!(
            "Staged {} ({}) for the next run{}",
            staged.path,
            human(staged.size as f64),
            source.map(|s| format!(", from {s}")).unwrap_or_default()
        );
        return Ok(0);
    }
    let mut rec = Record::new();
    rec.insert("path".into(), staged.path.clone().into());
    rec.insert("uuid".into(), staged.uuid.clone().into());
    rec.insert("sha256".into(), staged.sha256.clone().into());
    rec.insert("size".into(), json!(staged.size));
    rec.insert("uid".into(), json!(staged.uid));
    rec.insert("gid".into(), json!(staged.gid));
    rec.insert("mode".into(), staged.mode.clone().into());
    if let Some(s) = source {
        rec.insert("source".into(), s.into());
    }
    print_records(ctx.format, &[rec])?;
    Ok(0)
}

fn ls(ctx: &Context, flags: &FileLsFlags) -> CommandResult<i32> {
    if flags.staged {
        return ls_staged(ctx);
    }
    let (since, until) = super::when::bounds(flags.since.as_deref(), flags.until.as_deref())
        .map_err(crate::error::CommandError::user)?;
    // One more than asked: to say whether there are more.
    let filter = FileFilter {
        since,
        until,
        limit: flags.limit.map(|n| n + 1),
    };
    let mut files = ctx.backend.files(&filter)?;
    if let Some(n) = flags.limit.filter(|n| files.len() > *n) {
        files.truncate(n);
        crate::warn!("more than {n} files; showing the newest {n} (raise --limit)");
    }
    // Where the next run puts the staged ones (a session is not needed to list files).
    let staged = match ctx.require_session() {
        Ok(_) => ctx.sessions.pending_files(&ctx.session_key)?,
        Err(_) => Vec::new(),
    };
    if files.is_empty() && ctx.format == Format::Default {
        crate::info!("No files uploaded");
        return Ok(0);
    }
    let records: Vec<Record> = files
        .into_iter()
        .map(|f| {
            let mut rec = Record::new();
            rec.insert("uuid".into(), f.uuid.clone().into());
            rec.insert("sha256".into(), f.sha256.into());
            if !flags.quiet {
                rec.insert("size".into(), json!(f.size));
                rec.insert("created_at".into(), f.created_at.into());
                let dests: Vec<&str> = staged
                    .iter()
                    .filter(|s| s.1 == f.uuid)
                    .map(|s| s.0.as_str())
                    .collect();
                rec.insert("staged_at".into(), dests.join(" ").into());
            }
            rec
        })
        .collect();
    print_records(ctx.format, &records)?;
    Ok(0)
}

/// `file ls --staged`: what the next run of the current branch gets, and where.
fn ls_staged(ctx: &Context) -> CommandResult<i32> {
    ctx.require_session()?;
    let files = ctx.sessions.pending_files(&ctx.session_key)?;
    if files.is_empty() && ctx.format == Format::Default {
        crate::info!("No files staged for the next run");
        return Ok(0);
    }
    let records: Vec<Record> = files
        .into_iter()
        .map(|(path, uuid, uid, gid, mode)| {
            let mut rec = Record::new();
            rec.insert("path".into(), path.into());
            rec.insert("uuid".into(), uuid.into());
            rec.insert("uid".into(), json!(uid));
            rec.insert("gid".into(), json!(gid));
            rec.insert("mode".into(), mode.into());
            rec
        })
        .collect();
    print_records(ctx.format, &records)?;
    Ok(0)
}
