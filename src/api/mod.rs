//! The remote backend: the same `Backend` calls against a ConTree /v1 API over HTTP (the
//! hosted service or a `contree serve`), with reqwest's blocking client.
//!
//! Requests are retried (boundedly, with backoff, honouring `Retry-After`) on connection
//! errors, 429 and 5xx; `POST /instances` is only replayed after 425/429, when the server
//! cannot have acted. Live output comes from the SSE event stream (`events`).

pub mod events;
pub mod network;
pub mod profile;

use crate::backend::{Backend, BackendError, EventStream, ImageFilter, OpFilter, StdinSource};
use crate::wire::{DirectoryList, Image, Operation, SpawnRequest, StdinRepr};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use std::path::Path;
use std::time::Duration;

pub use profile::Profile;

/// Delays between attempts; the length bounds the retries.
const BACKOFF: [f64; 5] = [0.1, 0.2, 0.5, 1.0, 2.0];
/// Busy answers (429) waited out before they count as failures: a busy server is waited
/// for longer than a failing one, up to 10 minutes at the longest wait.
const BUSY_WAITS: u32 = 600;

/// How one attempt went, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tried {
    /// The server answered, with `Retry-After` seconds if it sent them.
    Answered {
        status: StatusCode,
        retry_after: Option<f64>,
    },
    /// No connection could be made (refused, unresolved, or timed out connecting).
    NoConnection,
    /// The request went out but the answer did not come in time.
    TimedOut,
    /// Anything else that broke the exchange.
    Broken,
}

/// What `send` does after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Next {
    /// Hand the answer back: success, or a status that trying again would not change.
    Return,
    /// Stop; this attempt's failure is the error.
    GiveUp,
    /// The server is busy: wait `secs` (saying so on the `first` wait) and try again.
    WaitBusy { secs: f64, first: bool },
    /// Try again after `secs`; at most `left` more tries, this one included.
    Retry { secs: f64, left: usize },
}

/// The retry policy of one request, kept apart from the network so it can be tested.
#[derive(Debug)]
struct Retries {
    replayable: bool,
    attempt: usize,
    busy_waits: u32,
}

impl Retries {
    fn new(replayable: bool) -> Retries {
        Retries {
            replayable,
            attempt: 0,
            busy_waits: 0,
        }
    }

    fn next(&mut self, tried: Tried) -> Next {
        let wait = match tried {
            Tried::Answered {
                status,
                retry_after,
            } => {
                let retry = status == StatusCode::TOO_MANY_REQUESTS
                    || status.as_u16() == 425
                    || (self.replayable && (status.is_server_error() || status.as_u16() == 410));
                if !retry {
                    return Next::Return;
                }
                if status == StatusCode::TOO_MANY_REQUESTS && self.busy_waits < BUSY_WAITS {
                    self.busy_waits += 1;
                    return Next::WaitBusy {
                        secs: retry_after.unwrap_or(1.0).clamp(0.1, 30.0),
                        first: self.busy_waits == 1,
                    };
                }
                retry_after
            }
            Tried::TimedOut => return Next::GiveUp,
            Tried::NoConnection => None,
            Tried::Broken if self.replayable => None,
            Tried::Broken => return Next::GiveUp,
        };
        if self.attempt >= BACKOFF.len() {
            return Next::GiveUp;
        }
        let secs = wait.unwrap_or(BACKOFF[self.attempt]).min(30.0);
        let left = BACKOFF.len() - self.attempt;
        self.attempt += 1;
        Next::Retry { secs, left }
    }
}

#[derive(Clone)]
pub struct Api {
    client: Client,
    /// `<url>/v1`
    base: String,
    token: String,
    project: Option<String>,
    /// How long a JSON read (`get_json`, a tag lookup) may wait for its whole answer.
    answer_timeout: Duration,
}

/// Seconds a JSON read waits for its answer unless `$CONTREE_API_TIMEOUT` says otherwise:
/// a URL that points at something that accepts connections but never answers (a wrong
/// port) must end with an error, not hang. Streams, uploads and downloads are not bounded.
const ANSWER_TIMEOUT_SECS: u64 = 30;

