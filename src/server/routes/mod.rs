//! The /v1 routes: each handler checks the caller's namespace, then makes one or two engine
//! calls on a blocking thread and shapes the answer as the spec (and §8 of the behaviour
//! notes) says.

mod files;
mod images;
mod inspect;
mod operations;
mod subprocesses;

use super::auth::{require_token, Namespace};
use super::owners::{ns_tag, visible_tag, FILE, OP};
use super::{ApiError, Shared, State};
use crate::backend::{Backend, OpFilter, StdinSource};
use crate::engine::store::ImageRow;
use crate::engine::LocalEngine;
use crate::wire::{self, Image, SpawnRequest, Status, StdinRepr};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::os::fd::AsFd;
use std::sync::MutexGuard;

type Params = Query<Vec<(String, String)>>;
type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/whoami", get(operations::whoami))
        .route("/inspect/", get(inspect::find_by_tag))
        .route("/inspect/{image}/", get(inspect::inspect_image))
        .route("/inspect/{image}/list", get(inspect::list))
        .route("/inspect/{image}/download", get(inspect::download))
        .route("/inspect/{image}/archive", get(inspect::archive))
        .route("/inspect/{image}/grep", get(inspect::grep))
        .route("/files", post(files::upload).get(files::files))
        .route("/files/{sha256}", get(files::file_info))
        .route("/instances", post(operations::spawn))
        .route("/operations", get(operations::operations))
        .route(
            "/operations/{op}",
            get(operations::operation).delete(operations::cancel),
        )
        .route("/operations/{op}/events", get(super::sse::events))
        .route("/operations/{op}/subprocesses", post(subprocesses::exec))
        .route(
            "/operations/{op}/subprocesses/{spid}/stdin",
            post(subprocesses::stdin),
        )
        .route(
            "/operations/{op}/subprocesses/{spid}",
            get(subprocesses::subprocess).delete(subprocesses::signal),
        )
        .route("/images", get(images::images))
        .route("/images/import", post(images::import))
        .route(
            "/images/{image}/tag",
            patch(images::tag).delete(images::untag),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
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

/// A known path asked with a method it does not take: the usual error body (axum keeps the
/// `Allow` header).
async fn not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    // (Inside `/v1`, which nesting strips from the path.)
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on /v1{}", uri.path()),
    )
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

/// What every handler starts from: the server's state and the namespace of the caller,
/// which `require_token` has put on the request.
struct Caller {
    st: Shared,
    ns: Namespace,
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &Shared) -> Result<Self, Response> {
        let Extension(ns) = Extension::<Namespace>::from_request_parts(parts, st)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Caller { st: st.clone(), ns })
    }
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

/// The list endpoints' paging: at most `limit` items (1 to 1000, 100 unless asked) after
/// the first `offset`.
#[derive(Debug, Clone, Copy)]
struct Page {
    limit: usize,
    offset: usize,
}

impl Page {
    fn of(q: &[(String, String)]) -> ApiResult<Page> {
        Ok(Page {
            limit: number(q, "limit", 1, 1000, 100)?,
            offset: number(q, "offset", 0, usize::MAX, 0)?,
        })
    }

    fn cut<T>(self, items: impl IntoIterator<Item = T>) -> impl Iterator<Item = T> {
        items.into_iter().skip(self.offset).take(self.limit)
    }
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

/// The request body (see `read_body`) read as JSON.
async fn json_body<T: serde::de::DeserializeOwned>(body: Body, limit: usize) -> ApiResult<T> {
    serde_json::from_slice(&read_body(body, limit).await?)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Query parameter `name` as an instant (ISO 8601, UTC without an offset); absent or empty:
/// no bound.
fn instant(q: &[(String, String)], name: &str) -> ApiResult<Option<chrono::DateTime<chrono::Utc>>> {
    param(q, name)
        .filter(|v| !v.is_empty())
        .map(|v| {
            wire::parse_timestamp(v).ok_or_else(|| {
                ApiError::bad_request(format!("'{name}' is not an ISO 8601 timestamp: '{v}'"))
            })
        })
        .transpose()
}

/// 201 Created: `body`, and where what was made can be read.
fn created(location: String, body: Value) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response()
}

/// 503 once the server is shutting down: it starts no new work.
fn accepting(st: &State) -> ApiResult<()> {
    if *st.shutdown.borrow() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ));
    }
    Ok(())
}

/// The image row when `ns` may see it (its own, or public); 404 otherwise.
fn visible_image(st: &State, ns: &str, uuid: &str) -> ApiResult<ImageRow> {
    let not_found = || ApiError::not_found(format!("image {uuid} not found"));
    let row = st.engine.store().image(uuid)?.ok_or_else(not_found)?;
    if image_visible(st, ns, &row)? {
        Ok(row)
    } else {
        Err(not_found())
    }
}

/// Runs `f` on a blocking thread with the engine, the caller's namespace and the row of
/// image `uuid`, once that namespace may see the image (404 otherwise).
async fn on_image<T: Send + 'static>(
    st: &Shared,
    ns: Namespace,
    uuid: String,
    f: impl FnOnce(&LocalEngine, &str, ImageRow) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    blocking(st, move |st| {
        let row = visible_image(st, &ns.name, &uuid)?;
        f(&st.engine, &ns.name, row)
    })
    .await
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
