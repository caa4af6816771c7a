//! What contree reads from /proc about processes: whether a process is still the one a
//! record names (a supervisor in the store, a CLI on a session's pending list: its pid and
//! start time), and whether this process may fork safely.

/// Whether this process has one thread (a plugin or hook may have started others; a
/// forked copy could then inherit a lock one of them held).
pub fn single_threaded() -> bool {
    let pid = std::process::id() as i32;
    stat_fields(pid).and_then(|f| f.get(17)?.parse::<u32>().ok()) == Some(1)
}

/// The fields of /proc/PID/stat after the command name, from the state (field 3) on.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The start time of a process (field 22 of /proc/PID/stat), to tell a live supervisor
/// from a recycled pid; `None` if it is gone or a zombie.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    if matches!(fields.first().map(String::as_str), Some("Z") | Some("X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}