/// `[api]` of config.toml under `CONTREE_*` (see `config::KEYS`); an unreadable file is
/// no setting here (the commands that need the file say why it cannot be read).
fn api_setting(key: &crate::config::Key) -> Option<crate::config::Layered> {
    let file = crate::config::file(&crate::paths::Paths::from_env().config);
    crate::config::Config::load(&file)
        .unwrap_or_default()
        .layered(key)
}

fn answer_timeout() -> Result<Duration, BackendError> {
    match api_setting(&crate::config::API_TIMEOUT) {
        None => Ok(Duration::from_secs(ANSWER_TIMEOUT_SECS)),
        Some(set) => match set.text.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
            _ => Err(BackendError::Invalid(
                format!(
                    "{}='{}' is not a whole number of seconds above 0",
                    set.origin, set.text
                )
                .into(),
            )),
        },
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Api({})", self.base)
    }
}

impl Api {
    pub fn new(profile: &Profile) -> Result<Api, BackendError> {
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(network::CONNECT_TIMEOUT_SECS))
            .timeout(None::<Duration>)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("contree/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                BackendError::Unreachable(format!("cannot set up the HTTP client: {e}"))
            })?;
        Ok(Api {
            client,
            base: format!("{}/v1", profile.url.trim_end_matches('/')),
            token: profile.token.clone(),
            project: profile.project.clone(),
            answer_timeout: answer_timeout()?,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let mut rb = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(p) = &self.project {
            rb = rb.header("Project", p);
        }
        rb
    }

    /// A GET whose answer is small and must come within `answer_timeout`.
    fn get_bounded(&self, path: &str) -> RequestBuilder {
        self.request(reqwest::Method::GET, path)
            .timeout(self.answer_timeout)
    }

    /// Sends with bounded retries (see `Retries`). `replayable` is false for requests the
    /// server may have acted on (spawn): those are only retried on 425/429.
    fn send(
        &self,
        build: impl Fn() -> RequestBuilder,
        replayable: bool,
    ) -> Result<Response, BackendError> {
        let mut retries = Retries::new(replayable);
        let mut last_warned: Option<String> = None;
        loop {
            let result = build().send();
            let tried = match &result {
                Ok(r) => Tried::Answered {
                    status: r.status(),
                    retry_after: r
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(retry_after_secs),
                },
                Err(e) if e.is_timeout() && !e.is_connect() => Tried::TimedOut,
                Err(e) if e.is_connect() => Tried::NoConnection,
                Err(_) => Tried::Broken,
            };
            match retries.next(tried) {
                Next::Return => {
                    return result.map_err(|e| BackendError::Unreachable(network::describe(&e)))
                }
                Next::GiveUp => {
                    return Err(match result {
                        Ok(r) => status_error(r),
                        // Waiting as long again would not help a server that never answers.
                        Err(e) if tried == Tried::TimedOut => BackendError::Unreachable(format!(
                            "{} (waited {} s; $CONTREE_API_TIMEOUT sets how long)",
                            network::describe(&e),
                            self.answer_timeout.as_secs()
                        )),
                        Err(e) => BackendError::Unreachable(network::describe(&e)),
                    });
                }
                Next::WaitBusy { secs, first } => {
                    if first {
                        crate::log::emit(
                            crate::log::Level::Info,
                            "the server is busy (429); waiting for a free slot...",
                        );
                    }
                    std::thread::sleep(Duration::from_secs_f64(secs));
                }
                Next::Retry { secs, left } => {
                    let what = match &result {
                        Ok(r) => format!("server answered {}", r.status().as_u16()),
                        Err(e) => network::describe(e),
                    };
                    // Once per cause: the same line five times over says nothing new.
                    if last_warned.as_ref() != Some(&what) {
                        crate::log::emit(
                            crate::log::Level::Warning,
                            &format!("{what}; retrying (at most {left} more times)..."),
                        );
                        last_warned = Some(what);
                    }
                    std::thread::sleep(Duration::from_secs_f64(secs));
                }
            }
        }
    }

    /// `send`, then a non-2xx status becomes an error.
    fn call(
        &self,
        build: impl Fn() -> RequestBuilder,
        replayable: bool,
    ) -> Result<Response, BackendError> {
        let r = self.send(build, replayable)?;
        if r.status().is_success() || r.status().is_redirection() {
            Ok(r)
        } else {
            Err(status_error(r))
        }
    }

    pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, BackendError> {
        let r = self.call(|| self.get_bounded(path), true)?;
        r.json()
            .map_err(|e| BackendError::Store(format!("GET {path}: bad response: {e}")))
    }

    /// `GET /whoami`: checks the token (used by `contree auth`).
    pub fn whoami(&self) -> Result<serde_json::Value, BackendError> {
        self.get_json("/whoami")
    }

    /// Posts one chunk of the main process's stdin (never retried).
    pub fn send_stdin(&self, op: &str, repr: &StdinRepr) -> Result<(), BackendError> {
        let r = self
            .request(
                reqwest::Method::POST,
                &format!("/operations/{op}/subprocesses/1/stdin"),
            )
            .json(repr)
            .send()
            .map_err(|e| BackendError::Unreachable(network::describe(&e)))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(status_error(r))
        }
    }
}

