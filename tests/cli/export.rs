//! `contree export [PATH]`: the session image (or a subtree) as a tar stream, tar.gz by
//! default, plain tar with `--decompress` or `-F *.tar`; on this machine and through
//! `contree serve` (the API's archive endpoint), which must give the same archive.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::harness::Env;
use crate::serve::{our_client, Server};

/// What a member is: a file and its content, a directory, a symlink and its target.
#[derive(Debug, PartialEq, Eq)]
enum Member {
    File(Vec<u8>),
    Dir,
    Link(String),
}

/// The members of a tar (gzip-compressed when `gzip`) by path, `./` and trailing `/` cut.
fn members(bytes: &[u8], gzip: bool) -> BTreeMap<String, Member> {
    assert_eq!(
        bytes.starts_with(&[0x1f, 0x8b]),
        gzip,
        "gzip magic should be {}",
        if gzip { "there" } else { "absent" }
    );
    let reader: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = BTreeMap::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("a tar entry");
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let member = match entry.header().entry_type() {
            tar::EntryType::Directory => Member::Dir,
            tar::EntryType::Symlink => Member::Link(
                entry
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => {
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                Member::File(content)
            }
        };
        out.insert(path, member);
    }
    out
}

fn file(content: &str) -> Member {
    Member::File(content.as_bytes().to_vec())
}

/// `/x` with a file, a subdirectory, a symlink, and a file deleted by a later run (whose
/// whiteout must hide it).
fn make_tree(env: &Env) {
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "mkdir -p /x/sub && printf a > /x/a && printf bb > /x/sub/b && ln -s a /x/link && printf g > /x/gone",
    ])
    .success();
    env.run(["run", "--", "rm", "/x/gone"]).success();
}

fn tree() -> BTreeMap<String, Member> {
    BTreeMap::from([
        ("a".to_string(), file("a")),
        ("link".to_string(), Member::Link("a".into())),
        ("sub".to_string(), Member::Dir),
        ("sub/b".to_string(), file("bb")),
    ])
}

/// A subtree to stdout (tar.gz, `--decompress`), to `-F` files named `.tar` and `.tar.gz`,
/// relative to the session's cd, and a single file.
fn exports_a_subtree(env: &Env) {
    make_tree(env);
    let gz = env.run(["export", "/x"]).success().stdout;
    assert_eq!(members(&gz, true), tree());
    let plain = env.run(["export", "--decompress", "/x"]).success().stdout;
    assert_eq!(members(&plain, false), tree());

    let tar = env.work().join("x.tar");
    let tgz = env.work().join("x.tar.gz");
    env.run(["export", "/x", "-F", tar.to_str().unwrap()])
        .success()
        .stdout_empty();
    assert_eq!(members(&std::fs::read(&tar).unwrap(), false), tree());
    env.run(["export", "/x", "--file", tgz.to_str().unwrap()])
        .success();
    assert_eq!(members(&std::fs::read(&tgz).unwrap(), true), tree());

    env.run(["cd", "/x"]).success();
    let sub = env.run(["export", "sub"]).success().stdout;
    assert_eq!(
        members(&sub, true),
        BTreeMap::from([("b".to_string(), file("bb"))])
    );
    let one = env.run(["export", "/x/a", "--decompress"]).success().stdout;
    assert_eq!(
        members(&one, false),
        BTreeMap::from([("a".to_string(), file("a"))])
    );
}

/// A small root filesystem on the host, to import as an image.
fn small_rootfs(dir: &Path) -> BTreeMap<String, Member> {
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("etc/hostname"), "mini\n").unwrap();
    std::fs::write(dir.join("bin/tool"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("bin", dir.join("sbin")).unwrap();
    BTreeMap::from([
        ("bin".to_string(), Member::Dir),
        ("bin/tool".to_string(), file("#!/bin/sh\n")),
        ("etc".to_string(), Member::Dir),
        ("etc/hostname".to_string(), file("mini\n")),
        ("sbin".to_string(), Member::Link("bin".into())),
    ])
}

/// `export` without a path is the whole image, whatever the session's cd.
fn exports_the_whole_image(env: &Env, expected: &BTreeMap<String, Member>) {
    env.run(["use", "mini"]).success();
    env.run(["cd", "/etc"]).success();
    let all = env.run(["export"]).success().stdout;
    assert_eq!(&members(&all, true), expected);
}

/// A terminal gets no binary stream; a missing path is a user error, and `-F` leaves no
/// file behind.
fn refuses_a_terminal_and_a_missing_path(env: &Env) {
    if let Some(out) = env.run_on_terminal(["export", "/etc"]) {
        out.code(1)
            .stdout_contains("refusing to write a tar archive to a terminal")
            .stdout_contains("hint:");
    }
    let dest = env.work().join("missing.tar.gz");
    env.run(["export", "/nope", "-F", dest.to_str().unwrap()])
        .code(1)
        .stderr_contains("/nope");
    assert!(!dest.exists(), "a failed export leaves no file");
    let left: Vec<_> = std::fs::read_dir(env.work())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".missing"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    env.run(["export", "/nope"])
        .code(1)
        .stdout_empty()
        .stderr_contains("/nope");
}

#[test]
fn export_writes_a_subtree_as_tar_gz_or_plain_tar() {
    exports_a_subtree(&Env::host());
}

#[test]
fn export_through_serve_gives_the_same_archive() {
    let server = Server::start();
    let env = our_client(&server);
    env.use_host();
    exports_a_subtree(&env);
}

#[test]
fn export_without_a_path_is_the_whole_image() {
    let env = Env::new();
    let root = env.work().join("rootfs");
    let expected = small_rootfs(&root);
    env.run(["images", "import", root.to_str().unwrap(), "--tag", "mini"])
        .success();
    exports_the_whole_image(&env, &expected);
}

#[test]
fn export_of_a_whole_image_through_serve() {
    let server = Server::start();
    // Imported on the server's machine: a public image every token sees.
    let root = server.env.work().join("rootfs");
    let expected = small_rootfs(&root);
    server
        .env
        .run(["images", "import", root.to_str().unwrap(), "--tag", "mini"])
        .success();
    exports_the_whole_image(&our_client(&server), &expected);
}

#[test]
fn export_refuses_a_terminal_and_a_missing_path() {
    refuses_a_terminal_and_a_missing_path(&Env::host());
    let server = Server::start();
    let env = our_client(&server);
    env.use_host();
    refuses_a_terminal_and_a_missing_path(&env);
}
