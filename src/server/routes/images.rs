//! `/images`: listing with filters, tagging and untagging (tags per namespace), and
//! imports from registries.

use super::*;

pub(super) async fn images(Caller { st, ns }: Caller, Query(q): Params) -> ApiResult<Json<Value>> {
    let page = Page::of(&q)?;
    let prefix = param(&q, "tag").map(str::to_string);
    let tagged = flag(&q, "tagged") || prefix.is_some();
    let uuid = match param(&q, "uuid") {
        Some(u) => Some(parse_uuid(u, "image")?),
        None => None,
    };
    blocking(&st, move |st| {
        let rows = st.engine.store().images()?;
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
        let images: Vec<Image> = page.cut(out).collect();
        Ok(Json(json!({ "images": images })))
    })
    .await
}

#[derive(serde::Deserialize)]
struct ImportBody {
    registry: RegistryBody,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
}

#[derive(serde::Deserialize)]
struct RegistryBody {
    url: String,
    #[serde(default)]
    credentials: Option<crate::engine::registry::Credentials>,
}

/// The longest `timeout` an import may ask for, in seconds.
const MAX_IMPORT_TIMEOUT: u64 = 3600;

/// `POST /images/import`: an `image_import` operation that pulls the image from a registry
/// (`docker://HOST/REPO:TAG`, as `contree pull` does) on a thread of the server. The image
/// belongs to the namespace that imported it, and so does its tag: one tenant's import never
/// replaces what another sees. The operation fails if the pull takes longer than `timeout`.
pub(super) async fn import(Caller { st, ns }: Caller, body: Body) -> ApiResult<Response> {
    accepting(&st)?;
    let req: ImportBody = json_body(body, st.opts.max_body).await?;
    if req.registry.url.trim().is_empty() {
        return Err(ApiError::bad_request("registry.url is empty"));
    }
    if let Some(tag) = &req.tag {
        valid_tag(tag)?;
    }
    let timeout = req.timeout.unwrap_or(300);
    if !(1..=MAX_IMPORT_TIMEOUT).contains(&timeout) {
        return Err(ApiError::bad_request(format!(
            "timeout must be 1 to {MAX_IMPORT_TIMEOUT} seconds"
        )));
    }
    let name = ns.name.clone();
    let mut registry = json!({ "url": req.registry.url });
    if let Some(creds) = &req.registry.credentials {
        registry["credentials"] = json!({
            "username": creds.username,
            "password": creds.password.as_ref().map(|_| "<MASKED>"),
        });
    }
    let metadata = json!({ "registry": registry, "tag": req.tag, "timeout": timeout });
    let op = blocking(&st, move |st| {
        let op = st.engine.begin_here("image_import")?;
        lock(&st.owners).add(OP, &op, &name)?;
        // What `GET /operations/{id}` shows as the import's metadata (never the password).
        let path = st.engine.store().op_dir(&op).join(IMPORT_METADATA);
        std::fs::create_dir_all(st.engine.store().op_dir(&op))
            .and_then(|_| std::fs::write(path, metadata.to_string()))
            .map_err(|e| ApiError::internal(format!("recording the import: {e}")))?;
        Ok(op)
    })
    .await?;
    let shared = st.clone();
    let job = op.clone();
    tokio::task::spawn_blocking(move || run_import(&shared, &ns.name, &job, req, timeout));
    Ok(created(
        format!("/v1/operations/{op}"),
        json!({ "uuid": op }),
    ))
}

