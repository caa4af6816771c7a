//! `contree.json.encode/decode`: Lua values to and from JSON text, through serde_json.
//!
//! Tables whose keys are exactly 1..n become arrays, any other table an object with its keys
//! sorted (so audit lines are stable). An empty table is `{}` unless it is marked as a list:
//! the lists in hook payloads, `json.decode`'s arrays and `contree.json.array(t)` are, so
//! an empty `args` stays `[]`. Lua strings that are not UTF-8
//! are encoded lossily. Nesting deeper than [`MAX_DEPTH`] (or a cycle) is an error.

use mlua::{Lua, Table, Value};
use serde_json::{Map, Number, Value as Json};
use std::collections::BTreeMap;

pub const MAX_DEPTH: usize = 64;

/// Why a Lua value cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("nested deeper than {MAX_DEPTH} levels (a cycle?)")]
    TooDeep,
    #[error("cannot encode the number {0}")]
    Number(f64),
    #[error("cannot encode a {0}")]
    Type(&'static str),
    #[error("cannot encode a table key of type {0}")]
    Key(&'static str),
    #[error(transparent)]
    Lua(#[from] mlua::Error),
}

/// Registry name of the metatable that marks a table as a JSON array.
const ARRAY_MT: &str = "contree.json.array";

/// Creates the list marker; called once per Lua state.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    let mt = lua.create_table()?;
    mt.raw_set("__name", "array")?;
    lua.set_named_registry_value(ARRAY_MT, mt)
}

/// Marks `t` as a list (encoded as `[]` even when empty).
pub fn mark_array(lua: &Lua, t: &Table) -> mlua::Result<()> {
    if t.metatable().is_none() {
        if let Ok(mt) = lua.named_registry_value::<Table>(ARRAY_MT) {
            t.set_metatable(Some(mt))?;
        }
    }
    Ok(())
}

fn is_marked(t: &Table) -> bool {
    t.metatable()
        .and_then(|mt| mt.raw_get::<String>("__name").ok())
        .is_some_and(|n| n == "array")
}

/// A list table of strings, marked as such.
pub fn list<'a>(lua: &Lua, items: impl IntoIterator<Item = &'a str>) -> mlua::Result<Table> {
    let t = lua.create_sequence_from(items)?;
    mark_array(lua, &t)?;
    Ok(t)
}

pub fn to_json(value: &Value, depth: usize) -> Result<Json, JsonError> {
    if depth > MAX_DEPTH {
        return Err(JsonError::TooDeep);
    }
    Ok(match value {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::Number((*i).into()),
        Value::Number(n) => Json::Number(Number::from_f64(*n).ok_or(JsonError::Number(*n))?),
        Value::String(s) => Json::String(s.to_string_lossy()),
        Value::Table(t) => table_to_json(t, depth)?,
        other => return Err(JsonError::Type(other.type_name())),
    })
}

fn table_to_json(table: &Table, depth: usize) -> Result<Json, JsonError> {
    let len = table.raw_len();
    let mut pairs = Vec::new();
    for pair in table.clone().pairs::<Value, Value>() {
        pairs.push(pair?);
    }
    let is_array = (len > 0 || is_marked(table))
        && pairs.len() == len
        && pairs
            .iter()
            .all(|(k, _)| matches!(k, Value::Integer(i) if *i >= 1 && *i as usize <= len));
    if is_array {
        let mut items = vec![Json::Null; len];
        for (k, v) in &pairs {
            if let Value::Integer(i) = k {
                items[*i as usize - 1] = to_json(v, depth + 1)?;
            }
        }
        return Ok(Json::Array(items));
    }
    let mut keyed: BTreeMap<String, Json> = BTreeMap::new();
    for (k, v) in &pairs {
        let key = match k {
            Value::String(s) => s.to_string_lossy(),
            Value::Integer(i) => i.to_string(),
            Value::Number(n) => n.to_string(),
            other => return Err(JsonError::Key(other.type_name())),
        };
        keyed.insert(key, to_json(v, depth + 1)?);
    }
    Ok(Json::Object(keyed.into_iter().collect::<Map<_, _>>()))
}

pub fn from_json(lua: &Lua, json: &Json) -> mlua::Result<Value> {
    Ok(match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, from_json(lua, item)?)?;
            }
            mark_array(lua, &t)?;
            Value::Table(t)
        }
        Json::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, v) in map {
                t.raw_set(k.as_str(), from_json(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}
