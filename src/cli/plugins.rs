//! `contree plugins list`: every plugin file found, what it provides, or why it failed.

use super::args::PluginsCommand;
use crate::error::CommandResult;
use crate::format::{print_records, Format, Record};
use crate::plugin::Plugins;

pub fn plugins(format: Format, plugins: &Plugins, command: PluginsCommand) -> CommandResult<i32> {
    match command {
        PluginsCommand::List => list(format, plugins),
    }
}

fn list(format: Format, plugins: &Plugins) -> CommandResult<i32> {
    let reg = plugins.registry();
    let mut records = Vec::new();
    for entry in &reg.entries {
        let mut rec = Record::new();
        match &entry.plugin {
            Ok(p) => {
                let mut provides: Vec<String> = p
                    .manifest
                    .formatters
                    .iter()
                    .map(|f| format!("-o {}", f.name))
                    .collect();
                provides.extend(p.manifest.resolvers.iter().map(|r| {
                    format!(
                        "-F {}",
                        r.usage.clone().unwrap_or_else(|| format!("{}:…", r.scheme))
                    )
                }));
                let clashes = reg.clashes(p);
                rec.insert("name".into(), p.name.clone().into());
                rec.insert("version".into(), p.version.clone().into());
                rec.insert("abi".into(), p.abi.into());
                rec.insert("provides".into(), provides.join(", ").into());
                rec.insert("file".into(), entry.file.display().to_string().into());
                rec.insert("found_by".into(), entry.origin.name().into());
                let status = if clashes.is_empty() {
                    "ok".to_string()
                } else {
                    format!("clash: {}", clashes.join("; "))
                };
                rec.insert("status".into(), status.into());
            }
            Err(e) => {
                rec.insert("name".into(), "".into());
                rec.insert("version".into(), "".into());
                rec.insert("abi".into(), serde_json::Value::Null);
                rec.insert("provides".into(), "".into());
                rec.insert("file".into(), entry.file.display().to_string().into());
                rec.insert("found_by".into(), entry.origin.name().into());
                rec.insert("status".into(), format!("error: {e}").into());
            }
        }
        records.push(rec);
    }
    if records.is_empty() {
        let (places, _) = plugins.places();
        let places: Vec<String> = places
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        crate::info!("No plugins found (looked in: {})", places.join(", "));
    }
    print_records(format, &records)?;
    Ok(0)
}
