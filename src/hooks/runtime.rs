//! The Lua state hooks run in: which standard libraries they get, the `contree` library,
//! and the budget every call runs under (instructions, wall time, memory).
//!
//! A handler must never hang or kill the CLI: an instruction hook checks the budget every
//! [`TICK`] instructions and raises an error that `pcall` cannot swallow, and the state has
//! a memory limit. Errors come back as one line naming the hook file and line.

use super::json;
use super::redact::{RedactSpec, BUILTIN_PATTERNS};
use super::Event;
use mlua::{
    chunk::ChunkMode, Function, HookTriggers, Lua, LuaOptions, StdLib, Table, UserData, Value,
    Variadic, VmState,
};
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Instructions between two budget checks.
pub const TICK: u32 = 1000;

/// The budget of one handler call (and of loading one file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub time: Duration,
    pub instructions: u64,
    /// Bytes the whole Lua state may hold.
    pub memory: usize,
}

pub const TIME_ENV: &str = "CONTREE_HOOK_TIME_MS";
pub const INSTRUCTIONS_ENV: &str = "CONTREE_HOOK_INSTRUCTIONS";
pub const MEMORY_ENV: &str = "CONTREE_HOOK_MEMORY_MB";

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            time: Duration::from_millis(1000),
            instructions: 100_000_000,
            memory: 64 << 20,
        }
    }
}

/// Why the hook runtime could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A budget (a variable, or config.toml's `[hooks]`) that is not a whole number above 0;
    /// `name` says which.
    #[error("{name}={value}: expected a whole number above 0")]
    Budget { name: String, value: String },
    /// config.toml cannot be read or parsed.
    #[error("{}: {source}", path.display())]
    Config {
        path: std::path::PathBuf,
        source: crate::config::ConfigError,
    },
    #[error(transparent)]
    Lua(#[from] mlua::Error),
    #[error("cannot set up the hook runtime: {0}")]
    Setup(#[source] mlua::Error),
}

/// Why a call (or loading a file) did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `contree.abort(reason)`; the message names file and line.
    Abort(String),
    /// An error, a budget overrun or the memory limit.
    Error(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Abort(m) | Failure::Error(m) => m,
        }
    }
}

/// What a handler registered with `contree.on` is.
pub enum Handler {
    Lua(Function),
    /// `contree.redact{...}`: runs in Rust.
    Redact(RedactSpec),
}

pub struct Registration {
    pub event: Event,
    pub handler: Handler,
    /// `file:line` where the handler was defined (or registered, for a native one).
    pub location: String,
}

/// State shared by the instruction hook and the `contree` library.
struct Shared {
    limits: Limits,
    deadline: Cell<Instant>,
    ticks: Cell<u64>,
    /// Set by `abort` and by a budget overrun: no `pcall` may swallow it.
    fatal: RefCell<Option<Failure>>,
    /// Where the running code was at the last budget check (for memory errors).
    last_location: RefCell<Option<String>>,
    /// The file being loaded; `contree.on` is only allowed then.
    loading: Cell<Option<usize>>,
    registrations: RefCell<Vec<Registration>>,
}

impl Shared {
    fn arm(&self) {
        self.deadline.set(Instant::now() + self.limits.time);
        self.ticks.set(0);
        *self.fatal.borrow_mut() = None;
        *self.last_location.borrow_mut() = None;
    }
}

struct RedactUserData(RedactSpec);
impl UserData for RedactUserData {}

pub struct Runtime {
    lua: Lua,
    shared: Rc<Shared>,
    /// (Lua's short name of a chunk, the full path): Lua shortens long paths with `...`.
    names: Vec<(String, String)>,
}

const PRELUDE_NAME: &str = "=contree";
const PRELUDE: &str = r#"
local fatal = ...
local raw_pcall, raw_xpcall, pack, unpack, error = pcall, xpcall, table.pack, table.unpack, error
local function pass(r)
  if not r[1] and (fatal() or r[2] == "not enough memory") then error(r[2], 0) end
  return unpack(r, 1, r.n)
