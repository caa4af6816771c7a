//! The Lua hook layer: user scripts that see and may change a run at four points of the
//! pipeline (see `docs/hooks.md` for the contract).
//!
//! - `pre-attach(plan)`: the `--file` specs and excludes, before anything is read;
//! - `pre-spawn(req)`: the complete spawn request, before anything is uploaded or spawned;
//! - `on-output(chunk)`: every output chunk, before the formatter;
//! - `on-exit(result)`: the final result, after the formatter.
//!
//! Hooks run in the CLI, so they behave the same for every backend. A failing or aborting
//! pre-* handler stops the run (fail closed); on-output and on-exit failures only warn.
//! With no handler for on-output the chunk path never enters this module's Lua side: no
//! call, no copy. Nothing here may write to stdout, which belongs to the command.

pub mod discover;
pub mod json;
pub mod payload;
pub mod redact;
pub mod runtime;
pub mod trust;

pub use discover::{HookFile, Origin};
pub use payload::{PayloadError, Plan, RequestView, SpecParser, PENDING_UPLOAD};
pub use runtime::{Failure, Limits, RuntimeError};

use crate::format::formatter::Stream;
use crate::outcome::Outcome;
use crate::wire::SpawnRequest;
use mlua::{Function, Value};
use redact::Redactor;
use runtime::{Handler, Runtime};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    PreAttach,
    PreSpawn,
    OnOutput,
    OnExit,
}

impl Event {
    pub const ALL: [Event; 4] = [
        Event::PreAttach,
        Event::PreSpawn,
        Event::OnOutput,
        Event::OnExit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::PreAttach => "pre-attach",
            Event::PreSpawn => "pre-spawn",
            Event::OnOutput => "on-output",
            Event::OnExit => "on-exit",
        }
    }

    pub fn parse(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// `contree.abort(reason)`, with file and line.
    #[error("run stopped by hook {0}")]
    Abort(String),
    /// An error or budget overrun in a pre-attach / pre-spawn handler (in the runtime's
    /// words, with file and line).
    #[error("hook failed, so the run was stopped: {0}")]
    Failed(String),
    /// The table for a pre-attach / pre-spawn handler could not be made.
    #[error("hook failed, so the run was stopped: {location}: {source}")]
    Payload {
        location: String,
        #[source]
        source: mlua::Error,
    },
    /// A pre-attach / pre-spawn handler returned a table that is not right.
    #[error(
        "hook failed, so the run was stopped: {location}: the {event} handler returned {source}"
    )]
    Returned {
        location: String,
        event: &'static str,
        #[source]
        source: PayloadError,
    },
    /// A pre-attach / pre-spawn handler returned neither nil nor a table.
    #[error("hook failed, so the run was stopped: {location}: the {event} handler returned a {found} (expected nil for no change, or the edited table)")]
    BadReturn {
        location: String,
        event: &'static str,
        found: &'static str,
    },
    /// A hook file did not load (syntax error, error or overrun at its top level).
    #[error("hook file failed to load, so the run was stopped: {0}")]
    Load(String),
    #[error("cannot read hook file '{path}': {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The hook budgets in the environment, or the Lua state.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    /// `contree hooks trust` outside a project with hooks.
    #[error("no .contree/hooks directory in {} or above it", .0.display())]
    NoProject(PathBuf),
    /// The trust store could not be written (`contree hooks trust`).
    #[error("cannot write '{path}': {source}")]
    Save {
        path: String,
        source: std::io::Error,
    },
}

/// What a hook call may take: built-in < config.toml `[hooks]` < `CONTREE_HOOK_*`.
fn budgets(config_dir: &std::path::Path) -> Result<Limits, HookError> {
    use crate::config::{HOOK_INSTRUCTIONS, HOOK_MEMORY_MB, HOOK_TIME_MS};
    let file = crate::config::file(config_dir);
    let config = crate::config::Config::load(&file).map_err(|source| RuntimeError::Config {
        path: file.clone(),
        source,
    })?;
    let read = |key| -> Result<Option<u64>, RuntimeError> {
        let Some(set) = config.layered(key) else {
            return Ok(None);
        };
        set.text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| RuntimeError::Budget {
                name: set.origin.to_string(),
                value: set.text.clone(),
            })
    };
    let mut limits = Limits::default();
    if let Some(ms) = read(&HOOK_TIME_MS)? {
        limits.time = std::time::Duration::from_millis(ms);
    }
    if let Some(n) = read(&HOOK_INSTRUCTIONS)? {
        limits.instructions = n;
    }
    if let Some(mb) = read(&HOOK_MEMORY_MB)? {
        limits.memory = usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    }
    Ok(limits)
}

