//! Reading and writing single rows of the sessions database: the mappers from rows to
//! entries and the small steps the store's transactions are made of.

use super::*;

pub(super) fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(super) const INFO_SELECT: &str =
    "SELECT s.session_key, s.active_branch, h.image, h.kind, h.title, s.updated_at, h.id
    FROM state s
    JOIN branches b ON b.session_key = s.session_key AND b.name = s.active_branch
    JOIN history h ON h.id = b.history_id";

pub(super) fn info_row(r: &Row<'_>) -> rusqlite::Result<SessionInfo> {
    let (session_key, active_branch, current_image, last_kind, last_title, updated_at, tip_id) =
        r.try_into()?;
    Ok(SessionInfo {
        session_key,
        active_branch,
        current_image,
        last_kind,
        last_title,
        updated_at,
        tip_id,
    })
}

pub(super) fn entry_row(r: &Row<'_>) -> rusqlite::Result<HistoryEntry> {
    let (id, session_key, image, parent_id, kind, title, operation, created_at) = r.try_into()?;
    Ok(HistoryEntry {
        id,
        session_key,
        image,
        parent_id,
        kind,
        title,
        operation,
        created_at,
    })
}

pub(super) fn entry(conn: &Connection, id: i64) -> Result<Option<HistoryEntry>, SessionError> {
    let sql = format!("SELECT {ENTRY_COLS} FROM history h WHERE h.id = ?1");
    Ok(conn.query_row(&sql, [id], entry_row).optional()?)
}

/// `id` and its ancestors, nearest first.
pub(super) fn ancestry(conn: &Connection, id: i64) -> Result<Vec<HistoryEntry>, SessionError> {
    let sql = format!(
        "{CHAIN} SELECT {ENTRY_COLS} FROM chain c JOIN history h ON h.id = c.id ORDER BY c.depth"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([id], entry_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn newest_child(
    conn: &Connection,
    key: &str,
    id: i64,
) -> Result<Option<HistoryEntry>, SessionError> {
    let sql = format!(
        "SELECT {ENTRY_COLS} FROM history h WHERE h.parent_id = ?1 AND h.session_key = ?2
         ORDER BY h.id DESC LIMIT 1"
    );
    Ok(conn
        .query_row(&sql, params![id, key], entry_row)
        .optional()?)
}

pub(super) fn branch_tip(
    conn: &Connection,
    key: &str,
    name: &str,
) -> Result<Option<i64>, SessionError> {
    Ok(conn
        .query_row(
            "SELECT history_id FROM branches WHERE session_key = ?1 AND name = ?2",
            params![key, name],
            |r| r.get(0),
        )
        .optional()?)
}

/// The active branch name (`main` for a session without state) and its tip entry.
pub(super) fn active(conn: &Connection, key: &str) -> Result<Active, SessionError> {
    let branch: String = conn
        .query_row(
            "SELECT active_branch FROM state WHERE session_key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_else(|| "main".to_string());
    let tip = match branch_tip(conn, key, &branch)? {
        Some(id) => entry(conn, id)?,
        None => None,
    };
    Ok(Active { branch, tip })
}

pub(super) fn insert_entry(
    conn: &Connection,
    key: &str,
    image: &str,
    parent: Option<i64>,
    kind: &str,
    title: &str,
    operation: Option<&str>,
) -> Result<HistoryEntry, SessionError> {
    let created_at = now();
    // An entry's cwd: its own path for `cd`, else its parent's.
    conn.execute(
        "INSERT INTO history (session_key, image, parent_id, kind, title, operation, created_at, cwd)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
                 CASE WHEN ?4 = 'cd' THEN ?5 ELSE (SELECT cwd FROM history WHERE id = ?3) END)",
        params![key, image, parent, kind, title, operation, created_at],
    )?;
    Ok(HistoryEntry {
        id: conn.last_insert_rowid(),
        session_key: key.to_string(),
        image: image.to_string(),
        parent_id: parent,
        kind: kind.to_string(),
        title: title.to_string(),
        operation: operation.map(str::to_string),
        created_at,
    })
}

/// Appends an entry that keeps the tip's image (`cd`, `file`) and moves the active branch.
pub(super) fn append_on_tip(
    conn: &Connection,
    key: &str,
    kind: &str,
    title: &str,
) -> Result<HistoryEntry, SessionError> {
    let active = active(conn, key)?;
    let tip = active.tip.ok_or(SessionError::NoSession)?;
    let entry = insert_entry(conn, key, &tip.image, Some(tip.id), kind, title, None)?;
    upsert_branch(conn, key, &active.branch, entry.id)?;
    touch_state(conn, key, &active.branch)?;
    Ok(entry)
}

pub(super) fn upsert_branch(
    conn: &Connection,
    key: &str,
    name: &str,
    id: i64,
) -> Result<(), SessionError> {
    conn.execute(
        "INSERT INTO branches (session_key, name, history_id) VALUES (?1, ?2, ?3)
         ON CONFLICT (session_key, name) DO UPDATE SET history_id = excluded.history_id",
        params![key, name, id],
    )?;
    Ok(())
}

pub(super) fn touch_state(
    conn: &Connection,
    key: &str,
    active_branch: &str,
) -> Result<(), SessionError> {
    conn.execute(
        "INSERT INTO state (session_key, active_branch, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (session_key) DO UPDATE
         SET active_branch = excluded.active_branch, updated_at = excluded.updated_at",
        params![key, active_branch, now()],
    )?;
    Ok(())
}
