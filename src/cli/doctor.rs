//! `contree doctor [--repair]`: is the store whole, and do the sessions point into it?

use crate::backend::{Finding, ImageFilter};
use crate::context::Context;
use crate::error::{CommandError, CommandResult, Kind};
use crate::format::{print_records, Format, Record};
use std::collections::HashSet;

pub fn doctor(ctx: &Context, repair: bool) -> CommandResult<i32> {
    let mut findings = ctx.backend.doctor(repair).map_err(|e| match e {
        crate::backend::BackendError::Unavailable(m) => CommandError::user(m),
        other => other.into(),
    })?;
    findings.push(sessions(ctx)?);
    if let Some(f) = usage(ctx) {
        findings.push(f);
    }
    let left: usize = findings
        .iter()
        .filter(|f| !f.repaired)
        .map(|f| f.problems.len())
        .sum();
    let repairable = findings.iter().any(|f| f.repairable && !f.repaired);
    if ctx.format == Format::Default {
        use std::io::Write;
        let mut text = String::new();
        for f in &findings {
            let state = match (f.problems.is_empty(), f.repaired) {
                (true, _) => "ok",
                (false, true) => "repaired",
                (false, false) => "problem",
            };
            text.push_str(&format!("{state:<9} {:<12} {}\n", f.check, f.detail));
            for p in &f.problems {
                text.push_str(&format!("{:<22} {p}\n", ""));
            }
        }
        // A reader that stops early (`| head`) is no error.
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    } else {
        let records: Vec<Record> = findings.iter().map(record).collect();
        print_records(ctx.format, &records)?;
    }
    if left == 0 {
        crate::info!("The store is whole");
        return Ok(0);
    }
    let err = CommandError::new(Kind::User, format!("{left} problem(s) found in the store"));
    Err(if repairable {
        err.hint("`contree doctor --repair` repairs what can be repaired without losing anything")
    } else {
        err
    })
}

/// (Not a problem unless `gc` cannot decide, a bad `[store]` setting.) The store's size by
/// kind, and what `gc` would free: a dry run, which waits for runs being started as `gc`
/// does. `None` where the backend does not know its size.
fn usage(ctx: &Context) -> Option<Finding> {
    use crate::format::human;
    let usage = ctx.backend.usage().ok()?;
    let kinds: Vec<String> = usage
        .kinds
        .iter()
        .map(|(kind, bytes)| format!("{kind} {}", human(*bytes as f64)))
        .collect();
    let mut f = Finding {
        check: "usage",
        detail: format!(
            "{}{}: {}",
            human(usage.total() as f64),
            usage
                .budget
                .as_ref()
                .map(|(_, how)| format!(" (budget {how})"))
                .unwrap_or_default(),
            kinds.join(", ")
        ),
        problems: Vec::new(),
        repairable: false,
        repaired: false,
    };
    match ctx.backend.gc(&|| super::gc::references(ctx), true) {
        Ok(report) if report.freed.is_empty() => f.detail.push_str("; gc would free nothing"),
        Ok(report) => {
            let counts: Vec<String> = [
                ("image", "images"),
                ("layer", "layers"),
                ("blob", "blobs"),
                ("variant", "blob variants"),
                ("log", "event logs cut"),
            ]
            .iter()
            .filter(|(kind, _)| report.count(kind) > 0)
            .map(|(kind, name)| format!("{} {name}", report.count(kind)))
            .collect();
            f.detail.push_str(&format!(
                "; gc would free {} ({})",
                human(report.bytes() as f64),
                counts.join(", ")
            ));
        }
        Err(e) => f.problems.push(format!("gc cannot decide: {e}")),
    }
    Some(f)
}

fn record(f: &Finding) -> Record {
    let mut rec = Record::new();
    rec.insert("check".into(), f.check.into());
    let status = match (f.problems.is_empty(), f.repaired) {
        (true, _) => "ok",
        (false, true) => "repaired",
        (false, false) => "problem",
    };
    rec.insert("status".into(), status.into());
    rec.insert("detail".into(), f.detail.clone().into());
    rec.insert("repairable".into(), f.repairable.into());
    rec.insert(
        "problems".into(),
        serde_json::Value::Array(f.problems.iter().map(|p| p.clone().into()).collect()),
    );
    rec
}

/// Every image a session's history names exists (`gc` never frees one; a store restored from
/// an older copy, or edited by hand, might lack it).
fn sessions(ctx: &Context) -> CommandResult<Finding> {
    let refs = ctx.sessions.references()?;
    let images: HashSet<String> = ctx
        .backend
        .images(&ImageFilter {
            all: true,
            ..Default::default()
        })?
        .into_iter()
        .map(|i| i.uuid)
        .collect();
    let mut f = Finding {
        check: "sessions",
        detail: format!(
            "every image of the sessions' histories exists ({} images)",
            refs.images.len()
        ),
        ..Default::default()
    };
    let mut missing: Vec<(&String, &String)> = refs
        .images
        .iter()
        .filter(|(image, _)| !images.contains(*image))
        .collect();
    missing.sort();
    for (image, key) in missing {
        f.problems.push(format!(
            "session '{key}': image {image} is not in the store"
        ));
    }
    if !f.problems.is_empty() {
        f.detail = "`contree session checkout` or `rollback` moves a session off them".into();
    }
    Ok(f)
}
