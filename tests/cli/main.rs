//! Integration tests that drive the real `contree` binary the way a user does, one module per
//! behaviour. Every test owns a fresh data dir (see `harness`); none may touch the user's.
//! The local engine needs root (namespaces + overlayfs).

mod harness;
mod skip;

mod attachments;
mod build;
mod completions;
mod doctor;
mod durability;
mod errors;
mod escape_hardening;
mod escape_limits;
mod escape_network;
mod escape_serve;
mod escape_userns;
mod exec;
mod exit_codes;
mod export;
mod faults;
mod file;
mod gc;
mod grep;
mod hooks;
mod host_image;
mod images;
mod import_formats;
mod inspection;
mod interpreter;
mod interrupt;
mod long_sessions;
mod manual;
mod operations;
mod plugins;
mod progress;
mod registry;
mod rootless;
mod run_basics;
mod sdk;
mod serve;
mod sessions;
mod sessions_tree;
mod shell;
mod skill;
mod snapshots;
mod stdin;
mod timeout_truncate;

/// A test file that is not declared here would silently never run.
#[test]
fn every_test_file_is_declared_as_a_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli");
    let main = std::fs::read_to_string(dir.join("main.rs")).expect("read main.rs");
    let mut forgotten = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("list tests/cli") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name != "main" && !main.lines().any(|l| l.trim() == format!("mod {name};")) {
            forgotten.push(name);
        }
    }
    assert!(
        forgotten.is_empty(),
        "tests/cli/*.rs not declared in main.rs: {forgotten:?}"
    );
}
