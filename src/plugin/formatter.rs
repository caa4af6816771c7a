//! Plugin formatters as the pipeline's [`Formatter`]: each step becomes one C call, JSON
//! for `begin`/`finish` and raw bytes for chunks, and each reply is written as it is.
//!
//! A plugin error or panic stops the formatter (no further calls; its state is freed) and
//! is kept for [`Formatter::error`], so `run` reports it once the operation is over,
//! instead of the command's exit code.

use super::library::LoadedPlugin;
use super::{PluginError, Plugins};
use crate::format::formatter::{self as builtin, Emit, Formatter, RunInfo, RunResult, Stream};
use contree_plugin::abi;
use contree_plugin::msg::FormatterDecl;
use std::borrow::Cow;
use std::ffi::c_void;

/// The formatter `-o NAME` asks for: a built-in, else the one plugin providing it.
/// Unknown names list what is available (and what failed to load).
pub fn formatter(name: &str, plugins: &Plugins) -> Result<Box<dyn Formatter>, PluginError> {
    if let Some(e) = plugins.explicit_failure() {
        return Err(e);
    }
    if let Some(f) = builtin::builtin(name) {
        return Ok(f);
    }
    let reg = plugins.registry();
    match reg.formatter(name)? {
        Some((plugin, decl)) => Ok(Box::new(PluginFormatter::new(plugin, decl)?)),
        None => Err(PluginError::UnknownFormatter {
            name: name.to_string(),
            available: builtin::BUILTIN_NAMES
                .iter()
                .map(|s| s.to_string())
                .chain(reg.formatter_names())
                .collect(),
            failed: reg.failures(),
        }),
    }
}

/// One run's formatter inside a plugin.
pub struct PluginFormatter {
    plugin: &'static LoadedPlugin,
    name: String,
    live: bool,
    /// The plugin's state; NULL once freed.
    state: *mut c_void,
    error: Option<PluginError>,
}

impl PluginFormatter {
    pub fn new(plugin: &'static LoadedPlugin, decl: &FormatterDecl) -> Result<Self, PluginError> {
        let new = plugin
            .descriptor()
            .formatter_new
            .expect("checked at load: formatters have formatter_new");
        let mut state: *mut c_void = std::ptr::null_mut();
        let name = decl.name.as_bytes();
        let call = format!("formatter '{}' new", decl.name);
        // SAFETY: per the ABI; `name` and `state` outlive the call.
        plugin.call(&call, |reply| unsafe {
            new(name.as_ptr(), name.len(), &mut state, reply)
        })?;
        if state.is_null() {
            return Err(PluginError::Failed {
                name: plugin.name.clone(),
                path: plugin.path.clone(),
                call,
                message: "no formatter state was returned".into(),
            });
        }
        Ok(PluginFormatter {
            plugin,
            name: decl.name.clone(),
            live: decl.live,
            state,
            error: None,
        })
    }

    /// One call with our state; an error stops the formatter for good.
    fn step(
        &mut self,
        what: &str,
        f: impl FnOnce(*mut c_void, *mut abi::Reply) -> i32,
    ) -> Emit<'static> {
        if self.state.is_null() {
            return Emit::none();
        }
        let state = self.state;
        let call = format!("formatter '{}' {what}", self.name);
        match self.plugin.call(&call, |reply| f(state, reply)) {
            Ok(answer) => Emit {
                stdout: Cow::Owned(answer.out),
                stderr: Cow::Owned(answer.err),
            },
            Err(e) => {
                self.error = Some(e);
                self.free();
                Emit::none()
            }
        }
    }

    /// `begin` or `finish`: one step handing the plugin a JSON document.
    fn step_json(
        &mut self,
        what: &str,
        call: Option<abi::FormatterJsonFn>,
        json: &[u8],
    ) -> Emit<'static> {
        let call = call.expect("checked at load");
        // SAFETY: per the ABI; `json` outlives the call.
        self.step(what, |state, reply| unsafe {
            call(state, json.as_ptr(), json.len(), reply)
        })
    }

    fn free(&mut self) {
        if !self.state.is_null() {
            if let Some(free) = self.plugin.descriptor().formatter_free {
                // SAFETY: our state, freed once (then set to NULL).
                unsafe { free(self.state) };
            }
            self.state = std::ptr::null_mut();
        }
    }
}

impl Drop for PluginFormatter {
    fn drop(&mut self) {
        self.free();
    }
}

impl Formatter for PluginFormatter {
    fn live(&self) -> bool {
        self.live
    }

    fn begin(&mut self, info: &RunInfo) -> Emit<'static> {
        let json = serde_json::to_vec(&contree_plugin::RunInfo {
            op: info.op.clone(),
            request: info.request.clone(),
            backend: info.backend.clone(),
        })
        .unwrap_or_default();
        self.step_json("begin", self.plugin.descriptor().formatter_begin, &json)
    }

    fn chunk<'a>(&mut self, stream: Stream, bytes: &'a [u8]) -> Emit<'a> {
        let stream = match stream {
            Stream::Stdout => abi::STREAM_STDOUT,
            Stream::Stderr => abi::STREAM_STDERR,
        };
        let chunk = self
            .plugin
            .descriptor()
            .formatter_chunk
            .expect("checked at load");
        // SAFETY: per the ABI; `bytes` outlives the call.
        self.step("chunk", |state, reply| unsafe {
            chunk(state, stream, bytes.as_ptr(), bytes.len(), reply)
        })
    }

    fn finish(&mut self, result: &RunResult) -> Emit<'static> {
        let json = serde_json::to_vec(&result.record).unwrap_or_default();
        let emit = self.step_json("finish", self.plugin.descriptor().formatter_finish, &json);
        self.free();
        emit
    }

    fn error(&self) -> Option<String> {
        self.error.as_ref().map(|e| e.to_string())
    }
}