end
pcall = function(f, ...) return pass(pack(raw_pcall(f, ...))) end
xpcall = function(f, h, ...) return pass(pack(raw_xpcall(f, h, ...))) end
"#;

/// `file:line` of the Lua code that called the running Rust function (skipping C frames
/// such as `pcall`, and the prelude's wrappers).
fn caller(lua: &Lua) -> String {
    for level in 1..32 {
        let frame = lua.inspect_stack(level, |d| {
            let src = d.source();
            let internal = src.what == "C" || src.source.as_deref() == Some(PRELUDE_NAME);
            (!internal).then(|| {
                format!(
                    "{}:{}",
                    src.short_src.as_deref().unwrap_or("?"),
                    d.current_line().unwrap_or(0)
                )
            })
        });
        match frame {
            None => break,
            Some(Some(at)) => return at,
            Some(None) => {}
        }
    }
    "?".into()
}

fn located(lua: &Lua, message: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("{}: {message}", caller(lua)))
}

fn display_value(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.to_string_lossy(),
        other => other.type_name().to_string(),
    }
}

impl Runtime {
    pub fn new(
        limits: Limits,
        config_dir: &Path,
        data_dir: &Path,
    ) -> Result<Runtime, RuntimeError> {
        let libs = StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::OS;
        let lua = Lua::new_with(libs, LuaOptions::new())?;
        let shared = Rc::new(Shared {
            limits,
            deadline: Cell::new(Instant::now() + limits.time),
            ticks: Cell::new(0),
            fatal: RefCell::new(None),
            last_location: RefCell::new(None),
            loading: Cell::new(None),
            registrations: RefCell::new(Vec::new()),
        });
        let rt = Runtime {
            lua,
            shared,
            names: Vec::new(),
        };
        rt.install(config_dir, data_dir)
            .map_err(RuntimeError::Setup)?;
        Ok(rt)
    }

