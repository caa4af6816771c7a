//! The /v1 routes: each handler checks the caller's namespace, then makes one or two engine
//! calls on a blocking thread and shapes the answer as the spec (and §8 of the behaviour
//! notes) says.

use super::auth::{require_token, Namespace};
use super::owners::{ns_tag, visible_tag, FILE, OP};
use super::{ApiError, Shared, State};
use crate::backend::{Backend, OpFilter, StdinSource};
use crate::engine::store::ImageRow;
use crate::engine::LocalEngine;
use crate::wire::{self, Image, SpawnRequest, Status, StdinRepr};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::sync::MutexGuard;

type Params = Query<Vec<(String, String)>>;
type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/whoami", get(whoami))
        .route("/inspect/", get(find_by_tag))
        .route("/inspect/{image}/", get(inspect_image))
        .route("/inspect/{image}/list", get(list))
        .route("/inspect/{image}/download", get(download))
        .route("/inspect/{image}/archive", get(archive))
        .route("/files", post(upload).get(files))
        .route("/files/{sha256}", get(file_info))
        .route("/instances", post(spawn))
        .route("/operations", get(operations))
        .route("/operations/{op}", get(operation).delete(cancel))
        .route("/operations/{op}/events", get(super::sse::events))
        .route("/operations/{op}/subprocesses/{spid}/stdin", post(stdin))
        .route(
            "/operations/{op}/subprocesses/{spid}",
            axum::routing::delete(signal),
        )
        .route("/images", get(images))
        .route("/images/import", post(import))
        .route("/images/{image}/tag", patch(tag).delete(untag))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .nest("/v1", api)
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

// ---- helpers ----------------------------------------------------------------------------

/// Runs `f` on a blocking thread (the engine and its SQLite store are synchronous).
pub(crate) async fn blocking<T: Send + 'static>(
    st: &Shared,
    f: impl FnOnce(&State) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let st = st.clone();
    tokio::task::spawn_blocking(move || f(&st))
        .await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
}

fn lock<T>(m: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A UUID from the path, lower-cased; 400 otherwise.
pub(crate) fn parse_uuid(text: &str, what: &str) -> ApiResult<String> {
    if crate::backend::is_uuid(text) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} '{text}' is not a valid UUID"
        )))
    }
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn flag(q: &[(String, String)], name: &str) -> bool {
    // `?tagged` alone means 1; `0`/`false` mean off.
    param(q, name).is_some_and(|v| !matches!(v, "0" | "false" | "no"))
}

fn number(
    q: &[(String, String)],
    name: &str,
    min: usize,
    max: usize,
    default: usize,
) -> ApiResult<usize> {
    match param(q, name) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "{name} must be an integer from {min} to {max}"
            ))),
        },
    }
}

/// An image path: absolute, no `..`; 400 otherwise.
fn image_path(q: &[(String, String)]) -> ApiResult<String> {
    let path = param(q, "path").unwrap_or("/");
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") || path.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "path '{path}' must be absolute and must not contain '..'"
        )));
    }
    Ok(path.to_string())
}

/// The whole request body, at most `limit` bytes (413 beyond).
async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    use axum::body::HttpBody;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {limit} bytes"),
        )
    };
    // A declared Content-Length over the limit is refused before reading anything.
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// The image row when `ns` may see it (its own, or public); 404 otherwise.
fn visible_image(st: &State, engine: &LocalEngine, ns: &str, uuid: &str) -> ApiResult<ImageRow> {
    let not_found = || ApiError::not_found(format!("image {uuid} not found"));
    let row = engine.store().image(uuid)?.ok_or_else(not_found)?;
    if image_visible(st, ns, &row)? {
        Ok(row)
    } else {
        Err(not_found())
    }
}

fn image_visible(st: &State, ns: &str, row: &ImageRow) -> ApiResult<bool> {
    Ok(match &row.operation {
        None => true,
        Some(op) => lock(&st.owners).owns(OP, op, ns)?,
    })
}

