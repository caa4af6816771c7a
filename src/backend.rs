//! The seam between the commands and where operations run: the embedded engine or a
//! ConTree /v1 API. Everything is in /v1 terms (wire types), so the run pipeline, hooks and
//! formatters never know which one they talk to.

use crate::wire::{
    DirectoryList, Event, GrepRequest, GrepResult, Image, Operation, SpawnRequest, Status,
};
use std::path::{Path, PathBuf};

/// What went wrong, by kind: the kind decides the exit code (see `error.rs`) and, in
/// `serve`, the HTTP status. The kinds the server tells apart (`NotFound`, `Invalid`,
/// `Unavailable`) carry a `Cause`: a message said where it happened, or the error of the
/// module it came from, kept typed so a caller can tell cases apart without reading text.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    NotFound(Cause),
    #[error("{0}")]
    Invalid(Cause),
    /// The sandbox cannot be built here (kernel feature, privileges).
    #[error("{0}")]
    Unavailable(Cause),
    /// Reading or writing the store (its database, a file, a pipe) failed, in words said
    /// where it happened (following an event log, a remote answer that does not parse).
    #[error("{0}")]
    Store(String),
    /// The same kind as `Store`, with the typed error it came from.
    #[error(transparent)]
    Io(Cause),
    /// The remote API could not be reached (the message says what failed, and where) or
    /// kept failing after the retries (5xx, busy, a broken event stream).
    #[error("{0}")]
    Unreachable(String),
    /// The remote API refused the credentials (401/403).
    #[error("{0}")]
    Denied(String),
    /// This backend does not do that (a remote profile cannot gc or import a local path).
    #[error("{0}")]
    Unsupported(String),
    /// The operation is not running (not started yet, or over), and what was asked needs
    /// it running (an exec, a subprocess's signal).
    #[error("{0}")]
    NotRunning(String),
    /// Rootless, what was asked needs a privilege this user lacks here (a memory, pids or
    /// CPU limit without a cgroup of its own: see `rootless`).
    #[error("{0}")]
    NeedsRoot(String),
    /// Ctrl-C arrived while waiting; the caller decides what to cancel.
    #[error("interrupted")]
    Interrupted,
    /// The reader of the watched output went away (see `EventStream::watch_reader`).
    #[error("output closed")]
    OutputClosed,
}

