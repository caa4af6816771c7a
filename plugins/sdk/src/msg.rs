//! The JSON messages that cross the boundary, shared by the host and the SDK so both
//! sides read and write one shape. `docs/plugins.md` documents them for other languages.

use serde::{Deserialize, Deserializer, Serialize};

/// What a plugin provides (the descriptor's `manifest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub formatters: Vec<FormatterDecl>,
    #[serde(default)]
    pub resolvers: Vec<ResolverDecl>,
}

/// One formatter: `-o NAME`. A bare string is accepted for `{"name": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormatterDecl {
    pub name: String,
    /// True when it writes output as chunks arrive (contree then also notices a closed
    /// reader, `| head`); false when it writes only at `finish`.
    #[serde(default)]
    pub live: bool,
}

/// One resolver: `--file SCHEME:REST[:/inst][:uUID][:gGID][:mMODE]`. A bare string is
/// accepted for `{"scheme": ...}` with one part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolverDecl {
    pub scheme: String,
    /// How many `:`-separated pieces REST is made of (`git:REV:PATH` has 2). Fields after
    /// them are the usual `/inst`, `uUID`, `gGID`, `mMODE`.
    pub parts: u32,
    /// How to write a spec, for error messages (`git:REV:PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
}

impl<'de> Deserialize<'de> for FormatterDecl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Name(String),
            Full {
                name: String,
                #[serde(default)]
                live: bool,
            },
        }
        Ok(match Form::deserialize(d)? {
            Form::Name(name) => FormatterDecl { name, live: false },
            Form::Full { name, live } => FormatterDecl { name, live },
        })
    }
}

impl<'de> Deserialize<'de> for ResolverDecl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Scheme(String),
            Full {
                scheme: String,
                #[serde(default = "one")]
                parts: u32,
                #[serde(default)]
                usage: Option<String>,
            },
        }
        fn one() -> u32 {
            1
        }
        Ok(match Form::deserialize(d)? {
            Form::Scheme(scheme) => ResolverDecl {
                scheme,
                parts: 1,
                usage: None,
            },
            Form::Full {
                scheme,
                parts,
                usage,
            } => ResolverDecl {
                scheme,
                parts,
                usage,
            },
        })
    }
}

/// What `formatter_begin` is given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The operation's UUID.
    pub op: String,
    /// The spawn request as sent (the /v1 `InstanceSpawnRequest`).
    #[serde(default)]
    pub request: serde_json::Value,
    /// `local` or the remote backend's name.
    #[serde(default)]
    pub backend: String,
}

/// What `formatter_finish` is given: the run's result record (the shape `-o json` prints),
/// with `stdout` and `stderr` left empty: the formatter saw the output as chunks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunResult {
    pub record: serde_json::Value,
}

impl RunResult {
    /// `SUCCESS`, `FAILED`, `CANCELLED`, ...
    pub fn status(&self) -> &str {
        self.record["status"].as_str().unwrap_or("FAILED")
    }
    /// The command's exit code; `None` when it never exited on its own terms (a failed
    /// operation). Negative: killed by that signal.
    pub fn exit_code(&self) -> Option<i64> {
        self.record["exit_code"].as_i64()
    }
    /// True when the timeout killed the command.
    pub fn timed_out(&self) -> bool {
        self.record["metadata"]["result"]["state"]["timed_out"]
            .as_bool()
            .unwrap_or(false)
    }
    /// The operation's error message, empty when none.
    pub fn error(&self) -> &str {
        self.record["error"].as_str().unwrap_or("")
    }
    /// Wall time of the operation, seconds.
    pub fn duration(&self) -> f64 {
        self.record["duration"].as_f64().unwrap_or(0.0)
    }
    /// The operation's UUID.
    pub fn op(&self) -> &str {
        self.record["uuid"].as_str().unwrap_or("")
    }
}

/// What `resolve` is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveRequest {
    pub scheme: String,
    /// Everything of the spec's SCHEME:REST after `SCHEME:` (the resolver's `parts`
    /// pieces, joined by `:`).
    pub rest: String,
    /// contree's working directory (absolute).
    pub cwd: String,
}

/// What `resolve` answers (in `reply.out`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// Where the files go when the spec has no `/inst`: like a local HOST path, relative
    /// to the run's working directory unless it starts with `/` (`git:HEAD:src` → `src`).
    pub name: String,
    pub files: Vec<ResolvedFile>,
}

/// One file to attach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedFile {
    /// Relative to what REST names, `/`-separated; `""` when REST names this one file.
    pub path: String,
    /// Read the content from this file on the host...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// ...or take it from here (base64 in JSON).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "base64_opt")]
    pub content: Option<Vec<u8>>,
    /// Owner and permission bits; unset ones come from `host_path`'s stat, else 0, 0 and
    /// 0644. The spec's own `uUID`/`gGID`/`mMODE` win over all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

impl ResolvedFile {
    /// A file whose content the plugin already holds.
    pub fn content(path: impl Into<String>, content: impl Into<Vec<u8>>) -> ResolvedFile {
        ResolvedFile {
            path: path.into(),
            content: Some(content.into()),
            ..ResolvedFile::default()
        }
    }
    /// A file to read from the host.
    pub fn host(path: impl Into<String>, host_path: impl Into<String>) -> ResolvedFile {
        ResolvedFile {
            path: path.into(),
            host_path: Some(host_path.into()),
            ..ResolvedFile::default()
        }
    }
    pub fn mode(mut self, mode: u32) -> ResolvedFile {
        self.mode = Some(mode);
        self
    }
    pub fn owner(mut self, uid: u32, gid: u32) -> ResolvedFile {
        self.uid = Some(uid);
        self.gid = Some(gid);
        self
    }
}

mod base64_opt {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("content is not base64: {e}"))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_entries_may_be_bare_names() {
        let m: Manifest =
            serde_json::from_str(r#"{"formatters":["a",{"name":"b","live":true}],"resolvers":["x",{"scheme":"git","parts":2}]}"#)
                .unwrap();
        assert_eq!(
            m.formatters[0],
            FormatterDecl {
                name: "a".into(),
                live: false
            }
        );
        assert!(m.formatters[1].live);
        assert_eq!(m.resolvers[0].parts, 1);
        assert_eq!(m.resolvers[1].parts, 2);
        let empty: Manifest = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Manifest::default());
    }

    #[test]
    fn content_travels_as_base64() {
        let f = ResolvedFile::content("a", b"\0hi".to_vec()).mode(0o755);
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(text, r#"{"path":"a","content":"AGhp","mode":493}"#);
        assert_eq!(serde_json::from_str::<ResolvedFile>(&text).unwrap(), f);
        assert!(serde_json::from_str::<ResolvedFile>(r#"{"path":"a","content":"!"}"#).is_err());
    }

    #[test]
    fn result_accessors_read_the_record() {
        let r: RunResult = serde_json::from_value(serde_json::json!({
            "uuid": "u", "status": "SUCCESS", "exit_code": 3, "duration": 1.5, "error": "",
            "metadata": {"result": {"state": {"exit_code": 3, "timed_out": true}}}
        }))
        .unwrap();
        assert_eq!(
            (r.status(), r.exit_code(), r.timed_out()),
            ("SUCCESS", Some(3), true)
        );
        assert_eq!((r.op(), r.duration(), r.error()), ("u", 1.5, ""));
    }
}
