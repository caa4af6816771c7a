//! `RemoteBackend`: the `Backend` calls in /v1 terms over `Api`, with the local cache of
//! what this machine already uploaded. About 650 lines: one short method per `Backend` call,
//! which read best side by side with the trait; the HTTP plumbing is in `api`.

use super::*;

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
                crate::error!("stdin forwarding failed, remaining input was not sent: {e}");
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
        if let Some(why) = crate::wire::over_api_truncate_cap(req.truncate_output_at) {
            return Err(BackendError::Invalid(
                format!("{why}: with a profile, -T can be at most 10485760; without one (the local store) it can be more").into(),
            ));
        }
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
        let stamp = |t: &chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        if let Some(t) = &filter.since {
            pairs.push(("since", stamp(t)));
        }
        if let Some(t) = &filter.until {
            pairs.push(("until", stamp(t)));
        }
        pairs.push((
            "limit",
            filter.limit.unwrap_or(1000).clamp(1, 1000).to_string(),
        ));
        let mut ops: Vec<Operation> = self
            .api
            .get_json(&format!("/operations{}", query(&pairs)))?;
        // A server that does not know `since`/`until` lists everything: the range still holds.
        ops.retain(|op| filter.admits_time(op.created_at.as_deref()));
        Ok(ops)
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

    fn exec(&self, op: &str, spec: &crate::wire::ExecSpec) -> Result<u32, BackendError> {
        self.api.exec(op, spec)
    }

    fn interrupt_first(&self) -> bool {
        true
    }

    /// `POST /images/import`, then the import operation followed to its end.
    fn pull_image(&self, pull: &crate::backend::Pull<'_>) -> Result<String, BackendError> {
        let url = if pull.reference.contains("://") {
            pull.reference.to_string()
        } else {
            format!("docker://{}", pull.reference)
        };
        let mut registry = serde_json::json!({ "url": url });
        let creds = &pull.credentials;
        if creds.username.is_some() || creds.password.is_some() {
            registry["credentials"] = serde_json::json!({
                "username": creds.username,
                "password": creds.password,
            });
        }
        let mut body = serde_json::json!({ "registry": registry, "tag": pull.tag });
        if let Some(t) = pull.timeout {
            body["timeout"] = t.into();
        }
        let op = self.api.post_once("/images/import", &body)?;
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

    /// `GET /files`, a page of 1000 at a time, until the filter's limit.
    fn files(
        &self,
        filter: &crate::backend::FileFilter,
    ) -> Result<Vec<crate::wire::File>, BackendError> {
        const PAGE: usize = 1000;
        let stamp = |t: &chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        let want = filter.limit.unwrap_or(usize::MAX);
        let mut files = Vec::new();
        loop {
            let mut pairs = vec![
                ("limit", PAGE.to_string()),
                ("offset", files.len().to_string()),
            ];
            pairs.extend(filter.since.as_ref().map(|t| ("since", stamp(t))));
            pairs.extend(filter.until.as_ref().map(|t| ("until", stamp(t))));
            #[derive(serde::Deserialize)]
            struct Listing {
                files: Vec<crate::wire::File>,
            }
            let page: Listing = self.api.get_json(&format!("/files{}", query(&pairs)))?;
            let last = page.files.len() < PAGE;
            files.extend(page.files);
            if last || files.len() >= want {
                break;
            }
        }
        // A server that does not know `since`/`until` lists everything: the range still holds.
        files.retain(|f| filter.admits(f));
        files.truncate(want);
        Ok(files)
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

    /// Asks for gzip on the wire when the caller wants it (the server's compression is kept
    /// as it is, no work here); whichever the server sent, the caller gets what it asked for.
    fn archive(
        &self,
        Archive { image, path, gzip }: Archive<'_>,
        out: &mut dyn std::io::Write,
    ) -> Result<(), BackendError> {
        let url = format!(
            "/inspect/{image}/archive{}",
            query(&[("path", path.to_string())])
        );
        let encoding = if gzip { "gzip" } else { "identity" };
        let mut r = self.api.call(
            || {
                self.api
                    .request(reqwest::Method::GET, &url)
                    .header(reqwest::header::ACCEPT_ENCODING, encoding)
            },
            true,
        )?;
        let gzipped = r
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let copied = match (gzipped, gzip) {
            (true, true) | (false, false) => std::io::copy(&mut r, out).map(drop),
            (true, false) => {
                std::io::copy(&mut flate2::read::MultiGzDecoder::new(r), out).map(drop)
            }
            (false, true) => {
                let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
                std::io::copy(&mut r, &mut gz).and_then(|_| gz.finish().map(drop))
            }
        };
        copied
            .map_err(|e| BackendError::Unreachable(format!("the archive of {path} broke off: {e}")))
    }

    fn grep(&self, image: &str, req: &GrepRequest) -> Result<GrepResult, BackendError> {
        self.api.get_json(&format!(
            "/inspect/{image}/grep{}",
            query(&req.query_pairs())
        ))
    }

    fn import_local(&self, path: &Path, _tag: Option<&str>) -> Result<String, BackendError> {
        Err(BackendError::Unsupported(format!(
            "importing {} needs the local engine; the remote API imports from registries only",
            path.display()
        )))
    }
}

impl RemoteBackend {
    /// The upload cache's answer, else dedup by sha256 (`GET /files/{sha}`), else
    /// `POST /files`; counting the bytes on `bar` (a file already there counts as sent).
    fn put_file_with(
        &self,
        path: &Path,
        sha256: &str,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<(String, bool), BackendError> {
        let key = UploadCache::key(path);
        if let Some(uuid) = key.as_ref().and_then(|key| self.cache()?.get(key)) {
            count_whole(bar, path);
            return Ok((uuid, true));
        }
        let (uuid, existed) = match self.on_server(sha256)? {
            Some(uuid) => {
                count_whole(bar, path);
                (uuid, true)
            }
            None => (self.post_file(path, bar)?, false),
        };
        if let (Some(cache), Some(key)) = (self.cache(), &key) {
            cache.put(key, &uuid);
        }
        Ok((uuid, existed))
    }

    /// The uuid of the file with this content the server has already, if it has one.
    fn on_server(&self, sha256: &str) -> Result<Option<String>, BackendError> {
        match self
            .api
            .get_json::<serde_json::Value>(&format!("/files/{sha256}"))
        {
            Ok(f) => Ok(f["uuid"].as_str().map(str::to_string)),
            Err(BackendError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /files` of the file's bytes, counted on `bar` as they go.
    fn post_file(
        &self,
        path: &Path,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<String, BackendError> {
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
        answer_uuid(r, "POST /files")
    }

    fn spawn_remote(&self, req: &SpawnRequest, stdin: StdinSource) -> Result<String, BackendError> {
        let mut req = req.clone();
        let mut rest = None;
        if req.stdin.is_none() && stdin == StdinSource::Inherit {
            let (first, rx) = self.stdin_plan();
            req.stdin = first;
            rest = rx;
        }
        let op = self.api.post_once("/instances", &req)?;
        if let Some(rx) = rest {
            forward_stdin(self.api.clone(), op.clone(), rx);
        }
        Ok(op)
    }
}

/// A file that need not be sent counts on `bar` as sent whole.
fn count_whole(bar: Option<&indicatif::ProgressBar>, path: &Path) {
    if let Some(bar) = bar {
        bar.inc(file_len(path));
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