/// Why a `BackendError` happened: its message, or the typed error of the module it came
/// from (whose text is the message).
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("{0}")]
    Said(String),
    #[error(transparent)]
    Db(#[from] crate::engine::store::StoreError),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    /// A path inside an image (`ls`, `cat`, `cp`).
    #[error(transparent)]
    Inspect(#[from] crate::engine::inspect::InspectError),
    /// A search of an image's files (`grep`): a request it cannot take.
    #[error(transparent)]
    Grep(#[from] crate::engine::grep::GrepError),
    #[error(transparent)]
    Import(#[from] crate::engine::oci::ImportError),
    #[error(transparent)]
    Network(#[from] crate::engine::network::NetworkError),
    #[error(transparent)]
    Limit(#[from] crate::engine::limits::LimitError),
    /// A bad setting of config.toml or its environment (`[store]`).
    #[error(transparent)]
    Setting(#[from] Box<crate::config::SettingError>),
    #[error(transparent)]
    AttachLayer(#[from] crate::engine::attachlayer::AttachLayerError),
    #[error(transparent)]
    Scratch(#[from] crate::engine::supervisor::ScratchError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Os(#[from] std::io::Error),
    /// A file or directory of the store.
    #[error("{}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A system call, and what it was for.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A system call made through nix (its errno), and what it was for.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
}

impl Cause {
    pub fn file(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Cause {
        Cause::File {
            path: path.into(),
            source,
        }
    }
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Cause {
        Cause::Io {
            what: what.into(),
            source,
        }
    }
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Cause {
        Cause::Sys {
            what: what.into(),
            source,
        }
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Cause {
        Cause::Said(message)
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Cause {
        Cause::Said(message.to_string())
    }
}

/// The message, for whoever passes it on as text (the server's error body).
impl From<Cause> for String {
    fn from(cause: Cause) -> String {
        match cause {
            Cause::Said(message) => message,
            other => other.to_string(),
        }
    }
}

/// The store's errors are the store kind, whatever went wrong.
impl From<crate::engine::store::StoreError> for BackendError {
    fn from(e: crate::engine::store::StoreError) -> Self {
        if let crate::engine::store::StoreError::Mode(m) = e {
            return BackendError::Unavailable(m.into());
        }
        BackendError::Io(e.into())
    }
}

/// The session store, where a backend call needed it (recording a spawned operation):
/// the store kind, whatever the reason, as the operation could not be recorded.
impl From<crate::session::SessionError> for BackendError {
    fn from(e: crate::session::SessionError) -> Self {
        BackendError::Io(e.into())
    }
}

/// A path of an image that is not there (or not what was asked for) is not found; one that
/// could not be read is the store's.
impl From<crate::engine::inspect::InspectError> for BackendError {
    fn from(e: crate::engine::inspect::InspectError) -> Self {
        match e {
            crate::engine::inspect::InspectError::Io { .. } => BackendError::Io(e.into()),
            other => BackendError::NotFound(other.into()),
        }
    }
}

/// A search with a root that is not in the image is not found (as `InspectError` says);
/// any other refusal is the request's.
impl From<crate::engine::grep::GrepError> for BackendError {
    fn from(e: crate::engine::grep::GrepError) -> Self {
        match e {
            crate::engine::grep::GrepError::Inspect(e) => e.into(),
            other => BackendError::Invalid(other.into()),
        }
    }
}

/// A failed import: the store's fault (it could not be written) or the source's.
impl From<crate::engine::oci::ImportError> for BackendError {
    fn from(e: crate::engine::oci::ImportError) -> Self {
        use crate::engine::oci::ImportError;
        match e {
            ImportError::Store(_) | ImportError::StoreWrite { .. } => BackendError::Io(e.into()),
            other => BackendError::Invalid(other.into()),
        }
    }
}

/// The attachment layer or the scratch dir of a run the engine starts: the store's.
impl From<crate::engine::attachlayer::AttachLayerError> for BackendError {
    fn from(e: crate::engine::attachlayer::AttachLayerError) -> Self {
        BackendError::Io(e.into())
    }
}

impl From<crate::engine::supervisor::ScratchError> for BackendError {
    fn from(e: crate::engine::supervisor::ScratchError) -> Self {
        BackendError::Io(e.into())
    }
}

/// No network stack: the sandbox cannot be built as asked.
impl From<crate::engine::network::NetworkError> for BackendError {
    fn from(e: crate::engine::network::NetworkError) -> Self {
        BackendError::Unavailable(e.into())
    }
}

/// Where the command's stdin comes from, besides any bytes in the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinSource {
    /// Hand our own stdin to the process (exact and zero-copy for the local engine).
    Inherit,
    /// The process gets no stdin beyond the request's.
    Null,
}

/// One event and, for stream events, its bytes already decoded.
#[derive(Debug, Clone)]
pub struct EventItem {
    pub event: Event,
    pub bytes: Vec<u8>,
    /// Bytes of this stream event the backend already wrote to the output itself (see
    /// `Backend::spawn_followed`); they are not in `bytes`.
    pub passed: u64,
}

pub trait EventStream {
    /// The next event; `Ok(None)` once the log is complete (after `completion`).
    fn next_event(&mut self) -> Result<Option<EventItem>, BackendError>;

    /// While waiting, also watch the reader of this process's stdout (when it is a pipe)
    /// and report `OutputClosed` once if it goes away: after `-T` cut the output nothing is
    /// written any more, so a write would never notice `| head` closing.
    fn watch_reader(&mut self) {}

    /// From now on `next_event` waits until `deadline` at most: past it, it returns
    /// `Ok(None)` even before `completion` (the caller tells by what it has seen), and a
    /// later call goes on where it stopped. `None` waits as long as it takes.
    fn set_deadline(&mut self, deadline: Option<std::time::Instant>);
}

/// Told the id of an operation being spawned before the operation can have a result:
/// before it starts, for a backend that names its operations itself, else as soon as the
/// spawn returns (an operation it refuses is cancelled). A caller records the id there, so
/// that a run reaches its session even if the caller dies.
pub type Registered<'a> = &'a mut dyn FnMut(&str) -> Result<(), BackendError>;

/// A spawn that tells `registered` the operation's id, as `Backend::spawn_registered` and
/// `Backend::spawn_followed` take it.
pub struct Spawn<'a> {
    pub req: &'a SpawnRequest,
    pub stdin: StdinSource,
    pub registered: Registered<'a>,
}

/// What `Backend::archive` packs: `path` (a file or a directory) of `image`, gzip-compressed
/// when `gzip`, else plain tar.
#[derive(Debug, Clone, Copy)]
pub struct Archive<'a> {
    pub image: &'a str,
    pub path: &'a str,
    pub gzip: bool,
}

/// A registry pull as `Backend::pull_image` takes it: what to pull, with which credentials,
/// and the tag the image gets.
pub struct Pull<'a> {
    /// `docker://reg/path:tag`, `user/img`…
    pub reference: &'a str,
    pub credentials: crate::engine::registry::Credentials,
    pub tag: Option<&'a str>,
    /// Seconds the pull may take (the import operation's `timeout`); `None`: no limit
    /// locally, the server's default remotely.
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct OpFilter {
    pub statuses: Vec<Status>,
    pub kind: Option<String>,
    pub limit: Option<usize>,
    /// Only operations created at or after this instant (`ps --since`).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only operations created at or before this instant (`ps --until`).
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl OpFilter {
    /// Whether an operation created at `created_at` (an API timestamp) lies within
    /// `since..=until`. One whose time is missing or does not parse is kept when a bound
    /// is set: better shown than silently dropped.
    pub fn admits_time(&self, created_at: Option<&str>) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        time_within(self.since, self.until, created_at)
    }
}

/// Whether `at` (an API timestamp) lies within `since..=until`; one that is missing or does
/// not parse is kept: better shown than silently dropped.
fn time_within(
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    at: Option<&str>,
) -> bool {
    let Some(at) = at.and_then(crate::wire::parse_timestamp) else {
        return true;
    };
    since.is_none_or(|s| at >= s) && until.is_none_or(|u| at <= u)
}

/// Which uploaded files `Backend::files` lists (newest first).
#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    /// Uploaded at or after this instant.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Uploaded at or before this instant.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: Option<usize>,
}

impl FileFilter {
    pub fn admits(&self, file: &crate::wire::File) -> bool {
        time_within(self.since, self.until, Some(&file.created_at))
    }
}

/// One entry `Backend::add_files` places in an image, as a run's attachment carries a
/// file: its absolute path, owner and permission bits, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Absolute, without `..`; placed through the image's own symlinks (as attachments are).
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o7777` at most); a symlink has none of its own.
    pub mode: u32,
    pub content: Content,
}

/// What a `Placement` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A regular file with the content of an uploaded file (its uuid, from `put_file`).
    File(String),
    /// A directory (empty unless other entries go into it).
    Dir,
    /// A symbolic link to this target, stored as written (never resolved here).
    Symlink(String),
}

#[derive(Debug, Clone, Default)]
pub struct ImageFilter {
    pub all: bool,
    pub prefix: Option<String>,
    pub uuid: Option<String>,
}

pub trait Backend: Send + Sync {
    /// `local` or `remote`, shown in `-o json` output.
    fn name(&self) -> &'static str;
    /// A UUID, `tag:NAME` or a bare tag → the image's UUID.
    fn resolve_image(&self, reference: &str) -> Result<String, BackendError>;
    /// Makes the file's content available as an attachment; returns the file uuid and
    /// whether it was already there.
    fn put_file(&self, path: &Path, sha256: &str) -> Result<(String, bool), BackendError>;
    /// `put_file` for many files (path, sha256), answers in the same order; a remote
    /// backend uploads them in parallel.
    fn put_files(&self, files: &[(PathBuf, String)]) -> Result<Vec<(String, bool)>, BackendError> {
        files
            .iter()
            .map(|(path, sha)| self.put_file(path, sha))
            .collect()
    }
    fn spawn(&self, req: &SpawnRequest, stdin: StdinSource) -> Result<String, BackendError>;
    /// `spawn`, telling `registered` the operation's id before it can have a result.
    fn spawn_registered(&self, spawn: Spawn<'_>) -> Result<String, BackendError> {
        let op = self.spawn(spawn.req, spawn.stdin)?;
        if let Err(e) = (spawn.registered)(&op) {
            let _ = self.cancel(&op);
            return Err(e);
        }
        Ok(op)
    }
    /// `spawn` for a caller that follows the operation's events to `completion` (a
    /// foreground run): a backend may then defer bookkeeping nobody else needs yet.
    /// `direct` says that the caller writes the output unchanged to this process's stdout
    /// and stderr (the plain formatter, no on-output hook): a backend may write it there
    /// itself, without copying it through the caller. Such output does not come as bytes
    /// in the events, only as `EventItem::passed`.
    fn spawn_followed(&self, spawn: Spawn<'_>, _direct: bool) -> Result<String, BackendError> {
        self.spawn_registered(spawn)
    }
    fn operation(&self, op: &str) -> Result<Operation, BackendError>;
    fn operations(&self, filter: &OpFilter) -> Result<Vec<Operation>, BackendError>;
    /// The operation's events from the start; with `follow` the stream waits for new ones
    /// until `completion`.
    fn events(&self, op: &str, follow: bool) -> Result<Box<dyn EventStream + '_>, BackendError>;
    fn cancel(&self, op: &str) -> Result<(), BackendError>;
    /// Sends signal number `signal` to the process group of subprocess `spid` (1 is the
    /// main process) of a running operation.
    fn signal(&self, op: &str, spid: u32, signal: i32) -> Result<(), BackendError>;
    /// Starts `spec` as one more process in running operation `op`'s sandbox; its spid (2
    /// or more), which tags its events.
    fn exec(&self, op: &str, spec: &crate::wire::ExecSpec) -> Result<u32, BackendError>;
    /// Whether Ctrl-C on a followed run first sends the command SIGINT, cancelling only on
    /// a second Ctrl-C (the remote API's behaviour, §2.9.4), rather than cancelling at once.
    fn interrupt_first(&self) -> bool {
        false
    }
    fn images(&self, filter: &ImageFilter) -> Result<Vec<Image>, BackendError>;
    fn tag(&self, image: &str, tag: &str) -> Result<(), BackendError>;
    fn untag(&self, image: &str, tag: &str) -> Result<(), BackendError>;
    /// The files uploaded (by this namespace, through a profile), newest first.
    fn files(&self, filter: &FileFilter) -> Result<Vec<crate::wire::File>, BackendError>;
    /// The entries of a directory of an image (symlinks resolved inside the image).
    fn list_dir(&self, image: &str, path: &str) -> Result<DirectoryList, BackendError>;
    /// A regular file of an image, for reading, with its mode when known.
    fn read_file(
        &self,
        image: &str,
        path: &str,
    ) -> Result<(Box<dyn std::io::Read>, Option<u32>), BackendError>;
    /// A file or directory of an image as a tar stream written to `out` (`GET
    /// /inspect/{image}/archive`). Whiteouts are applied, symlinks stored as links, mount
    /// points of the host empty (see `engine::archive`). A path that is neither a file nor a
    /// directory is `Invalid`.
    fn archive(
        &self,
        archive: Archive<'_>,
        out: &mut dyn std::io::Write,
    ) -> Result<(), BackendError>;
    /// Searches the files of an image (`GET /inspect/{image}/grep`), without a sandbox.
    fn grep(&self, image: &str, req: &GrepRequest) -> Result<GrepResult, BackendError>;
    /// A new image: `image` with one more layer holding `entries`, made without starting a
    /// sandbox (so the image needs no program: an empty one takes files too). Parent
    /// directories the image lacks are made root-owned 0755, as for attachments. An image
    /// that would not change (the same layer on top already) is given back as it is.
    /// `Unsupported` where the backend can place files only through a run (a /v1 API).
    fn add_files(&self, _image: &str, _entries: &[Placement]) -> Result<String, BackendError> {
        Err(BackendError::Unsupported(
            "this backend places files in an image only through a run".into(),
        ))
    }
    /// Imports a root filesystem directory or tar archive from this machine.
    fn import_local(&self, path: &Path, tag: Option<&str>) -> Result<String, BackendError>;
    /// Pulls an image from an OCI / Docker registry (`docker://reg/path:tag`, `user/img`…).
    fn pull_image(&self, _pull: &Pull<'_>) -> Result<String, BackendError> {
        Err(BackendError::Unsupported(
            "registry pulls are not available for this backend".into(),
        ))
    }
    /// Frees the images, layers and blobs that neither a tag, what the sessions use (`refs`)
    /// nor a running operation references; with `dry_run` only says what it would free.
    /// `refs` is asked once the operations are settled for the decision (see `Refs`).
    fn gc(&self, _refs: Refs<'_>, _dry_run: bool) -> Result<GcReport, BackendError> {
        Err(BackendError::Unsupported(
            "garbage collection runs on the server for remote profiles".into(),
        ))
    }
    /// What the store takes on disk, by kind (`gc`, `doctor`).
    fn usage(&self) -> Result<crate::engine::Usage, BackendError> {
        Err(BackendError::Unsupported(
            "the store's size is known only to the server for remote profiles".into(),
        ))
    }
    /// Checks the store (`contree doctor`), repairing what can be repaired safely.
    fn doctor(&self, _repair: bool) -> Result<Vec<Finding>, BackendError> {
        Err(BackendError::Unavailable(
            "doctor checks the local store; a remote profile's store is the server's".into(),
        ))
    }
    /// Removes one image (and its tags) unless a session or a running operation uses it,
    /// then the layers no other image needs.
    fn remove_image(&self, _image: &str, _refs: Refs<'_>) -> Result<GcReport, BackendError> {
        Err(BackendError::Unsupported(
            "images rm is not available for remote profiles".into(),
        ))
    }
}

/// One check of `contree doctor`: fine, or the problems it found and what became of them.
#[derive(Debug, Clone, Default)]
pub struct Finding {
    /// What was checked (`database`, `scratch`, ...).
    pub check: &'static str,
    /// A line about the check: what holds, or what to do about the problems.
    pub detail: String,
    /// One line per problem found; none when the check passed.
    pub problems: Vec<String>,
    /// `doctor --repair` can fix the problems without losing anything.
    pub repairable: bool,
    /// They were fixed (with `--repair`).
    pub repaired: bool,
}

/// Reads what the sessions reference, when a `gc` asks: after it has seen which operations
/// are running. Read before, a run that ends and reaches its session in between would be
/// in neither picture, and its snapshot would go.
pub type Refs<'a> = &'a dyn Fn() -> Result<References, BackendError>;

/// What the sessions reference, as `SessionStore::references` reports it.
pub use crate::session::References;

/// One thing `gc` / `images rm` freed (or, in a dry run, would free).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freed {
    /// `image`, `layer`, `blob`, `variant` or `log` (an event log cut to its completion).
    pub kind: &'static str,
    pub id: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub freed: Vec<Freed>,
}

impl GcReport {
    pub fn count(&self, kind: &str) -> usize {
        self.freed.iter().filter(|f| f.kind == kind).count()
    }
    pub fn bytes(&self) -> u64 {
        self.freed.iter().map(|f| f.bytes).sum()
    }
}

/// True when `text` is an 8-4-4-4-12 hex UUID (any case).
pub fn is_uuid(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok() && text.len() == 36
}
