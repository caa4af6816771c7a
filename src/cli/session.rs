//! `use` and `session`: which image the session is on.

use super::args::{SessionCommand, UseFlags};
use crate::context::{backend_err, no_session, session_err, Context};
use crate::error::{CommandError, CommandResult};
use crate::format::Record;
use crate::run::print_records;
use crate::session::SessionInfo;
use std::io::IsTerminal;

fn export_line(key: &str) -> String {
    let fish = std::env::var("SHELL")
        .map(|s| s.rsplit('/').next() == Some("fish"))
        .unwrap_or(false);
    if fish {
        format!("set -gx CONTREE_SESSION {key}")
    } else {
        format!("export CONTREE_SESSION={key}")
    }
}

fn info_record(ctx: &Context, info: &SessionInfo) -> Record {
    let mut rec = Record::new();
    rec.insert("session_key".into(), info.session_key.clone().into());
    rec.insert("active_branch".into(), info.active_branch.clone().into());
    rec.insert("current_image".into(), info.current_image.clone().into());
    rec.insert("last_kind".into(), info.last_kind.clone().into());
    rec.insert("last_title".into(), info.last_title.clone().into());
    rec.insert("updated_at".into(), info.updated_at.clone().into());
    rec.insert("backend".into(), ctx.backend.name().into());
    rec
}

pub fn use_image(ctx: &Context, flags: UseFlags) -> CommandResult<i32> {
    let Some(reference) = flags.image else {
        if flags.new {
            return Err(CommandError::user("--new requires an IMAGE argument.").plain());
        }
        let info = ctx.session()?.ok_or_else(no_session)?;
        print_records(ctx.format, &[info_record(ctx, &info)])?;
        return Ok(0);
    };
    // Resolve before touching the session: an unknown image changes nothing.
    let image = ctx.backend.resolve_image(&reference).map_err(backend_err)?;
    let key = if flags.new {
        uuid::Uuid::new_v4().to_string()
    } else {
        ctx.session_key.clone()
    };
    ctx.sessions
        .set_image(&key, &image, "use", &reference, None)
        .map_err(session_err)?;
    println!("{}", export_line(&key));
    if flags.new && std::io::stdout().is_terminal() {
        crate::warn!("Session is not active until exported. Either paste the line above, or use: eval $(contree use -N IMAGE)");
    }
    Ok(0)
}

pub fn session(ctx: &Context, command: Option<SessionCommand>) -> CommandResult<i32> {
    match command.unwrap_or(SessionCommand::Show) {
        SessionCommand::Show => {
            let info = ctx.session()?.ok_or_else(no_session)?;
            print_records(ctx.format, &[info_record(ctx, &info)])?;
        }
        SessionCommand::List => {
            let list = ctx.sessions.list().map_err(session_err)?;
            if list.is_empty() {
                eprintln!("No sessions found.");
                return Ok(0);
            }
            let records: Vec<Record> = list
                .iter()
                .map(|info| {
                    let mut rec = Record::new();
                    rec.insert(
                        "active".into(),
                        (info.session_key == ctx.session_key).into(),
                    );
                    rec.insert("session_key".into(), info.session_key.clone().into());
                    rec.insert("active_branch".into(), info.active_branch.clone().into());
                    rec.insert("current_image".into(), info.current_image.clone().into());
                    rec.insert("updated_at".into(), info.updated_at.clone().into());
                    rec
                })
                .collect();
            print_records(ctx.format, &records)?;
        }
    }
    Ok(0)
}
