//! `images import` of container images: an OCI image layout (directory and tar) and a
//! `docker save` archive, each built here with two layers: the lower holds a busybox root
//! and files, the upper deletes one with a whiteout (`.wh.NAME`) and empties a directory
//! with an opaque marker (`.wh..wh..opq`). Runs and inspection (`ls`, `cat`, `cp`) must see
//! the upper layer's view. Needs Debian's busybox-static, else reported skipped.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::harness::{busybox_rootfs, sha256_hex, skip, static_busybox, Env};

/// Tars `root` (symlinks kept), gzipped if asked, and returns the bytes.
pub fn tar_of(root: &Path, gzip: bool) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", root).expect("tar layer");
    let bytes = builder.into_inner().expect("finish tar");
    if !gzip {
        return bytes;
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &bytes).unwrap();
    enc.finish().unwrap()
}

/// The two layer directories: lower (busybox + files), upper (whiteouts + a new file).
pub fn layer_dirs(env: &Env) -> Option<(PathBuf, PathBuf)> {
    let Some(busybox) = static_busybox() else {
        skip("needs a static /bin/busybox (apt-get install busybox-static)");
        return None;
    };
    let lower = busybox_rootfs(&busybox, &env.work().join("lower"));
    for (p, c) in [
        ("etc/victim.txt", "doomed\n"),
        ("etc/stays.txt", "here\n"),
        ("data/old/x", "x\n"),
        ("data/old/sub/y", "y\n"),
        ("tmp/.keep", ""),
    ] {
        let path = lower.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, c).unwrap();
    }
    let upper = env.work().join("upper");
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::create_dir_all(upper.join("data/old")).unwrap();
    fs::write(upper.join("etc/.wh.victim.txt"), "").unwrap();
    fs::write(upper.join("etc/added.txt"), "added\n").unwrap();
    fs::write(upper.join("data/old/.wh..wh..opq"), "").unwrap();
    fs::write(upper.join("data/old/new"), "new\n").unwrap();
    Some((lower, upper))
}

pub fn config() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin", "GREETING=from-config"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap()
}

/// Writes an OCI image layout under `dir`: blobs by digest, a manifest, index.json.
fn oci_layout(dir: &Path, lower: &[u8], upper: &[u8]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let hex = sha256_hex(bytes);
        fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let cfg = config();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&cfg), "size": cfg.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(lower), "size": lower.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": put(upper), "size": upper.len()}
        ]
    }))
    .unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(&manifest), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    });
    fs::write(dir.join("index.json"), index.to_string()).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Writes the classic `docker save` layout under `dir`: `<id>/layer.tar` per layer, the
/// config, and manifest.json listing the layers bottom first.
fn docker_save(dir: &Path, lower: &[u8], upper: &[u8]) {
    for (id, bytes) in [("aaa", lower), ("bbb", upper)] {
        fs::create_dir_all(dir.join(id)).unwrap();
        fs::write(dir.join(id).join("layer.tar"), bytes).unwrap();
    }
    fs::write(dir.join("cfg.json"), config()).unwrap();
    let manifest = json!([{"Config": "cfg.json", "RepoTags": ["bb:latest"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]);
    fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

/// Imports `path` as `tag`, starts a session on it, and checks the upper layer's view.
fn check_import(env: &Env, path: &Path, tag: &str) {
    env.run(["images", "import", path.to_str().unwrap(), "--tag", tag])
        .success();
    check_view(env, tag);
}

/// Starts a session on image `tag` (built from `layer_dirs`) and checks that runs and
/// inspection see the upper layer's view and the config's environment.
pub fn check_view(env: &Env, tag: &str) {
    env.run(["use", &format!("tag:{tag}")]).success();
    // Inspection reads the layers directly.
    let etc = env.run(["ls", "/etc"]).success().stdout_text();
    assert!(
        etc.contains("added.txt") && etc.contains("stays.txt"),
        "{etc}"
    );
    assert!(
        !etc.contains("victim"),
        "the whiteout hides the file: {etc}"
    );
    env.run(["cat", "/etc/victim.txt"]).code(1);
    env.run(["cat", "/etc/stays.txt"])
        .success()
        .stdout("here\n");
    let dest = env.work().join(format!("out-{tag}"));
    fs::create_dir_all(&dest).unwrap();
    env.run(["cp", "/etc/victim.txt", dest.to_str().unwrap()])
        .code(1);
    assert!(!dest.join("victim.txt").exists());
    let old = env.run(["ls", "/data/old"]).success().stdout_text();
    assert!(old.contains("new"), "{old}");
    assert!(
        !old.contains('x') && !old.contains("sub"),
        "the opaque dir hides the lower: {old}"
    );
    // And so does a sandbox (overlayfs reading the same layers).
    env.run(["run", "--", "ls", "/data/old"])
        .success()
        .stdout("new\n");
    env.run(["run", "--", "cat", "/etc/victim.txt"])
        .check("fails", |o| {
            !o.stderr_text().is_empty() || !o.stdout_text().contains("doomed")
        });
    env.run(["run", "-s", "--", "test -e /etc/victim.txt || echo gone"])
        .success()
        .stdout("gone\n");
    // The image config's environment comes along.
    env.run(["run", "-s", "--", "echo $GREETING"])
        .success()
        .stdout("from-config\n");
}

#[test]
fn an_oci_layout_directory_imports_with_whiteouts_applied() {
    let env = Env::new();
    let Some((lower, upper)) = layer_dirs(&env) else {
        return;
    };
    let dir = env.work().join("oci");
    oci_layout(&dir, &tar_of(&lower, true), &tar_of(&upper, false));
    check_import(&env, &dir, "oci-dir");
}

#[test]
fn an_oci_layout_tar_imports_with_whiteouts_applied() {
    let env = Env::new();
    let Some((lower, upper)) = layer_dirs(&env) else {
        return;
    };
    let dir = env.work().join("oci");
    oci_layout(&dir, &tar_of(&lower, true), &tar_of(&upper, true));
    let archive = env.work().join("oci.tar");
    fs::write(&archive, tar_of(&dir, false)).unwrap();
    check_import(&env, &archive, "oci-tar");
}

#[test]
fn a_docker_save_archive_imports_with_whiteouts_applied() {
    let env = Env::new();
    let Some((lower, upper)) = layer_dirs(&env) else {
        return;
    };
    let dir = env.work().join("saved");
    docker_save(&dir, &tar_of(&lower, false), &tar_of(&upper, false));
    let archive = env.work().join("saved.tar");
    fs::write(&archive, tar_of(&dir, false)).unwrap();
    check_import(&env, &archive, "docker-save");
}

#[test]
fn a_broken_image_layout_is_refused_and_leaves_no_layer() {
    let env = Env::new();
    let dir = env.work().join("broken");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("oci-layout"), "{}").unwrap();
    fs::write(
        dir.join("index.json"),
        r#"{"manifests":[{"digest":"sha256:00"}]}"#,
    )
    .unwrap();
    env.run(["images", "import", dir.to_str().unwrap()]).code(1);
    let layers = fs::read_dir(env.home().join("store/layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 0);
}
