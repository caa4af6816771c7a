//! The operations table: one row per operation, from PENDING to its ending, with who
//! supervises it and what it consumed. The event log (`eventlog`) says the rest.

use super::{Result, Store};
use crate::wire::{self, Operation, SpawnRequest, Status};
use rusqlite::{params, OptionalExtension};
use serde_json::{json, Map, Value};

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
    /// An instance operation created now, with nothing recorded about it yet.
    pub fn instance(uuid: &str, status: Status) -> OpRow {
        OpRow {
            uuid: uuid.to_string(),
            kind: "instance".into(),
            status,
            created_at: wire::now_ts(),
            duration: None,
            image: None,
            result_image: None,
            error: None,
            request: None,
            supervisor_pid: None,
            supervisor_start: None,
            exit_code: None,
            timed_out: false,
            image_size: None,
            consumed_cpu: None,
            consumed_memory: None,
            resources: None,
        }
    }

    /// The `OperationResponse` shape: `metadata` is the request as the API describes it
    /// (`OperationInstanceMetadata`: every field, defaults filled in) and, once the run has
    /// ended, its `result` (the serve route adds the output); while it runs `result` is
    /// null and `duration` is the time so far.
    pub fn to_wire(&self) -> Operation {
        Operation {
            metadata: self.request.as_ref().map(|req| self.instance_metadata(req)),
            ..self.summary()
        }
    }

    /// `to_wire` without `metadata`, as listings give each operation.
    pub fn summary(&self) -> Operation {
        let duration = self.duration.or_else(|| {
            (!self.status.is_terminal())
                .then(|| wire::seconds_since(&self.created_at))
                .flatten()
        });
        Operation {
            uuid: self.uuid.clone(),
            kind: self.kind.clone(),
            status: self.status,
            error: self.error.clone(),
            created_at: Some(self.created_at.clone()),
            duration,
            image_size: self.image_size,
            image_uuid: self.image.clone(),
            result_image_uuid: self.result_image.clone(),
            consumed_cpu: self.consumed_cpu,
            consumed_memory: self.consumed_memory,
            metadata: None,
            result: Some(wire::OperationResult {
                image: self.result_image.clone(),
                tag: None,
            }),
        }
    }

    /// `OperationInstanceMetadata` for this run.
    fn instance_metadata(&self, req: &SpawnRequest) -> Value {
        let mut meta = serde_json::to_value(req).unwrap_or_default();
        let Some(obj) = meta.as_object_mut() else {
            return meta;
        };
        // What the request left out, as the API's defaults say (a timeout of 0: none).
        let defaults = [
            ("args", json!([])),
            ("env", json!({})),
            ("cwd", json!("")),
            ("files", json!({})),
            ("preserve_env", json!(false)),
            ("timeout", json!(0)),
            ("truncate_output_at", json!(wire::DEFAULT_TRUNCATE_AT)),
            ("stdin", json!({"value": "", "encoding": "ascii"})),
        ];
        for (key, value) in defaults {
            obj.entry(key).or_insert(value);
        }
        if !self.status.is_terminal() {
            obj.insert("result".into(), Value::Null);
            return meta;
        }
        let recorded = self.resources.as_ref().and_then(Value::as_object);
        let get = |key: &str| recorded.and_then(|r| r.get(key));
        let process = |key: &str, default: Value| {
            get("process")
                .and_then(|p| p.get(key))
                .cloned()
                .unwrap_or(default)
        };
        let mut state = json!({
            // -1: the command did not end on its own account (it never started, or was lost).
            "exit_code": self.exit_code.unwrap_or(-1),
            "timed_out": self.timed_out,
            "pid": process("pid", json!(0)),
            "signal": process("signal", json!(-1)),
            "core_dump": process("core_dump", json!(false)),
            "stopped": false,
            "continued": false,
        });
        for key in ["oom", "layer_limit_hit"] {
            if let Some(v) = get(key) {
                state[key] = v.clone();
            }
        }
        let mut result = Map::new();
        result.insert("state".into(), state);
        result.insert("resources".into(), wire::process_resources(get("rusage")));
        if let Some(limits) = get("limits") {
            result.insert("limits".into(), limits.clone());
        }
        obj.insert("result".into(), Value::Object(result));
        meta
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Status) -> OpRow {
        OpRow {
            request: serde_json::from_value(json!({"image": "i", "command": "true"})).ok(),
            ..OpRow::instance("u", status)
        }
    }

    #[test]
    fn a_running_instance_has_no_result_and_a_duration_so_far() {
        let op = row(Status::Executing).to_wire();
        let meta = op.metadata.unwrap();
        assert_eq!(meta["result"], Value::Null);
        assert_eq!(meta["args"], json!([]));
        assert_eq!(meta["stdin"], json!({"value": "", "encoding": "ascii"}));
        assert_eq!(meta["truncate_output_at"], json!(wire::DEFAULT_TRUNCATE_AT));
        assert!(op.duration.is_some_and(|d| d >= 0.0));
    }

    #[test]
    fn an_ended_instance_has_the_api_s_state_and_sixteen_counters() {
        let mut r = row(Status::Success);
        r.exit_code = Some(3);
        r.resources = Some(json!({
            "oom": false,
            "rusage": {"max_rss": 1000, "user_cpu_time": 0.5},
            "process": {"pid": 7, "signal": -1, "core_dump": false},
        }));
        let meta = r.to_wire().metadata.unwrap();
        let result = &meta["result"];
        assert_eq!(result["state"]["exit_code"], 3);
        assert_eq!(result["state"]["pid"], 7);
        assert_eq!(result["state"]["stopped"], false);
        assert_eq!(result["state"]["oom"], false);
        let counters = result["resources"].as_object().unwrap();
        assert_eq!(counters.len(), 16);
        assert_eq!(counters["max_rss"], 1000);
        assert_eq!(counters["user_cpu_time"], 0.5);
        assert_eq!(counters["cost"], 0.0);
        // Nothing recorded (an old row, or a run that never started): still the shape.
        let mut bare = row(Status::Failed);
        bare.exit_code = None;
        let meta = bare.to_wire().metadata.unwrap();
        assert_eq!(meta["result"]["state"]["exit_code"], -1);
        assert_eq!(meta["result"]["resources"].as_object().unwrap().len(), 16);
    }
}
