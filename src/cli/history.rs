//! `session show|use|branch|checkout|rollback|wait|delete`: moving around the session's
//! tree (run-behaviour.md §3.6). Every change is one store transaction, so commands from
//! several terminals on one session interleave without corrupting it.

use super::session_args::{BranchFlags, HistoryFlags, SessionCommand};
use crate::context::{no_session, session_err, Context};
use crate::error::{CommandError, CommandResult};
use crate::format::{print_records, record, record_order, Format, Record};
use crate::session::{HistoryEntry, SessionError};
use crate::wire::{Operation, Status};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};

/// History entries `session show` prints unless `-a` or `-l`.
const SHOW_DEFAULT: usize = 20;

pub fn dispatch(ctx: &Context, command: SessionCommand) -> CommandResult<i32> {
    match command {
        SessionCommand::Show(flags) => show(ctx, flags),
        SessionCommand::Use { name } => use_other(ctx, &name),
        SessionCommand::Branch(flags) => branch(ctx, flags),
        SessionCommand::Checkout { name } => checkout(ctx, &name),
        SessionCommand::Rollback { target } => rollback(ctx, target.as_deref().unwrap_or("-1")),
        SessionCommand::Wait { ops } => session_wait(ctx, &ops),
        SessionCommand::Delete { keys, force } => delete(ctx, &keys, force),
        // Handled by `session::session`.
        SessionCommand::List { .. } => Ok(0),
    }
}

/// Store errors as the user sees them; a missing session gets the usual two-line message.
fn store_err(e: SessionError) -> CommandError {
    match e {
        SessionError::NoSession => no_session(),
        other => session_err(other).plain(),
    }
}

/// The one session `name` designates (§3.6 `session use`): by key suffix, else exactly.
fn find_one(ctx: &Context, name: &str) -> CommandResult<String> {
    let found = ctx.sessions.find_sessions(name).map_err(session_err)?;
    match found.as_slice() {
        [] => Err(CommandError::user(format!("Session '{name}' not found")).plain()),
        [one] => Ok(one.clone()),
        many => Err(CommandError::user(format!(
            "Ambiguous session '{name}': matches {}",
            many.join(", ")
        ))
        .plain()),
    }
}

fn use_other(ctx: &Context, name: &str) -> CommandResult<i32> {
    let other = find_one(ctx, name)?;
    let info = ctx
        .sessions
        .info(&other)
        .map_err(session_err)?
        .ok_or_else(|| CommandError::user(format!("Session '{name}' not found")).plain())?;
    ctx.sessions
        .set_image(
            &ctx.session_key,
            &info.current_image,
            "session use",
            &other,
            None,
        )
        .map_err(store_err)?;
    let mut rec = Record::new();
    rec.insert("image".into(), info.current_image.into());
    rec.insert("from_session".into(), other.into());
    print_records(ctx.format, &[rec])?;
    Ok(0)
}

fn branch(ctx: &Context, flags: BranchFlags) -> CommandResult<i32> {
    let key = &ctx.session_key;
    if flags.prune {
        let active = ctx.session()?.map(|i| i.active_branch);
        let doomed: Vec<String> = ctx
            .sessions
            .branches(key)
            .map_err(session_err)?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|n| n.starts_with("detached-") || n.starts_with("disposable-"))
            .filter(|n| active.as_deref() != Some(n.as_str()))
            .collect();
        if doomed.is_empty() {
            println!("No disposable/detached branches to prune.");
        }
        for name in doomed {
            match ctx.sessions.delete_branch(key, &name) {
                // Another process may have pruned it meanwhile.
                Ok(()) | Err(SessionError::BranchNotFound(_)) => {
                    println!("Pruned branch '{name}'")
                }
                Err(e) => return Err(store_err(e)),
            }
        }
        return Ok(0);
    }
    if flags.delete {
        let name = flags
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| CommandError::user("--delete requires a branch NAME").plain())?;
        ctx.sessions.delete_branch(key, &name).map_err(store_err)?;
        println!("Deleted branch '{name}'");
        return Ok(0);
    }
    match flags.name {
        Some(name) if name.is_empty() => {
            Err(CommandError::user("Branch NAME is required (or use --delete/--prune)").plain())
        }
        Some(name) => {
            ctx.sessions
                .create_branch(key, &name, flags.from.as_deref())
                .map_err(store_err)?;
            println!("Created branch '{name}'");
            Ok(0)
        }
        None => list_branches(ctx),
    }
}

