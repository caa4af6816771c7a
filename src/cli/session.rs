//! `use` and `session`: which image the session is on.

use super::args::{SessionCommand, UseFlags};
use crate::context::{no_session, Context};
use crate::error::{CommandError, CommandResult};
use crate::format::{print_records, record, Record};
use crate::run::request::EnvItemError;
use crate::session::SessionInfo;
use serde_json::json;
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
    let image = ctx.backend.resolve_image(&reference)?;
    let key = if flags.new {
        uuid::Uuid::new_v4().to_string()
    } else {
        ctx.session_key.clone()
    };
    ctx.sessions
        .set_image(&key, &image, "use", &reference, None)?;
    println!("{}", export_line(&key));
    if flags.new && std::io::stdout().is_terminal() {
        crate::warn!("Session is not active until exported. Either paste the line above, or use: eval $(contree use -N IMAGE)");
    }
    Ok(0)
}

pub fn session(ctx: &Context, command: Option<SessionCommand>) -> CommandResult<i32> {
    match command {
        None => {
            let info = ctx.session()?.ok_or_else(no_session)?;
            print_records(ctx.format, &[info_record(ctx, &info)])?;
        }
        Some(SessionCommand::List { filter }) => {
            let mut list = ctx.sessions.list()?;
            if let Some(f) = &filter {
                list.retain(|s| s.session_key.contains(f.as_str()));
            }
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
        Some(other) => return super::history::dispatch(ctx, other),
    }
    Ok(0)
}

/// `env`: list, set (`KEY=VALUE`…) or unset (`-U KEY`…) the session's variables, which
/// every `run` of the session gets.
pub fn env(ctx: &Context, items: &[String], delete: bool) -> CommandResult<i32> {
    let key = &ctx.session_key;
    if delete {
        if items.is_empty() {
            return Err(CommandError::user("Specify keys to unset"));
        }
        if let Some(bad) = items.iter().find(|k| k.is_empty() || k.contains('=')) {
            return Err(CommandError::user(format!(
                "'{bad}' is not a variable name (expected KEY, without '=')"
            )));
        }
        for k in items {
            ctx.sessions.unset_env(key, k)?;
            crate::info!("Unset {k}");
        }
        return Ok(0);
    }
    if items.is_empty() {
        let env = ctx.sessions.env(key)?;
        if env.is_empty() {
            println!("No session environment variables set.");
            return Ok(0);
        }
        let records: Vec<Record> = env
            .iter()
            .map(|(k, v)| record(json!({ "key": k, "value": v })))
            .collect();
        print_records(ctx.format, &records)?;
        return Ok(0);
    }
    // All checked before any is set, as `run -e` does.
    let pairs = crate::run::request::parse_env_items(items).map_err(|e| {
        let err = CommandError::user(e.to_string());
        match e {
            EnvItemError::NoEquals(key) => err.hint(format!(
                "`contree env` lists the variables; `contree env -U {key}` unsets one"
            )),
            EnvItemError::EmptyKey(_) => err,
        }
    })?;
    for (k, v) in &pairs {
        ctx.sessions.set_env(key, k, v)?;
        crate::info!("Set {k}={v}");
    }
    Ok(0)
}

/// `cd`: print the session's working directory, or change it after checking that the
/// directory exists in the session's image. The cwd is part of the history, so a rollback
/// past a `cd` undoes it.
pub fn cd(ctx: &Context, path: Option<&str>) -> CommandResult<i32> {
    let key = &ctx.session_key;
    let current = ctx.sessions.cwd(key)?;
    let Some(path) = path else {
        println!("{}", current.as_deref().unwrap_or("/"));
        return Ok(0);
    };
    let target = super::inspect::resolve_path(current.as_deref(), path);
    let Some(info) = ctx.session()? else {
        // As the official client: without a session nothing is checked or stored.
        return Ok(0);
    };
    match ctx.backend.list_dir(&info.current_image, &target) {
        Ok(_) => {}
        Err(crate::backend::BackendError::NotFound(_)) => {
            return Err(CommandError::user(format!(
                "cd: {target}: no such directory"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    ctx.sessions.set_cwd(key, &target)?;
    Ok(0)
}
