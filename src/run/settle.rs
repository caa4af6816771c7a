//! Runs that reach their session although their CLI did not stay to see them end.
//!
//! A foreground run is on its session's pending list from before it starts until its CLI
//! applies it (see `session::PendingOp`). If the CLI dies first (killed, its terminal
//! closed), the run goes on, and the next command of the session applies it here, once it
//! has ended: nothing that completed is ever lost, and `gc` keeps its images meanwhile.

use crate::backend::BackendError;
use crate::context::Context;
use crate::error::CommandResult;
use crate::session::{Applied, PendingOp};
use crate::wire::{Operation, Status};
use crate::{info, warn};

/// Applies the session's foreground runs that have ended without their CLI; leaves the
/// running ones, and those whose CLI is alive.
pub fn settle(ctx: &Context) -> CommandResult {
    let pending = ctx.sessions.pending_foreground(&ctx.session_key)?;
    for p in pending {
        // Its CLI is still there (another terminal): the run is its to apply.
        if let Some((pid, start)) = p.cli {
            if crate::procfs::process_start_time(pid) == Some(start) {
                continue;
            }
        }
        match ctx.backend.operation(&p.op) {
            Ok(op) if op.status.is_terminal() => apply(ctx, &p, &op)?,
            Ok(_) => {}
            Err(BackendError::NotFound(_)) => {
                ctx.sessions.remove_pending_op(&ctx.session_key, &p.op)?;
                warn!(
                    "Run {} ({}) never started: its CLI stopped before the sandbox did",
                    p.op, p.title
                );
            }
            // Cannot tell now (a server out of reach): a later command tries again.
            Err(e) => crate::debug!("pending run {}: {e}", p.op),
        }
    }
    Ok(())
}

/// Applies one ended foreground run that its CLI did not apply: a snapshot moves the
/// session as the CLI would have; if the session has moved on since the run started (a
/// newer run built on the same image), the snapshot gets a branch of its own instead, so
/// that the newer work stays where the user left it.
pub fn apply(ctx: &Context, p: &PendingOp, op: &Operation) -> CommandResult {
    let result = op
        .result_image_uuid
        .as_deref()
        .filter(|_| op.status == Status::Success);
    let moved_on = match (result, op.image_uuid.as_deref(), ctx.session()?) {
        (Some(image), Some(base), Some(session)) => {
            session.current_image != base && session.current_image != image
        }
        _ => false,
    };
    let branch = format!("detached-{}", p.op);
    let applied = ctx.sessions.apply_pending(
        &ctx.session_key,
        &p.op,
        result.map(|image| (image, p.title.as_str())),
        p.preserved_env.as_ref(),
        moved_on.then_some(branch.as_str()),
    )?;
    match (applied, result) {
        (Applied::NotPending, _) => {}
        (Applied::Recorded(entry), Some(image)) if moved_on => warn!(
            "Run {} ({}) ended after the session moved on: its result {image} is on branch '{branch}' (history #{})",
            p.op, p.title, entry.id
        ),
        (Applied::Recorded(_), Some(image)) => info!(
            "Applied run {} ({}), which ended without its CLI: the session is now on {image}",
            p.op, p.title
        ),
        _ if op.status != Status::Success => warn!(
            "Run {} ({}) ended {} without its CLI: {}; its changes were not kept",
            p.op,
            p.title,
            op.status,
            op.error.as_deref().unwrap_or("no error recorded")
        ),
        _ => {}
    }
    Ok(())
}
