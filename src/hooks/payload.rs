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
    pub fn from_lua(t: &Table, before: &RequestView) -> Result<RequestView, String> {
        check_keys(t, REQUEST_FIELDS, "")?;
        let stdin_length = opt_uint(t, "stdin_length")?;
        if stdin_length != before.stdin_length {
            return Err("a changed read-only field 'stdin_length'".into());
        }
        let mut files = BTreeMap::new();
        if let Some(ft) = opt_table(t, "files")? {
            for pair in ft.pairs::<Value, Value>() {
                let (k, v) = pair.map_err(|e| e.to_string())?;
                let path = match k {
                    Value::String(s) => utf8(&s, "a files key")?,
                    other => {
                        return Err(format!(
                            "a files key of type {} (expected an instance path)",
                            other.type_name()
                        ))
                    }
                };
                if !path.starts_with('/') {
                    return Err(format!("files['{path}']: the path must be absolute"));
                }
                let Value::Table(e) = v else {
                    return Err(format!("files['{path}'] that is not a table"));
                };
                let at = format!("files['{path}']");
                check_keys(&e, FILE_FIELDS, &at)?;
                let uuid = opt_string(&e, "uuid").map_err(|m| format!("{at}.{m}"))?;
                let sha256 = opt_string(&e, "sha256").map_err(|m| format!("{at}.{m}"))?;
                if uuid.is_none() && sha256.is_none() {
                    return Err(format!("{at} without uuid or sha256"));
                }
                let mode = opt_string(&e, "mode")
                    .map_err(|m| format!("{at}.{m}"))?
                    .unwrap_or_else(|| "0644".into());
                let bits = parse_octal(&mode).ok_or_else(|| {
                    format!("{at}.mode '{mode}' (expected octal text like \"0644\")")
                })?;
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
                        uid: opt_u32(&e, "uid")
                            .map_err(|m| format!("{at}.{m}"))?
                            .unwrap_or(0),
                        gid: opt_u32(&e, "gid")
                            .map_err(|m| format!("{at}.{m}"))?
                            .unwrap_or(0),
                        mode: attach::mode_string(bits),
                    },
                );
            }
        }
        let mut env = BTreeMap::new();
        if let Some(et) = opt_table(t, "env")? {
            for pair in et.pairs::<Value, Value>() {
                let (k, v) = pair.map_err(|e| e.to_string())?;
                let key = match k {
                    Value::String(s) => utf8(&s, "an env name")?,
                    other => return Err(format!("an env name of type {}", other.type_name())),
                };
                let value = match v {
                    Value::String(s) => utf8(&s, &format!("env.{key}"))?,
                    Value::Integer(i) => i.to_string(),
                    Value::Number(n) => n.to_string(),
                    other => {
                        return Err(format!(
                            "env.{key} of type {} (expected a string)",
                            other.type_name()
                        ))
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
            cwd: opt_string(t, "cwd")?,
            hostname: opt_string(t, "hostname")?.unwrap_or_else(crate::wire::default_hostname),
            timeout: opt_uint(t, "timeout")?,
            truncate: opt_uint(t, "truncate")?,
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
    ) -> Result<Plan, String> {
        check_keys(t, PLAN_FIELDS, "")?;
        let mut files = Vec::new();
        for (i, v) in sequence(t, "files")?.into_iter().enumerate() {
            let at = format!("files[{}]", i + 1);
            let spec = match v {
                Value::String(s) => {
                    let text = utf8(&s, &at)?;
                    parse(&text, warnings).map_err(|e| format!("{at}: {e}"))?
                }
                Value::Table(e) => {
                    check_keys(&e, SPEC_FIELDS, &at)?;
                    let host = opt_string(&e, "host")
                        .map_err(|m| format!("{at}.{m}"))?
                        .filter(|h| !h.is_empty())
                        .ok_or_else(|| format!("{at} without a host path"))?;
                    let instance = opt_string(&e, "instance").map_err(|m| format!("{at}.{m}"))?;
                    if let Some(inst) = &instance {
                        if !inst.starts_with('/') {
                            return Err(format!(
                                "{at}.instance '{inst}' (expected an absolute path)"
                            ));
                        }
                    }
                    let mode = match opt_string(&e, "mode").map_err(|m| format!("{at}.{m}"))? {
                        None => None,
                        Some(m) => Some(parse_octal(&m).ok_or_else(|| {
                            format!("{at}.mode '{m}' (expected octal text like \"0644\")")
                        })?),
                    };
                    FileSpec {
                        host,
                        instance,
                        uid: opt_u32(&e, "uid").map_err(|m| format!("{at}.{m}"))?,
                        gid: opt_u32(&e, "gid").map_err(|m| format!("{at}.{m}"))?,
                        mode,
                    }
                }
                other => {
                    return Err(format!(
                        "{at} of type {} (expected a table or a spec string)",
                        other.type_name()
                    ))
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

fn utf8(s: &mlua::LuaString, what: &str) -> Result<String, String> {
    s.to_str()
        .map(|s| s.to_string())
        .map_err(|_| format!("{what} that is not valid UTF-8"))
}

/// Every key of `t` must be one of `allowed`.
fn check_keys(t: &Table, allowed: &[&str], at: &str) -> Result<(), String> {
    let prefix = if at.is_empty() {
        String::new()
    } else {
        format!("{at}.")
    };
    for pair in t.pairs::<Value, Value>() {
        let (k, _) = pair.map_err(|e| e.to_string())?;
        match &k {
            Value::String(s) => {
                let name = s.to_string_lossy();
                if !allowed.contains(&name.as_str()) {
                    return Err(format!(
                        "unknown field '{prefix}{name}' (known: {})",
                        allowed.join(", ")
                    ));
                }
            }
            other => {
                return Err(format!(
                    "a key of type {} in {} (expected field names)",
                    other.type_name(),
                    if at.is_empty() { "the table" } else { at }
                ))
            }
        }
    }
    Ok(())
}

fn type_err(key: &str, v: &Value, expected: &str) -> String {
    format!("{key} of type {} (expected {expected})", v.type_name())
}

fn req_string(t: &Table, key: &str) -> Result<String, String> {
    opt_string(t, key)?.ok_or_else(|| format!("no '{key}' (it is required)"))
}

fn opt_string(t: &Table, key: &str) -> Result<Option<String>, String> {
    match t.raw_get::<Value>(key).map_err(|e| e.to_string())? {
        Value::Nil => Ok(None),
        Value::String(s) => utf8(&s, key).map(Some),
        other => Err(type_err(key, &other, "a string")),
    }
}

fn opt_bool(t: &Table, key: &str) -> Result<Option<bool>, String> {
    match t.raw_get::<Value>(key).map_err(|e| e.to_string())? {
        Value::Nil => Ok(None),
        Value::Boolean(b) => Ok(Some(b)),
        other => Err(type_err(key, &other, "a boolean")),
    }
}

fn opt_uint(t: &Table, key: &str) -> Result<Option<u64>, String> {
    match t.raw_get::<Value>(key).map_err(|e| e.to_string())? {
        Value::Nil => Ok(None),
        Value::Integer(i) if i >= 0 => Ok(Some(i as u64)),
        Value::Number(n) if n >= 0.0 && n.fract() == 0.0 && n < 9.0e15 => Ok(Some(n as u64)),
        other => Err(type_err(key, &other, "a whole number >= 0")),
    }
}

fn opt_u32(t: &Table, key: &str) -> Result<Option<u32>, String> {
    match opt_uint(t, key)? {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| format!("{key} {n} (too large for an id)")),
    }
}

fn opt_table(t: &Table, key: &str) -> Result<Option<Table>, String> {
    match t.raw_get::<Value>(key).map_err(|e| e.to_string())? {
        Value::Nil => Ok(None),
        Value::Table(t) => Ok(Some(t)),
        other => Err(type_err(key, &other, "a table")),
    }
}

/// The values of a list field (nil = empty); any non-sequence key is an error.
fn sequence(t: &Table, key: &str) -> Result<Vec<Value>, String> {
    let Some(list) = opt_table(t, key)? else {
        return Ok(Vec::new());
    };
    let len = list.raw_len();
    let mut count = 0;
    for pair in list.pairs::<Value, Value>() {
        let (k, _) = pair.map_err(|e| e.to_string())?;
        match k {
            Value::Integer(i) if i >= 1 && i as usize <= len => count += 1,
            _ => return Err(format!("{key} that is not a list (a key {k:?})")),
        }
    }
    if count != len {
        return Err(format!("{key} with holes (not a list)"));
    }
    (1..=len)
        .map(|i| list.raw_get::<Value>(i).map_err(|e| e.to_string()))
        .collect()
}

fn opt_string_list(t: &Table, key: &str) -> Result<Vec<String>, String> {
    sequence(t, key)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => utf8(&s, &format!("{key}[{}]", i + 1)),
            other => Err(type_err(&format!("{key}[{}]", i + 1), &other, "a string")),
        })
        .collect()
}
