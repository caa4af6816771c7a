//! The operations table: one row per operation, from PENDING to its ending, with who
//! supervises it and what it consumed. The event log (`eventlog`) says the rest.

use super::{Result, Store};
use crate::wire::{self, Operation, SpawnRequest, Status};
use rusqlite::{params, OptionalExtension};

/// What the engine records about an operation besides the wire fields.
#[derive(Debug, Clone)]
pub struct OpRow {
    pub uuid: String,
    pub kind: String,
    pub status: Status,
    pub created_at: String,
    pub duration: Option<f64>,
    pub image: Option<String>,
    pub result_image: Option<String>,
    pub error: Option<String>,
    pub request: Option<SpawnRequest>,
    pub supervisor_pid: Option<i32>,
    pub supervisor_start: Option<u64>,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub image_size: Option<u64>,
    /// CPU seconds and peak memory (KiB) of the sandbox (see `cgroup`).
    pub consumed_cpu: Option<f64>,
    pub consumed_memory: Option<u64>,
    /// The limits the run had and which of them it hit (see `set_op_resources`).
    pub resources: Option<serde_json::Value>,
}

impl OpRow {
    /// The `OperationResponse` shape; `metadata` carries the request echo and the result state.
    pub fn to_wire(&self) -> Operation {
        let mut metadata = None;
        if let Some(req) = &self.request {
            let mut meta = serde_json::to_value(req).unwrap_or_default();
            if let Some(obj) = meta.as_object_mut() {
                obj.remove("stdin");
                if self.status.is_terminal() {
                    let mut state = serde_json::Map::new();
                    if let Some(code) = self.exit_code {
                        state.insert("exit_code".into(), code.into());
                        state.insert("timed_out".into(), self.timed_out.into());
                    }
                    let mut result = serde_json::Map::new();
                    if let Some(res) = self.resources.as_ref().and_then(|r| r.as_object()) {
                        for key in ["oom", "layer_limit_hit"] {
                            if let Some(v) = res.get(key) {
                                state.insert(key.into(), v.clone());
                            }
                        }
                        if let Some(limits) = res.get("limits") {
                            result.insert("limits".into(), limits.clone());
                        }
                    }
                    result.insert("state".into(), serde_json::Value::Object(state));
                    obj.insert("result".into(), serde_json::Value::Object(result));
                }
            }
            metadata = Some(meta);
        }
        Operation {
            uuid: self.uuid.clone(),
            kind: self.kind.clone(),
            status: self.status,
            error: self.error.clone(),
            created_at: Some(self.created_at.clone()),
            duration: self.duration,
            image_size: self.image_size,
            image_uuid: self.image.clone(),
            result_image_uuid: self.result_image.clone(),
            consumed_cpu: self.consumed_cpu,
            consumed_memory: self.consumed_memory,
            metadata,
            result: Some(wire::OperationResult {
                image: self.result_image.clone(),
                tag: None,
            }),
        }
    }
}

impl Store {
    pub fn create_op(
        &self,
        uuid: &str,
        kind: &str,
        image: Option<&str>,
        request: Option<&SpawnRequest>,
    ) -> Result<()> {
        self.write(
            "INSERT INTO operations(uuid, kind, status, created_at, image, request) VALUES (?1, ?2, 'PENDING', ?3, ?4, ?5)",
            params![
                uuid,
                kind,
                wire::now_ts(),
                image,
                request.map(|r| serde_json::to_string(r).unwrap_or_default())
            ],
        )
    }