/// An error status and the server's `{"error": ...}` text.
fn status_error(r: Response) -> BackendError {
    let status = r.status();
    let body = r.text().unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| match v.get("error") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
            None => None,
        })
        .unwrap_or(body);
    let message = format!("HTTP {}: {message}", status.as_u16());
    match status.as_u16() {
        404 => BackendError::NotFound(message.into()),
        401 | 403 => BackendError::Denied(format!(
            "{message} (check the profile's token: `contree auth`)"
        )),
        // What the retries are for: the server failing or busy, which may pass.
        425 | 429 | 410 | 500..=599 => BackendError::Unreachable(message),
        _ => BackendError::Invalid(message.into()),
    }
}

/// The `uuid` of what a POST made (an upload, an operation); `what` names the request.
fn answer_uuid(r: Response, what: &str) -> Result<String, BackendError> {
    let answer: serde_json::Value = r
        .json()
        .map_err(|e| BackendError::Store(format!("{what}: bad response: {e}")))?;
    answer["uuid"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BackendError::Store(format!("{what}: no uuid in the answer")))
}

/// `contree run` and friends against a /v1 API.
pub struct RemoteBackend {
    pub api: Api,
    /// Uploads already made from this machine (§2.8's local cache).
    cache: Option<std::sync::Mutex<UploadCache>>,
}

/// Which local files this machine already uploaded to which server: a hit (same path,
/// inode, mtime and size, younger than 90 days) skips even the dedup request.
struct UploadCache {
    conn: rusqlite::Connection,
    server: String,
}

const CACHE_TTL_SECS: i64 = 90 * 24 * 3600;

impl UploadCache {
    fn open(path: &Path, server: &str) -> rusqlite::Result<UploadCache> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS uploads(
                 server TEXT NOT NULL, key TEXT NOT NULL, uuid TEXT NOT NULL,
                 uploaded_at INTEGER NOT NULL, PRIMARY KEY(server, key));",
        )?;
        Ok(UploadCache {
            conn,
            server: server.to_string(),
        })
    }

    fn key(path: &Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let abs = std::path::absolute(path).ok()?;
        let m = std::fs::metadata(&abs).ok()?;
        let mtime_ns = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
        Some(format!(
            "{}:{}:{}:{}",
            abs.display(),
            m.ino(),
            mtime_ns,
            m.size()
        ))
    }

    fn get(&self, key: &str) -> Option<String> {
        use rusqlite::OptionalExtension;
        let now = chrono::Utc::now().timestamp();
        let hit: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT uuid, uploaded_at FROM uploads WHERE server = ?1 AND key = ?2",
                rusqlite::params![self.server, key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .ok()
            .flatten();
        let (uuid, at) = hit?;
        if now - at > CACHE_TTL_SECS {
            return None;
        }
        // The TTL slides on use.
        self.put(key, &uuid);
        Some(uuid)
    }

    fn put(&self, key: &str, uuid: &str) {
        let _ = self.conn.execute(
            "INSERT INTO uploads(server, key, uuid, uploaded_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(server, key) DO UPDATE SET uuid = excluded.uuid, uploaded_at = excluded.uploaded_at",
            rusqlite::params![self.server, key, uuid, chrono::Utc::now().timestamp()],
        );
    }
}

impl RemoteBackend {
    pub fn new(profile: &Profile) -> Result<RemoteBackend, BackendError> {
        Ok(RemoteBackend {
            api: Api::new(profile)?,
            cache: None,
        })
    }