/// Pulls on a thread of its own with a store connection of its own (the download's many
/// statements stay off the shared engine's connection), then records the result through
/// the shared engine.
///
/// An image this namespace may already see, pulled from the same manifest, is given back
/// instead of a new one (as the API has it: an unchanged image keeps its UUID).
fn run_import(st: &super::super::Shared, ns: &str, op: &str, req: ImportBody, timeout: u64) {
    let (tx, rx) = std::sync::mpsc::channel();
    let store_root = st.opts.paths.store();
    let url = req.registry.url.clone();
    let creds = req.registry.credentials.unwrap_or_default();
    let shared = st.clone();
    let name = ns.to_string();
    let job = op.to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    std::thread::spawn(move || {
        let result = crate::engine::store::Store::open(&store_root)
            .map_err(|e| e.to_string())
            .and_then(|store| {
                let visible = |image: &str| match store.image(image) {
                    Ok(Some(row)) => image_visible(&shared, &name, &row).unwrap_or(false),
                    _ => false,
                };
                let opts = crate::engine::registry::PullOptions {
                    tag: None,
                    reuse: &visible,
                    deadline: Some(deadline),
                    show: crate::progress::Show::Never,
                };
                let pulled = crate::engine::registry::pull(&store, &url, &creds, &opts)
                    .map_err(|e| e.to_string())?;
                // Owned by the operation at once: an image that makes it in just past the
                // deadline is never public, only untagged (and `gc` frees it). A reused
                // image keeps the operation that made it (and so who may see it).
                if !pulled.reused {
                    store
                        .set_image_operation(&pulled.image, &job)
                        .map_err(|e| e.to_string())?;
                }
                Ok(pulled.image)
            });
        let _ = tx.send(result);
    });
    let outcome =
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(Ok(image)) => Ok(image),
            Ok(Err(e)) => Err(format!("import of {} failed: {e}", req.registry.url)),
            Err(_) => Err(format!("import timed out after {timeout}s")),
        };
    let engine = &st.engine;
    let recorded = outcome.and_then(|image| {
        match &req.tag {
            Some(tag) => engine.store().set_tag(&image, &ns_tag(ns, tag)),
            None => Ok(()),
        }
        .map(|_| image)
        .map_err(|e| e.to_string())
    });
    match recorded {
        Ok(image) => engine.finish_here(op, Status::Success, None, Some(&image)),
        Err(e) => engine.finish_here(op, Status::Failed, Some(&e), None),
    }
}

/// The import's request as `ImageImportMetadata`, beside its event log.
const IMPORT_METADATA: &str = "import.json";

/// `ImageImportMetadata` of an import made here; `None` for one whose record is gone.
pub(super) fn import_metadata(engine: &LocalEngine, op: &str) -> Option<Value> {
    let text = std::fs::read(engine.store().op_dir(op).join(IMPORT_METADATA)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// A tag this API accepts: 1 to 255 characters, no whitespace or control characters, not
/// starting with `~` (the namespace marker).
fn valid_tag(tag: &str) -> ApiResult<()> {
    if tag.is_empty()
        || tag.len() > 255
        || tag.starts_with('~')
        || tag.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::bad_request(format!("tag '{tag}' is not valid")));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TagBody {
    tag: String,
}

pub(super) async fn tag(
    Caller { st, ns }: Caller,
    Path(image): Path<String>,
    body: Body,
) -> ApiResult<Json<Image>> {
    let image = parse_uuid(&image, "image")?;
    let TagBody { tag } = json_body(body, st.opts.max_body).await?;
    valid_tag(&tag)?;
    on_image(&st, ns, image, move |engine, ns, row| {
        engine.store().set_tag(&row.uuid, &ns_tag(ns, &tag))?;
        Ok(Json(image_json(&row, Some(&tag))))
    })
    .await
}

pub(super) async fn untag(
    Caller { st, ns }: Caller,
    Path(image): Path<String>,
    Query(q): Params,
) -> ApiResult<StatusCode> {
    let image = parse_uuid(&image, "image")?;
    let tag = param(&q, "tag").map(str::to_string);
    on_image(&st, ns, image, move |engine, ns, row| {
        // No `tag`: every tag of this namespace on the image goes (the shared ones, such as
        // `host`, are no namespace's to remove).
        let Some(tag) = tag else {
            for stored in row.tags.iter().filter(|t| t.starts_with('~')) {
                if visible_tag(ns, stored).is_some() {
                    engine.store().remove_tag(&row.uuid, stored)?;
                }
            }
            return Ok(StatusCode::NO_CONTENT);
        };
        if engine.store().remove_tag(&row.uuid, &ns_tag(ns, &tag))? {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!(
                "image {} has no tag '{tag}'",
                row.uuid
            )))
        }
    })
    .await
}
