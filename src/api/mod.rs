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

fn answer_timeout() -> Result<Duration, BackendError> {
    match std::env::var("CONTREE_API_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(ANSWER_TIMEOUT_SECS)),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
            _ => Err(BackendError::Invalid(format!(
                "CONTREE_API_TIMEOUT='{text}' is not a whole number of seconds above 0"
            ))),
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

    /// Sends with bounded retries. `replayable` is false for requests the server may have
    /// acted on (spawn): those are only retried on 425/429.
    fn send(
        &self,
        build: impl Fn() -> RequestBuilder,
        replayable: bool,
    ) -> Result<Response, BackendError> {
        let mut attempt = 0;
        // A busy server (429) is waited for longer than a failing one: up to 10 minutes.
        let mut busy_waits = 0;
        let mut last_warned: Option<String> = None;
        loop {
            let result = build().send();
            let wait = match &result {
                Ok(r) => {
                    let s = r.status();
                    let retry = s == StatusCode::TOO_MANY_REQUESTS
                        || s.as_u16() == 425
                        || (replayable && (s.is_server_error() || s.as_u16() == 410));
                    if !retry {
                        return result
                            .map_err(|e| BackendError::Unreachable(network::describe(&e)));
                    }
                    r.headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok())
                }
                // Waiting as long again would not help a server that never answers.
                Err(e) if e.is_timeout() && !e.is_connect() => {
                    return Err(BackendError::Unreachable(format!(
                        "{} (waited {} s; $CONTREE_API_TIMEOUT sets how long)",
                        network::describe(e),
                        self.answer_timeout.as_secs()
                    )))
                }
                Err(e) if replayable || e.is_connect() => None,
                Err(e) => return Err(BackendError::Unreachable(network::describe(e))),
            };
            let busy = matches!(&result, Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS);
            if busy && busy_waits < 600 {
                busy_waits += 1;
                let delay = wait.unwrap_or(1.0).clamp(0.1, 30.0);
                if busy_waits == 1 {
                    crate::log::emit(
                        crate::log::Level::Info,
                        "the server is busy (429); waiting for a free slot...",
                    );
                }
                std::thread::sleep(Duration::from_secs_f64(delay));
                continue;
            }
            if attempt >= BACKOFF.len() {
                return match result {
                    Ok(r) => Err(status_error(r)),
                    Err(e) => Err(BackendError::Unreachable(network::describe(&e))),
                };
            }
            let delay = wait.unwrap_or(BACKOFF[attempt]).min(30.0);
            let what = match &result {
                Ok(r) => format!("server answered {}", r.status().as_u16()),
                Err(e) => network::describe(e),
            };
            // Once per cause: the same line five times over says nothing new.
            if last_warned.as_ref() != Some(&what) {
                crate::log::emit(
                    crate::log::Level::Warning,
                    &format!(
                        "{what}; retrying (at most {} more times)...",
                        BACKOFF.len() - attempt
                    ),
                );
                last_warned = Some(what);
            }
            std::thread::sleep(Duration::from_secs_f64(delay));
            attempt += 1;
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
        404 => BackendError::NotFound(message),
        401 | 403 => BackendError::Denied(format!(
            "{message} (check the profile's token: `contree auth`)"
        )),
        // What the retries are for: the server failing or busy, which may pass.
        425 | 429 | 410 | 500..=599 => BackendError::Unreachable(message),
        _ => BackendError::Invalid(message),
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
                    BackendError::NotFound(format!("no image tagged '{name}'"))
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
        let workers = std::env::var("CONTREE_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
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
                    return Err(BackendError::Invalid(state.error.unwrap_or_else(|| {
                        format!("import operation {op} ended with status {}", state.status)
                    })));
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
