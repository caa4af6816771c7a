//! Long work shows progress: a big attachment (hashing, storing, staging) and a big import (a
//! directory, an archive) draw a bar on stderr when it is a terminal, which util-linux
//! `script` gives the command here; small work draws none, and nothing does when stderr is
//! not a terminal. Registry pulls are checked in `registry`, uploads in `serve`.

use std::path::Path;

use crate::harness::{sha256_hex, Env};

/// 20 MiB (above the 16 MiB a bar needs), different for each `seed`.
pub fn big_content(seed: u8) -> Vec<u8> {
    (0..20u32 << 20).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// No trace of a bar: no bar text, no terminal control sequences.
#[track_caller]
fn assert_no_bar(stderr: &str) {
    for word in [
        "hashing",
        "storing",
        "staging",
        "importing",
        "unpacking",
        "MiB",
    ] {
        assert!(!stderr.contains(word), "a bar on stderr: {stderr:?}");
    }
    assert!(
        !stderr.contains('\x1b'),
        "escape codes on stderr: {stderr:?}"
    );
}

#[test]
fn a_big_attachment_shows_hashing_storing_and_staging_on_a_terminal() {
    let env = Env::host();
    let big = big_content(1);
    let spec = format!("{}:/big", env.write("big.bin", &big).display());
    let Some(out) = env.run_on_terminal(["run", "-D", "-F", &spec, "--", "sha256sum", "/big"])
    else {
        return;
    };
    let text = out.success().stdout_text();
    for bar in [
        "hashing 1 file(s) [",
        "storing 1 file(s) [",
        "staging 1 file(s) [",
    ] {
        assert!(text.contains(bar), "no {bar:?} bar: {text:?}");
    }
    assert!(text.contains("/20.00 MiB"), "no byte total: {text:?}");
    assert!(
        text.contains(&format!("{}  /big", sha256_hex(&big))),
        "{text:?}"
    );
}

#[test]
fn a_big_attachment_draws_nothing_when_stderr_is_not_a_terminal() {
    let env = Env::host();
    let big = big_content(2);
    let spec = format!("{}:/big", env.write("big.bin", &big).display());
    env.run(["run", "-D", "-F", &spec, "--", "sha256sum", "/big"])
        .success()
        .stdout(&format!("{}  /big\n", sha256_hex(&big)))
        .stderr_empty();
}

#[test]
fn small_attachments_draw_no_bar_even_on_a_terminal() {
    let env = Env::host();
    // Many files, but 4 MiB in all: under the threshold.
    for i in 0..64 {
        env.write(&format!("tree/f{i}"), vec![i as u8; 64 << 10]);
    }
    let spec = format!("{}:/t", env.work().join("tree").display());
    let Some(out) = env.run_on_terminal([
        "run",
        "-D",
        "-F",
        &spec,
        "--",
        "sh",
        "-c",
        "cat /t/* | wc -c",
    ]) else {
        return;
    };
    let text = out.success().stdout_text();
    assert!(text.contains(&(64u32 << 16).to_string()), "{text:?}");
    assert_no_bar(&text);
}

/// Packs the directory `root` as an uncompressed tar at `dest`.
fn tar(root: &Path, dest: &Path) {
    let mut builder = tar::Builder::new(std::fs::File::create(dest).expect("create tar"));
    builder.follow_symlinks(false);
    builder.append_dir_all(".", root).expect("add tree");
    builder.finish().expect("finish tar");
}

#[test]
fn a_big_import_shows_progress_on_a_terminal_only() {
    let env = Env::new();
    let big = big_content(3);
    env.write("root/data/big.bin", &big);
    let root = env.work().join("root");
    let archive = env.work().join("root.tar");
    tar(&root, &archive);
    let (root, archive) = (root.to_str().unwrap(), archive.to_str().unwrap());
    // A directory: its size is not known beforehand, so the bar has bytes and a rate.
    let Some(out) = env.run_on_terminal(["images", "import", root, "--tag", "dir"]) else {
        return;
    };
    let text = out.success().stdout_text();
    assert!(
        text.contains(&format!("importing {root} ")) && text.contains("MiB"),
        "no bar: {text:?}"
    );
    // An archive: a bar over its bytes.
    let Some(out) = env.run_on_terminal(["images", "import", archive, "--tag", "tar"]) else {
        return;
    };
    let text = out.success().stdout_text();
    assert!(
        text.contains(&format!("importing {archive} [")) && text.contains("/20."),
        "no bar: {text:?}"
    );
    // Not a terminal: only the closing message.
    let quiet = env
        .run(["images", "import", archive, "--tag", "quiet"])
        .success();
    assert_no_bar(&quiet.stderr_text());
    // Each import holds the file.
    for tag in ["dir", "tar", "quiet"] {
        env.run(["use", &format!("tag:{tag}")]).success();
        env.run(["cat", "/data/big.bin"])
            .success()
            .check("the big file came through", |o| o.stdout == big);
    }
}