/// 404 unless `ns` started operation `op`.
pub(crate) fn own_op(st: &State, ns: &str, op: &str) -> ApiResult<()> {
    if lock(&st.owners).owns(OP, op, ns)? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("operation {op} not found")))
    }
}

/// A tag as `ns` names it → the image, own tags first, then public ones.
fn find_tag(st: &State, engine: &LocalEngine, ns: &str, tag: &str) -> ApiResult<Option<String>> {
    if let Some(img) = engine.store().find_tag(&ns_tag(ns, tag))? {
        return Ok(Some(img));
    }
    if tag.starts_with('~') {
        return Ok(None);
    }
    match engine.store().find_tag(tag)? {
        Some(img) => {
            let row = engine.store().image(&img)?;
            match row {
                Some(row) if image_visible(st, ns, &row)? => Ok(Some(img)),
                _ => Ok(None),
            }
        }
        None => Ok(None),
    }
}

fn image_json(row: &ImageRow, tag: Option<&str>) -> Image {
    Image {
        uuid: row.uuid.clone(),
        tag: tag.map(str::to_string),
        created_at: row.created_at.clone(),
        operation_uuid: row.operation.clone(),
    }
}

// ---- whoami -----------------------------------------------------------------------------

async fn whoami(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
) -> ApiResult<Json<Value>> {
    let name = ns.name.clone();
    let stat = blocking(&st, move |st| {
        let owned = lock(&st.owners).all(OP, &name)?;
        let ops = lock(&st.engine).operations(&OpFilter::default())?;
        let mut stat = serde_json::Map::new();
        for op in ops.iter().filter(|o| owned.contains(&o.uuid)) {
            let key = op.status.as_str().to_ascii_lowercase();
            let n = stat.get(&key).and_then(Value::as_u64).unwrap_or(0);
            stat.insert(key, (n + 1).into());
        }
        Ok(stat)
    })
    .await?;
    Ok(Json(json!({
        "token_uuid": ns.token_id,
        "token_expiration": null,
        "namespace": ns.name,
        "permissions": {
            "import": false, "spawn": true, "spawn_disposable": true, "list": true,
            "cancel": true, "set_image_tag": true,
        },
        "operations_stat": stat,
        "limits": {},
    })))
}

// ---- inspect ----------------------------------------------------------------------------

async fn find_by_tag(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Query(q): Params,
) -> ApiResult<Response> {
    let Some(tag) = param(&q, "tag").map(str::to_string) else {
        return Err(ApiError::bad_request("the tag parameter is required"));
    };
    let found = blocking(&st, move |st| {
        let engine = lock(&st.engine);
        find_tag(st, &engine, &ns.name, &tag)?
            .ok_or_else(|| ApiError::not_found(format!("no image tagged '{tag}'")))
    })
    .await?;
    let location = format!("/v1/inspect/{found}/");
    Ok((
        StatusCode::FOUND,
        [(header::LOCATION, location)],
        Json(json!({ "uuid": found })),
    )
        .into_response())
}

async fn inspect_image(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path(image): Path<String>,
) -> ApiResult<Json<Image>> {
    let image = parse_uuid(&image, "image")?;
    blocking(&st, move |st| {
        let engine = lock(&st.engine);
        let row = visible_image(st, &engine, &ns.name, &image)?;
        let tag = row.tags.iter().find_map(|t| visible_tag(&ns.name, t));
        Ok(Json(image_json(&row, tag)))
    })
    .await
}

async fn list(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path(image): Path<String>,
    Query(q): Params,
) -> ApiResult<Response> {
    let image = parse_uuid(&image, "image")?;
    let path = image_path(&q)?;
    let text = flag(&q, "text");
    blocking(&st, move |st| {
        let engine = lock(&st.engine);
        visible_image(st, &engine, &ns.name, &image)?;
        let listing = engine.list_dir(&image, &path)?;
        Ok(if text {
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                crate::engine::inspect::text_listing(&listing.files),
            )
                .into_response()
        } else {
            Json(listing).into_response()
        })
    })
    .await
}

