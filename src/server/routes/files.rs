//! `/files`: uploads (streamed to disk while hashed, bounded), lookups by sha256 and the
//! namespace's list. Content is stored once; ownership is per namespace.

use super::*;

fn file_json(sha: &str, uuid: &str, size: u64, created: &str, updated: &str) -> Value {
    json!({ "uuid": uuid, "sha256": sha, "size": size, "created_at": created, "updated_at": updated })
}

/// A failed write of an upload: a full store is 507, with nothing kept.
fn upload_write_err(tmp: &std::path::Path, e: std::io::Error) -> ApiError {
    if crate::engine::store::disk_full(&e) {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("the server's store is full ({e}): the upload was not kept"),
        )
    } else {
        ApiError::internal(format!("{}: {e}", tmp.display()))
    }
}

pub(super) async fn upload(Caller { st, ns }: Caller, body: Body) -> ApiResult<Response> {
    use futures_util::StreamExt;
    use sha2::Digest;
    use std::io::Write;
    if axum::body::HttpBody::size_hint(&body).lower() > st.opts.max_upload {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("uploads are limited to {} bytes", st.opts.max_upload),
        ));
    }
    let tmp = st
        .opts
        .paths
        .store()
        .join("tmp")
        .join(format!(".upload-{}", uuid::Uuid::new_v4().simple()));
    // Claimed while it fills (recovery leaves it alone) and removed however the upload ends.
    struct Cleanup(Option<crate::engine::claim::Claim>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(claim) = self.0.take() {
                let _ = claim.remove();
            }
        }
    }
    let cleanup = Cleanup(Some(
        crate::engine::claim::Claim::create_file(&tmp).map_err(|e| upload_write_err(&tmp, e))?,
    ));
    let mut file = cleanup.0.as_ref().map(|c| c.file()).expect("just made");
    let mut hasher = sha2::Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
        size += chunk.len() as u64;
        if size > st.opts.max_upload {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("uploads are limited to {} bytes", st.opts.max_upload),
            ));
        }
        hasher.update(&chunk);
        tokio::task::block_in_place(|| file.write_all(&chunk))
            .map_err(|e| upload_write_err(&tmp, e))?;
    }
    let sha = crate::sha256::hex(&hasher.finalize());
    let body = blocking(&st, move |st| {
        let _cleanup = cleanup;
        // Uploads store at once: each copy is staged under a name of its own.
        let uuid = st.engine.put_file(&tmp, &sha)?.0;
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

pub(super) async fn file_info(
    Caller { st, ns }: Caller,
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
        let engine = &st.engine;
        let uuid = engine.store().blob_uuid(&sha)?.ok_or_else(not_found)?;
        let (_, size) = engine.store().blob_by_uuid(&uuid)?.ok_or_else(not_found)?;
        if !engine.store().blob_path(&sha).exists() {
            return Err(not_found());
        }
        Ok(Json(file_json(&sha, &uuid, size, &created, &updated)))
    })
    .await
}

/// `GET /files`: the files this namespace uploaded, newest first.
pub(super) async fn files(Caller { st, ns }: Caller, Query(q): Params) -> ApiResult<Json<Value>> {
    let page = Page::of(&q)?;
    // `since`/`until` bound when this namespace first uploaded each file.
    let range = crate::backend::FileFilter {
        since: instant(&q, "since")?,
        until: instant(&q, "until")?,
        limit: None,
    };
    blocking(&st, move |st| {
        let owned = lock(&st.owners).all(FILE, &ns.name)?;
        let engine = &st.engine;
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
                let file = wire::File {
                    uuid,
                    sha256: sha,
                    size: size as i64,
                    created_at: created,
                    updated_at: updated,
                };
                if range.admits(&file) {
                    out.push(file);
                }
            }
        }
        out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at));
        let files: Vec<wire::File> = page.cut(out).collect();
        Ok(Json(json!({ "files": files })))
    })
    .await
}
