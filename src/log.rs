//! Diagnostics on stderr as `[LEVEL] message` lines, the official client's convention.
//!
//! Data never goes through here: stdout belongs to the command's output and records.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warning = 2,
    Error = 3,
    Critical = 4,
}

static THRESHOLD: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    THRESHOLD.store(level as u8, Ordering::Relaxed);
}

pub fn parse_level(text: &str) -> Option<Level> {
    Some(match text.to_ascii_lowercase().as_str() {
        "debug" => Level::Debug,
        "info" => Level::Info,
        "warning" | "warn" => Level::Warning,
        "error" => Level::Error,
        "critical" => Level::Critical,
        _ => return None,
    })
}

pub fn emit(level: Level, message: &str) {
    if (level as u8) < THRESHOLD.load(Ordering::Relaxed) {
        return;
    }
    let name = match level {
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warning => "WARNING",
        Level::Error => "ERROR",
        Level::Critical => "CRITICAL",
    };
    let mut err = std::io::stderr().lock();
    let colour = std::env::var_os("NO_COLOR").is_none()
        && (std::env::var_os("FORCE_COLOR").is_some() || std::io::stderr().is_terminal());
    let _ = if colour {
        let code = match level {
            Level::Debug => "2",
            Level::Info => "36",
            Level::Warning => "33",
            Level::Error | Level::Critical => "31",
        };
        writeln!(err, "\x1b[{code}m[{name}]\x1b[0m {message}")
    } else {
        writeln!(err, "[{name}] {message}")
    };
}

#[macro_export]
macro_rules! info { ($($a:tt)*) => { $crate::log::emit($crate::log::Level::Info, &format!($($a)*)) } }
#[macro_export]
macro_rules! warn { ($($a:tt)*) => { $crate::log::emit($crate::log::Level::Warning, &format!($($a)*)) } }
#[macro_export]
macro_rules! error { ($($a:tt)*) => { $crate::log::emit($crate::log::Level::Error, &format!($($a)*)) } }
#[macro_export]
macro_rules! debug { ($($a:tt)*) => { $crate::log::emit($crate::log::Level::Debug, &format!($($a)*)) } }

static TRACE_START: std::sync::OnceLock<Option<std::time::Instant>> = std::sync::OnceLock::new();

fn trace_start() -> Option<std::time::Instant> {
    *TRACE_START
        .get_or_init(|| std::env::var_os("CONTREE_TRACE").map(|_| std::time::Instant::now()))
}

/// Whether `CONTREE_TRACE` is set (see `trace`).
pub fn tracing() -> bool {
    trace_start().is_some()
}

/// With `CONTREE_TRACE=1`, prints the time since the process started at named points of a
/// run (to stderr; the supervisor's goes to its `supervisor.log`). For performance work.
pub fn trace(label: &str) {
    if let Some(t) = trace_start() {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "[TRACE {:.6} +{:.3}ms] {label}",
            wall.as_secs_f64() % 100.0,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
}
