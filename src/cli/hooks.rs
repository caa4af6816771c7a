//! `hooks list` and `hooks trust`: what would run, and trusting a project's hooks. Neither
//! needs the engine; listing runs only hooks that a `run` from here would run too.

use super::args::HooksCommand;
use crate::error::hook_management_error;
use crate::error::CommandResult;
use crate::format::{print_records, Format, Record};
use crate::hooks::{self, Options};
use crate::paths::Paths;
use serde_json::json;
use std::path::PathBuf;

pub fn hooks(format: Format, command: HooksCommand) -> CommandResult<i32> {
    let paths = Paths::from_env();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    match command {
        HooksCommand::List { hooks: flags } => {
            let opts = Options {
                config_dir: &paths.config,
                data_dir: &paths.data,
                cwd: &cwd,
                flags: &flags,
                disabled: false,
            };
            let (rows, untrusted) = hooks::list(&opts).map_err(hook_management_error)?;
            if let Some(why) = untrusted {
                crate::warn!("{why}");
            }
            if rows.is_empty() {
                crate::info!(
                    "no hook files (looked in {}, .contree/hooks from here upward, --hook)",
                    paths.config.join("hooks").display()
                );
                return Ok(0);
            }
            let records: Vec<Record> = rows
                .iter()
                .map(|row| {
                    let mut rec = Record::new();
                    rec.insert("file".into(), row.path.display().to_string().into());
                    rec.insert("origin".into(), row.origin.name().into());
                    rec.insert("trusted".into(), row.trusted.into());
                    let events = match &row.events {
                        Ok(events) => json!(events
                            .iter()
                            .map(|e| e.name())
                            .collect::<Vec<_>>()
                            .join(",")),
                        Err(why) => json!(format!("({why})")),
                    };
                    rec.insert("events".into(), events);
                    rec
                })
                .collect();
            print_records(format, &records)?;
            Ok(0)
        }
        HooksCommand::Trust { dir } => {
            let start = match dir {
                Some(d) => cwd.join(d),
                None => cwd,
            };
            let (dir, names) = hooks::trust(&start, &paths.data).map_err(hook_management_error)?;
            match format {
                Format::Json | Format::JsonPretty | Format::Plain | Format::Toml => {
                    let mut rec = Record::new();
                    rec.insert("dir".into(), dir.display().to_string().into());
                    rec.insert("files".into(), json!(names));
                    print_records(format, &[rec])?;
                }
                _ => println!(
                    "trusted {} hook file(s) in {}: {}",
                    names.len(),
                    dir.display(),
                    names.join(", ")
                ),
            }
            Ok(0)
        }
    }
}