    fn install(&self, config_dir: &Path, data_dir: &Path) -> mlua::Result<()> {
        let lua = &self.lua;
        let g = lua.globals();
        // No file, process or module access: hooks run inside the CLI, whose stdin and stdout
        // belong to the command. `load` would accept binary chunks, which can crash the VM.
        for name in ["dofile", "loadfile", "load", "require"] {
            g.raw_set(name, Value::Nil)?;
        }
        let os: Table = g.get("os")?;
        let safe_os = lua.create_table()?;
        for name in ["time", "date", "clock"] {
            safe_os.raw_set(name, os.get::<Value>(name)?)?;
        }
        g.raw_set("os", safe_os)?;

        json::install(lua)?;
        let contree = lua.create_table()?;
        contree.raw_set("version", env!("CARGO_PKG_VERSION"))?;
        contree.raw_set("config_dir", config_dir.to_string_lossy().as_ref())?;
        contree.raw_set("data_dir", data_dir.to_string_lossy().as_ref())?;

        let shared = self.shared.clone();
        let on = lua.create_function(move |lua, (event, handler): (String, Value)| {
            if shared.loading.get().is_none() {
                return Err(located(
                    lua,
                    "contree.on may only be called while the hook file loads",
                ));
            }
            let event = Event::parse(&event).ok_or_else(|| {
                located(
                    lua,
                    format!(
                        "unknown event '{event}' (expected {})",
                        Event::ALL.map(|e| e.name()).join(", ")
                    ),
                )
            })?;
            let (handler, location) = match handler {
                Value::Function(f) => {
                    let info = f.info();
                    let location = format!(
                        "{}:{}",
                        info.short_src.unwrap_or_default(),
                        info.line_defined.unwrap_or(0)
                    );
                    (Handler::Lua(f), location)
                }
                Value::UserData(ud) if ud.is::<RedactUserData>() => {
                    if event != Event::OnOutput {
                        return Err(located(
                            lua,
                            format!(
                                "contree.redact(...) handles on-output, not {}",
                                event.name()
                            ),
                        ));
                    }
                    let spec = ud.borrow::<RedactUserData>()?.0.clone();
                    (Handler::Redact(spec), caller(lua))
                }
                other => {
                    return Err(located(
                        lua,
                        format!(
                            "contree.on(\"{}\", handler): handler must be a function, not a {}",
                            event.name(),
                            other.type_name()
                        ),
                    ))
                }
            };
            shared.registrations.borrow_mut().push(Registration {
                event,
                handler,
                location,
            });
            Ok(())
        })?;
        contree.raw_set("on", on)?;

        let shared = self.shared.clone();
        let abort = lua.create_function(move |lua, reason: Option<Value>| {
            let reason = reason
                .map(|r| display_value(&r))
                .unwrap_or_else(|| "aborted".into());
            let message = format!("{}: {reason}", caller(lua));
            *shared.fatal.borrow_mut() = Some(Failure::Abort(message.clone()));
            Err::<(), _>(mlua::Error::runtime(message))
        })?;
        contree.raw_set("abort", abort)?;

        let log = lua.create_function(|lua, args: Variadic<Value>| {
            let text: Vec<String> = args.iter().map(display_value).collect();
            let at = caller(lua);
            let file = at.rsplit_once(':').map(|(f, _)| f).unwrap_or(&at);
            let name = Path::new(file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.to_string());
            crate::info!("hook {name}: {}", text.join("\t"));
            Ok(())
        })?;
        contree.raw_set("log", log.clone())?;
        g.raw_set("print", log)?;

        let env = lua.create_function(|_, name: String| Ok(std::env::var(name).ok()))?;
        contree.raw_set("env", env)?;

        let append = lua.create_function(|lua, (path, text): (String, mlua::LuaString)| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(&text.as_bytes()))
                .map_err(|e| located(lua, format!("contree.append('{path}'): {e}")))
        })?;
        contree.raw_set("append", append)?;

        let json_table = lua.create_table()?;
        let encode = lua.create_function(|lua, value: Value| {
            let json = json::to_json(&value, 0)
                .map_err(|e| located(lua, format!("contree.json.encode: {e}")))?;
            Ok(json.to_string())
        })?;
        let decode = lua.create_function(|lua, text: mlua::LuaString| {
            let json: serde_json::Value = serde_json::from_slice(&text.as_bytes())
                .map_err(|e| located(lua, format!("contree.json.decode: {e}")))?;
            json::from_json(lua, &json)
        })?;
        let array = lua.create_function(|lua, t: Option<Table>| {
            let t = match t {
                Some(t) => t,
                None => lua.create_table()?,
            };
            json::mark_array(lua, &t)?;
            Ok(t)
        })?;
        json_table.raw_set("array", array)?;
        json_table.raw_set("encode", encode)?;
        json_table.raw_set("decode", decode)?;
        contree.raw_set("json", json_table)?;

        let redact = lua.create_function(|lua, patterns: Value| {
            let mut spec = RedactSpec::default();
            let names = BUILTIN_PATTERNS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ");
            let add = |spec: &mut RedactSpec, v: Value| -> mlua::Result<()> {
                let name = display_value(&v);
                if !matches!(v, Value::String(_)) || !spec.add_builtin(&name) {
                    return Err(located(
                        lua,
                        format!("contree.redact: unknown pattern '{name}' (known: {names}; literal strings go in `literals`)"),
                    ));
                }
                Ok(())
            };
            match patterns {
                Value::String(_) => add(&mut spec, patterns)?,
                Value::Table(t) => {
                    for pair in t.pairs::<Value, Value>() {
                        let (k, v) = pair?;
                        match k {
                            Value::Integer(_) => add(&mut spec, v)?,
                            Value::String(s) if s.as_bytes().as_ref() == b"literals" => {
                                let Value::Table(list) = v else {
                                    return Err(located(lua, "contree.redact: `literals` must be a list of strings"));
                                };
                                for lit in list.sequence_values::<Value>() {
                                    match lit? {
                                        Value::String(s) if !s.as_bytes().is_empty() => {
                                            spec.literals.push(s.as_bytes().to_vec())
                                        }
                                        Value::String(_) => {}
                                        other => {
                                            return Err(located(
                                                lua,
                                                format!("contree.redact: a literal of type {}", other.type_name()),
                                            ))
                                        }
                                    }
                                }
                            }
                            other => {
                                return Err(located(
                                    lua,
                                    format!("contree.redact: unknown key '{}'", display_value(&other)),
                                ))
                            }
                        }
                    }
                }
                other => {
                    return Err(located(
                        lua,
                        format!("contree.redact: expected a list of pattern names, not a {}", other.type_name()),
                    ))
                }
            }
            lua.create_userdata(RedactUserData(spec))
        })?;
        contree.raw_set("redact", redact)?;
        g.raw_set("contree", contree)?;

        let shared = self.shared.clone();
        let fatal = lua.create_function(move |_, ()| Ok(shared.fatal.borrow().is_some()))?;
        lua.load(PRELUDE).set_name(PRELUDE_NAME).call::<()>(fatal)?;

        let shared = self.shared.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(TICK),
            move |_lua, debug| {
                let location = format!(
                    "{}:{}",
                    debug.source().short_src.unwrap_or_default(),
                    debug.current_line().unwrap_or(0)
                );
                let ticks = shared.ticks.get() + 1;
                shared.ticks.set(ticks);
                let over_count = ticks.saturating_mul(TICK as u64) > shared.limits.instructions;
                if shared.fatal.borrow().is_some() || over_count || Instant::now() > shared.deadline.get() {
                    let message = format!(
                        "{location}: over its budget ({} ms, {} instructions per call); set {TIME_ENV} / {INSTRUCTIONS_ENV} or [hooks] in config.toml to change it",
                        shared.limits.time.as_millis(),
                        shared.limits.instructions
                    );
                    let mut fatal = shared.fatal.borrow_mut();
                    if fatal.is_none() {
                        *fatal = Some(Failure::Error(message.clone()));
                    }
                    return Err(mlua::Error::runtime(message));
                }
                *shared.last_location.borrow_mut() = Some(location);
                Ok(VmState::Continue)
            },
        )?;
        self.lua.set_memory_limit(self.shared.limits.memory)?;
        Ok(())
    }

    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    /// Runs a hook file's top level (where it registers its handlers) under the budget.
    pub fn load_file(&mut self, index: usize, path: &Path, source: &[u8]) -> Result<(), Failure> {
        let name = format!("@{}", path.display());
        // Lua shortens long chunk names; learn the short form to print the full path.
        if let Ok(probe) = self
            .lua
            .load("return")
            .set_name(name.clone())
            .into_function()
        {
            if let Some(short) = probe.info().short_src {
                self.names.push((short, path.display().to_string()));
            }
        }
        self.shared.arm();
        let func = self
            .lua
            .load(source)
            .set_name(name)
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| self.failure(e, None))?;
        self.shared.loading.set(Some(index));
        self.shared.arm();
        let result = func.call::<()>(());
        self.shared.loading.set(None);
        result.map_err(|e| self.failure(e, Some(&func)))
    }

    pub fn take_registrations(&self) -> Vec<Registration> {
        std::mem::take(&mut *self.shared.registrations.borrow_mut())
    }

    /// Calls a handler under the budget.
    pub fn call(&self, func: &Function, arg: impl mlua::IntoLua) -> Result<Value, Failure> {
        self.shared.arm();
        let result = func.call::<Value>(arg);
        result.map_err(|e| self.failure(e, Some(func)))
    }

    /// Replaces Lua's shortened chunk names with full paths.
    pub fn expand(&self, message: &str) -> String {
        let mut text = message.to_string();
        for (short, full) in &self.names {
            if short != full && text.contains(short.as_str()) {
                text = text.replace(short.as_str(), full);
            }
        }
        text
    }

    /// `file:line` of a handler, with the full path.
    pub fn location(&self, short: &str) -> String {
        self.expand(short)
    }

    fn failure(&self, e: mlua::Error, func: Option<&Function>) -> Failure {
        if let Some(f) = self.shared.fatal.borrow_mut().take() {
            return match f {
                Failure::Abort(m) => Failure::Abort(self.expand(&m)),
                Failure::Error(m) => Failure::Error(self.expand(&m)),
            };
        }
        let fallback = || {
            self.shared.last_location.borrow().clone().or_else(|| {
                func.map(|f| {
                    let info = f.info();
                    format!(
                        "{}:{}",
                        info.short_src.unwrap_or_default(),
                        info.line_defined.unwrap_or(0)
                    )
                })
            })
        };
        let message = match self.describe(&e) {
            Described::Memory => {
                let _ = self.lua.gc_collect();
                format!(
                    "{}: out of memory (hooks may use {} MiB; set {MEMORY_ENV} or [hooks] in config.toml to change it)",
                    fallback().unwrap_or_else(|| "?".into()),
                    self.shared.limits.memory >> 20
                )
            }
            Described::Text(text) => {
                if self
                    .names
                    .iter()
                    .any(|(short, _)| text.starts_with(short.as_str()))
                {
                    text
                } else {
                    match fallback() {
                        Some(at) => format!("{at}: {text}"),
                        None => text,
                    }
                }
            }
        };
        Failure::Error(self.expand(&message))
    }

    fn describe(&self, e: &mlua::Error) -> Described {
        use mlua::Error as E;
        match e {
            E::MemoryError(_) => Described::Memory,
            E::RuntimeError(m) if m == "not enough memory" => Described::Memory,
            E::RuntimeError(m) => Described::Text(first_part(m)),
            E::SyntaxError { message, .. } => Described::Text(first_part(message)),
            E::CallbackError { traceback, cause } => match self.describe(cause) {
                Described::Text(t)
                    if !self
                        .names
                        .iter()
                        .any(|(short, _)| t.starts_with(short.as_str())) =>
                {
                    match traceback_location(traceback, &self.names) {
                        Some(at) => Described::Text(format!("{at}: {t}")),
                        None => Described::Text(t),
                    }
                }
                other => other,
            },
            E::BadArgument { to, pos, cause, .. } => match self.describe(cause) {
                Described::Text(t) => Described::Text(format!(
                    "bad argument #{pos} to '{}': {t}",
                    to.as_deref().unwrap_or("?")
                )),
                other => other,
            },
            E::WithContext { context, cause } => match self.describe(cause) {
                Described::Text(t) => Described::Text(format!("{context}: {t}")),
                other => other,
            },
            E::ExternalError(err) => Described::Text(first_part(&err.to_string())),
            other => Described::Text(first_part(&other.to_string())),
        }
    }
}

enum Described {
    Memory,
    Text(String),
}

/// The message without Lua's appended traceback.
fn first_part(message: &str) -> String {
    message
        .split("\nstack traceback:")
        .next()
        .unwrap_or(message)
        .trim_end()
        .to_string()
}

/// The first frame of a traceback that is in a hook file, as `file:line`.
fn traceback_location(traceback: &str, names: &[(String, String)]) -> Option<String> {
    traceback.lines().map(str::trim).find_map(|line| {
        names.iter().find_map(|(short, _)| {
            let rest = line.strip_prefix(short.as_str())?.strip_prefix(':')?;
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            (!digits.is_empty()).then(|| format!("{short}:{digits}"))
        })
    })
}
