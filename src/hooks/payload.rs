//! The tables hooks see and return, and the strict way back: every field a handler returns
//! is checked (type, range), an unknown field is an error naming it, and read-only fields
//! may not change. Nothing here runs Lua code; it only builds and reads tables.

use super::json;
use crate::attach::{self, FileSpec};
use crate::wire::{FileRef, Networking, SpawnRequest};
use mlua::{Lua, Table, Value};
use std::collections::BTreeMap;

/// A `FileRef.uuid` of this form stands for content that is hashed but not uploaded yet:
/// files are uploaded after pre-spawn, so a hook that aborts leaves nothing behind.
pub const PENDING_UPLOAD: &str = "sha256:";

/// Parses a `--file` spec given as text (with its warnings), as the command line would.
pub type SpecParser<'a> =
    dyn Fn(&str, &mut Vec<String>) -> Result<FileSpec, attach::AttachError> + 'a;

/// What is wrong with a table a handler returned. `In` puts the place in the table in
/// front (`files['/x'].mode ...`).
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(transparent)]
    Lua(#[from] mlua::Error),
    #[error("a changed read-only field '{0}'")]
    ReadOnly(&'static str),
    #[error("unknown field '{prefix}{name}' (known: {known})")]
    UnknownField {
        prefix: String,
        name: String,
        known: String,
    },
    #[error("a key of type {found} in {place} (expected field names)")]
    KeyType { found: &'static str, place: String },
    #[error("{key} of type {found} (expected {expected})")]
    Type {
        key: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("{0} that is not valid UTF-8")]
    NotUtf8(String),
    #[error("no '{0}' (it is required)")]
    Required(&'static str),
    #[error("{key} {value} (too large for an id)")]
    IdTooLarge { key: String, value: u64 },
    /// A list field with a key that is not 1..n (the key as Lua shows it).
    #[error("{key} that is not a list (a key {found})")]
    NotList { key: String, found: String },
    #[error("{0} with holes (not a list)")]
    Holes(String),
    #[error("a files key of type {0} (expected an instance path)")]
    FilesKey(&'static str),
    #[error("files['{0}']: the path must be absolute")]
    RelativeFile(String),
    #[error("files['{0}'] that is not a table")]
    FileNotTable(String),
    #[error("{0} without uuid or sha256")]
    NoContent(String),
    #[error("{at}.mode '{mode}' (expected octal text like \"0644\")")]
    Mode { at: String, mode: String },
    #[error("an env name of type {0}")]
    EnvName(&'static str),
    #[error("env.{key} of type {found} (expected a string)")]
    EnvValue { key: String, found: &'static str },
    #[error("{0} without a host path")]
    NoHost(String),
    #[error("{at}.instance '{instance}' (expected an absolute path)")]
    RelativeInstance { at: String, instance: String },
    #[error("{at} of type {found} (expected a table or a spec string)")]
    SpecType { at: String, found: &'static str },
    /// A spec string that does not parse as `--file` would.
    #[error("{at}: {source}")]
    Spec {
        at: String,
        #[source]
        source: Box<attach::AttachError>,
    },
    /// A pending upload that is not one of this run's attachments (see `Hooks::pre_spawn`).
    #[error(
        "files['{0}'] with a sha256 that no attachment of this run has (add files in pre-attach)"
    )]
    UnknownContent(String),
    #[error("{at}.{source}")]
    In {
        at: String,
        #[source]
        source: Box<PayloadError>,
    },
}

impl PayloadError {
    /// This error, at `at` in the table (nothing when `at` is empty: the top).
    fn within(self, at: &str) -> PayloadError {
        if at.is_empty() {
            self
        } else {
            PayloadError::In {
                at: at.to_string(),
                source: Box::new(self),
            }
        }
    }
}

/// What pre-attach sees: the `--file` specs and the extra excludes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub files: Vec<FileSpec>,
    pub excludes: Vec<String>,
}

/// One entry of the request's `files` map as hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileView {
    /// None until uploaded (after pre-spawn).
    pub uuid: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub uid: u32,
    pub gid: u32,
    pub mode: String,
}

/// What pre-spawn sees and may edit: the spawn request in plain fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestView {
    pub image: String,
    pub command: String,
    pub args: Vec<String>,
    pub shell: bool,
    /// The environment the command gets (session env plus `-e`).
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub hostname: String,
    /// None when no `-t` was given (the default applies).
    pub timeout: Option<u64>,
    pub truncate: Option<u64>,
    pub disposable: bool,
    pub network: bool,
    pub files: BTreeMap<String, FileView>,
    /// Bytes of stdin carried in the request (interpreter mode); None when the command reads
    /// the CLI's own stdin as a stream. Read-only.
    pub stdin_length: Option<u64>,
}

pub const REQUEST_FIELDS: &[&str] = &[
    "image",
    "command",
    "args",
    "shell",
    "env",
    "cwd",
    "hostname",
    "timeout",
    "truncate",
    "disposable",
    "network",
    "files",
    "stdin_length",
];
const FILE_FIELDS: &[&str] = &["uuid", "sha256", "size", "uid", "gid", "mode"];
const SPEC_FIELDS: &[&str] = &["host", "instance", "uid", "gid", "mode"];
const PLAN_FIELDS: &[&str] = &["files", "excludes"];

impl RequestView {
    /// `env` is the merged environment; `sizes` maps sha256 to byte size for attachments
    /// hashed in this run; `timeout_given` is whether `-t` was on the command line.
    pub fn new(
        req: &SpawnRequest,
        env: &BTreeMap<String, String>,
        sizes: &BTreeMap<String, u64>,
        timeout_given: bool,
    ) -> RequestView {
        let files = req
            .files
            .iter()
            .flatten()
            .map(|(path, f)| {
                let (uuid, sha256) = match f.uuid.strip_prefix(PENDING_UPLOAD) {
                    Some(sha) => (None, Some(sha.to_string())),
                    None => (Some(f.uuid.clone()), None),
                };
                let size = sha256.as_ref().and_then(|s| sizes.get(s).copied());
                let view = FileView {
                    uuid,
                    sha256,
                    size,
                    uid: f.uid,
                    gid: f.gid,
                    mode: f.mode.clone(),
                };
                (path.clone(), view)
            })
            .collect();
        RequestView {
            image: req.image.clone(),
            command: req.command.clone(),
            args: req.args.clone().unwrap_or_default(),
            shell: req.shell,
            env: env.clone(),
            cwd: req.cwd.clone(),
            hostname: req.hostname.clone(),
            timeout: if timeout_given { req.timeout } else { None },
            truncate: req.truncate_output_at,
            disposable: req.disposable,
            network: req.network_enabled(),
            files,
            stdin_length: req
                .stdin
                .as_ref()
                .map(|s| s.bytes().map(|b| b.len() as u64).unwrap_or(0)),
        }
    }

    /// Writes the edits back. The request's `env` is only replaced when it changed, so an
    /// untouched environment stays as the pipeline built it (it may be left out on purpose).
    pub fn apply(
        &self,
        before: &RequestView,
        req: &mut SpawnRequest,
        env: &mut BTreeMap<String, String>,
        default_timeout: u64,
    ) {
        req.image = self.image.clone();
        req.command = self.command.clone();
        req.args = (!self.args.is_empty()).then(|| self.args.clone());
        req.shell = self.shell;
        if self.env != before.env {
            req.env = Some(self.env.clone());
            *env = self.env.clone();
        }
        req.cwd = self.cwd.clone();
        req.hostname = self.hostname.clone();
        if self.timeout != before.timeout {
            req.timeout = Some(self.timeout.unwrap_or(default_timeout));
        }
        req.truncate_output_at = self.truncate;
        req.disposable = self.disposable;
        if self.network != before.network {
            req.networking = (!self.network).then_some(Networking { enabled: false });
        }
        let files: BTreeMap<String, FileRef> = self
            .files
            .iter()
            .map(|(path, f)| {
                let uuid = match (&f.uuid, &f.sha256) {
                    (Some(uuid), _) => uuid.clone(),
                    (None, Some(sha)) => format!("{PENDING_UPLOAD}{sha}"),
                    (None, None) => String::new(), // rejected by from_lua
                };
                let file = FileRef {
                    uuid,
                    uid: f.uid,
                    gid: f.gid,
                    mode: f.mode.clone(),
                };
                (path.clone(), file)
            })
            .collect();
        req.files = (!files.is_empty()).then_some(files);
    }

    pub fn to_lua(&self, lua: &Lua) -> mlua::Result<Table> {
        let t = lua.create_table_with_capacity(0, REQUEST_FIELDS.len())?;
        t.raw_set("image", self.image.as_str())?;
        t.raw_set("command", self.command.as_str())?;
        t.raw_set(
            "args",
            json::list(lua, self.args.iter().map(String::as_str))?,
        )?;
        t.raw_set("shell", self.shell)?;
        let env = lua.create_table_with_capacity(0, self.env.len())?;
        for (k, v) in &self.env {
            env.raw_set(k.as_str(), v.as_str())?;
        }
        t.raw_set("env", env)?;
        t.raw_set("cwd", self.cwd.as_deref())?;
        t.raw_set("hostname", self.hostname.as_str())?;
        t.raw_set("timeout", self.timeout)?;
        t.raw_set("truncate", self.truncate)?;
        t.raw_set("disposable", self.disposable)?;
        t.raw_set("network", self.network)?;
        let files = lua.create_table_with_capacity(0, self.files.len())?;
        for (path, f) in &self.files {
            let e = lua.create_table_with_capacity(0, FILE_FIELDS.len())?;
            e.raw_set("uuid", f.uuid.as_deref())?;
            e.raw_set("sha256", f.sha256.as_deref())?;
            e.raw_set("size", f.size)?;
            e.raw_set("uid", f.uid)?;
            e.raw_set("gid", f.gid)?;
            e.raw_set("mode", f.mode.as_str())?;
            files.raw_set(path.as_str(), e)?;
        }
        t.raw_set("files", files)?;
        t.raw_set("stdin_length", self.stdin_length)?;
        Ok(t)
    }

    /// Reads a returned request; `before` is what the handler was given (for read-only fields).
    pub fn from_lua(t: &Table, before: &RequestView) -> Result<RequestView, PayloadError> {
        check_keys(t, REQUEST_FIELDS, "")?;
        let stdin_length = opt_uint(t, "", "stdin_length")?;
        if stdin_length != before.stdin_length {
            return Err(PayloadError::ReadOnly("stdin_length"));
        }
        let mut files = BTreeMap::new();
        if let Some(ft) = opt_table(t, "files")? {
            for pair in ft.pairs::<Value, Value>() {
                let (k, v) = pair?;
                let path = string_key(k, "a files key", PayloadError::FilesKey)?;
                if !path.starts_with('/') {
                    return Err(PayloadError::RelativeFile(path));
                }
                let Value::Table(e) = v else {
                    return Err(PayloadError::FileNotTable(path));
                };
                let at = format!("files['{path}']");
                check_keys(&e, FILE_FIELDS, &at)?;
                let uuid = opt_string(&e, &at, "uuid")?;
                let sha256 = opt_string(&e, &at, "sha256")?;
                if uuid.is_none() && sha256.is_none() {
                    return Err(PayloadError::NoContent(at));
                }
                let mode = opt_string(&e, &at, "mode")?.unwrap_or_else(|| "0644".into());
                let Some(bits) = parse_octal(&mode) else {
                    return Err(PayloadError::Mode { at, mode });
                };
                files.insert(
                    path,
                    FileView {
                        size: sha256.as_ref().and_then(|s| {
                            before
                                .files
                                .values()
                                .find(|f| f.sha256.as_ref() == Some(s))
                                .and_then(|f| f.size)
                        }),
                        uuid,
                        sha256,
                        uid: opt_u32(&e, &at, "uid")?.unwrap_or(0),
                        gid: opt_u32(&e, &at, "gid")?.unwrap_or(0),
                        mode: attach::mode_string(bits),
                    },
                );
            }
        }
        let mut env = BTreeMap::new();
        if let Some(et) = opt_table(t, "env")? {
            for pair in et.pairs::<Value, Value>() {
                let (k, v) = pair?;
                let key = string_key(k, "an env name", PayloadError::EnvName)?;
                let value = match v {
                    Value::String(s) => utf8(&s, &format!("env.{key}"))?,
                    Value::Integer(i) => i.to_string(),
                    Value::Number(n) => n.to_string(),
                    other => {
                        let found = other.type_name();
                        return Err(PayloadError::EnvValue { key, found });
                    }
                };
                env.insert(key, value);
            }
        }
        Ok(RequestView {
            image: req_string(t, "image")?,
            command: req_string(t, "command")?,
            args: opt_string_list(t, "args")?,
            shell: opt_bool(t, "shell")?.unwrap_or(false),
            env,
            cwd: opt_string(t, "", "cwd")?,
            hostname: opt_string(t, "", "hostname")?.unwrap_or_else(crate::wire::default_hostname),
            timeout: opt_uint(t, "", "timeout")?,
            truncate: opt_uint(t, "", "truncate")?,
            disposable: opt_bool(t, "disposable")?.unwrap_or(false),
            network: opt_bool(t, "network")?.unwrap_or(true),
            files,
            stdin_length,
        })
    }
}

impl Plan {
    pub fn to_lua(&self, lua: &Lua) -> mlua::Result<Table> {
        let t = lua.create_table_with_capacity(0, 2)?;
        let files = lua.create_table_with_capacity(self.files.len(), 0)?;
        json::mark_array(lua, &files)?;
        for (i, spec) in self.files.iter().enumerate() {
            let e = lua.create_table_with_capacity(0, SPEC_FIELDS.len())?;
            e.raw_set("host", spec.host.as_str())?;
            e.raw_set("instance", spec.instance.as_deref())?;
            e.raw_set("uid", spec.uid)?;
            e.raw_set("gid", spec.gid)?;
            e.raw_set("mode", spec.mode.map(attach::mode_string))?;
            files.raw_set(i + 1, e)?;
        }
        t.raw_set("files", files)?;
        t.raw_set(
            "excludes",
            json::list(lua, self.excludes.iter().map(String::as_str))?,
        )?;
        Ok(t)
    }

    /// Reads a returned plan. A `files` entry may be a table like the ones given or a spec
    /// string in the `--file` grammar; `warnings` collects what parsing a spec says.
    pub fn from_lua(
        t: &Table,
        parse: &SpecParser<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<Plan, PayloadError> {
        check_keys(t, PLAN_FIELDS, "")?;
        let mut files = Vec::new();
        for (i, v) in sequence(t, "files")?.into_iter().enumerate() {
            let at = format!("files[{}]", i + 1);
            let spec = match v {
                Value::String(s) => {
                    let text = utf8(&s, &at)?;
                    match parse(&text, warnings) {
                        Ok(spec) => spec,
                        Err(e) => {
                            let source = Box::new(e);
                            return Err(PayloadError::Spec { at, source });
                        }
                    }
                }
                Value::Table(e) => {
                    check_keys(&e, SPEC_FIELDS, &at)?;
                    let Some(host) = opt_string(&e, &at, "host")?.filter(|h| !h.is_empty()) else {
                        return Err(PayloadError::NoHost(at));
                    };
                    let instance = opt_string(&e, &at, "instance")?;
                    if let Some(inst) = &instance {
                        if !inst.starts_with('/') {
                            let instance = inst.clone();
                            return Err(PayloadError::RelativeInstance { at, instance });
                        }
                    }
                    let mode = match opt_string(&e, &at, "mode")? {
                        None => None,
                        Some(mode) => match parse_octal(&mode) {
                            Some(bits) => Some(bits),
                            None => return Err(PayloadError::Mode { at, mode }),
                        },
                    };
                    FileSpec {
                        host,
                        instance,
                        uid: opt_u32(&e, &at, "uid")?,
                        gid: opt_u32(&e, &at, "gid")?,
                        mode,
                    }
                }
                other => {
                    let found = other.type_name();
                    return Err(PayloadError::SpecType { at, found });
                }
            };
            files.push(spec);
        }
        Ok(Plan {
            files,
            excludes: opt_string_list(t, "excludes")?,
        })
    }
}

fn parse_octal(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

fn utf8(s: &mlua::LuaString, what: &str) -> Result<String, PayloadError> {
    s.to_str()
        .map(|s| s.to_string())
        .map_err(|_| PayloadError::NotUtf8(what.to_string()))
}

/// A table key that must be a UTF-8 string (`what` names it); `wrong` is the error for a
/// key of another type.
fn string_key(
    k: Value,
    what: &str,
    wrong: fn(&'static str) -> PayloadError,
) -> Result<String, PayloadError> {
    match k {
        Value::String(s) => utf8(&s, what),
        other => Err(wrong(other.type_name())),
    }
}

/// Every key of `t` must be one of `allowed`.
fn check_keys(t: &Table, allowed: &[&str], at: &str) -> Result<(), PayloadError> {
    let prefix = if at.is_empty() {
        String::new()
    } else {
        format!("{at}.")
    };
    for pair in t.pairs::<Value, Value>() {
        let (k, _) = pair?;
        match &k {
            Value::String(s) => {
                let name = s.to_string_lossy();
                if !allowed.contains(&name.as_str()) {
                    return Err(PayloadError::UnknownField {
                        prefix,
                        name,
                        known: allowed.join(", "),
                    });
                }
            }
            other => {
                return Err(PayloadError::KeyType {
                    found: other.type_name(),
                    place: if at.is_empty() { "the table" } else { at }.to_string(),
                })
            }
        }
    }
    Ok(())
}

fn type_err(key: &str, v: &Value, expected: &'static str) -> PayloadError {
    PayloadError::Type {
        key: key.to_string(),
        found: v.type_name(),
        expected,
    }
}

fn req_string(t: &Table, key: &'static str) -> Result<String, PayloadError> {
    opt_string(t, "", key)?.ok_or(PayloadError::Required(key))
}

/// A string field of `t`, which is at `at` in the returned table (see `PayloadError::In`).
fn opt_string(t: &Table, at: &str, key: &str) -> Result<Option<String>, PayloadError> {
    let value = match t.raw_get::<Value>(key) {
        Ok(Value::Nil) => Ok(None),
        Ok(Value::String(s)) => utf8(&s, key).map(Some),
        Ok(other) => Err(type_err(key, &other, "a string")),
        Err(e) => Err(e.into()),
    };
    value.map_err(|e| e.within(at))
}

fn opt_bool(t: &Table, key: &str) -> Result<Option<bool>, PayloadError> {
    match t.raw_get::<Value>(key)? {
        Value::Nil => Ok(None),
        Value::Boolean(b) => Ok(Some(b)),
        other => Err(type_err(key, &other, "a boolean")),
    }
}

fn opt_uint(t: &Table, at: &str, key: &str) -> Result<Option<u64>, PayloadError> {
    let value = match t.raw_get::<Value>(key) {
        Ok(Value::Nil) => Ok(None),
        Ok(Value::Integer(i)) if i >= 0 => Ok(Some(i as u64)),
        Ok(Value::Number(n)) if n >= 0.0 && n.fract() == 0.0 && n < 9.0e15 => Ok(Some(n as u64)),
        Ok(other) => Err(type_err(key, &other, "a whole number >= 0")),
        Err(e) => Err(e.into()),
    };
    value.map_err(|e| e.within(at))
}

fn opt_u32(t: &Table, at: &str, key: &str) -> Result<Option<u32>, PayloadError> {
    match opt_uint(t, at, key)? {
        None => Ok(None),
        Some(value) => match u32::try_from(value) {
            Ok(id) => Ok(Some(id)),
            Err(_) => Err(PayloadError::IdTooLarge {
                key: key.to_string(),
                value,
            }
            .within(at)),
        },
    }
}

fn opt_table(t: &Table, key: &str) -> Result<Option<Table>, PayloadError> {
    match t.raw_get::<Value>(key)? {
        Value::Nil => Ok(None),
        Value::Table(t) => Ok(Some(t)),
        other => Err(type_err(key, &other, "a table")),
    }
}

/// The values of a list field (nil = empty); any non-sequence key is an error.
fn sequence(t: &Table, key: &str) -> Result<Vec<Value>, PayloadError> {
    let Some(list) = opt_table(t, key)? else {
        return Ok(Vec::new());
    };
    let len = list.raw_len();
    let mut count = 0;
    for pair in list.pairs::<Value, Value>() {
        let (k, _) = pair?;
        match k {
            Value::Integer(i) if i >= 1 && i as usize <= len => count += 1,
            _ => {
                return Err(PayloadError::NotList {
                    key: key.to_string(),
                    found: format!("{k:?}"),
                })
            }
        }
    }
    if count != len {
        return Err(PayloadError::Holes(key.to_string()));
    }
    (1..=len).map(|i| Ok(list.raw_get::<Value>(i)?)).collect()
}

fn opt_string_list(t: &Table, key: &str) -> Result<Vec<String>, PayloadError> {
    sequence(t, key)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => utf8(&s, &format!("{key}[{}]", i + 1)),
            other => Err(type_err(&format!("{key}[{}]", i + 1), &other, "a string")),
        })
        .collect()
}