    /// Records an operation its supervisor already runs (see `Job::created_at`); a row
    /// that exists (created by the spawner) is marked EXECUTING instead.
    #[allow(clippy::too_many_arguments)]
    pub fn create_executing_op(
        &self,
        uuid: &str,
        kind: &str,
        created_at: &str,
        image: Option<&str>,
        request: Option<&SpawnRequest>,
        pid: i32,
        start: u64,
    ) -> Result<()> {
        self.write(
            "INSERT INTO operations(uuid, kind, status, created_at, image, request, supervisor_pid, supervisor_start)
             VALUES (?1, ?2, 'EXECUTING', ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(uuid) DO UPDATE SET status = 'EXECUTING', supervisor_pid = ?6, supervisor_start = ?7
             WHERE status IN ('PENDING', 'ASSIGNED')",
            params![
                uuid,
                kind,
                created_at,
                image,
                request.map(|r| serde_json::to_string(r).unwrap_or_default()),
                pid,
                start as i64
            ],
        )
    }

    pub fn delete_op(&self, uuid: &str) -> Result<()> {
        self.write("DELETE FROM operations WHERE uuid = ?1", [uuid])
    }

    fn op_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OpRow> {
        let status: String = r.get(2)?;
        let request: Option<String> = r.get(8)?;
        Ok(OpRow {
            uuid: r.get(0)?,
            kind: r.get(1)?,
            status: Status::parse(&status).unwrap_or(Status::Failed),
            created_at: r.get(3)?,
            duration: r.get(4)?,
            image: r.get(5)?,
            result_image: r.get(6)?,
            error: r.get(7)?,
            request: request.and_then(|t| serde_json::from_str(&t).ok()),
            supervisor_pid: r.get(9)?,
            supervisor_start: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
            exit_code: r.get(11)?,
            timed_out: r.get::<_, i64>(12)? != 0,
            image_size: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
            consumed_cpu: r.get(14)?,
            consumed_memory: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
            resources: r
                .get::<_, Option<String>>(16)?
                .and_then(|t| serde_json::from_str(&t).ok()),
        })
    }

    const OP_COLUMNS: &'static str = "uuid, kind, status, created_at, duration, image, result_image, error, request, supervisor_pid, supervisor_start, exit_code, timed_out, image_size, consumed_cpu, consumed_memory, resources";

    /// What a run consumed and the limits it had (see `cgroup::Usage`), before its ending.
    pub fn set_op_resources(
        &self,
        uuid: &str,
        consumed_cpu: Option<f64>,
        consumed_memory: Option<u64>,
        resources: &serde_json::Value,
    ) -> Result<()> {
        self.write(
            "UPDATE operations SET consumed_cpu = ?2, consumed_memory = ?3, resources = ?4 WHERE uuid = ?1",
            params![uuid, consumed_cpu, consumed_memory.map(|m| m as i64), resources.to_string()],
        )
    }

    pub fn op(&self, uuid: &str) -> Result<Option<OpRow>> {
        let sql = format!(
            "SELECT {} FROM operations WHERE uuid = ?1",
            Self::OP_COLUMNS
        );
        Ok(self
            .conn()?
            .query_row(&sql, [uuid.to_ascii_lowercase()], Self::op_from_row)
            .optional()?)
    }

    /// Operations, newest first, optionally only those with one of `statuses`.
    pub fn ops(&self, statuses: &[Status], kind: Option<&str>) -> Result<Vec<OpRow>> {
        // Filtered in SQL (on the status index): every command looks for active
        // operations, and the table grows with every run.
        let mut sql = format!("SELECT {} FROM operations WHERE 1", Self::OP_COLUMNS);
        let mut params: Vec<String> = Vec::new();
        if !statuses.is_empty() {
            let marks = vec!["?"; statuses.len()].join(",");
            sql.push_str(&format!(" AND status IN ({marks})"));
            params.extend(statuses.iter().map(|s| s.as_str().to_string()));
        }
        if let Some(k) = kind {
            sql.push_str(" AND kind = ?");
            params.push(k.to_string());
        }
        sql.push_str(" ORDER BY created_at DESC, rowid DESC");
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params.iter()), Self::op_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// PENDING → EXECUTING, recording who supervises the operation.
    pub fn mark_executing(&self, uuid: &str, pid: i32, start: u64) -> Result<bool> {
        Ok(self.conn()?.execute(
            "UPDATE operations SET status = 'EXECUTING', supervisor_pid = ?2, supervisor_start = ?3 WHERE uuid = ?1 AND status IN ('PENDING', 'ASSIGNED')",
            params![uuid, pid, start as i64],
        )? > 0)
    }

    pub fn set_supervisor(&self, uuid: &str, pid: i32, start: u64) -> Result<()> {
        self.write(
            "UPDATE operations SET supervisor_pid = ?2, supervisor_start = ?3 WHERE uuid = ?1",
            params![uuid, pid, start as i64],
        )
    }

    /// Moves an active operation to a terminal status. Returns false if it already was
    /// terminal (someone else finished it), so exactly one writer appends `completion`.
    #[allow(clippy::too_many_arguments)]
    pub fn finish_op(
        &self,
        uuid: &str,
        status: Status,
        error: Option<&str>,
        duration: f64,
        result_image: Option<&str>,
        exit_code: Option<i32>,
        timed_out: bool,
        image_size: Option<u64>,
    ) -> Result<bool> {
        Ok(self.conn()?.execute(
            "UPDATE operations SET status = ?2, error = ?3, duration = ?4, result_image = ?5, exit_code = ?6, timed_out = ?7, image_size = ?8
             WHERE uuid = ?1 AND status IN ('PENDING', 'ASSIGNED', 'EXECUTING')",
            params![uuid, status.as_str(), error, duration, result_image, exit_code, timed_out as i64, image_size.map(|s| s as i64)],
        )? > 0)
    }
}