/// Where to look for hooks, for one invocation.
pub struct Options<'a> {
    pub config_dir: &'a Path,
    pub data_dir: &'a Path,
    pub cwd: &'a Path,
    /// `--hook FILE`s, in order.
    pub flags: &'a [String],
    /// `--no-hooks`.
    pub disabled: bool,
}

struct LuaHandler {
    func: Function,
    location: String,
}

enum OutputKind {
    Lua(Function),
    Redact(Box<Redactor>),
}

struct OutputHandler {
    kind: OutputKind,
    location: String,
    /// Bytes of each stream this handler was given so far.
    offsets: [u64; 2],
    /// Failed once: passes everything through from then on.
    failed: bool,
}

/// What pre-spawn learned that on-exit needs to rebuild the request table.
struct SpawnFacts {
    env: BTreeMap<String, String>,
    sizes: BTreeMap<String, u64>,
    timeout_given: bool,
    /// sha256 of each file that was uploaded after pre-spawn, by instance path.
    hashes: BTreeMap<String, String>,
}

struct Active {
    rt: Runtime,
    pre_attach: Vec<LuaHandler>,
    pre_spawn: Vec<LuaHandler>,
    on_output: Vec<OutputHandler>,
    on_exit: Vec<LuaHandler>,
    facts: Option<SpawnFacts>,
}

/// The hooks of one run. `Hooks::none()` (no files, or `--no-hooks`) costs nothing.
#[derive(Default)]
pub struct Hooks {
    active: Option<Box<Active>>,
}

fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Hooks {
    pub fn none() -> Hooks {
        Hooks::default()
    }

    /// Finds, reads and loads the hook files of a run. Untrusted project hooks are skipped
    /// with a one-line warning; a file that fails to load stops the run.
    pub fn load(opts: &Options<'_>) -> Result<Hooks, HookError> {
        if opts.disabled {
            return Ok(Hooks::none());
        }
        crate::log::trace("hooks: loading");
        let found = discover::discover(opts.config_dir, opts.data_dir, opts.cwd, opts.flags)?;
        if let Some(why) = &found.untrusted {
            crate::warn!("{why}");
        }
        let files: Vec<&HookFile> = found.runnable().collect();
        if files.is_empty() {
            return Ok(Hooks::none());
        }
        let limits = budgets(opts.config_dir)?;
        let mut rt = Runtime::new(limits, opts.config_dir, opts.data_dir)?;
        for (i, file) in files.iter().enumerate() {
            rt.load_file(i, &file.path, &file.source)
                .map_err(|f| HookError::Load(f.message().to_string()))?;
        }
        let mut active = Active {
            pre_attach: Vec::new(),
            pre_spawn: Vec::new(),
            on_output: Vec::new(),
            on_exit: Vec::new(),
            facts: None,
            rt,
        };
        for reg in active.rt.take_registrations() {
            let location = active.rt.location(&reg.location);
            match (reg.event, reg.handler) {
                (Event::OnOutput, Handler::Redact(spec)) => active.on_output.push(OutputHandler {
                    kind: OutputKind::Redact(Box::new(Redactor::new(spec))),
                    location,
                    offsets: [0; 2],
                    failed: false,
                }),
                (Event::OnOutput, Handler::Lua(func)) => active.on_output.push(OutputHandler {
                    kind: OutputKind::Lua(func),
                    location,
                    offsets: [0; 2],
                    failed: false,
                }),
                (event, Handler::Lua(func)) => {
                    let h = LuaHandler { func, location };
                    match event {
                        Event::PreAttach => active.pre_attach.push(h),
                        Event::PreSpawn => active.pre_spawn.push(h),
                        _ => active.on_exit.push(h),
                    }
                }
                (_, Handler::Redact(_)) => {} // refused by contree.on
            }
        }
        crate::log::trace("hooks loaded");
        Ok(Hooks {
            active: Some(Box::new(active)),
        })
    }

    /// Runs the pre-attach handlers over the plan, in order; each sees the previous edits.
    /// Specs a handler returns as text are parsed with `parse` (the pipeline's own spec
    /// parser, so they mean what they would on the command line).
    pub fn pre_attach(&mut self, plan: &mut Plan, parse: &SpecParser<'_>) -> Result<(), HookError> {
        let Some(a) = self.active.as_deref_mut() else {
            return Ok(());
        };
        for h in &a.pre_attach {
            let Some(t) = h.edit(&a.rt, Event::PreAttach, plan.to_lua(a.rt.lua()))? else {
                continue;
            };
            let mut warnings = Vec::new();
            *plan =
                Plan::from_lua(&t, parse, &mut warnings).map_err(h.returned(Event::PreAttach))?;
            for w in warnings {
                crate::warn!("{w}");
            }
        }
        Ok(())
    }

    /// Runs the pre-spawn handlers over the request; edits are written back into `req`
    /// (and `env`, the merged environment). `sizes` maps the sha256 of this run's
    /// attachments to their size.
    pub fn pre_spawn(
        &mut self,
        req: &mut SpawnRequest,
        env: &mut BTreeMap<String, String>,
        sizes: &BTreeMap<String, u64>,
        timeout_given: bool,
        default_timeout: u64,
    ) -> Result<(), HookError> {
        let Some(a) = self.active.as_deref_mut() else {
            return Ok(());
        };
        let before = RequestView::new(req, env, sizes, timeout_given);
        let mut view = before.clone();
        for h in &a.pre_spawn {
            let Some(t) = h.edit(&a.rt, Event::PreSpawn, view.to_lua(a.rt.lua()))? else {
                continue;
            };
            view = RequestView::from_lua(&t, &view)
                .and_then(|v| {
                    // Files can be moved or dropped here, but content is only added in
                    // pre-attach: a pending upload must be one of this run's.
                    let unknown = v.files.iter().find(|(_, f)| {
                        f.uuid.is_none()
                            && f.sha256.as_ref().is_some_and(|s| !sizes.contains_key(s))
                    });
                    match unknown {
                        Some((path, _)) => Err(PayloadError::UnknownContent(path.clone())),
                        None => Ok(v),
                    }
                })
                .map_err(h.returned(Event::PreSpawn))?;
        }
        if view != before {
            view.apply(&before, req, env, default_timeout);
        }
        a.facts = Some(SpawnFacts {
            env: env.clone(),
            sizes: sizes.clone(),
            timeout_given: timeout_given || view.timeout.is_some(),
            hashes: view
                .files
                .iter()
                .filter_map(|(path, f)| Some((path.clone(), f.sha256.clone()?)))
                .collect(),
        });
        Ok(())
    }

    /// True when some on-output handler exists; only then may `on_output` be called.
    #[inline]
    pub fn has_output(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| !a.on_output.is_empty())
    }

    /// Passes one chunk through the on-output handlers in order. Returns what the formatter
    /// gets (empty: dropped or held back). A failing handler warns once and is skipped.
    pub fn on_output<'a>(&mut self, stream: Stream, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        match self.active.as_deref_mut() {
            Some(a) => a.output_from(0, stream, Cow::Borrowed(bytes)),
            None => Cow::Borrowed(bytes),
        }
    }

    /// The bytes native handlers held back (an undecided tail), pushed through the handlers
    /// after them, for each stream. Called once, when the output has ended.
    pub fn flush_output(&mut self) -> Vec<(Stream, Vec<u8>)> {
        let mut out = Vec::new();
        let Some(a) = self.active.as_deref_mut() else {
            return out;
        };
        for stream in [Stream::Stdout, Stream::Stderr] {
            let mut bytes = Vec::new();
            for i in 0..a.on_output.len() {
                let tail = match &mut a.on_output[i].kind {
                    OutputKind::Redact(r) => r.flush(stream_index(stream)),
                    OutputKind::Lua(_) => continue,
                };
                if !tail.is_empty() {
                    bytes.extend_from_slice(&a.output_from(i + 1, stream, Cow::Owned(tail)));
                }
            }
            if !bytes.is_empty() {
                out.push((stream, bytes));
            }
        }
        out
    }

    /// Runs the on-exit handlers with the final result; failures only warn.
    pub fn on_exit(&mut self, out: &Outcome, req: &SpawnRequest) {
        let Some(a) = self.active.as_deref_mut() else {
            return;
        };
        if a.on_exit.is_empty() {
            return;
        }
        let facts = a.facts.take().unwrap_or(SpawnFacts {
            env: req.env.clone().unwrap_or_default(),
            sizes: BTreeMap::new(),
            timeout_given: true,
            hashes: BTreeMap::new(),
        });
        let mut view = RequestView::new(req, &facts.env, &facts.sizes, facts.timeout_given);
        for (path, f) in view.files.iter_mut() {
            if let Some(sha) = facts.hashes.get(path) {
                f.size = facts.sizes.get(sha).copied();
                f.sha256 = Some(sha.clone());
            }
        }
        for h in &a.on_exit {
            let table = match exit_table(a.rt.lua(), out, &view) {
                Ok(t) => t,
                Err(e) => {
                    crate::warn!("hook {}: on-exit: {e}", h.location);
                    continue;
                }
            };
            if let Err(f) = a.rt.call(&h.func, table) {
                crate::warn!(
                    "hook on-exit handler failed (the exit code is unchanged): {}",
                    f.message()
                );
            }
        }
    }
}

