//! The ConTree /v1 wire types (serde structs for the schemas in `contree-openapi.yaml`).
//!
//! Shared by the run pipeline, the local engine and (later) the HTTP client and server, so
//! every path speaks one format. Field names and optionality follow the spec; nothing here
//! knows how a request is carried out. A missing `Option` field reads as `None` (serde's own
//! rule), so only whether `None` is written is said field by field.

mod grep;
pub mod limits;
mod listing;
pub mod reference;

pub use grep::{GrepLineKind, GrepMatch, GrepRequest, GrepResult, GrepSubmatch};
pub use listing::text_listing;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `InstanceSpawnRequest`: what `POST /instances` takes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    pub image: String,
    pub command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub shell: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_env: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_cwd: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default)]
    pub disposable: bool,
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate_output_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, FileRef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<StdinRepr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networking: Option<Networking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources_limits: Option<ResourcesLimits>,
}

/// `InstanceResourcesLimits`. The API defines `max_layer_bytes`; the other fields are
/// contree's own (`run --memory/--pids/--cpus`), honoured by the local engine and `contree
/// serve` and ignored by servers that do not know them. For those three, 0 means "no limit".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourcesLimits {
    /// Size of the writable layer, in bytes (API default: 12 GiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_layer_bytes: Option<u64>,
    /// Memory (RAM and swap together) of everything in the sandbox, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    /// Processes and threads in the sandbox, its init not counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pids: Option<u64>,
    /// CPU time per wall-clock second (1.5 = one and a half CPUs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<f64>,
}

impl ResourcesLimits {
    pub fn is_empty(&self) -> bool {
        self == &ResourcesLimits::default()
    }
}

pub fn default_hostname() -> String {
    "linuxkit".to_string()
}

impl SpawnRequest {
    /// Networking is on unless the request says `networking.enabled = false` (API default: true).
    pub fn network_enabled(&self) -> bool {
        self.networking.as_ref().is_none_or(|n| n.enabled)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Networking {
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// One entry of the spawn request's `files` map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub uuid: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Octal text of at least four digits (`"0644"`).
    #[serde(default = "default_mode")]
    pub mode: String,
}

impl FileRef {
    /// The permission bits `mode` asks for. The spec's form is octal text (`"0644"`); an
    /// optional `0o` prefix is accepted too, as some clients send Python's `oct(st_mode)`
    /// (`"0o100644"`), and the file-type bits are then dropped. `None`: not octal.
    pub fn permissions(&self) -> Option<u32> {
        let t = self.mode.trim();
        let digits = t
            .strip_prefix("0o")
            .or_else(|| t.strip_prefix("0O"))
            .unwrap_or(t);
        if digits.is_empty() {
            return None;
        }
        u32::from_str_radix(digits, 8).ok().map(|m| m & 0o7777)
    }
}

fn default_mode() -> String {
    "0644".to_string()
}

/// `ClosableStreamRepr`: stdin bytes in the spawn body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StdinRepr {
    pub value: String,
    #[serde(default = "ascii")]
    pub encoding: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close: Option<bool>,
}

fn ascii() -> String {
    "ascii".to_string()
}

/// `ExecSpec`: one more process in a running instance (`POST
/// /operations/{id}/subprocesses`). What belongs to the instance (image, hostname, limits,
/// files, timeout) was set when it was spawned and is refused here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    pub command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub shell: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<StdinRepr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate_output_at: Option<u64>,
}

/// Encodes bytes per the API rule: `ascii` when every byte is printable ASCII or TAB/LF/CR,
/// else standard base64.
pub fn encode_bytes(bytes: &[u8]) -> (String, &'static str) {
    let printable = bytes
        .iter()
        .all(|&b| (0x20..=0x7e).contains(&b) || b == b'\t' || b == b'\n' || b == b'\r');
    if printable {
        (String::from_utf8_lossy(bytes).into_owned(), "ascii")
    } else {
        use base64::Engine;
        (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "base64",
        )
    }
}