async fn download(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path(image): Path<String>,
    Query(q): Params,
) -> ApiResult<Response> {
    use crate::engine::inspect::InspectError;
    let image = parse_uuid(&image, "image")?;
    let path = image_path(&q)?;
    let (file, size) = blocking(&st, move |st| {
        let engine = lock(&st.engine);
        visible_image(st, &engine, &ns.name, &image)?;
        let view = engine.view(&image)?;
        match view.open(&path) {
            Ok((file, meta)) => Ok((file, meta.len())),
            Err(e @ InspectError::NotAFile(_)) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.to_string(),
            )),
            Err(e @ InspectError::Io { .. }) => Err(ApiError::internal(e.to_string())),
            Err(e) => Err(ApiError::not_found(e.to_string())),
        }
    })
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = file;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(size)),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn archive(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path(image): Path<String>,
    Query(q): Params,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    // Compressed on the wire when the client takes gzip (the official `export` keeps the
    // gzip as its .tar.gz); plain tar otherwise.
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    use crate::engine::inspect::InspectError;
    let image = parse_uuid(&image, "image")?;
    let path = image_path(&q)?;
    let name = format!("{}.tar", path.trim_matches('/').replace('/', "_"));
    let view = blocking(&st, move |st| {
        let engine = lock(&st.engine);
        visible_image(st, &engine, &ns.name, &image)?;
        let view = engine.view(&image)?;
        match super::archive::check(&view, &path) {
            Ok(_) => Ok((view, path)),
            Err(e @ InspectError::NotAFile(_)) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{e} nor a directory"),
            )),
            Err(e @ InspectError::Io { .. }) => Err(ApiError::internal(e.to_string())),
            Err(e) => Err(ApiError::not_found(e.to_string())),
        }
    })
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    tokio::task::spawn_blocking(move || {
        let (view, path) = view;
        let writer =
            std::io::BufWriter::with_capacity(256 * 1024, ChannelWriter { tx: tx.clone() });
        let result = if gzip {
            let mut gz = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
            super::archive::write(&view, &path, &mut gz)
                .and_then(|()| gz.finish())
                .and_then(|mut w| std::io::Write::flush(&mut w))
        } else {
            super::archive::write(&view, &path, writer)
        };
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut extra = Vec::new();
    if gzip {
        extra.push((header::CONTENT_ENCODING, "gzip".to_string()));
    }
    Ok((
        axum::response::AppendHeaders(extra),
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Hands written bytes to the response body; fails once the client is gone.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(buf.to_vec()))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---- files ------------------------------------------------------------------------------

fn file_json(sha: &str, uuid: &str, size: u64, created: &str, updated: &str) -> Value {
    json!({ "uuid": uuid, "sha256": sha, "size": size, "created_at": created, "updated_at": updated })
}

async fn upload(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    body: Body,
) -> ApiResult<Response> {
    use futures_util::StreamExt;
    use sha2::Digest;
    use std::io::Write;
    if axum::body::HttpBody::size_hint(&body).lower() > st.max_upload {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("uploads are limited to {} bytes", st.max_upload),
        ));
    }
    let tmp_dir = st.paths.store().join("tmp");
    let tmp = tmp_dir.join(format!(".upload-{}", uuid::Uuid::new_v4().simple()));
    // Removes the temporary file however the upload ends.
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let cleanup = Cleanup(tmp.clone());
    let mut file = std::fs::File::create(&tmp)
        .map_err(|e| ApiError::internal(format!("{}: {e}", tmp.display())))?;
    let mut hasher = sha2::Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
        size += chunk.len() as u64;
        if size > st.max_upload {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("uploads are limited to {} bytes", st.max_upload),
            ));
        }
        hasher.update(&chunk);
        tokio::task::block_in_place(|| file.write_all(&chunk))
            .map_err(|e| ApiError::internal(format!("{}: {e}", tmp.display())))?;
    }
    drop(file);
    let sha: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let body = blocking(&st, move |st| {
        let _cleanup = cleanup;
        let uuid = {
            let _guard = lock(&st.uploads);
            lock(&st.engine).put_file(&tmp, &sha)?.0
        };
        let owners = lock(&st.owners);
        owners.add(FILE, &sha, &ns.name)?;
        let (created, updated) = owners
            .get(FILE, &sha, &ns.name)?
            .unwrap_or_else(|| (wire::now_ts(), wire::now_ts()));
        Ok(file_json(&sha, &uuid, size, &created, &updated))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn file_info(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path(sha): Path<String>,
) -> ApiResult<Json<Value>> {
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "'{sha}' is not a SHA-256 hex digest"
        )));
    }
    let sha = sha.to_ascii_lowercase();
    blocking(&st, move |st| {
        let not_found = || ApiError::not_found(format!("file {sha} not found"));
        let (created, updated) = lock(&st.owners)
            .get(FILE, &sha, &ns.name)?
            .ok_or_else(not_found)?;
        let engine = lock(&st.engine);
        let uuid = engine.store().blob_uuid(&sha)?.ok_or_else(not_found)?;
        let (_, size) = engine.store().blob_by_uuid(&uuid)?.ok_or_else(not_found)?;
        if !engine.store().blob_path(&sha).exists() {
            return Err(not_found());
        }
        Ok(Json(file_json(&sha, &uuid, size, &created, &updated)))
    })
    .await
}