impl Active {
    fn output_from<'a>(
        &mut self,
        first: usize,
        stream: Stream,
        mut data: Cow<'a, [u8]>,
    ) -> Cow<'a, [u8]> {
        let si = stream_index(stream);
        for h in self.on_output.iter_mut().skip(first) {
            if data.is_empty() {
                break;
            }
            if h.failed {
                continue;
            }
            let offset = h.offsets[si];
            h.offsets[si] += data.len() as u64;
            match &mut h.kind {
                OutputKind::Redact(r) => {
                    data = match data {
                        Cow::Borrowed(b) => r.process(si, b),
                        Cow::Owned(v) => Cow::Owned(r.process(si, &v).into_owned()),
                    };
                }
                OutputKind::Lua(func) => {
                    let result = chunk_table(self.rt.lua(), stream, &data, offset)
                        .map_err(|e| Failure::Error(format!("{}: {e}", h.location)))
                        .and_then(|t| self.rt.call(func, t));
                    match result {
                        Ok(Value::Nil) => {}
                        Ok(Value::Boolean(false)) => return Cow::Owned(Vec::new()),
                        Ok(Value::String(s)) => data = Cow::Owned(s.as_bytes().to_vec()),
                        Ok(other) => {
                            h.failed = true;
                            crate::warn!(
                                "hook {}: the on-output handler returned a {} (expected nil, a string or false); its output passes unchanged from now on",
                                h.location,
                                other.type_name()
                            );
                        }
                        Err(f) => {
                            h.failed = true;
                            crate::warn!(
                                "hook on-output handler failed; output passes it unchanged from now on: {}",
                                f.message()
                            );
                        }
                    }
                }
            }
        }
        data
    }
}

impl LuaHandler {
    /// Calls a pre-* handler with the table `payload` made: the table it returned, or
    /// `None` for nil (no change). Anything else, or a failure, stops the run.
    fn edit(
        &self,
        rt: &Runtime,
        event: Event,
        payload: mlua::Result<mlua::Table>,
    ) -> Result<Option<mlua::Table>, HookError> {
        let table = payload.map_err(|source| HookError::Payload {
            location: self.location.clone(),
            source,
        })?;
        match rt.call(&self.func, table) {
            Err(f) => Err(stop(f)),
            Ok(Value::Nil) => Ok(None),
            Ok(Value::Table(t)) => Ok(Some(t)),
            Ok(other) => Err(bad_return(&self.location, event.name(), &other)),
        }
    }

    /// The error for a returned table that does not read back.
    fn returned(&self, event: Event) -> impl FnOnce(PayloadError) -> HookError + '_ {
        move |source| HookError::Returned {
            location: self.location.clone(),
            event: event.name(),
            source,
        }
    }
}

fn stop(f: Failure) -> HookError {
    match f {
        Failure::Abort(m) => HookError::Abort(m),
        Failure::Error(m) => HookError::Failed(m),
    }
}

