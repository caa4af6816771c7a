//! `images import` from a registry: Debian's `docker-registry` (the CNCF distribution
//! registry) started on loopback, an image pushed to it over the distribution API by the test,
//! pulled by contree with its whiteouts applied. Without the package the test is reported
//! skipped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, sha256_hex, skip, Env};
use crate::import_formats::{check_view, config, layer_dirs, tar_of};

fn registry_binary() -> Option<PathBuf> {
    ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A registry on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &Path, dir: &Path) -> Registry {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start docker-registry");
    let registry = Registry { child, addr };
    let up = eventually(Duration::from_secs(20), || {
        ureq::get(&format!("http://{}/v2/", registry.addr))
            .call()
            .is_ok()
    });
    assert!(up, "docker-registry did not come up on {}", registry.addr);
    registry
}

/// Pushes one blob (monolithic upload) and returns its digest.
fn push_blob(base: &str, bytes: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(bytes));
    let resp = ureq::post(&format!("{base}/blobs/uploads/"))
        .call()
        .expect("start upload");
    let location = resp
        .header("location")
        .expect("upload location")
        .to_string();
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{}{location}", &base[..base.find("/v2/").unwrap()])
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    ureq::put(&format!("{url}{sep}digest={digest}"))
        .set("Content-Type", "application/octet-stream")
        .send_bytes(bytes)
        .expect("upload blob");
    digest
}

#[test]
fn an_image_pushed_to_a_loopback_registry_pulls_with_whiteouts_applied() {
    let Some(binary) = registry_binary() else {
        skip("needs Debian's docker-registry package (apt-get install docker-registry)");
        return;
    };
    let env = Env::new();
    let Some((lower, upper)) = layer_dirs(&env) else {
        return;
    };
    let registry = start(&binary, env.work());
    let base = format!("http://{}/v2/bb/x", registry.addr);
    let (l, u, c) = (tar_of(&lower, true), tar_of(&upper, true), config());
    let layers: Vec<_> = [&l, &u]
        .iter()
        .map(|b| {
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                   "digest": push_blob(&base, b), "size": b.len()})
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": push_blob(&base, &c), "size": c.len()},
        "layers": layers
    });
    ureq::put(&format!("{base}/manifests/v1"))
        .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send_string(&manifest.to_string())
        .expect("push manifest");

    let reference = format!("{}/bb/x:v1", registry.addr);
    env.run(["images", "import", &reference])
        .success()
        .stdout_contains("bb/x:v1")
        .stderr_contains("[INFO] Imported");
    check_view(&env, "bb/x:v1");

    // A reference the registry does not know fails and imports nothing.
    let out = env
        .run(["images", "import", &format!("{}/bb/x:nope", registry.addr)])
        .code(1);
    assert!(out.stderr_text().contains("404"), "{}", out.stderr_text());
    let mut body = String::new();
    ureq::get(&format!("http://{}/v2/_catalog", registry.addr))
        .call()
        .unwrap()
        .into_reader()
        .read_to_string(&mut body)
        .unwrap();
    assert!(body.contains("bb/x"), "{body}");
}
