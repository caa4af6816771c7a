//! `contree skill install|list|remove|upgrade`: the agent skill's files in agent homes
//! (see `crate::skill`), and the list of installs kept in the config directory.

use super::args::{SkillCommand, SkillFlags};
use crate::error::{CommandError, CommandResult};
use crate::format::{print_records, record, Format, Record};
use crate::paths::Paths;
use crate::skill::{self, Installed, Places, Registry, SkillError, State, Target};
use serde_json::json;

pub fn skill(format: Format, command: SkillCommand) -> CommandResult<i32> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let cwd = std::env::current_dir().map_err(|e| {
        CommandError::new(crate::error::Kind::Io, format!("current directory: {e}"))
    })?;
    let places = Places { home, cwd };
    let mut registry = Registry::open(&Paths::from_env().config.join("skills.json"))?;
    let mut run = Run {
        places,
        format,
        rows: Vec::new(),
        failures: Vec::new(),
    };
    match command {
        SkillCommand::List => return list(&run, &registry),
        SkillCommand::Install(flags) => {
            let targets = if flags.specs.is_empty() {
                detected(&run.places)?
            } else {
                run.parse(&flags.specs)?
            };
            for target in targets {
                run.install(&mut registry, &target, flags.force, "install");
            }
        }
        SkillCommand::Upgrade(flags) => {
            for target in run.remembered_or(&registry, &flags)? {
                run.install(&mut registry, &target, flags.force, "upgrade");
            }
        }
        SkillCommand::Remove(flags) => {
            let targets = run.remembered_or(&registry, &flags)?;
            let only = targets.len() == 1;
            for target in targets {
                // Of several (a project root names every kind), the ones not there are no
                // error.
                if !only && matches!(skill::state(&target.dir), Ok(State::Missing)) {
                    registry.forget(&target.dir);
                    continue;
                }
                match skill::remove(&target, flags.force) {
                    Ok(()) => {
                        crate::info!(
                            "Removed {} ({}) from {}",
                            skill::NAME,
                            target.agent.name(),
                            run.places.show(&target.dir)
                        );
                        run.row("remove", &target);
                        registry.forget(&target.dir);
                    }
                    Err(SkillError::NotInstalled { .. }) => {
                        // Gone already (removed by hand): nothing left to remember.
                        registry.forget(&target.dir);
                        run.failures.push(SkillError::NotInstalled {
                            dir: run.places.show(&target.dir),
                        });
                    }
                    Err(e) => run.failures.push(e),
                }
            }
        }
    }
    registry.save()?;
    if !run.rows.is_empty() {
        print_records(run.format, &run.rows)?;
    }
    // Every failure is said; the last one decides the exit code.
    let last = run.failures.pop();
    for e in run.failures {
        super::report(&e.into());
    }
    match last {
        Some(e) => Err(e.into()),
        None => Ok(0),
    }
}

struct Run {
    places: Places,
    format: Format,
    rows: Vec<Record>,
    failures: Vec<SkillError>,
}

impl Run {
    fn parse(&self, specs: &[String]) -> Result<Vec<Target>, SkillError> {
        let mut all = Vec::new();
        for spec in specs {
            all.extend(skill::parse_spec(spec, &self.places)?);
        }
        all.dedup();
        Ok(all)
    }

    /// The SPECs' targets, or every remembered install.
    fn remembered_or(&self, registry: &Registry, flags: &SkillFlags) -> CommandResult<Vec<Target>> {
        if !flags.specs.is_empty() {
            return Ok(self.parse(&flags.specs)?);
        }
        if registry.entries().is_empty() {
            return Err(CommandError::user("no skill installs are remembered")
                .hint("`contree skill install` installs the skill (or name a SPEC)"));
        }
        Ok(registry.entries().iter().map(|e| e.target()).collect())
    }

    fn install(&mut self, registry: &mut Registry, target: &Target, force: bool, action: &str) {
        let shown = self.places.show(&target.dir);
        let kind = target.agent.name();
        match skill::install(target, force) {
            Ok(done) => {
                match done {
                    Installed::New => {
                        crate::info!("Installed {} ({kind}) to {shown}", skill::NAME)
                    }
                    Installed::Upgraded => {
                        crate::info!("Upgraded {} ({kind}) in {shown}", skill::NAME)
                    }
                    Installed::Current => {
                        crate::info!("{} ({kind}) in {shown} is up to date", skill::NAME)
                    }
                }
                registry.remember(target, &skill::version());
                self.row(action, target);
            }
            Err(e) => self.failures.push(e),
        }
    }

    fn row(&mut self, action: &str, target: &Target) {
        self.rows.push(record(json!({
            "action": action,
            "name": skill::NAME,
            "kind": target.agent.name(),
            "path": self.places.show(&target.dir),
        })));
    }
}

/// The targets found when no SPEC is given, said on stderr.
fn detected(places: &Places) -> Result<Vec<Target>, SkillError> {
    let found = skill::detect(places);
    if found.is_empty() {
        return Err(SkillError::NothingDetected {
            home: places.show(&places.home),
        });
    }
    let names: Vec<String> = found
        .iter()
        .map(|t| format!("{} ({})", places.show(&t.dir), t.agent.name()))
        .collect();
    crate::info!("Detected agent homes: {}", names.join(", "));
    Ok(found)
}

fn list(run: &Run, registry: &Registry) -> CommandResult<i32> {
    if registry.entries().is_empty() {
        eprintln!("No skill installs remembered. `contree skill install` installs one.");
        return Ok(0);
    }
    let latest = skill::version();
    let mut rows = Vec::new();
    for entry in registry.entries() {
        let state = skill::state(&entry.dir)?;
        let (exists, changed) = match &state {
            State::Installed { changed, .. } => (true, changed.join(",")),
            State::Foreign(_) | State::Missing => (false, String::new()),
        };
        let version = match &state {
            State::Installed { version, .. } => version.clone(),
            _ => entry.version.clone(),
        };
        rows.push(record(json!({
            "name": skill::NAME,
            "path": run.places.show(&entry.dir),
            "kind": entry.agent.name(),
            "version": version,
            "latest": latest,
            "outdated": version != latest,
            "exists": exists,
            "changed": changed,
        })));
    }
    print_records(run.format, &rows)?;
    Ok(0)
}
