//! `images` (list, import) and `tag`.

use super::args::{ImagesCommand, ImagesFlags, ImagesList, TagFlags};
use crate::backend::ImageFilter;
use crate::context::Context;
use crate::error::{CommandError, CommandResult};
use crate::format::{print_records, Record};
use crate::info;

pub fn images(ctx: &Context, flags: ImagesFlags) -> CommandResult<i32> {
    match flags.command {
        None => list(ctx, flags.list),
        Some(ImagesCommand::List(list_flags)) => list(ctx, list_flags),
        Some(ImagesCommand::Import {
            path,
            tag,
            username,
            password,
        }) if !std::path::Path::new(&path).exists() && super::pull::is_reference(&path) => {
            super::pull::pull(ctx, &path, tag, username, password)
        }
        Some(ImagesCommand::Import { path, tag, .. }) => import(ctx, &path, tag.as_deref()),
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

fn import(ctx: &Context, path: &str, tag: Option<&str>) -> CommandResult<i32> {
    let uuid = ctx.backend.import_local(std::path::Path::new(path), tag)?;
    let mut rec = Record::new();
    rec.insert("uuid".into(), uuid.clone().into());
    rec.insert("tag".into(), serde_json::json!(tag));
    rec.insert("source".into(), path.into());
    print_records(ctx.format, &[rec])?;
    info!("Imported {path} as image {uuid}");
    Ok(0)
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