/// Decodes a `{value, encoding}` pair back to bytes.
pub fn decode_bytes(value: &str, encoding: &str) -> Result<Vec<u8>, base64::DecodeError> {
    if encoding == "base64" {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(value)
    } else {
        Ok(value.as_bytes().to_vec())
    }
}

impl StdinRepr {
    pub fn from_bytes(bytes: &[u8], close: Option<bool>) -> StdinRepr {
        let (value, encoding) = encode_bytes(bytes);
        StdinRepr {
            value,
            encoding: encoding.to_string(),
            close,
        }
    }
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        decode_bytes(&self.value, &self.encoding)
    }
}

/// Operation statuses; the first three are active, the rest terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pending,
    Assigned,
    Executing,
    Success,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Success | Status::Failed | Status::Cancelled)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Assigned => "ASSIGNED",
            Status::Executing => "EXECUTING",
            Status::Success => "SUCCESS",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
        }
    }
    /// Accepts the full names and the one-letter forms `P A E S F C`, any case.
    pub fn parse(text: &str) -> Option<Status> {
        Some(match text.to_ascii_uppercase().as_str() {
            "PENDING" | "P" => Status::Pending,
            "ASSIGNED" | "A" => Status::Assigned,
            "EXECUTING" | "E" => Status::Executing,
            "SUCCESS" | "S" => Status::Success,
            "FAILED" | "F" => Status::Failed,
            "CANCELLED" | "C" => Status::Cancelled,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `OperationResponse` (also used for summaries: `metadata` is then absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub uuid: String,
    pub kind: String,
    pub status: Status,
    pub error: Option<String>,
    pub created_at: Option<String>,
    pub duration: Option<f64>,
    pub image_size: Option<u64>,
    pub image_uuid: Option<String>,
    pub result_image_uuid: Option<String>,
    /// CPU seconds (user + system) of everything in the sandbox; `null` when not measured.
    pub consumed_cpu: Option<f64>,
    /// Peak memory of the sandbox in KiB (the unit of getrusage's `max_rss`, which the API
    /// names); `null` when not measured.
    pub consumed_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<OperationResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationResult {
    pub image: Option<String>,
    pub tag: Option<String>,
}

/// `Image`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub uuid: String,
    pub tag: Option<String>,
    pub created_at: String,
    pub operation_uuid: Option<String>,
}

/// `File`: an uploaded file (`GET /files`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct File {
    pub uuid: String,
    pub sha256: String,
    /// Bytes; -1 if unknown.
    pub size: i64,
    /// When this namespace first uploaded it.
    pub created_at: String,
    /// When it was last uploaded again.
    pub updated_at: String,
}

/// `FileItem`: one entry of a directory listing (`/inspect/{image}/list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileItem {
    pub size: u64,
    pub path: String,
    /// A name when one is known, else the numeric id.
    pub owner: serde_json::Value,
    pub group: serde_json::Value,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub mtime: i64,
    pub nlink: u64,
    pub is_dir: bool,
    pub is_regular: bool,
    pub is_symlink: bool,
    pub is_socket: bool,
    pub is_fifo: bool,
    pub symlink_to: String,
}

/// `DirectoryList`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryList {
    pub path: String,
    pub files: Vec<FileItem>,
}

/// `OperationEvent`. `data` stays a JSON object so unknown payloads pass through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spid: Option<u32>,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    /// The raw bytes of a `stdin`/`stdout`/`stderr` event.
    pub fn stream_bytes(&self) -> Option<Vec<u8>> {
        let value = self.data.get("value")?.as_str()?;
        let encoding = self
            .data
            .get("encoding")
            .and_then(|e| e.as_str())
            .unwrap_or("ascii");
        decode_bytes(value, encoding).ok()
    }
}

