//! What waits for the next run or command: files staged for the next run, and runs that
//! have not reached their session yet (the pending list; see docs/sessions.md).

use super::*;

impl SessionStore {
    /// Files to send with the next run (run-behaviour.md §3.7), as `(instance_path,
    /// file_uuid, uid, gid, mode)` sorted by path: walk from the tip through parents
    /// collecting `file` entries, stop at the first entry whose kind is exactly `run` (it
    /// baked them in), and keep the most recent entry per path.
    pub fn pending_files(&self, key: &str) -> Result<Vec<PendingFile>, SessionError> {
        let tx = self.read()?;
        let Some(tip) = active(&tx, key)?.tip else {
            return Ok(Vec::new());
        };
        let mut stmt = tx.prepare(
            "SELECT instance_path, file_uuid, uid, gid, mode FROM files
             WHERE history_id = ?1 ORDER BY rowid DESC",
        )?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        // Walk up one entry at a time: the walk stops at the first `run`, which is
        // usually the tip itself, however long the history is.
        let mut next = Some(tip);
        while let Some(e) = next {
            if e.kind == "run" {
                break;
            }
            next = match e.parent_id {
                Some(p) => entry(&tx, p)?,
                None => None,
            };
            let rows = stmt.query_map([e.id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })?;
            for row in rows {
                let row = row?;
                if seen.insert(row.0.clone()) {
                    out.push(row);
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Appends an op to the session's pending list; re-adding an op updates it in place
    /// (keeping its position).
    pub fn add_pending_op(&self, key: &str, op: &PendingOp) -> Result<(), SessionError> {
        let env = op
            .preserved_env
            .as_ref()
            .map(|env| serde_json::to_string(env).unwrap_or_default());
        let tx = self.write()?;
        tx.execute(
            "INSERT INTO pending_ops (session_key, op, title, disposable, branch, position, foreground, preserved_env, cli_pid, cli_start)
             VALUES (?1, ?2, ?3, ?4, ?5,
                     (SELECT COALESCE(MAX(position), 0) + 1 FROM pending_ops WHERE session_key = ?1),
                     ?6, ?7, ?8, ?9)
             ON CONFLICT (session_key, op) DO UPDATE
             SET title = excluded.title, disposable = excluded.disposable, branch = excluded.branch,
                 foreground = excluded.foreground, preserved_env = excluded.preserved_env,
                 cli_pid = excluded.cli_pid, cli_start = excluded.cli_start",
            params![
                key,
                op.op,
                op.title,
                op.disposable,
                op.branch,
                op.foreground,
                env,
                op.cli.map(|c| c.0),
                op.cli.map(|c| c.1 as i64)
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The pending ops of a session, in the order they were added.
    pub fn pending_ops(&self, key: &str) -> Result<Vec<PendingOp>, SessionError> {
        self.pending_where(key, "")
    }

    /// The session's foreground runs not applied yet (see `PendingOp`).
    pub fn pending_foreground(&self, key: &str) -> Result<Vec<PendingOp>, SessionError> {
        self.pending_where(key, "AND foreground = 1")
    }

    fn pending_where(&self, key: &str, filter: &str) -> Result<Vec<PendingOp>, SessionError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT op, title, disposable, branch, foreground, preserved_env, cli_pid, cli_start
             FROM pending_ops WHERE session_key = ?1 {filter} ORDER BY position"
        ))?;
        // The columns' types, in the order selected.
        type Columns = (
            String,
            String,
            bool,
            String,
            bool,
            Option<String>,
            Option<i32>,
            Option<i64>,
        );
        let rows = stmt.query_map([key], |r| {
            let (op, title, disposable, branch, foreground, env, pid, start): Columns =
                r.try_into()?;
            Ok(PendingOp {
                op,
                title,
                disposable,
                branch,
                foreground,
                preserved_env: env.and_then(|e| serde_json::from_str(&e).ok()),
                cli: pid.zip(start.map(|s| s as u64)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Drops an op from the pending list (no error when it is not there).
    pub fn remove_pending_op(&self, key: &str, op: &str) -> Result<(), SessionError> {
        self.conn.execute(
            "DELETE FROM pending_ops WHERE session_key = ?1 AND op = ?2",
            params![key, op],
        )?;
        Ok(())
    }

    /// Applies a finished run that is on the pending list, in one transaction: takes it off
    /// the list and, when it has a result image, moves the active branch to a `run` entry
    /// for it (remembering `preserved_env` for that image). Whoever takes it off the list
    /// applies it: the run's own CLI, or a later command if that CLI died, never both.
    /// Says whether it was still pending and what it recorded.
    /// With `branch`, the entry goes on that new branch instead (a run that finished after
    /// the session moved on: see `run::settle`) and the active branch stays.
    pub fn apply_pending(
        &self,
        key: &str,
        op: &str,
        result: Option<(&str, &str)>,
        preserved_env: Option<&BTreeMap<String, String>>,
        branch: Option<&str>,
    ) -> Result<Applied, SessionError> {
        let tx = self.write()?;
        let taken = tx.execute(
            "DELETE FROM pending_ops WHERE session_key = ?1 AND op = ?2",
            params![key, op],
        )?;
        let (Some((image, title)), true) = (result, taken > 0) else {
            tx.commit()?;
            return Ok(if taken > 0 {
                Applied::Taken
            } else {
                Applied::NotPending
            });
        };
        let active = active(&tx, key)?;
        let parent = active.tip.as_ref().map(|t| t.id);
        let entry = insert_entry(&tx, key, image, parent, "run", title, Some(op))?;
        upsert_branch(&tx, key, branch.unwrap_or(&active.branch), entry.id)?;
        touch_state(&tx, key, &active.branch)?;
        if let Some(env) = preserved_env {
            let json = serde_json::to_string(env).map_err(|source| SessionError::PreservedEnv {
                image: image.to_string(),
                source,
            })?;
            tx.execute(
                "INSERT INTO preserved_env (image, json) VALUES (?1, ?2)
                 ON CONFLICT (image) DO UPDATE SET json = excluded.json",
                params![image, json],
            )?;
        }
        tx.commit()?;
        Ok(Applied::Recorded(entry))
    }
}
