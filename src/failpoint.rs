//! Named points where a test makes this process die, to prove that a crash there loses
//! nothing (see tests/cli/faults.rs and docs/store.md, "Crash safety").
//!
//! `CONTREE_FAILPOINTS=NAME[@PERCENT],...` makes the process SIGKILL itself when it reaches
//! a listed point (every time, or in PERCENT of the passes). SIGKILL, not a panic or an
//! exit: nothing runs on the way out, exactly as when the machine or the OOM killer stops
//! it. Unset (always, outside such tests), a point costs one load of a static.

use std::sync::OnceLock;

static POINTS: OnceLock<Vec<(String, u32)>> = OnceLock::new();

/// The environment variable that arms failpoints.
pub const ENV: &str = "CONTREE_FAILPOINTS";

fn armed() -> &'static [(String, u32)] {
    POINTS.get_or_init(|| {
        let Ok(spec) = std::env::var(ENV) else {
            return Vec::new();
        };
        spec.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| match p.trim().split_once('@') {
                Some((name, pct)) => (name.to_string(), pct.parse().unwrap_or(100)),
                None => (p.trim().to_string(), 100),
            })
            .collect()
    })
}

/// Dies here if the point `name` is armed (see the module's doc).
pub fn hit(name: &str) {
    let points = armed();
    if points.is_empty() {
        return;
    }
    for (point, percent) in points {
        if point == name && (uuid::Uuid::new_v4().as_u128() % 100) < u128::from(*percent) {
            crate::log::trace(&format!("failpoint {name}"));
            // SAFETY: kill(2) on ourselves.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

/// Whether the point `name` is armed, for a point that makes the caller take its refusal
/// path (what a host that forbids something does) rather than die.
pub fn refused(name: &str) -> bool {
    armed().iter().any(|(point, _)| point == name)
}