    /// Remembers uploads in the SQLite file `path` (per server URL and token).
    pub fn with_upload_cache(mut self, path: &Path) -> RemoteBackend {
        use sha2::Digest;
        let who = sha2::Sha256::digest(format!("{}\n{}", self.api.base, self.api.token));
        let server = crate::sha256::hex(&who[..16]);
        self.cache = UploadCache::open(path, &server)
            .ok()
            .map(std::sync::Mutex::new);
        self
    }

    fn cache(&self) -> Option<std::sync::MutexGuard<'_, UploadCache>> {
        self.cache.as_ref().and_then(|c| c.lock().ok())
    }

    /// Reads our stdin on a thread: the first chunk (within 50 ms, as the official client
    /// waits) goes into the spawn body, the rest through the stdin endpoint once the
    /// operation exists (§2.9.3).
    fn stdin_plan(
        &self,
    ) -> (
        Option<StdinRepr>,
        Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    ) {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut input = std::io::stdin().lock();
            loop {
                let mut buf = vec![0u8; 512 * 1024];
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Vec::new());
                        return;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(buf).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(first) if first.is_empty() => (None, None),
            Ok(first) => (Some(StdinRepr::from_bytes(&first, Some(false))), Some(rx)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                (Some(StdinRepr::from_bytes(b"", Some(false))), Some(rx))
            }
            Err(_) => (None, None),
        }
    }
}

fn forward_stdin(api: Api, op: String, rx: std::sync::mpsc::Receiver<Vec<u8>>) {
    std::thread::spawn(move || {
        for chunk in rx {
            let eof = chunk.is_empty();
            let repr = StdinRepr::from_bytes(&chunk, Some(eof));
            if let Err(e) = api.send_stdin(&op, &repr) {
                crate::log::emit(
                    crate::log::Level::Error,
                    &format!("stdin forwarding failed, remaining input was not sent: {e}"),
                );
                return;
            }
            if eof {
                return;
            }
        }
    });
}