/// The current time as the API writes it: RFC 3339 UTC with microseconds.
pub fn now_ts() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// An API timestamp: RFC 3339, or an ISO 8601 date-time without an offset (taken as UTC, as
/// Python's `isoformat()` writes a naive one), or a date (its midnight, UTC).
pub fn parse_timestamp(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
    let t = text.trim();
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(dt.to_utc());
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(dt.and_utc());
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_time(NaiveTime::MIN).and_utc())
}

/// What a run keeps of each output stream unless `truncate_output_at` says otherwise.
pub const DEFAULT_TRUNCATE_AT: u64 = 1 << 20;

/// The most `truncate_output_at` may ask for through the API (the spec's maximum for the
/// field, 10 MiB). `contree serve` refuses more, and so does a client with a profile; a
/// local run may keep more, its log bounded by the store's retention (docs/store.md).
pub const MAX_TRUNCATE_AT: u64 = 10 << 20;

/// Why a request through the API cannot keep `truncate_output_at` bytes, if it cannot.
pub fn over_api_truncate_cap(truncate_output_at: Option<u64>) -> Option<String> {
    let asked = truncate_output_at?;
    (asked > MAX_TRUNCATE_AT).then(|| {
        format!(
            "truncate_output_at {asked} is more than the API allows ({MAX_TRUNCATE_AT} bytes, 10 MiB)"
        )
    })
}

/// Seconds from the API timestamp `since` until now; `None` if it does not parse.
pub fn seconds_since(since: &str) -> Option<f64> {
    let since = chrono::DateTime::parse_from_rfc3339(since).ok()?;
    let micros = (chrono::Utc::now() - since.to_utc()).num_microseconds()?;
    Some(micros.max(0) as f64 / 1e6)
}

/// The counters of `InstanceResult.resources` (getrusage's, by the API's names), from the
/// `exit` event's `resources`; a counter not measured is 0 and `cost` is always 0 here.
pub fn process_resources(rusage: Option<&serde_json::Value>) -> serde_json::Value {
    const INTEGERS: [&str; 11] = [
        "block_input",
        "block_output",
        "involuntary_switches",
        "max_rss",
        "page_faults",
        "page_faults_io",
        "shared_memory",
        "signals",
        "swaps",
        "unshared_memory",
        "voluntary_switches",
    ];
    const SECONDS: [&str; 5] = [
        "elapsed_time",
        "monotonic_time",
        "system_cpu_time",
        "user_cpu_time",
        "cost",
    ];
    let mut out = serde_json::Map::new();
    let known = |key: &str| rusage.and_then(|r| r.get(key));
    for key in INTEGERS {
        let n = known(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
        out.insert(key.into(), n.into());
    }
    for key in SECONDS {
        let n = known(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0);
        out.insert(key.into(), n.into());
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_modes_are_octal_with_or_without_python_s_0o_prefix() {
        let mode = |m: &str| {
            FileRef {
                uuid: String::new(),
                uid: 0,
                gid: 0,
                mode: m.into(),
            }
            .permissions()
        };
        assert_eq!(mode("0644"), Some(0o644));
        assert_eq!(mode("4755"), Some(0o4755));
        assert_eq!(mode("0o100644"), Some(0o644), "the file type bits go");
        assert_eq!(mode("0O755"), Some(0o755));
        for bad in ["", "0o", "0x1ff", "0644x", "9", "-644"] {
            assert_eq!(mode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encoding_picks_ascii_only_for_printable_bytes() {
        assert_eq!(encode_bytes(b"hello\n"), ("hello\n".to_string(), "ascii"));
        assert_eq!(
            encode_bytes(b"\0\x01bin"),
            ("AAFiaW4=".to_string(), "base64")
        );
        assert_eq!(decode_bytes("AAFiaW4=", "base64").unwrap(), b"\0\x01bin");
    }

    #[test]
    fn spawn_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<SpawnRequest>(r#"{"image":"x","command":"y","bogus":1}"#)
            .unwrap_err();
        assert!(err.to_string().contains("bogus"));
    }
}
