//! `gc` and `images rm`: what they free.

use crate::backend::GcReport;
use crate::context::Context;
use crate::error::CommandResult;
use crate::format::{human, print_records, Format, Record};

/// One record per freed item in the structured formats; in the default format a line per
/// item and a summary.
fn report(ctx: &Context, report: &GcReport, verb: &str) -> CommandResult<()> {
    if ctx.format != Format::Default {
        let records: Vec<Record> = report
            .freed
            .iter()
            .map(|f| {
                let mut rec = Record::new();
                rec.insert("kind".into(), f.kind.into());
                rec.insert("id".into(), f.id.clone().into());
                rec.insert("bytes".into(), f.bytes.into());
                rec
            })
            .collect();
        print_records(ctx.format, &records)?;
    } else {
        for f in &report.freed {
            println!("{verb} {} {} ({})", f.kind, f.id, human(f.bytes as f64));
        }
    }
    crate::info!(
        "{verb} {} images, {} layers, {} blobs, {} blob variants, {} event logs: {} ({} bytes)",
        report.count("image"),
        report.count("layer"),
        report.count("blob"),
        report.count("variant"),
        report.count("log"),
        human(report.bytes() as f64),
        report.bytes()
    );
    Ok(())
}

/// What this machine's sessions keep alive, read when the engine asks (see `backend::Refs`).
fn references(ctx: &Context) -> Result<crate::backend::References, crate::backend::BackendError> {
    Ok(ctx.sessions.references()?)
}

pub fn gc(ctx: &Context, dry_run: bool) -> CommandResult<i32> {
    let freed = ctx.backend.gc(&|| references(ctx), dry_run)?;
    report(ctx, &freed, if dry_run { "Would free" } else { "Freed" })?;
    Ok(0)
}

pub fn images_rm(ctx: &Context, images: &[String]) -> CommandResult<i32> {
    let mut code = 0;
    for image in images {
        match ctx.backend.remove_image(image, &|| references(ctx)) {
            Ok(freed) => report(ctx, &freed, "Freed")?,
            Err(e) => {
                crate::log::emit(
                    crate::log::Level::Error,
                    &crate::error::CommandError::from(e).message,
                );
                code = 1;
            }
        }
    }
    Ok(code)
}