fn query(pairs: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

impl Backend for RemoteBackend {
    fn name(&self) -> &'static str {
        "remote"
    }

    fn resolve_image(&self, reference: &str) -> Result<String, BackendError> {
        if crate::backend::is_uuid(reference) {
            let img: serde_json::Value = self.api.get_json(&format!("/inspect/{reference}/"))?;
            return Ok(img["uuid"]
                .as_str()
                .unwrap_or(reference)
                .to_ascii_lowercase());
        }
        let name = reference.strip_prefix("tag:").unwrap_or(reference);
        let path = format!("/inspect/{}", query(&[("tag", name.to_string())]));
        let r = self
            .api
            .call(|| self.api.get_bounded(&path), true)
            .map_err(|e| match e {
                BackendError::NotFound(_) => {
                    BackendError::NotFound(format!("no image tagged '{name}'").into())
                }
                other => other,
            })?;
        let location = r
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        location
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|u| crate::backend::is_uuid(u))
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| {
                BackendError::Store(format!("the server's answer for tag '{name}' has no image"))
            })
    }

    fn put_file(&self, path: &Path, sha256: &str) -> Result<(String, bool), BackendError> {
        self.put_file_with(path, sha256, None)
    }

    fn put_files(
        &self,
        files: &[(std::path::PathBuf, String)],
    ) -> Result<Vec<(String, bool)>, BackendError> {
        // `$CONTREE_CONCURRENCY` workers (8 by default), as the official client.
        let workers = api_setting(&crate::config::API_CONCURRENCY)
            .and_then(|v| v.text.trim().parse::<usize>().ok())
            .unwrap_or(8)
            .clamp(1, 64)
            .min(files.len().max(1));
        let bar = upload_bar(files);
        let next = std::sync::atomic::AtomicUsize::new(0);
        type Slot = std::sync::Mutex<Option<Result<(String, bool), BackendError>>>;
        let results: Vec<Slot> = files.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((path, sha)) = files.get(i) else {
                        return;
                    };
                    let r = self.put_file_with(path, sha, bar.as_ref());
                    let failed = r.is_err();
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                    if failed {
                        // Stop handing out work; the others finish what they hold.
                        next.store(files.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let mut out = Vec::with_capacity(files.len());
        for (slot, (path, _)) in results.into_iter().zip(files) {
            match slot.into_inner().ok().flatten() {
                Some(r) => out.push(r?),
                None => {
                    return Err(BackendError::Unreachable(format!(
                        "{}: not uploaded (an earlier upload failed)",
                        path.display()
                    )))
                }
            }
        }
        Ok(out)
    }

    fn spawn(&self, req: &SpawnRequest, stdin: StdinSource) -> Result<String, BackendError> {
        self.spawn_remote(req, stdin)
    }

    fn operation(&self, op: &str) -> Result<Operation, BackendError> {
        self.api.get_json(&format!("/operations/{op}"))
    }

    fn operations(&self, filter: &OpFilter) -> Result<Vec<Operation>, BackendError> {
        let mut pairs = Vec::new();
        for s in &filter.statuses {
            pairs.push(("status", s.as_str().to_string()));
        }
        if let Some(k) = &filter.kind {
            pairs.push(("kind", k.clone()));
        }
        pairs.push((
            "limit",
            filter.limit.unwrap_or(1000).clamp(1, 1000).to_string(),
        ));
        self.api.get_json(&format!("/operations{}", query(&pairs)))
    }

    fn events(&self, op: &str, follow: bool) -> Result<Box<dyn EventStream + '_>, BackendError> {
        Ok(Box::new(events::SseStream::open(
            self.api.clone(),
            op.to_string(),
            follow,
        )?))
    }

    fn cancel(&self, op: &str) -> Result<(), BackendError> {
        self.api.call(
            || {
                self.api
                    .request(reqwest::Method::DELETE, &format!("/operations/{op}"))
            },
            true,
        )?;
        Ok(())
    }

    fn signal(&self, op: &str, spid: u32, signal: i32) -> Result<(), BackendError> {
        self.api.call(
            || {
                self.api.request(
                    reqwest::Method::DELETE,
                    &format!("/operations/{op}/subprocesses/{spid}?signal={signal}"),
                )
            },
            true,
        )?;
        Ok(())
    }

    fn interrupt_first(&self) -> bool {
        true
    }

    /// `POST /images/import`, then the import operation followed to its end.
    fn pull_image(
        &self,
        reference: &str,
        username: Option<&str>,
        password: Option<&str>,
        tag: Option<&str>,
    ) -> Result<String, BackendError> {
        let url = if reference.contains("://") {
            reference.to_string()
        } else {
            format!("docker://{reference}")
        };
        let mut registry = serde_json::json!({ "url": url });
        if username.is_some() || password.is_some() {
            registry["credentials"] = serde_json::json!({
                "username": username,
                "password": password,
            });
        }
        let body = serde_json::json!({ "registry": registry, "tag": tag });
        // Never replayed once the server may have acted (it would import twice).
        let r = self.api.call(
            || {
                self.api
                    .request(reqwest::Method::POST, "/images/import")
                    .json(&body)
            },
            false,
        )?;
        let op = answer_uuid(r, "POST /images/import")?;
        let mut delay = Duration::from_millis(100);
        loop {
            let state = self.operation(&op)?;
            if state.status.is_terminal() {
                if state.status != crate::wire::Status::Success {
                    return Err(BackendError::Invalid(
                        state
                            .error
                            .unwrap_or_else(|| {
                                format!("import operation {op} ended with status {}", state.status)
                            })
                            .into(),
                    ));
                }
                return state.result_image_uuid.ok_or_else(|| {
                    BackendError::Store(format!("import operation {op} names no image"))
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn images(&self, filter: &ImageFilter) -> Result<Vec<Image>, BackendError> {
        let mut pairs = vec![("limit", "1000".to_string())];
        if !filter.all {
            pairs.push(("tagged", "1".into()));
        }
        if let Some(p) = &filter.prefix {
            pairs.push(("tag", p.clone()));
        }
        if let Some(u) = &filter.uuid {
            pairs.push(("uuid", u.clone()));
        }
        #[derive(serde::Deserialize)]
        struct List {
            images: Vec<Image>,
        }
        let list: List = self.api.get_json(&format!("/images{}", query(&pairs)))?;
        Ok(list.images)
    }

    fn tag(&self, image: &str, tag: &str) -> Result<(), BackendError> {
        let body = serde_json::json!({ "tag": tag });
        self.api.call(
            || {
                self.api
                    .request(reqwest::Method::PATCH, &format!("/images/{image}/tag"))
                    .json(&body)
            },
            true,
        )?;
        Ok(())
    }

    fn untag(&self, image: &str, tag: &str) -> Result<(), BackendError> {
        let path = format!("/images/{image}/tag{}", query(&[("tag", tag.to_string())]));
        self.api
            .call(|| self.api.request(reqwest::Method::DELETE, &path), true)?;
        Ok(())
    }

    fn list_dir(&self, image: &str, path: &str) -> Result<DirectoryList, BackendError> {
        self.api.get_json(&format!(
            "/inspect/{image}/list{}",
            query(&[("path", path.to_string())])
        ))
    }

    fn read_file(
        &self,
        image: &str,
        path: &str,
    ) -> Result<(Box<dyn std::io::Read>, Option<u32>), BackendError> {
        let url = format!(
            "/inspect/{image}/download{}",
            query(&[("path", path.to_string())])
        );
        let r = self
            .api
            .call(|| self.api.request(reqwest::Method::GET, &url), true)?;
        Ok((Box::new(r), None))
    }

    fn import_local(&self, path: &Path, _tag: Option<&str>) -> Result<String, BackendError> {
        Err(BackendError::Unsupported(format!(
            "importing {} needs the local engine; the remote API imports from registries only",
            path.display()
        )))
    }
}

impl RemoteBackend {
    /// Dedup by sha256 (`GET /files/{sha}`), else `POST /files`.
    /// `put_file`, counting the bytes on `bar` (a file already there counts as sent).
    fn put_file_with(
        &self,
        path: &Path,
        sha256: &str,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<(String, bool), BackendError> {
        let key = UploadCache::key(path);
        if let (Some(cache), Some(key)) = (self.cache(), &key) {
            if let Some(uuid) = cache.get(key) {
                if let Some(bar) = bar {
                    bar.inc(file_len(path));
                }
                return Ok((uuid, true));
            }
        }
        let (uuid, existed) = self.upload(path, sha256, bar)?;
        if let (Some(cache), Some(key)) = (self.cache(), &key) {
            cache.put(key, &uuid);
        }
        Ok((uuid, existed))
    }

    fn upload(
        &self,
        path: &Path,
        sha256: &str,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<(String, bool), BackendError> {
        match self
            .api
            .get_json::<serde_json::Value>(&format!("/files/{sha256}"))
        {
            Ok(f) => {
                if let Some(uuid) = f["uuid"].as_str() {
                    if let Some(bar) = bar {
                        bar.inc(file_len(path));
                    }
                    return Ok((uuid.to_string(), true));
                }
            }
            Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        // Bytes of this file counted so far: a retried upload takes them back first.
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r = self.api.call(
            || {
                let file = std::fs::File::open(path);
                let rb = self
                    .api
                    .request(reqwest::Method::POST, "/files")
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
                match (file, bar) {
                    (Ok(f), Some(bar)) => {
                        let before = counted.swap(0, std::sync::atomic::Ordering::Relaxed);
                        bar.set_position(bar.position().saturating_sub(before));
                        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                        let reader = Counting {
                            inner: f,
                            bar: bar.clone(),
                            counted: counted.clone(),
                        };
                        rb.body(reqwest::blocking::Body::sized(reader, len))
                    }
                    (Ok(f), None) => rb.body(reqwest::blocking::Body::from(f)),
                    (Err(_), _) => rb,
                }
            },
            true,
        )?;
        answer_uuid(r, "POST /files").map(|u| (u, false))
    }

    fn spawn_remote(&self, req: &SpawnRequest, stdin: StdinSource) -> Result<String, BackendError> {
        let mut req = req.clone();
        let mut rest = None;
        if req.stdin.is_none() && stdin == StdinSource::Inherit {
            let (first, rx) = self.stdin_plan();
            req.stdin = first;
            rest = rx;
        }
        let r = self.api.call(
            || {
                self.api
                    .request(reqwest::Method::POST, "/instances")
                    .json(&req)
            },
            false,
        )?;
        let op = answer_uuid(r, "POST /instances")?;
        if let Some(rx) = rest {
            forward_stdin(self.api.clone(), op.clone(), rx);
        }
        Ok(op)
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// A progress bar for a large upload (see `progress`); `None` for small uploads.
fn upload_bar(files: &[(std::path::PathBuf, String)]) -> Option<indicatif::ProgressBar> {
    let total: u64 = files.iter().map(|(p, _)| file_len(p)).sum();
    crate::progress::bar(crate::progress::Show::OnTerminal, total, || {
        format!("uploading {} file(s)", files.len())
    })
}

/// A file read for an upload, counting what has been read on the progress bar.
struct Counting {
    inner: std::fs::File,
    bar: indicatif::ProgressBar,
    counted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::io::Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        self.counted
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// A `Retry-After` of seconds; a value no sleep can take (negative, NaN, infinite) is
/// ignored rather than trusted. (The HTTP-date form is not used by the API.)
fn retry_after_secs(value: &str) -> Option<f64> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn answered(code: u16, retry_after: Option<f64>) -> Tried {
        Tried::Answered {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after,
        }
    }

    /// What `send` would do over `attempts`, one after the other.
    fn plan(replayable: bool, attempts: impl IntoIterator<Item = Tried>) -> Vec<Next> {
        let mut retries = Retries::new(replayable);
        attempts.into_iter().map(|t| retries.next(t)).collect()
    }

    #[test]
    fn answers_that_trying_again_would_not_change_are_returned_at_once() {
        for code in [200, 201, 204, 304, 400, 401, 403, 404, 409, 413, 422] {
            for replayable in [true, false] {
                assert_eq!(
                    plan(replayable, [answered(code, Some(1.0))]),
                    [Next::Return],
                    "{code}"
                );
            }
        }
    }

    #[test]
    fn server_errors_are_retried_only_when_the_request_may_be_sent_again() {
        for code in [500, 502, 503, 504, 410] {
            assert_eq!(
                plan(true, [answered(code, None)]),
                [Next::Retry { secs: 0.1, left: 5 }],
                "{code}"
            );
            // A spawn the server may have acted on is never replayed: the error is the answer.
            assert_eq!(
                plan(false, [answered(code, None)]),
                [Next::Return],
                "{code}"
            );
        }
    }

    #[test]
    fn too_early_and_busy_are_retried_even_for_a_spawn() {
        assert_eq!(
            plan(false, [answered(425, None)]),
            [Next::Retry { secs: 0.1, left: 5 }]
        );
        assert_eq!(
            plan(false, [answered(429, None)]),
            [Next::WaitBusy {
                secs: 1.0,
                first: true
            }]
        );
    }

    #[test]
    fn the_delays_grow_and_the_sixth_failure_is_the_error() {
        let got = plan(true, std::iter::repeat_n(answered(503, None), 7));
        let retries: Vec<(f64, usize)> = got
            .iter()
            .filter_map(|n| match n {
                Next::Retry { secs, left } => Some((*secs, *left)),
                _ => None,
            })
            .collect();
        assert_eq!(retries, [(0.1, 5), (0.2, 4), (0.5, 3), (1.0, 2), (2.0, 1)]);
        assert_eq!(got[5], Next::GiveUp);
    }

    #[test]
    fn a_retry_after_no_sleep_can_take_is_ignored() {
        assert_eq!(retry_after_secs("2.5"), Some(2.5));
        assert_eq!(retry_after_secs(" 3 "), Some(3.0));
        for bad in ["-1", "NaN", "inf", "-inf", "soon", ""] {
            assert_eq!(retry_after_secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_replaces_the_delay_up_to_30_seconds() {
        assert_eq!(
            plan(true, [answered(503, Some(3.0)), answered(503, Some(120.0))]),
            [
                Next::Retry { secs: 3.0, left: 5 },
                Next::Retry {
                    secs: 30.0,
                    left: 4
                }
            ]
        );
    }

    #[test]
    fn a_busy_server_is_waited_for_600_times_before_it_counts_as_failing() {
        let got = plan(true, std::iter::repeat_n(answered(429, Some(0.01)), 600));
        assert_eq!(
            got[0],
            Next::WaitBusy {
                secs: 0.1,
                first: true
            }
        );
        assert!(got[1..].iter().all(|n| *n
            == Next::WaitBusy {
                secs: 0.1,
                first: false
            }));
        let mut retries = Retries::new(true);
        for _ in 0..600 {
            retries.next(answered(429, Some(100.0)));
        }
        assert_eq!(
            retries.next(answered(429, Some(100.0))),
            Next::Retry {
                secs: 30.0,
                left: 5
            }
        );
        // The busy waits do not use up the tries a failing server gets.
        assert_eq!(
            retries.next(answered(503, None)),
            Next::Retry { secs: 0.2, left: 4 }
        );
    }

    #[test]
    fn busy_waits_are_clamped_between_a_tenth_and_30_seconds() {
        let secs = |after| match plan(false, [answered(429, after)])[0] {
            Next::WaitBusy { secs, .. } => secs,
            other => panic!("{other:?}"),
        };
        assert_eq!(secs(None), 1.0);
        assert_eq!(secs(Some(0.0)), 0.1);
        assert_eq!(secs(Some(5.0)), 5.0);
        assert_eq!(secs(Some(3600.0)), 30.0);
    }

    #[test]
    fn connection_failures_are_retried_and_broken_exchanges_only_when_replayable() {
        let retry = Next::Retry { secs: 0.1, left: 5 };
        assert_eq!(plan(false, [Tried::NoConnection]), [retry]);
        assert_eq!(plan(true, [Tried::NoConnection]), [retry]);
        assert_eq!(plan(true, [Tried::Broken]), [retry]);
        assert_eq!(plan(false, [Tried::Broken]), [Next::GiveUp]);
    }

    #[test]
    fn an_answer_that_never_comes_is_not_waited_for_again() {
        for replayable in [true, false] {
            assert_eq!(plan(replayable, [Tried::TimedOut]), [Next::GiveUp]);
        }
        // Even after other failures, with tries left.
        assert_eq!(
            plan(true, [Tried::NoConnection, Tried::TimedOut])[1],
            Next::GiveUp
        );
    }

    #[test]
    fn tries_are_counted_across_causes() {
        let got = plan(
            true,
            [
                Tried::NoConnection,
                answered(502, None),
                Tried::Broken,
                answered(410, None),
                answered(500, None),
                Tried::NoConnection,
            ],
        );
        assert_eq!(got[4], Next::Retry { secs: 2.0, left: 1 });
        assert_eq!(got[5], Next::GiveUp);
    }

    /// A server on 127.0.0.1 answering one request per connection with the next of
    /// `answers` (status, body); returns its URL and how many requests it saw.
    fn server(answers: Vec<(u16, &'static str)>) -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for (code, body) in answers {
                let Ok((conn, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(conn);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut request_body = vec![0; length];
                let _ = reader.read_exact(&mut request_body);
                count.fetch_add(1, Ordering::SeqCst);
                let mut conn = reader.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, seen)
    }

    fn api(url: &str) -> Api {
        Api::new(&Profile {
            name: "test".into(),
            url: url.into(),
            token: "t".into(),
            kind: "api".into(),
            project: None,
        })
        .unwrap()
    }

    #[test]
    fn a_read_is_retried_until_the_server_answers() {
        let (url, seen) = server(vec![(503, ""), (502, ""), (200, r#"{"ok":true}"#)]);
        let got: serde_json::Value = api(&url).get_json("/whoami").unwrap();
        assert_eq!(got["ok"], true);
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_spawn_that_meets_a_server_error_is_sent_once() {
        let (url, seen) = server(vec![(503, r#"{"error":"boom"}"#), (200, "{}")]);
        let api = api(&url);
        let err = api
            .call(|| api.request(reqwest::Method::POST, "/instances"), false)
            .unwrap_err();
        assert!(
            matches!(&err, BackendError::Unreachable(m) if m == "HTTP 503: boom"),
            "{err:?}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn error_answers_name_the_status_and_the_servers_message() {
        let (url, _) = server(vec![
            (404, r#"{"error":"operation x not found"}"#),
            (401, r#"{"error":{"code":1}}"#),
            (400, "plain words"),
        ]);
        let api = api(&url);
        let get = || {
            api.get_json::<serde_json::Value>("/operations/x")
                .unwrap_err()
        };
        let e = get();
        assert!(
            matches!(&e, BackendError::NotFound(m) if m.to_string() == "HTTP 404: operation x not found"),
            "{e:?}"
        );
        let e = get();
        assert!(
            matches!(&e, BackendError::Denied(m)
                if m == "HTTP 401: {\"code\":1} (check the profile's token: `contree auth`)"),
            "{e:?}"
        );
        let e = get();
        assert!(
            matches!(&e, BackendError::Invalid(m) if m.to_string() == "HTTP 400: plain words"),
            "{e:?}"
        );
    }
}