fn list_branches(ctx: &Context) -> CommandResult<i32> {
    let Some(info) = ctx.session()? else {
        eprintln!("No branches (no active session).");
        return Ok(0);
    };
    let branches = ctx
        .sessions
        .branches(&ctx.session_key)
        .map_err(session_err)?;
    if ctx.format == Format::Default {
        let mut out = std::io::stdout().lock();
        for (name, _) in &branches {
            let marker = if *name == info.active_branch {
                "* "
            } else {
                "  "
            };
            if writeln!(out, "{marker}{name}").is_err() {
                break;
            }
        }
        return Ok(0);
    }
    let records: Vec<Record> = branches
        .iter()
        .map(|(name, id)| {
            let active = *name == info.active_branch;
            record(json!({ "branch": name, "active": active, "history_id": id }))
        })
        .collect();
    print_records(ctx.format, &records)?;
    Ok(0)
}

fn checkout(ctx: &Context, name: &str) -> CommandResult<i32> {
    let tip = ctx
        .sessions
        .checkout(&ctx.session_key, name)
        .map_err(store_err)?;
    let mut rec = Record::new();
    rec.insert("branch".into(), name.into());
    rec.insert("image".into(), tip.image.into());
    print_records(ctx.format, &[rec])?;
    Ok(0)
}

fn rollback(ctx: &Context, target: &str) -> CommandResult<i32> {
    let dest = ctx
        .sessions
        .rollback(&ctx.session_key, target)
        .map_err(|e| match e {
            SessionError::InvalidTarget(_) => session_err(e),
            other => store_err(other),
        })?;
    let mut rec = Record::new();
    rec.insert("id".into(), dest.id.into());
    rec.insert("image".into(), dest.image.into());
    rec.insert("kind".into(), dest.kind.into());
    rec.insert("title".into(), dest.title.into());
    rec.insert("created_at".into(), dest.created_at.into());
    print_records(ctx.format, &[rec])?;
    Ok(0)
}

fn show(ctx: &Context, flags: HistoryFlags) -> CommandResult<i32> {
    let key = match &flags.name {
        Some(name) => find_one(ctx, name)?,
        None => ctx.session_key.clone(),
    };
    let (since, until) = super::when::bounds(flags.since.as_deref(), flags.until.as_deref())
        .map_err(CommandError::user)?;
    let mut entries: Vec<HistoryEntry> = ctx
        .sessions
        .history(&key)
        .map_err(session_err)?
        .into_iter()
        .filter(|e| match &flags.kind {
            Some(k) if k == "run" => e.kind == "run" || e.kind.starts_with("run-"),
            Some(k) => e.kind == *k,
            None => true,
        })
        .filter(|e| super::when::within(&e.created_at, since, until))
        .collect();
    if entries.is_empty() {
        eprintln!("No history.");
        return Ok(0);
    }
    let total = entries.len();
    let keep = match (flags.all, flags.limit) {
        (true, _) => total,
        (false, Some(n)) => n,
        (false, None) => SHOW_DEFAULT,
    };
    if keep < total {
        entries.drain(..total - keep);
        if flags.limit.is_none() {
            crate::info!("Showing last {keep} of {total} history entries. Use -a to show all.");
        }
    }
    let mut branches: HashMap<i64, Vec<String>> = HashMap::new();
    for (name, id) in ctx.sessions.branches(&key).map_err(session_err)? {
        branches.entry(id).or_default().push(name);
    }
    let info = ctx.sessions.info(&key).map_err(session_err)?;
    if ctx.format == Format::Default {
        let tree = draw_tree(
            &entries,
            &branches,
            info.as_ref().map(|i| i.tip_id),
            info.as_ref().map(|i| i.active_branch.as_str()),
        );
        let _ = std::io::stdout().lock().write_all(tree.as_bytes());
        return Ok(0);
    }
    let records: Vec<Record> = entries
        .iter()
        .map(|e| {
            let mut rec = Record::new();
            rec.insert("id".into(), e.id.into());
            rec.insert("image".into(), e.image.clone().into());
            rec.insert("parent_id".into(), json!(e.parent_id));
            rec.insert("kind".into(), e.kind.clone().into());
            rec.insert("title".into(), e.title.clone().into());
            rec.insert("operation".into(), json!(e.operation));
            rec.insert("created_at".into(), e.created_at.clone().into());
            let names = branches.get(&e.id).cloned().unwrap_or_default();
            rec.insert("branches".into(), names.join(",").into());
            rec
        })
        .collect();
    print_records(ctx.format, &records)?;
    Ok(0)
}

