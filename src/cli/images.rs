//! `images` (list, import) and `tag`.

use super::args::{ImagesCommand, ImagesFlags, ImagesList, TagFlags};
use crate::backend::ImageFilter;
use crate::context::Context;
use crate::error::{CommandError, CommandResult, Kind};
use crate::format::{print_records, Record};
use crate::info;

pub fn images(ctx: &Context, flags: ImagesFlags) -> CommandResult<i32> {
    match flags.command {
        None => list(ctx, flags.list),
        Some(ImagesCommand::List(list_flags)) => list(ctx, list_flags),
        Some(ImagesCommand::Import {
            refs,
            tag,
            timeout,
            username,
            password,
        }) => import_all(
            ctx,
            &refs,
            &Import {
                tag,
                timeout,
                username,
                password,
            },
        ),
        Some(ImagesCommand::Rm { images }) => super::gc::images_rm(ctx, &images),
    }
}

fn list(ctx: &Context, flags: ImagesList) -> CommandResult<i32> {
    let filter = ImageFilter {
        all: flags.all || flags.uuid.is_some(),
        prefix: flags.prefix,
        uuid: flags.uuid,
    };
    let (since, until) = super::when::bounds(flags.since.as_deref(), flags.until.as_deref())
        .map_err(CommandError::user)?;
    let mut images = ctx.backend.images(&filter)?;
    images.retain(|img| super::when::within(&img.created_at, since, until));
    if images.len() > flags.limit {
        images.truncate(flags.limit);
        crate::warn!(
            "Showing the first {} images; raise --limit to see more",
            flags.limit
        );
    }
    let records: Vec<Record> = images
        .iter()
        .map(|img| {
            let mut rec = Record::new();
            rec.insert("uuid".into(), img.uuid.clone().into());
            rec.insert("tag".into(), serde_json::json!(img.tag));
            rec.insert("created_at".into(), img.created_at.clone().into());
            rec.insert(
                "operation_uuid".into(),
                serde_json::json!(img.operation_uuid),
            );
            rec
        })
        .collect();
    print_records(ctx.format, &records)?;
    Ok(0)
}

/// `images import`'s flags, the same for every reference.
pub(super) struct Import {
    pub tag: Option<String>,
    pub timeout: Option<u64>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Imports every reference (after brace expansion), one after the other, then prints a
/// record for each that was imported. A failed one is reported and the others still go;
/// the exit code is then 1 (a single reference fails with its own error's code).
fn import_all(ctx: &Context, words: &[String], flags: &Import) -> CommandResult<i32> {
    let refs: Vec<String> = words
        .iter()
        .flat_map(|w| super::braces::expand(w))
        .collect();
    if refs.len() > 1 && flags.tag.is_some() {
        return Err(CommandError::new(
            Kind::Usage,
            format!(
                "--tag names one image, but {} references were given ({})",
                refs.len(),
                refs.join(", ")
            ),
        )
        .hint("import them one at a time, or leave the tags to their references"));
    }
    if let [reference] = refs.as_slice() {
        let rec = import_one(ctx, reference, flags)?;
        print_records(ctx.format, &[rec])?;
        return Ok(0);
    }
    let mut records = Vec::new();
    for reference in &refs {
        match import_one(ctx, reference, flags) {
            Ok(rec) => records.push(rec),
            Err(e) => crate::error!("{reference}: {}", e.message),
        }
    }
    print_records(ctx.format, &records)?;
    let failed = refs.len() - records.len();
    if failed > 0 {
        crate::warn!("{failed} of {} imports failed", refs.len());
        return Ok(1);
    }
    Ok(0)
}

/// One import: a registry pull, or a local path; its record.
fn import_one(ctx: &Context, reference: &str, flags: &Import) -> CommandResult<Record> {
    if !std::path::Path::new(reference).exists() && super::pull::is_reference(reference) {
        return super::pull::pull(ctx, reference, flags);
    }
    if flags.timeout.is_some() {
        crate::warn!("-t/--timeout is for registry pulls; {reference} is imported without one");
    }
    let tag = flags.tag.as_deref();
    let uuid = ctx
        .backend
        .import_local(std::path::Path::new(reference), tag)?;
    info!("Imported {reference} as image {uuid}");
    let mut rec = Record::new();
    rec.insert("uuid".into(), uuid.into());
    rec.insert("tag".into(), serde_json::json!(tag));
    rec.insert("source".into(), reference.into());
    Ok(rec)
}

pub fn tag(ctx: &Context, flags: TagFlags) -> CommandResult<i32> {
    let (image, tag) = match flags.args.as_slice() {
        [tag] if flags.delete => (
            ctx.backend.resolve_image(&format!("tag:{tag}"))?,
            tag.clone(),
        ),
        [tag] => {
            let info = ctx.session()?.ok_or_else(|| {
                CommandError::user("No active session. Run `contree use IMAGE` first.")
            })?;
            (info.current_image, tag.clone())
        }
        [image, tag] => (ctx.backend.resolve_image(image)?, tag.clone()),
        _ => return Err(CommandError::user("tag takes TAG or IMAGE TAG")),
    };
    if flags.delete {
        ctx.backend.untag(&image, &tag)?;
        info!("Removed tag '{tag}' from image {image}");
    } else {
        ctx.backend.tag(&image, &tag)?;
        info!("Tagged image {image} as {tag}");
    }
    Ok(0)
}
