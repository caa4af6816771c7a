//! Images: importing a root filesystem (a directory, a .tar, a .tar.gz), listing, tagging and
//! untagging, and running on an imported image. The rootfs is built from Debian's
//! busybox-static; without it these tests are reported as skipped, never silently passed.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::harness::{busybox_rootfs, skip, static_busybox, Env};

/// A busybox rootfs in the env's scratch dir, or `None` (test reported skipped).
fn rootfs(env: &Env) -> Option<PathBuf> {
    let Some(busybox) = static_busybox() else {
        skip("needs a static /bin/busybox (apt-get install busybox-static)");
        return None;
    };
    Some(busybox_rootfs(&busybox, env.work()))
}

/// Packs `root` into a tar archive (symlinks kept as symlinks), gzipped if asked.
fn pack(root: &Path, dest: &Path, gzip: bool) {
    let file = File::create(dest).expect("create archive");
    let writer: Box<dyn std::io::Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(file)
    };
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", root).expect("add rootfs");
    builder
        .into_inner()
        .expect("finish tar")
        .flush()
        .expect("flush archive");
}

fn import(env: &Env, path: &Path, tag: &str) -> String {
    let out = env
        .run(["images", "import", path.to_str().unwrap(), "--tag", tag])
        .success()
        .stderr_contains(&format!("[INFO] Imported {}", path.display()));
    let text = out.stdout_text();
    let row = text.lines().nth(1).expect("a row for the new image");
    let uuid = row.split_whitespace().next().unwrap().to_string();
    assert!(row.contains(tag), "{text}");
    uuid
}

#[test]
fn a_rootfs_directory_imports_and_runs() {
    let env = Env::new();
    let Some(root) = rootfs(&env) else { return };
    import(&env, &root, "bb");
    env.run(["run", "--use", "tag:bb", "--", "/bin/busybox", "echo", "ok"])
        .success()
        .stdout("ok\n");
    // Applets through PATH, and it is busybox's world, not the host's.
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "test ! -e /usr/bin/env && echo alone",
    ])
    .success()
    .stdout("alone\n");
}

#[test]
fn a_tar_archive_imports_and_runs() {
    let env = Env::new();
    let Some(root) = rootfs(&env) else { return };
    let archive = env.work().join("bb.tar");
    pack(&root, &archive, false);
    import(&env, &archive, "bbtar");
    env.run([
        "run",
        "--use",
        "tag:bbtar",
        "--",
        "/bin/busybox",
        "echo",
        "ok",
    ])
    .success()
    .stdout("ok\n");
}

#[test]
fn a_gzipped_tar_archive_imports_and_runs() {
    let env = Env::new();
    let Some(root) = rootfs(&env) else { return };
    let archive = env.work().join("bb.tar.gz");
    pack(&root, &archive, true);
    import(&env, &archive, "bbgz");
    // A bare tag works as well as `tag:NAME`.
    env.run(["run", "--use", "bbgz", "--", "/bin/busybox", "echo", "ok"])
        .success()
        .stdout("ok\n");
}

#[test]
fn runs_on_an_imported_image_snapshot_like_any_other() {
    let env = Env::new();
    let Some(root) = rootfs(&env) else { return };
    let uuid = import(&env, &root, "bb");
    env.run(["run", "--use", &uuid, "--", "sh", "-c", "echo kept > /note"])
        .success();
    env.run(["run", "--", "cat", "/note"])
        .success()
        .stdout("kept\n");
    // The imported image itself is unchanged.
    env.run(["run", "--use", "tag:bb", "--", "test", "-e", "/note"])
        .code(1);
}

#[test]
fn importing_a_missing_path_fails() {
    let env = Env::new();
    let missing = env.work().join("nope");
    env.run(["images", "import", missing.to_str().unwrap(), "--tag", "x"])
        .code(1)
        .stdout_empty()
        .stderr_contains("[ERROR]");
    env.run(["images"]).success().stdout_lacks(" x ");
}