// ---- instances and operations -----------------------------------------------------------

async fn spawn(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    body: Body,
) -> ApiResult<Response> {
    if *st.shutdown.borrow() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ));
    }
    let body = read_body(body, st.max_body).await?;
    let mut req: SpawnRequest = json_body(&body)?;
    let spawned = blocking(&st, move |st| {
        let engine = lock(&st.engine);
        // Admission: a bounded number of running operations. Rows whose supervisor died
        // are recovered (made terminal) on the way, so they never hold a slot.
        let active = engine.operations(&OpFilter {
            statuses: vec![Status::Pending, Status::Assigned, Status::Executing],
            ..OpFilter::default()
        })?;
        let running = active
            .iter()
            .filter(|o| {
                engine
                    .operation(&o.uuid)
                    .is_ok_and(|o| !o.status.is_terminal())
            })
            .count();
        if running >= st.max_running {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{running} operations are running (the limit is {}); retry later",
                    st.max_running
                ),
            ));
        }
        let image = if crate::backend::is_uuid(&req.image) {
            req.image.to_ascii_lowercase()
        } else {
            let tag = req.image.strip_prefix("tag:").unwrap_or(&req.image);
            find_tag(st, &engine, &ns.name, tag)?
                .ok_or_else(|| ApiError::not_found(format!("image {} not found", req.image)))?
        };
        visible_image(st, &engine, &ns.name, &image)?;
        req.image = image;
        for (path, file) in req.files.iter().flatten() {
            let missing =
                || ApiError::not_found(format!("file {} (for {path}) not found", file.uuid));
            let (sha, _) = engine
                .store()
                .blob_by_uuid(&file.uuid)?
                .ok_or_else(missing)?;
            if !lock(&st.owners).owns(FILE, &sha, &ns.name)? {
                return Err(missing());
            }
        }
        // `close: false` means more stdin follows through the stdin endpoint: the
        // supervisor reads it from a pipe whose write end we keep.
        let keep_open = req.stdin.as_ref().is_some_and(|s| s.close == Some(false));
        let pipe = if keep_open {
            Some(
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| ApiError::internal(format!("pipe: {e}")))?,
            )
        } else {
            None
        };
        let source = match &pipe {
            Some((r, _)) => StdinSource::Fd(r.as_raw_fd()),
            None => StdinSource::Null,
        };
        let op = engine.spawn(&req, source)?;
        lock(&st.owners).add(OP, &op, &ns.name)?;
        if let Some((_, w)) = pipe {
            lock(&st.stdin).insert(op.clone(), std::fs::File::from(w));
        }
        let mut echo = serde_json::to_value(&req).unwrap_or_else(|_| json!({}));
        if let Some(obj) = echo.as_object_mut() {
            obj.insert("uuid".into(), op.clone().into());
        }
        Ok((op, echo))
    })
    .await;
    let (op, echo) = match spawned {
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(resp);
        }
        other => other?,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/operations/{op}"))],
        Json(echo),
    )
        .into_response())
}