fn bad_return(location: &str, event: &'static str, v: &Value) -> HookError {
    HookError::BadReturn {
        location: location.to_string(),
        event,
        found: v.type_name(),
    }
}

fn chunk_table(
    lua: &mlua::Lua,
    stream: Stream,
    data: &[u8],
    offset: u64,
) -> mlua::Result<mlua::Table> {
    let t = lua.create_table_with_capacity(0, 3)?;
    t.raw_set("stream", stream.name())?;
    t.raw_set("data", lua.create_string(data)?)?;
    t.raw_set("offset", offset)?;
    Ok(t)
}

fn exit_table(lua: &mlua::Lua, out: &Outcome, req: &RequestView) -> mlua::Result<mlua::Table> {
    let t = lua.create_table_with_capacity(0, 10)?;
    t.raw_set("op", out.op.as_str())?;
    t.raw_set("status", out.status.map(|s| s.as_str()).unwrap_or("FAILED"))?;
    t.raw_set("exit_code", out.exit_code)?;
    t.raw_set("timed_out", out.timed_out)?;
    t.raw_set("interrupted", out.interrupted)?;
    t.raw_set("duration", out.duration_ms as f64 / 1000.0)?;
    t.raw_set("result_image", out.result_image.as_deref())?;
    t.raw_set("stdout_bytes", out.stdout_bytes)?;
    t.raw_set("stderr_bytes", out.stderr_bytes)?;
    t.raw_set("request", req.to_lua(lua)?)?;
    Ok(t)
}

/// One row of `contree hooks list`.
pub struct Listed {
    pub path: PathBuf,
    pub origin: Origin,
    pub trusted: bool,
    /// The events it registers; Err when it was not run (untrusted) or failed to load.
    pub events: Result<Vec<Event>, NotListed>,
}

/// Why `contree hooks list` shows no events for a file.
#[derive(Debug, thiserror::Error)]
pub enum NotListed {
    #[error("not run: untrusted")]
    Untrusted,
    /// The file did not load (in the runtime's words).
    #[error("load error: {0}")]
    Load(String),
}

/// Every hook file a run from `cwd` would consider, with the events each registers (files
/// that may run are loaded to learn that; untrusted ones are not run).
pub fn list(opts: &Options<'_>) -> Result<(Vec<Listed>, Option<String>), HookError> {
    let found = discover::discover(opts.config_dir, opts.data_dir, opts.cwd, opts.flags)?;
    let limits = budgets(opts.config_dir)?;
    let mut rows = Vec::new();
    for file in &found.files {
        let events = if !file.trusted {
            Err(NotListed::Untrusted)
        } else {
            // A state per file, so one broken file does not hide the others' events.
            let mut rt = Runtime::new(limits, opts.config_dir, opts.data_dir)?;
            match rt.load_file(0, &file.path, &file.source) {
                Ok(()) => {
                    let mut events: Vec<Event> = Vec::new();
                    for reg in rt.take_registrations() {
                        if !events.contains(&reg.event) {
                            events.push(reg.event);
                        }
                    }
                    events.sort_by_key(|e| Event::ALL.iter().position(|x| x == e));
                    Ok(events)
                }
                Err(f) => Err(NotListed::Load(f.message().to_string())),
            }
        };
        rows.push(Listed {
            path: file.path.clone(),
            origin: file.origin,
            trusted: file.trusted,
            events,
        });
    }
    Ok((rows, found.untrusted))
}

/// `contree hooks trust [DIR]`: pins the current content of the project's hook files.
/// Returns the hooks directory and the trusted file names.
pub fn trust(start: &Path, data_dir: &Path) -> Result<(PathBuf, Vec<String>), HookError> {
    let dir =
        discover::find_project(start).ok_or_else(|| HookError::NoProject(start.to_path_buf()))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let (_, hashes) = discover::project_files(&dir)?;
    let mut store = trust::TrustStore::open(data_dir)?;
    let names = hashes.keys().cloned().collect();
    store.trust(&dir, hashes);
    store.save().map_err(|e| HookError::Save {
        path: trust::TrustStore::file(data_dir).display().to_string(),
        source: e,
    })?;
    Ok((dir, names))
}
