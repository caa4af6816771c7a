//! Plugin resolvers as the attach stage's [`Resolver`]: the spec's REST goes out as a JSON
//! request, the answer comes back as JSON and is placed by [`place`], the same code that
//! gives local directories their instance paths, owners, modes and excludes.

use super::library::LoadedPlugin;
use super::PluginError;
use crate::attach::resolve::{place, split_scheme, Resolved, Source};
use crate::attach::{AttachError, Attachment, Excludes, FileSpec, Resolver};
use contree_plugin::msg;
use std::path::{Path, PathBuf};

/// Why a plugin resolver gave no files (every text names the plugin).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("plugin '{name}' ({}) answered resolve with invalid JSON: {source}", path.display())]
    Answer {
        name: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "plugin '{name}' answered file '{file}' with not exactly one of host_path and content"
    )]
    Source { name: String, file: String },
    #[error("plugin '{0}' found no files")]
    NoFiles(String),
}

pub struct PluginResolver {
    plugin: &'static LoadedPlugin,
    scheme: String,
    content_dir: PathBuf,
}

impl std::fmt::Debug for PluginResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PluginResolver({}: from {})",
            self.scheme,
            self.plugin.path.display()
        )
    }
}

impl PluginResolver {
    pub fn new(plugin: &'static LoadedPlugin, scheme: &str, content_dir: &Path) -> PluginResolver {
        PluginResolver {
            plugin,
            scheme: scheme.to_string(),
            content_dir: content_dir.to_path_buf(),
        }
    }

    /// Asks the plugin; its failure, a panic or an unreadable answer names the plugin.
    pub fn ask(&self, rest: &str) -> Result<msg::Resolved, ResolveError> {
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "/".into());
        let request = serde_json::to_vec(&msg::ResolveRequest {
            scheme: self.scheme.clone(),
            rest: rest.to_string(),
            cwd,
        })
        .unwrap_or_default();
        let resolve = self.plugin.descriptor().resolve.expect("checked at load");
        // SAFETY: per the ABI; `request` outlives the call.
        let answer = self.plugin.call("resolve", |reply| unsafe {
            resolve(request.as_ptr(), request.len(), reply)
        })?;
        serde_json::from_slice(&answer.out).map_err(|source| ResolveError::Answer {
            name: self.plugin.name.clone(),
            path: self.plugin.path.clone(),
            source,
        })
    }
}

impl Resolver for PluginResolver {
    fn resolve(
        &self,
        spec: &FileSpec,
        excludes: &Excludes,
    ) -> Result<Vec<Attachment>, AttachError> {
        let rest = split_scheme(&spec.host).map(|(_, r)| r).unwrap_or_default();
        let err = |source: ResolveError| AttachError::Plugin {
            spec: spec.to_string(),
            source: Box::new(source),
        };
        let answer = self.ask(rest).map_err(err)?;
        let mut files = Vec::with_capacity(answer.files.len());
        for f in answer.files {
            let source = match (f.host_path, f.content) {
                (Some(path), None) => Source::Host(PathBuf::from(path)),
                (None, Some(bytes)) => Source::Content(bytes),
                _ => {
                    return Err(err(ResolveError::Source {
                        name: self.plugin.name.clone(),
                        file: f.path,
                    }))
                }
            };
            files.push(Resolved {
                rel: f.path,
                source,
                uid: f.uid,
                gid: f.gid,
                mode: f.mode,
            });
        }
        if files.is_empty() {
            return Err(err(ResolveError::NoFiles(self.plugin.name.clone())));
        }
        place(spec, &answer.name, files, excludes, &self.content_dir)
    }
}