async fn operations(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Query(q): Params,
) -> ApiResult<Json<Vec<wire::Operation>>> {
    let limit = number(&q, "limit", 1, 1000, 100)?;
    let offset = number(&q, "offset", 0, usize::MAX, 0)?;
    let mut statuses = Vec::new();
    for (_, v) in q.iter().filter(|(k, _)| k == "status") {
        for s in v.split(',').filter(|s| !s.is_empty()) {
            statuses.push(
                Status::parse(s)
                    .ok_or_else(|| ApiError::bad_request(format!("unknown status '{s}'")))?,
            );
        }
    }
    let kind = param(&q, "kind").map(str::to_string);
    if let Some(k) = &kind {
        if k != "instance" && k != "image_import" {
            return Err(ApiError::bad_request(format!("unknown kind '{k}'")));
        }
    }
    blocking(&st, move |st| {
        let owned = lock(&st.owners).all(OP, &ns.name)?;
        let filter = OpFilter {
            statuses,
            kind,
            limit: None,
        };
        let ops = lock(&st.engine).operations(&filter)?;
        Ok(Json(
            ops.into_iter()
                .filter(|o| owned.contains(&o.uuid))
                .skip(offset)
                .take(limit)
                .collect(),
        ))
    })
    .await
}

/// At most this much of each stream goes into `metadata.result` (the event stream has it all).
const RESULT_CAP: usize = 16 << 20;

/// What the process wrote to stdout and stderr (the first `RESULT_CAP` bytes of each),
/// from the operation's event log.
fn collect_output(engine: &LocalEngine, op: &str) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let path = engine.store().op_dir(op).join("events");
    if let Ok(mut reader) = crate::engine::eventlog::LogReader::open(&path) {
        while let Ok(Some(ev)) = reader.next() {
            let buf = match ev.header.kind.as_str() {
                "stdout" => &mut out,
                "stderr" => &mut err,
                _ => continue,
            };
            let room = RESULT_CAP.saturating_sub(buf.len());
            buf.extend_from_slice(&ev.payload[..ev.payload.len().min(room)]);
        }
    }
    (out, err)
}

fn stream_json(bytes: &[u8]) -> Value {
    let (value, encoding) = wire::encode_bytes(bytes);
    json!({ "value": value, "encoding": encoding })
}

async fn operation(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path(op): Path<String>,
) -> ApiResult<Json<wire::Operation>> {
    let op = parse_uuid(&op, "operation")?;
    blocking(&st, move |st| {
        own_op(st, &ns.name, &op)?;
        let engine = lock(&st.engine);
        let mut wire_op = engine.operation(&op)?;
        if let Some(meta) = wire_op.metadata.as_mut().and_then(Value::as_object_mut) {
            let (out, err) = collect_output(&engine, &op);
            let result = meta.entry("result").or_insert_with(|| json!({}));
            if let Some(result) = result.as_object_mut() {
                result.insert("stdout".into(), stream_json(&out));
                result.insert("stderr".into(), stream_json(&err));
                result.entry("state").or_insert(Value::Null);
            }
        }
        if let Some(result) = wire_op.result.as_mut() {
            if let Some(image) = &result.image {
                if let Ok(Some(row)) = engine.store().image(image) {
                    result.tag = row
                        .tags
                        .iter()
                        .find_map(|t| visible_tag(&ns.name, t))
                        .map(str::to_string);
                }
            }
        }
        Ok(Json(wire_op))
    })
    .await
}

