//! `/inspect`: find an image by tag, its metadata, directory listings, file downloads, tar
//! archives and content search. Every call checks that the caller's namespace may see the
//! image.

use super::*;

pub(super) async fn find_by_tag(
    Caller { st, ns }: Caller,
    Query(q): Params,
) -> ApiResult<Response> {
    let Some(tag) = param(&q, "tag").map(str::to_string) else {
        return Err(ApiError::bad_request("the tag parameter is required"));
    };
    let found = blocking(&st, move |st| {
        let engine = &st.engine;
        find_tag(st, engine, &ns.name, &tag)?
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

pub(super) async fn inspect_image(
    Caller { st, ns }: Caller,
    Path(image): Path<String>,
) -> ApiResult<Json<Image>> {
    let image = parse_uuid(&image, "image")?;
    on_image(&st, ns, image, |_, ns, row| {
        let tag = row.tags.iter().find_map(|t| visible_tag(ns, t));
        Ok(Json(image_json(&row, tag)))
    })
    .await
}

/// The image and the path in it that `list`, `download` and `archive` act on: both checked
/// (400) before the image is looked up.
pub(super) struct ImagePath {
    image: String,
    path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for ImagePath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(image) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Query(q) = Params::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(ImagePath {
            image: parse_uuid(&image, "image").map_err(IntoResponse::into_response)?,
            path: image_path(&q).map_err(IntoResponse::into_response)?,
        })
    }
}

pub(super) async fn list(
    Caller { st, ns }: Caller,
    ImagePath { image, path }: ImagePath,
    Query(q): Params,
) -> ApiResult<Response> {
    let text = flag(&q, "text");
    on_image(&st, ns, image, move |engine, _, row| {
        let listing = engine.list_dir(&row.uuid, &path)?;
        Ok(if text {
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                crate::wire::text_listing(&listing.files),
            )
                .into_response()
        } else {
            Json(listing).into_response()
        })
    })
    .await
}

pub(super) async fn grep(
    Caller { st, ns }: Caller,
    Path(image): Path<String>,
    Query(q): Params,
) -> ApiResult<Json<wire::GrepResult>> {
    let image = parse_uuid(&image, "image")?;
    let req = grep_request(&q)?;
    on_image(&st, ns, image, move |engine, _, row| {
        Ok(Json(engine.grep(&row.uuid, &req)?))
    })
    .await
}

/// The query as the engine takes it: repeated `pattern`, `path` and `glob` in order, the
/// numbers read as integers (the engine checks their ranges, and everything else).
fn grep_request(q: &[(String, String)]) -> ApiResult<wire::GrepRequest> {
    let all = |name: &str| -> Vec<String> {
        q.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let integer = |name: &str| -> ApiResult<Option<u64>> {
        param(q, name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "{name} must be a non-negative integer, not '{v}'"
                    ))
                })
            })
            .transpose()
    };
    Ok(wire::GrepRequest {
        patterns: all("pattern"),
        paths: all("path"),
        globs: all("glob"),
        max_count: integer("max_count")?,
        max_total: integer("max_total")?,
        case: param(q, "case").map(str::to_string),
        before: integer("before")?,
        after: integer("after")?,
    })
}

pub(super) async fn download(
    Caller { st, ns }: Caller,
    ImagePath { image, path }: ImagePath,
) -> ApiResult<Response> {
    use crate::engine::inspect::InspectError;
    let (file, size) = on_image(&st, ns, image, move |engine, _, row| {
        let view = engine.view(&row.uuid)?;
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

pub(super) async fn archive(
    Caller { st, ns }: Caller,
    ImagePath { image, path }: ImagePath,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    // Compressed on the wire when the client takes gzip (the official `export` keeps the
    // gzip as its .tar.gz); plain tar otherwise.
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    use crate::engine::inspect::InspectError;
    let name = format!("{}.tar", path.trim_matches('/').replace('/', "_"));
    let view = on_image(&st, ns, image, move |engine, _, row| {
        let view = engine.view(&row.uuid)?;
        match crate::engine::archive::check(&view, &path) {
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
        let result = crate::engine::archive::write_maybe_gzip(&view, &path, gzip, writer);
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
