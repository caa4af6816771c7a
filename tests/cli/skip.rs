//! The one way a test says it could not check what it is for, because something it needs (a
//! tool, a package) is missing on this machine. Shared by every test crate of the workspace
//! (`#[path]`-included by the plugin crates), so a skip always behaves the same.
//!
//! Under CI (`CI` set, as `.ci/run` does) a skip fails the test: CI installs everything, so a
//! missing tool there is a broken setup, not a pass. Elsewhere the test passes, and the line
//! goes straight to the terminal, past libtest's capture of passing tests' output, so
//! whoever runs `cargo test` sees it.

use std::io::Write;

/// Reports the running test as skipped for `reason`: panics under CI, else says so on
/// stderr and returns (the caller then returns too).
#[track_caller]
pub fn skip(reason: &str) {
    // libtest names each test's thread after the test.
    let current = std::thread::current();
    let test = current.name().unwrap_or("<unnamed test>");
    if under_ci() {
        panic!("{test} cannot run here (CI must not skip tests): {reason}");
    }
    // `eprintln!` would be captured (and shown only for failing tests); fd 2 is not.
    let _ = writeln!(std::io::stderr(), "\nSKIPPED: {test}: {reason}");
}

/// `CI` is set to anything but empty, `0` or `false` (CI services set `CI=true`).
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}
