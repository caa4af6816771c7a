//! `/instances` and `/operations`: spawning (with admission and the stdin pipe),
//! listing, reading and cancelling; and `/whoami`. The processes inside a running
//! operation are `subprocesses`.

use super::*;

pub(super) async fn whoami(Caller { st, ns }: Caller) -> ApiResult<Json<Value>> {
    let name = ns.name.clone();
    let stat = blocking(&st, move |st| {
        let owned = lock(&st.owners).all(OP, &name)?;
        let ops = st.engine.operations(&OpFilter::default())?;
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
            "import": true, "spawn": true, "spawn_disposable": true, "list": true,
            "cancel": true, "set_image_tag": true,
        },
        "operations_stat": stat,
        "limits": {},
    })))
}

pub(super) async fn spawn(Caller { st, ns }: Caller, body: Body) -> ApiResult<Response> {
    accepting(&st)?;
    let mut req: SpawnRequest = json_body(body, st.opts.max_body).await?;
    if let Some(why) = wire::over_api_truncate_cap(req.truncate_output_at) {
        return Err(ApiError::bad_request(why));
    }
    crate::engine::limits::clamp(&mut req, &st.limits);
    let spawned = blocking(&st, move |st| {
        let engine = &st.engine;
        // Admission: a bounded number of running operations; beyond it spawns wait in
        // PENDING (see `dispatch`), and beyond a bounded queue they are refused.
        let mut queue = lock(&st.queue);
        let wait =
            !queue.is_empty() || super::super::running(engine, &queue) >= st.opts.max_running;
        if wait && queue.len() >= st.opts.max_pending {
            return Err(ApiError::retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} operations are waiting for a slot (the limit is {}); retry later",
                    queue.len(),
                    st.opts.max_pending
                ),
            ));
        }
        let image = if crate::backend::is_uuid(&req.image) {
            req.image.to_ascii_lowercase()
        } else {
            let tag = req.image.strip_prefix("tag:").unwrap_or(&req.image);
            find_tag(st, engine, &ns.name, tag)?
                .ok_or_else(|| ApiError::not_found(format!("image {} not found", req.image)))?
        };
        visible_image(st, &ns.name, &image)?;
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
        let op = if wait {
            let op = engine.enqueue(&req)?;
            let (read, write) = match pipe {
                Some((r, w)) => (Some(r), Some(w)),
                None => (None, None),
            };
            queue.push_back(super::super::Queued {
                op: op.clone(),
                request: req.clone(),
                stdin: read,
            });
            if let Some(w) = write {
                lock(&st.stdin).insert(op.clone(), std::fs::File::from(w));
            }
            op
        } else {
            let op = match pipe {
                Some((r, w)) => {
                    let op = engine.spawn_piped(&req, r.as_fd())?;
                    lock(&st.stdin).insert(op.clone(), std::fs::File::from(w));
                    op
                }
                None => engine.spawn(&req, StdinSource::Null)?,
            };
            op
        };
        drop(queue);
        lock(&st.owners).add(OP, &op, &ns.name)?;
        let mut echo = serde_json::to_value(&req).unwrap_or_else(|_| json!({}));
        if let Some(obj) = echo.as_object_mut() {
            obj.insert("uuid".into(), op.clone().into());
        }
        Ok((op, echo))
    })
    .await;
    let (op, echo) = spawned?;
    Ok(created(format!("/v1/operations/{op}"), echo))
}

pub(super) async fn operations(
    Caller { st, ns }: Caller,
    Query(q): Params,
) -> ApiResult<Json<Vec<wire::Operation>>> {
    let page = Page::of(&q)?;
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
    let (since, until) = (instant(&q, "since")?, instant(&q, "until")?);
    blocking(&st, move |st| {
        let owned = lock(&st.owners).all(OP, &ns.name)?;
        let filter = OpFilter {
            statuses,
            kind,
            limit: None,
            since,
            until,
        };
        let ops = st.engine.operations(&filter)?;
        Ok(Json(
            page.cut(ops.into_iter().filter(|o| owned.contains(&o.uuid)))
                .collect(),
        ))
    })
    .await
}

pub(super) async fn operation(
    Caller { st, ns }: Caller,
    Path(op): Path<String>,
) -> ApiResult<Json<wire::Operation>> {
    let op = parse_uuid(&op, "operation")?;
    blocking(&st, move |st| {
        own_op(st, &ns.name, &op)?;
        let engine = &st.engine;
        let mut wire_op = engine.operation(&op)?;
        if let Some(meta) = wire_op.metadata.as_mut().and_then(Value::as_object_mut) {
            // (`result` is null while the command runs: the event stream has its output.)
            if let Some(result) = meta.get_mut("result").and_then(Value::as_object_mut) {
                let main = super::subprocesses::fold(engine, &op, 1);
                result.insert("stdout".into(), main.stdout.to_json());
                result.insert("stderr".into(), main.stderr.to_json());
            }
        } else if wire_op.kind == "image_import" {
            wire_op.metadata = super::images::import_metadata(engine, &op);
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

pub(super) async fn cancel(
    Caller { st, ns }: Caller,
    Path(op): Path<String>,
) -> ApiResult<Response> {
    let op = parse_uuid(&op, "operation")?;
    blocking(&st, move |st| {
        own_op(st, &ns.name, &op)?;
        let engine = &st.engine;
        // Still waiting for a slot: it leaves the queue and never starts.
        lock(&st.queue).retain(|q| q.op != op);
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
