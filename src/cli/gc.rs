//! `gc` and `images rm`: what they free.

use crate::backend::GcReport;
use crate::context::Context;
use crate::error::CommandResult;
use crate::format::{human, print_records, Format, Record};

/// One record per freed item in the structured formats; in the default format a summary
/// (each item is a `-L debug` line).
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
            crate::debug!("{verb} {} {} ({})", f.kind, f.id, human(f.bytes as f64));
        }
    }
    crate::info!(
        "{verb} {} images, {} layers, {} blobs, {} blob variants, {} event logs, {} cache entries: {} ({} bytes)",
        report.count("image"),
        report.count("layer"),
        report.count("blob"),
        report.count("variant"),
        report.count("log"),
        report.count("cache"),
        human(report.bytes() as f64),
        report.bytes()
    );
    Ok(())
}

/// What this machine's sessions keep alive, read when the engine asks (see `backend::Refs`).
pub fn references(
    ctx: &Context,
) -> Result<crate::backend::References, crate::backend::BackendError> {
    Ok(ctx.sessions.references()?)
}

/// The CLI's side of the local engine's upkeep (see `engine::Keeper`): this machine's
/// local sessions, read afresh each time (a run's upkeep happens in its supervisor, a
/// process of its own), and the caches beside the store.
pub struct Sessions {
    pub session_db: std::path::PathBuf,
    pub cache_dir: std::path::PathBuf,
}

/// How long a resolver's stored content stays unused before it may go: it is kept only
/// between resolving a run's attachments and uploading them.
const RESOLVED_UNUSED: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl crate::engine::Keeper for Sessions {
    fn references(&self) -> Result<crate::backend::References, crate::backend::BackendError> {
        Ok(crate::session::SessionStore::open(&self.session_db)?.references()?)
    }

    fn trim_caches(&self, dry_run: bool) -> Vec<crate::backend::Freed> {
        trim_caches(&self.cache_dir, dry_run)
    }
}

/// Digest-cache entries no file can hit any more, and resolvers' content unused for a
/// day (`cache/resolved`), one `cache` entry each.
fn trim_caches(cache_dir: &std::path::Path, dry_run: bool) -> Vec<crate::backend::Freed> {
    let mut freed = Vec::new();
    let digests = cache_dir.join("digests.db");
    if digests.exists() {
        if let Ok(stale) =
            crate::attach::DigestCache::open(&digests).and_then(|cache| cache.forget_stale(dry_run))
        {
            freed.extend(
                stale
                    .into_iter()
                    .map(|(path, bytes)| crate::backend::Freed {
                        kind: "cache",
                        id: format!("digest of {path}"),
                        bytes,
                    }),
            );
        }
    }
    for entry in std::fs::read_dir(cache_dir.join("resolved"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let unused = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > RESOLVED_UNUSED);
        if meta.is_file() && unused && (dry_run || std::fs::remove_file(entry.path()).is_ok()) {
            freed.push(crate::backend::Freed {
                kind: "cache",
                id: format!("resolved {}", entry.file_name().to_string_lossy()),
                bytes: meta.len(),
            });
        }
    }
    freed
}

pub fn gc(ctx: &Context, dry_run: bool) -> CommandResult<i32> {
    let mut freed = ctx.backend.gc(&|| references(ctx), dry_run)?;
    freed
        .freed
        .extend(trim_caches(&ctx.paths.data.join("cache"), dry_run));
    let verb = if dry_run { "Would free" } else { "Freed" };
    if ctx.format == Format::Default {
        print!("{}", usage_table(&ctx.backend.usage()?, &freed, verb));
    }
    report(ctx, &freed, verb)?;
    Ok(0)
}

/// The kind of `usage` a freed item is counted under (images take no room of their own).
fn usage_kind(freed: &str) -> Option<&'static str> {
    Some(match freed {
        "layer" => "layers",
        "blob" => "blobs",
        "variant" => "blob variants",
        "log" => "event logs",
        "cache" => "caches",
        _ => return None,
    })
}

/// A line per kind: its size, and what `gc` frees (or would) of it; then the total.
pub fn usage_table(usage: &crate::engine::Usage, freed: &GcReport, verb: &str) -> String {
    let freed_of = |kind: &str| -> u64 {
        freed
            .freed
            .iter()
            .filter(|f| usage_kind(f.kind) == Some(kind))
            .map(|f| f.bytes)
            .sum()
    };
    let line = |name: &str, bytes: u64, gone: u64| {
        let mut text = format!("{name:<14} {:>10}", human(bytes as f64));
        if gone > 0 {
            text.push_str(&format!("  {} {}", verb.to_lowercase(), human(gone as f64)));
        }
        text + "\n"
    };
    let mut text = String::new();
    for (kind, bytes) in &usage.kinds {
        text.push_str(&line(kind, *bytes, freed_of(kind)));
    }
    text += &line("total", usage.total(), freed.bytes());
    if let Some((bytes, how)) = &usage.budget {
        let over = if usage.total() > *bytes {
            "; over it: a run's upkeep frees what nothing uses"
        } else {
            ""
        };
        text.push_str(&format!("{:<14} {how}{over}\n", "budget"));
    }
    text
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
