//! `contree auth` and the choice of backend: a profile from `auth.ini` (or `--url`) means
//! the remote API, none means the embedded local engine.

use super::args::{AuthAction, AuthFlags};
use crate::api::profile::{self, Profile, Selection};
use crate::error::{CommandError, CommandResult, Kind};
use crate::paths::Paths;
use std::io::IsTerminal;

/// The remote profile this invocation uses, or `None` for the local engine.
pub fn selected_from(
    profile_flag: &Option<String>,
    url: &Option<String>,
    token: &Option<String>,
    project: &Option<String>,
    config: Option<&str>,
) -> CommandResult<Option<Profile>> {
    let path = profile::auth_path(&Paths::from_env().config, config);
    let ini = profile::read(&path)?;
    let sel = Selection {
        profile: profile_flag.clone().filter(|p| !p.is_empty()),
        url: url.clone(),
        token: token.clone(),
        project: project.clone(),
    };
    Ok(profile::select(ini.as_ref(), &sel)?)
}

fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// `auth ls|switch|remove`: profile bookkeeping, no network.
fn manage(action: AuthAction, config: Option<&str>) -> CommandResult<i32> {
    let path = profile::auth_path(&Paths::from_env().config, config);
    let mut ini = profile::read(&path)?.unwrap_or_default();
    let active = ini
        .get("DEFAULT", "profile")
        .unwrap_or("default")
        .to_string();
    let names: Vec<String> = ini
        .sections
        .keys()
        .filter_map(|k| k.strip_prefix("profile:").map(str::to_string))
        .collect();
    match action {
        // Nothing here asks the servers, so --offline changes nothing.
        AuthAction::List { offline: _ } => {
            for name in &names {
                let section = &ini.sections[&format!("profile:{name}")];
                let mark = if *name == active { "*" } else { " " };
                println!(
                    "{mark} {name}  {}  {}",
                    section.get("url").map(String::as_str).unwrap_or(""),
                    section.get("type").map(String::as_str).unwrap_or("jwt")
                );
            }
            Ok(0)
        }
        AuthAction::Switch { name } | AuthAction::Remove { name, .. } if !names.contains(&name) => {
            Err(profile::ProfileError::Missing(name).into())
        }
        AuthAction::Switch { name } => {
            ini.sections
                .entry("DEFAULT".into())
                .or_default()
                .insert("profile".into(), name.clone());
            profile::write(&path, &ini)?;
            crate::log::emit(
                crate::log::Level::Info,
                &format!("active profile: '{name}'"),
            );
            Ok(0)
        }
        AuthAction::Remove { name, force } => {
            // A script (stdin not a terminal) is not asked: it said what it wanted.
            if !force
                && std::io::stdin().is_terminal()
                && !super::history::confirm(&format!("Remove profile '{name}'? [y/N] "))
            {
                eprintln!("Kept profile '{name}'");
                return Ok(0);
            }
            ini.sections.remove(&format!("profile:{name}"));
            profile::write(&path, &ini)?;
            crate::log::emit(
                crate::log::Level::Info,
                &format!("removed profile '{name}'"),
            );
            Ok(0)
        }
    }
}

/// Why `GET /v1/whoami` did not confirm the token: only a 401/403 means the token was
/// refused; a server that cannot be reached, or is not a ConTree API, says so.
fn whoami_err(e: crate::backend::BackendError, url: &str) -> CommandError {
    use crate::backend::BackendError as B;
    let not_saved = "the profile was not saved";
    match e {
        B::Denied(m) => CommandError::user(format!("the token was not accepted: {m}")).hint(
            format!("{not_saved}; check --token (and --type, --project)"),
        ),
        B::Unreachable(m) => CommandError::new(Kind::Unreachable, m).hint(format!(
            "{not_saved}; check --url, or whether the server is running"
        )),
        B::NotFound(m) | B::Invalid(m) => CommandError::user(format!(
            "{url} does not answer /v1/whoami like a ConTree API: {m}"
        ))
        .hint(format!("{not_saved}; check --url")),
        other => CommandError::from(other).hint(not_saved),
    }
}

/// Checks the token with `GET /v1/whoami`, then saves the profile and makes it active.
pub fn auth(flags: AuthFlags, config: Option<&str>) -> CommandResult<i32> {
    if let Some(action) = flags.action {
        return manage(action, config);
    }
    let name = flags.profile.unwrap_or_else(|| "default".into());
    let token = flags
        .token
        .or_else(|| env(&["CONTREE_TOKEN", "NEBIUS_API_KEY"]))
        .ok_or_else(|| CommandError::user("no token: pass --token (or set CONTREE_TOKEN)"))?;
    let project = flags
        .project
        .or_else(|| env(&["CONTREE_PROJECT", "NEBIUS_AI_PROJECT"]));
    let url = match flags.url.or_else(|| env(&["CONTREE_URL"])) {
        Some(u) => u,
        None if flags.kind == "iam" => profile::IAM_URL.to_string(),
        None => return Err(CommandError::user("a jwt profile needs --url")),
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(CommandError::user(format!(
            "URL '{url}' must start with http:// or https://"
        )));
    }
    if flags.kind == "iam" && project.is_none() {
        return Err(CommandError::user("an iam profile needs --project"));
    }
    let p = Profile {
        name: name.clone(),
        url,
        token,
        kind: flags.kind,
        project,
    };
    let api = crate::api::Api::new(&p)?;
    let me = api.whoami().map_err(|e| whoami_err(e, &p.url))?;
    if me["permissions"]["list"] == serde_json::Value::Bool(false) {
        crate::log::emit(
            crate::log::Level::Warning,
            "this token may not list operations or images",
        );
    }
    let path = profile::auth_path(&Paths::from_env().config, config);
    if !flags.force && path.exists() {
        if let Ok(Some(ini)) = profile::read(&path) {
            if ini.sections.contains_key(&format!("profile:{name}")) {
                crate::log::emit(
                    crate::log::Level::Info,
                    &format!("replacing profile '{name}'"),
                );
            }
        }
    }
    profile::save(&path, &p)?;
    crate::log::emit(
        crate::log::Level::Info,
        &format!(
            "auth accepted, profile '{name}' saved to -> {}",
            path.display()
        ),
    );
    Ok(0)
}