/// The history as a tree, oldest first: a line of history stays in one column, and a
/// fork indents its children under `├─` / `└─`, newest child last. `@` marks the active
/// tip, `*` any other entry; branch names follow the entry they point at (`main*` is the
/// active branch). Entries whose parent is not shown start their own tree.
pub fn draw_tree(
    entries: &[HistoryEntry],
    branches: &HashMap<i64, Vec<String>>,
    tip: Option<i64>,
    active: Option<&str>,
) -> String {
    let shown: std::collections::HashSet<i64> = entries.iter().map(|e| e.id).collect();
    let mut children: BTreeMap<i64, Vec<&HistoryEntry>> = BTreeMap::new();
    let mut roots = Vec::new();
    for e in entries {
        match e.parent_id.filter(|p| shown.contains(p)) {
            Some(p) => children.entry(p).or_default().push(e),
            None => roots.push(e),
        }
    }
    let mut out = String::new();
    // An explicit stack: a history of thousands of runs is one deep chain.
    let mut stack: Vec<(&HistoryEntry, String, String)> = roots
        .into_iter()
        .rev()
        .map(|e| (e, String::new(), String::new()))
        .collect();
    while let Some((e, first, cont)) = stack.pop() {
        let marker = if Some(e.id) == tip { '@' } else { '*' };
        let image: String = e.image.chars().take(8).collect();
        out.push_str(&format!(
            "{first}{marker} {:<4} {:<14} {image}  {}",
            e.id, e.kind, e.title
        ));
        if let Some(names) = branches.get(&e.id) {
            let names: Vec<String> = names
                .iter()
                .map(|n| {
                    if Some(n.as_str()) == active {
                        format!("{n}*")
                    } else {
                        n.clone()
                    }
                })
                .collect();
            out.push_str(&format!("  [{}]", names.join(", ")));
        }
        out.push('\n');
        let kids = children.get(&e.id).map(Vec::as_slice).unwrap_or(&[]);
        if let [only] = kids {
            stack.push((only, cont.clone(), cont));
            continue;
        }
        for (i, child) in kids.iter().enumerate().rev() {
            let last = i + 1 == kids.len();
            let (conn, next) = if last {
                ("└─", "  ")
            } else {
                ("├─", "│ ")
            };
            stack.push((child, format!("{cont}{conn}"), format!("{cont}{next}")));
        }
    }
    out
}

fn exit_code_of(op: &Operation) -> Option<i64> {
    let meta = op.metadata.as_ref()?;
    meta.pointer("/result/state/exit_code")
        .or_else(|| meta.pointer("/result/exit_code"))
        .and_then(|v| v.as_i64())
}

/// `session wait`: with no arguments, the session's detached runs, each applied when it
/// finished well (a run moves the active branch, a disposable one gets its branch); with
/// arguments, just those operations, no bookkeeping.
pub(super) fn session_wait(ctx: &Context, words: &[String]) -> CommandResult<i32> {
    let key = &ctx.session_key;
    let bookkeeping = words.is_empty();
    let pending: Vec<(String, Option<crate::session::PendingOp>)> = if bookkeeping {
        ctx.sessions
            .pending_ops(key)
            .map_err(session_err)?
            .into_iter()
            .map(|p| (p.op.clone(), Some(p)))
            .collect()
    } else {
        super::ops::resolve_refs(ctx, words)?
            .into_iter()
            .map(|op| (op, None))
            .collect()
    };
    if pending.is_empty() {
        eprintln!("No active operations for this session.");
        return Ok(0);
    }
    crate::info!("Waiting for {} operations...", pending.len());
    let mut code = 0;
    for (uuid, entry) in pending {
        let op = finished(ctx, &uuid)?;
        let exit = exit_code_of(&op);
        if op.status != Status::Success {
            code = code.max(1);
        }
        if let Some(c) = exit.filter(|c| *c > 0) {
            code = code.max(i32::try_from(c).unwrap_or(1));
        }
        let title = entry.as_ref().map(|p| p.title.clone()).unwrap_or_default();
        if let Some(p) = entry.as_ref().filter(|p| p.foreground) {
            crate::run::settle::apply(ctx, p, &op)?;
        } else if let Some(p) = &entry {
            let ok = op.status == Status::Success && exit.is_none_or(|c| c == 0);
            if ok && op.kind == "instance" {
                if p.disposable {
                    let image = op
                        .result_image_uuid
                        .clone()
                        .or_else(|| op.image_uuid.clone())
                        .unwrap_or_default();
                    ctx.sessions
                        .add_side_branch(key, &uuid, true, &image, &p.title)
                        .map_err(store_err)?;
                } else if let Some(image) = &op.result_image_uuid {
                    ctx.sessions
                        .set_image(key, image, "run", &p.title, Some(&uuid))
                        .map_err(store_err)?;
                }
            }
            ctx.sessions
                .remove_pending_op(key, &uuid)
                .map_err(session_err)?;
        }
        let mut rec = Record::new();
        rec.insert("uuid".into(), op.uuid.clone().into());
        rec.insert("status".into(), op.status.as_str().into());
        rec.insert("exit_code".into(), json!(exit));
        rec.insert("title".into(), title.into());
        rec.insert("result_image_uuid".into(), json!(op.result_image_uuid));
        rec.insert("error".into(), json!(op.error));
        print_records(ctx.format, &[record_order(rec, &[], &["error"])])?;
    }
    Ok(code)
}