#[test]
fn images_lists_tagged_images_and_all_lists_snapshots_too() {
    let env = Env::host();
    let listed = env.run(["images"]).success().stdout_text();
    assert!(
        listed.starts_with("UUID  TAG  CREATED_AT  OPERATION_UUID\n"),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("host")),
        "{listed}"
    );
    assert_eq!(listed.lines().count(), 2, "{listed}");
    env.run(["run", "--", "touch", "/snap"]).success();
    let snapshot = env.session_image();
    let op = env.last_op();
    env.run(["images"]).success().stdout_lacks(&snapshot);
    let all = env
        .run(["-o", "json", "images", "-a"])
        .success()
        .json_lines();
    let row = all
        .iter()
        .find(|r| r["uuid"] == snapshot.as_str())
        .expect("the snapshot is listed with -a");
    assert_eq!(row["operation_uuid"], op.as_str());
}

#[test]
fn tagging_the_session_image_makes_it_usable_by_name() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo mine > /mine"])
        .success();
    let image = env.session_image();
    env.run(["tag", "mystate"])
        .success()
        .stderr(&format!("[INFO] Tagged image {image} as mystate\n"));
    env.run([
        "-S",
        "other",
        "run",
        "--use",
        "tag:mystate",
        "--",
        "cat",
        "/mine",
    ])
    .success()
    .stdout("mine\n");
}

#[test]
fn tag_with_two_arguments_tags_that_image_and_minus_u_removes_it() {
    let env = Env::host();
    let host = env.session_image();
    env.run(["tag", "host", "again"])
        .success()
        .stderr(&format!("[INFO] Tagged image {host} as again\n"));
    env.run(["-S", "second", "use", "tag:again"]).success();
    env.run(["tag", "-U", "again"])
        .success()
        .stderr(&format!("[INFO] Removed tag 'again' from image {host}\n"));
    env.run(["-S", "third", "use", "tag:again"])
        .code(1)
        .stderr_contains("again");
    // The image itself is still there under its other tag.
    env.run(["-S", "third", "use", "host"]).success();
}

/// Two tiny root filesystems, `root1` and `root2`, in the env's scratch dir.
fn two_roots(env: &Env) -> String {
    for n in [1, 2] {
        env.write(&format!("root{n}/etc/which"), format!("{n}\n"));
    }
    env.work().join("root{1,2}").to_string_lossy().into_owned()
}

#[test]
fn import_takes_several_references_and_expands_braces() {
    let env = Env::new();
    let pattern = two_roots(&env);
    let records = env
        .run(["-o", "json", "images", "import", &pattern])
        .success()
        .json_lines();
    let sources: Vec<&str> = records
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    let root = |n| env.work().join(format!("root{n}")).display().to_string();
    assert_eq!(sources, [root(1), root(2)]);
    // Several words, one of them missing: the others are imported, the exit code says one failed.
    let out = env
        .run(["images", "import", &root(1), &root(3), &root(2)])
        .code(1);
    assert_eq!(
        out.stdout_text().lines().count(),
        3,
        "{}",
        out.stdout_text()
    );
    out.stderr_contains(&format!("[ERROR] {}", root(3)))
        .stderr_contains("1 of 3 imports failed");
}

#[test]
fn import_tag_is_long_only_and_minus_t_is_the_timeout() {
    let env = Env::new();
    let pattern = two_roots(&env);
    let root1 = env.work().join("root1").display().to_string();
    env.run(["images", "import", &root1, "--tag", "one"])
        .success();
    env.run(["-o", "json", "images"])
        .success()
        .stdout_contains("\"tag\":\"one\"");
    // -t takes seconds now; a tag there is a usage error.
    env.run(["images", "import", &root1, "-t", "mini"])
        .code(2)
        .stderr_contains("'mini'");
    env.run(["images", "import", "-t", "30", &root1])
        .success()
        .stderr_contains("-t/--timeout is for registry pulls");
    // One tag for several images is refused before anything is imported.
    env.run(["images", "import", &pattern, "--tag", "both"])
        .code(2)
        .stderr_contains("--tag names one image, but 2 references were given");
    env.run(["images"]).success().stdout_lacks("both");
}

#[test]
fn images_print_plain_blocks_and_toml_tables() {
    let env = Env::host();
    env.run(["-o", "plain", "images"])
        .success()
        .stdout_contains("tag:            host\n")
        .stdout_lacks("---");
    let text = env.run(["-o", "toml", "images"]).success().stdout_text();
    let doc: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let results = doc["results"].as_array().expect("[[results]]");
    assert_eq!(results.len(), 1, "{text}");
    assert_eq!(results[0]["tag"].as_str(), Some("host"));
    assert_eq!(
        results[0]["uuid"].as_str(),
        Some(env.session_image().as_str())
    );
}
