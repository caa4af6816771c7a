//! `/images`: listing with filters, tagging and untagging (tags per namespace), and the
//! registry import this server does not do.

use super::*;

pub(super) async fn images(
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
pub(super) async fn import() -> ApiError {
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

pub(super) async fn tag(
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

pub(super) async fn untag(
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