/// Waits for one operation to finish (see `ops::Waiter`).
fn finished(ctx: &Context, op: &str) -> CommandResult<Operation> {
    use super::ops::{Waited, Waiter};
    let mut waiter = Waiter::new(op.to_string());
    loop {
        match waiter.wait(ctx, None)? {
            Waited::Done(op) => return Ok(*op),
            Waited::Interrupted => return Err(CommandError::user("User interrupted")),
            Waited::Pending => {}
        }
    }
}

fn delete(ctx: &Context, keys: &[String], force: bool) -> CommandResult<i32> {
    let mut code = 0;
    for name in keys {
        let exists = !ctx.sessions.history(name).map_err(session_err)?.is_empty();
        let key = if exists {
            name.clone()
        } else {
            match find_one(ctx, name) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("{}", e.message);
                    code = 1;
                    continue;
                }
            }
        };
        if !force && !confirm(&format!("Delete session '{key}'? [y/N] ")) {
            eprintln!("Kept session '{key}'");
            continue;
        }
        if ctx.sessions.delete_session(&key).map_err(session_err)? {
            crate::info!("Deleted session '{key}'");
        } else {
            eprintln!("Session '{key}' not found");
            code = 1;
        }
    }
    Ok(code)
}

/// Asks on stderr and reads one line from stdin; anything but y/yes (or no terminal
/// answer at all) is a no.
pub(super) fn confirm(question: &str) -> bool {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    // Read even when stdin is not a terminal: `yes | contree session delete K` answers.
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).unwrap_or(0) == 0 {
        eprintln!();
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: i64, parent: Option<i64>, kind: &str) -> HistoryEntry {
        HistoryEntry {
            id,
            session_key: "k".into(),
            image: format!("img{id}-0000"),
            parent_id: parent,
            kind: kind.into(),
            title: format!("t{id}"),
            operation: None,
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_fork_indents_its_children_and_a_line_stays_in_its_column() {
        let entries = vec![
            e(1, None, "use"),
            e(2, Some(1), "run"),
            e(3, Some(2), "run"),
            e(4, Some(3), "run"),
            e(5, Some(2), "run"),
        ];
        let branches =
            HashMap::from([(4, vec!["feat".to_string()]), (5, vec!["main".to_string()])]);
        let tree = draw_tree(&entries, &branches, Some(5), Some("main"));
        let lines: Vec<&str> = tree.lines().collect();
        assert_eq!(lines.len(), 5, "{tree}");
        assert!(lines[0].starts_with("* 1 "), "{tree}");
        assert!(lines[1].starts_with("* 2 "), "{tree}");
        assert!(lines[2].starts_with("├─* 3 "), "{tree}");
        assert!(
            lines[3].starts_with("│ * 4 ") && lines[3].ends_with("[feat]"),
            "{tree}"
        );
        assert!(
            lines[4].starts_with("└─@ 5 ") && lines[4].ends_with("[main*]"),
            "{tree}"
        );
    }
}
