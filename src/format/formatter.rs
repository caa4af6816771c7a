//! Run output formatters: how a run's output and result reach the user.
//!
//! A formatter sees the run as a stream: `begin` (what is about to run), `chunk` (each
//! piece of output, in order, after any hook has filtered it) and `finish` (the result),
//! and answers each with bytes to write. The built-in `default`, `json`, `json-pretty`,
//! `plain` and `toml` implement this trait, and so do plugin formatters: whatever the built-ins can do, a
//! plugin can too.

use crate::format::{Format, Record};
use serde_json::{json, Value};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Bytes a formatter wants written, per stream of ours.
#[derive(Debug, Default)]
pub struct Emit<'a> {
    pub stdout: Cow<'a, [u8]>,
    pub stderr: Cow<'a, [u8]>,
}

impl<'a> Emit<'a> {
    pub fn none() -> Emit<'a> {
        Emit::default()
    }
    pub fn stdout(bytes: impl Into<Cow<'a, [u8]>>) -> Emit<'a> {
        Emit {
            stdout: bytes.into(),
            stderr: Cow::Borrowed(&[]),
        }
    }
    pub fn stderr(bytes: impl Into<Cow<'a, [u8]>>) -> Emit<'a> {
        Emit {
            stdout: Cow::Borrowed(&[]),
            stderr: bytes.into(),
        }
    }
}

/// What `begin` is told.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub op: String,
    /// The spawn request as sent (the /v1 InstanceSpawnRequest).
    pub request: Value,
    pub backend: String,
}

/// What `finish` is told: the result record in the official shape, with `stdout` and
/// `stderr` left empty for the formatter to fill from the chunks it saw (a formatter that
/// does not keep output should not have to carry it).
#[derive(Debug, Clone)]
pub struct RunResult {
    pub record: Record,
}

pub trait Formatter {
    /// True when chunks are written as they arrive (the pipeline then also notices a
    /// closed reader, `| head`).
    fn live(&self) -> bool {
        false
    }
    /// True when chunks go out unchanged, stdout to stdout and stderr to stderr: the run
    /// may then let the output bypass the formatter (see `Backend::spawn_followed`).
    fn passes_through(&self) -> bool {
        false
    }
    fn begin(&mut self, _info: &RunInfo) -> Emit<'static> {
        Emit::none()
    }
    fn chunk<'a>(&mut self, stream: Stream, bytes: &'a [u8]) -> Emit<'a>;
    fn finish(&mut self, result: &RunResult) -> Emit<'static>;
    /// Set once the formatter could not do its job (a plugin formatter's error or panic):
    /// its output is incomplete, and `run` reports this instead of the command's exit code.
    fn error(&self) -> Option<String> {
        None
    }
}

/// The built-in formatters, by name.
pub fn builtin(name: &str) -> Option<Box<dyn Formatter>> {
    match name {
        "default" => Some(Box::new(Default)),
        "json" => Some(Box::new(Json::new(Format::Json))),
        "json-pretty" => Some(Box::new(Json::new(Format::JsonPretty))),
        "plain" => Some(Box::new(Json::new(Format::Plain))),
        "toml" => Some(Box::new(Json::new(Format::Toml))),
        _ => None,
    }
}

pub const BUILTIN_NAMES: &[&str] = &["default", "json", "json-pretty", "plain", "toml"];

/// The process's bytes, as they come, on the matching stream: nothing added, nothing
/// sanitised.
pub struct Default;

impl Formatter for Default {
    fn live(&self) -> bool {
        true
    }
    fn passes_through(&self) -> bool {
        true
    }
    fn chunk<'a>(&mut self, stream: Stream, bytes: &'a [u8]) -> Emit<'a> {
        match stream {
            Stream::Stdout => Emit::stdout(bytes),
            Stream::Stderr => Emit::stderr(bytes),
        }
    }
    fn finish(&mut self, _result: &RunResult) -> Emit<'static> {
        Emit::none()
    }
}

/// One record at the end, in a record format: a JSON line, a one-element pretty JSON list,
/// a `plain` block or a `[[results]]` TOML table.
pub struct Json {
    format: Format,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Json {
    pub fn new(format: Format) -> Json {
        Json {
            format,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }
}

/// Fills a result record's output fields from the bytes seen.
pub fn fill_output(record: &mut Record, stdout: &[u8], stderr: &[u8]) {
    let enc = |b: &[u8]| {
        let (value, encoding) = crate::wire::encode_bytes(b);
        json!({"value": value, "encoding": encoding})
    };
    if let Some(result) = record
        .get_mut("metadata")
        .and_then(|m| m.get_mut("result"))
        .and_then(|r| r.as_object_mut())
    {
        result.insert("stdout".into(), enc(stdout));
        result.insert("stderr".into(), enc(stderr));
    }
    record.insert(
        "stdout".into(),
        String::from_utf8_lossy(stdout).into_owned().into(),
    );
    record.insert(
        "stderr".into(),
        String::from_utf8_lossy(stderr).into_owned().into(),
    );
}

impl Formatter for Json {
    fn chunk<'a>(&mut self, stream: Stream, bytes: &'a [u8]) -> Emit<'a> {
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(bytes),
            Stream::Stderr => self.stderr.extend_from_slice(bytes),
        }
        Emit::none()
    }
    fn finish(&mut self, result: &RunResult) -> Emit<'static> {
        let mut record = result.record.clone();
        fill_output(&mut record, &self.stdout, &self.stderr);
        let mut out = Vec::new();
        let _ = crate::format::write_records(&mut out, self.format, &[record], false);
        Emit::stdout(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> RunResult {
        let mut record = Record::new();
        record.insert("uuid".into(), "op".into());
        record.insert(
            "metadata".into(),
            json!({"result": {"state": {"exit_code": 0}}}),
        );
        record.insert("stdout".into(), "".into());
        record.insert("stderr".into(), "".into());
        record.insert("error".into(), "".into());
        RunResult { record }
    }

    #[test]
    fn default_passes_bytes_through_untouched() {
        let mut f = Default;
        let e = f.chunk(Stream::Stdout, b"\x1b[2Jraw");
        assert_eq!(&*e.stdout, b"\x1b[2Jraw");
        assert!(e.stderr.is_empty());
        assert!(f.finish(&result()).stdout.is_empty());
    }

    #[test]
    fn json_prints_one_record_with_the_output_and_error_last() {
        let mut f = Json::new(Format::Json);
        assert!(f.chunk(Stream::Stdout, b"hi\n").stdout.is_empty());
        f.chunk(Stream::Stderr, b"\0");
        let out = f.finish(&result()).stdout.into_owned();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\"error\":\"\"}\n"), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["stdout"], "hi\n");
        assert_eq!(v["metadata"]["result"]["stderr"]["encoding"], "base64");
    }
}