async fn cancel(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path(op): Path<String>,
) -> ApiResult<Response> {
    let op = parse_uuid(&op, "operation")?;
    blocking(&st, move |st| {
        own_op(st, &ns.name, &op)?;
        let engine = lock(&st.engine);
        match engine.cancel(&op) {
            Ok(()) => {}
            Err(crate::backend::BackendError::Invalid(msg)) => {
                return Err(ApiError::new(StatusCode::CONFLICT, msg))
            }
            Err(e) => return Err(e.into()),
        }
        let wire_op = engine.operation(&op)?;
        Ok((StatusCode::ACCEPTED, Json(wire_op)).into_response())
    })
    .await
}

/// `DELETE .../subprocesses/1?signal=NAME`. The engine cannot yet signal one process of a
/// sandbox, so any terminating signal cancels the operation (the official client's first
/// Ctrl-C then ends the run instead of interrupting the command).
async fn signal(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path((op, spid)): Path<(String, String)>,
    Query(q): Params,
) -> ApiResult<Response> {
    let op = parse_uuid(&op, "operation")?;
    let sig = param(&q, "signal").unwrap_or("TERM").to_ascii_uppercase();
    let sig = sig.strip_prefix("SIG").unwrap_or(&sig).to_string();
    if !matches!(
        sig.as_str(),
        "INT" | "TERM" | "KILL" | "HUP" | "QUIT" | "2" | "15" | "9"
    ) {
        return Err(ApiError::bad_request(format!(
            "signal '{sig}' is not supported (INT, TERM, KILL, HUP, QUIT)"
        )));
    }
    blocking(&st, move |st| {
        own_op(st, &ns.name, &op)?;
        if spid != "1" {
            return Err(ApiError::not_found(format!(
                "operation {op} has no subprocess {spid}"
            )));
        }
        match lock(&st.engine).cancel(&op) {
            Ok(()) => Ok(StatusCode::ACCEPTED.into_response()),
            Err(crate::backend::BackendError::Invalid(msg)) => {
                Err(ApiError::new(StatusCode::CONFLICT, msg))
            }
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// `GET /files`: the files this namespace uploaded, newest first.
async fn files(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Query(q): Params,
) -> ApiResult<Json<Value>> {
    let limit = number(&q, "limit", 1, 1000, 100)?;
    let offset = number(&q, "offset", 0, usize::MAX, 0)?;
    blocking(&st, move |st| {
        let owned = lock(&st.owners).all(FILE, &ns.name)?;
        let engine = lock(&st.engine);
        let owners = lock(&st.owners);
        let mut out = Vec::new();
        for sha in owned {
            let Some(uuid) = engine.store().blob_uuid(&sha)? else {
                continue;
            };
            let Some((_, size)) = engine.store().blob_by_uuid(&uuid)? else {
                continue;
            };
            if let Some((created, updated)) = owners.get(FILE, &sha, &ns.name)? {
                out.push(file_json(&sha, &uuid, size, &created, &updated));
            }
        }
        out.sort_by(|a, b| b["updated_at"].as_str().cmp(&a["updated_at"].as_str()));
        let files: Vec<Value> = out.into_iter().skip(offset).take(limit).collect();
        Ok(Json(json!({ "files": files })))
    })
    .await
}

async fn stdin(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path((op, spid)): Path<(String, String)>,
    body: Body,
) -> ApiResult<StatusCode> {
    let op = parse_uuid(&op, "operation")?;
    let body = read_body(body, st.max_body).await?;
    let repr: StdinRepr = json_body(&body)?;
    let bytes = repr
        .bytes()
        .map_err(|e| ApiError::bad_request(format!("stdin is not valid base64: {e}")))?;
    blocking(&st, move |st| {
        own_op(st, &ns.name, &op)?;
        if spid != "1" {
            return Err(ApiError::not_found(format!(
                "operation {op} has no subprocess {spid} with a stdin"
            )));
        }
        // Taken out of the map while writing, so a full pipe never blocks other requests.
        let Some(mut pipe) = lock(&st.stdin).remove(&op) else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("the stdin of operation {op} is closed"),
            ));
        };
        use std::io::Write;
        // A process that has exited reads nothing more: its input is dropped, as a
        // closed pipe would.
        let alive = pipe.write_all(&bytes).is_ok();
        if alive && repr.close != Some(true) {
            lock(&st.stdin).insert(op, pipe);
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---- images -----------------------------------------------------------------------------

async fn images(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Query(q): Params,
) -> ApiResult<Json<Value>> {
    let limit = number(&q, "limit", 1, 1000, 100)?;
    let offset = number(&q, "offset", 0, usize::MAX, 0)?;
    let prefix = param(&q, "tag").map(str::to_string);
    let tagged = flag(&q, "tagged") || prefix.is_some();
    let uuid = match param(&q, "uuid") {
        Some(u) => Some(parse_uuid(u, "image")?),
        None => None,
    };
    blocking(&st, move |st| {
        let rows = lock(&st.engine).store().images()?;
        let mut out = Vec::new();
        for row in &rows {
            if uuid.as_ref().is_some_and(|u| *u != row.uuid) || !image_visible(st, &ns.name, row)? {
                continue;
            }
            let tags: Vec<&str> = row
                .tags
                .iter()
                .filter_map(|t| visible_tag(&ns.name, t))
                .collect();
            if tags.is_empty() {
                if !tagged {
                    out.push(image_json(row, None));
                }
                continue;
            }
            for t in tags {
                if prefix.as_ref().is_none_or(|p| t.starts_with(p.as_str())) {
                    out.push(image_json(row, Some(t)));
                }
            }
        }
        let images: Vec<Image> = out.into_iter().skip(offset).take(limit).collect();
        Ok(Json(json!({ "images": images })))
    })
    .await
}

/// `POST /images/import` pulls from a registry, which the engine cannot do: a clear 501
/// instead of a 404, pointing at what works.
async fn import() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "this server does not import from registries; import a root filesystem, tar or OCI \
         archive on the server machine with `contree images import` (its images are public)",
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TagBody {
    tag: String,
}

async fn tag(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path(image): Path<String>,
    body: Body,
) -> ApiResult<Json<Image>> {
    let image = parse_uuid(&image, "image")?;
    let body = read_body(body, st.max_body).await?;
    let TagBody { tag } = json_body(&body)?;
    if tag.is_empty()
        || tag.len() > 255
        || tag.starts_with('~')
        || tag.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::bad_request(format!("tag '{tag}' is not valid")));
    }
    blocking(&st, move |st| {
        let engine = lock(&st.engine);
        let row = visible_image(st, &engine, &ns.name, &image)?;
        engine.store().set_tag(&image, &ns_tag(&ns.name, &tag))?;
        Ok(Json(image_json(&row, Some(&tag))))
    })
    .await
}

async fn untag(
    st: axum::extract::State<Shared>,
    Extension(ns): Extension<Namespace>,
    Path(image): Path<String>,
    Query(q): Params,
) -> ApiResult<StatusCode> {
    let image = parse_uuid(&image, "image")?;
    let Some(tag) = param(&q, "tag").map(str::to_string) else {
        return Err(ApiError::bad_request("the tag parameter is required"));
    };
    blocking(&st, move |st| {
        let engine = lock(&st.engine);
        visible_image(st, &engine, &ns.name, &image)?;
        if engine.store().remove_tag(&image, &ns_tag(&ns.name, &tag))? {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!(
                "image {image} has no tag '{tag}'"
            )))
        }
    })
    .await
}
