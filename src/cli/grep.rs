//! `contree grep PATTERN [PATH…]`: searches file contents of the session's image without
//! starting a sandbox (`Backend::grep`: the engine's own search locally, the API's
//! `/inspect/{uuid}/grep` through a profile). Lines print as ripgrep's do (`path:line:text`,
//! context as `path-line-text`); `-o json` gives one record per line, `--raw` the result.
//! Exit 0: matches; 1: none; 2: the search stopped (`max_total`, its deadline) before it
//! found any, so "none" is not known.

use super::args::GrepFlags;
use super::inspect::resolve_path;
use crate::context::Context;
use crate::error::CommandResult;
use crate::format::{print_records, record, Format};
use crate::wire::{GrepLineKind, GrepRequest, GrepResult};
use std::io::Write;

pub fn grep(ctx: &Context, flags: GrepFlags) -> CommandResult<i32> {
    let info = ctx.require_session()?;
    let cwd = ctx.sessions.cwd(&ctx.session_key)?;
    let paths = if flags.paths.is_empty() {
        vec![resolve_path(cwd.as_deref(), ".")]
    } else {
        flags
            .paths
            .iter()
            .map(|p| resolve_path(cwd.as_deref(), p))
            .collect()
    };
    let req = GrepRequest {
        patterns: vec![flags.pattern.clone()],
        paths,
        globs: flags.globs.clone(),
        max_count: flags.max_count,
        max_total: flags.max_total,
        case: Some(flags.case.clone()),
        before: flags.before.or(flags.context),
        after: flags.after.or(flags.context),
    };
    let result = ctx.backend.grep(&info.current_image, &req)?;
    if flags.raw {
        let text = serde_json::to_string_pretty(&result).unwrap_or_default();
        write_out(format!("{text}\n").as_bytes());
    } else if ctx.format == Format::Default {
        write_out(&lines(&result));
    } else {
        let records: Vec<_> = result
            .matches
            .iter()
            .map(|m| {
                record(serde_json::json!({
                    "path": m.path,
                    "line_number": m.line_number,
                    "type": m.kind,
                    "text": m.line_text.trim_end_matches(['\n', '\r']),
                }))
            })
            .collect();
        print_records(ctx.format, &records)?;
    }
    let found = result.matches.iter().any(|m| m.kind == GrepLineKind::Match);
    Ok(match (found, result.truncated) {
        (true, _) => 0,
        (false, false) => 1,
        (false, true) => 2,
    })
}

/// ripgrep's text form: `path:line:text` for a match, `path-line-text` for context, `--`
/// between groups that are not adjacent.
fn lines(result: &GrepResult) -> Vec<u8> {
    let mut out = Vec::new();
    let mut last: Option<(&str, u64)> = None;
    let context = result
        .matches
        .iter()
        .any(|m| m.kind == GrepLineKind::Context);
    for m in &result.matches {
        let adjacent = last.is_some_and(|(p, n)| p == m.path && n + 1 == m.line_number);
        if context && last.is_some() && !adjacent {
            out.extend_from_slice(b"--\n");
        }
        let sep = if m.kind == GrepLineKind::Match {
            ':'
        } else {
            '-'
        };
        let text = m.line_text.trim_end_matches(['\n', '\r']);
        out.extend_from_slice(format!("{}{sep}{}{sep}{text}\n", m.path, m.line_number).as_bytes());
        last = Some((&m.path, m.line_number));
    }
    if result.truncated {
        crate::warn!(
            "the search stopped early (--max-total, or its time limit): there may be more"
        );
    }
    out
}

fn write_out(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|_| out.flush());
}
