//! `images import` from a registry: Debian's `docker-registry` (the CNCF distribution
//! registry) started on loopback, an image pushed to it over the distribution API by the test,
//! pulled by contree with its whiteouts applied. Without the package the test is reported
//! skipped.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, sha256_hex, skip, wait_until, Env};
use crate::import_formats::{check_view, config, layer_dirs, tar_of};

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

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
        http()
            .get(format!("http://{}/v2/", registry.addr))
            .send()
            .is_ok_and(|r| r.status().is_success())
    });
    assert!(up, "docker-registry did not come up on {}", registry.addr);
    registry
}

/// Pushes one blob (monolithic upload) and returns its digest.
fn push_blob(base: &str, bytes: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(bytes));
    let resp = http()
        .post(format!("{base}/blobs/uploads/"))
        .send()
        .and_then(|r| r.error_for_status())
        .expect("start upload");
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("upload location")
        .to_string();
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{}{location}", &base[..base.find("/v2/").unwrap()])
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    http()
        .put(format!("{url}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .and_then(|r| r.error_for_status())
        .expect("upload blob");
    digest
}

#[test]
fn an_image_pushed_to_a_loopback_registry_pulls_with_whiteouts_applied() {
    let env = Env::new();
    let Some(registry) = registry_with_image(&env) else {
        return;
    };
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
    let body = http()
        .get(format!("http://{}/v2/_catalog", registry.addr))
        .send()
        .and_then(|r| r.text())
        .unwrap();
    assert!(body.contains("bb/x"), "{body}");
}

/// How the fake front door in front of the registry wants clients to authenticate.
#[derive(Clone, Copy)]
enum Auth {
    /// `WWW-Authenticate: Basic`: every request carries user:pass.
    Basic,
    /// `WWW-Authenticate: Bearer realm=…`: a token from `/token`, got with user:pass.
    Token,
    /// No authentication, but every blob stalls halfway for `STALL`.
    Stalled,
}

const STALL: Duration = Duration::from_millis(1500);

const BASIC: &str = "Basic dXNlcjpwYXNz"; // user:pass
const TOKEN: &str = "tok-123";

/// A one-request-per-connection HTTP front for `upstream` that demands `auth`; returns its
/// address and how many clients hung up on a stalled blob. Requests that pass are forwarded
/// to the real registry.
fn auth_front(upstream: String, auth: Auth) -> (String, Arc<AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let me = addr.clone();
    let hang_ups = Arc::new(AtomicUsize::new(0));
    let counted = hang_ups.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut authz = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") {
                        authz = v.trim().to_string();
                    }
                }
            }
            let (status, headers, body): (u16, Vec<(String, String)>, Vec<u8>) = if path
                .starts_with("/token")
            {
                if authz == BASIC && path.contains("scope=repository") {
                    (
                        200,
                        vec![],
                        format!("{{\"token\":\"{TOKEN}\"}}").into_bytes(),
                    )
                } else {
                    (401, vec![], b"{\"errors\":[]}".to_vec())
                }
            } else {
                let ok = match auth {
                    Auth::Basic => authz == BASIC,
                    Auth::Token => authz == format!("Bearer {TOKEN}"),
                    Auth::Stalled => true,
                };
                if !ok {
                    let challenge = match auth {
                            Auth::Basic => "Basic realm=\"fake\"".to_string(),
                            Auth::Token => format!(
                                "Bearer realm=\"http://{me}/token\",service=\"fake\",scope=\"repository:bb/x:pull\""
                            ),
                            Auth::Stalled => String::new(),
                        };
                    (
                        401,
                        vec![("WWW-Authenticate".into(), challenge)],
                        b"{}".to_vec(),
                    )
                } else {
                    let req = http().get(format!("http://{upstream}{path}")).header(
                        "Accept",
                        "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
                    );
                    match req.send() {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let ct = resp
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
                            (status, vec![("Content-Type".into(), ct)], body)
                        }
                        Err(_) => (502, vec![], Vec::new()),
                    }
                }
            };
            let mut out = stream;
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = out.write_all(head.as_bytes());
            if matches!(auth, Auth::Stalled) && path.contains("/blobs/") {
                let half = body.len() / 2;
                let _ = out.write_all(&body[..half]);
                let _ = out.flush();
                if hangs_up_within(&out, STALL) {
                    counted.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let _ = out.write_all(&body[half..]);
                continue;
            }
            let _ = out.write_all(&body);
        }
    });
    (addr, hang_ups)
}

/// Whether the client closes `stream` within `limit` (having sent all it will send).
fn hangs_up_within(stream: &std::net::TcpStream, limit: Duration) -> bool {
    let end = std::time::Instant::now() + limit;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
    let mut byte = [0u8; 1];
    while std::time::Instant::now() < end {
        match stream.peek(&mut byte) {
            Ok(0) => return true,
            Ok(_) => return false,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// A docker-registry on loopback with the test image pushed, or `None` (the skip said) where
/// this machine has none.
fn registry_with_image(env: &Env) -> Option<Registry> {
    let registry = loopback_registry(env)?;
    push_image(env, &registry).then_some(registry)
}

/// An empty docker-registry on loopback, or `None` (the skip said) where this machine has
/// none.
fn loopback_registry(env: &Env) -> Option<Registry> {
    let Some(binary) = registry_binary() else {
        skip("needs Debian's docker-registry package (apt-get install docker-registry)");
        return None;
    };
    Some(start(&binary, env.work()))
}

/// Pushes the two-layer test image to `registry` as `bb/x:v1`.
fn push_image(env: &Env, registry: &Registry) -> bool {
    let Some((lower, upper)) = layer_dirs(env) else {
        return false;
    };
    let base = format!("http://{}/v2/bb/x", registry.addr);
    let (l, u) = (tar_of(&lower, true), tar_of(&upper, false));
    push_manifest(&base, &[(&l, "tar+gzip"), (&u, "tar+gzip")]);
    true
}

/// Pushes the layers (bytes, media type suffix), the test config and a manifest naming them
/// as `v1` of the repository at `base`.
fn push_manifest(base: &str, layers: &[(&[u8], &str)]) {
    let c = config();
    let layers: Vec<_> = layers
        .iter()
        .map(|(b, kind)| {
            json!({"mediaType": format!("application/vnd.oci.image.layer.v1.{kind}"),
                   "digest": push_blob(base, b), "size": b.len()})
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": push_blob(base, &c), "size": c.len()},
        "layers": layers
    });
    http()
        .put(format!("{base}/manifests/v1"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .and_then(|r| r.error_for_status())
        .expect("push manifest");
}

/// Pushes `bb/x:v1` again with a different config, so the same name has new content;
/// returns the new manifest's digest.
fn change_image(registry: &Registry) -> String {
    let base = format!("http://{}/v2/bb/x", registry.addr);
    let manifest: Value = http()
        .get(format!("{base}/manifests/v1"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .and_then(|r| r.json())
        .expect("get manifest");
    let mut config = config();
    config.extend_from_slice(b"\n");
    let mut changed = manifest.clone();
    changed["config"]["digest"] = json!(push_blob(&base, &config));
    changed["config"]["size"] = json!(config.len());
    let body = changed.to_string();
    http()
        .put(format!("{base}/manifests/v1"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.clone())
        .send()
        .and_then(|r| r.error_for_status())
        .expect("push changed manifest");
    format!("sha256:{}", sha256_hex(body.as_bytes()))
}

fn imported(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["-o", "json", "images", "import"];
    all.extend_from_slice(args);
    env.run(all).success().json()["uuid"]
        .as_str()
        .expect("uuid")
        .to_string()
}

#[test]
fn importing_an_unchanged_image_again_gives_back_the_same_image() {
    let env = Env::new();
    let Some(registry) = registry_with_image(&env) else {
        return;
    };
    let reference = format!("{}/bb/x:v1", registry.addr);
    let first = imported(&env, &[&reference]);
    // The same manifest, under another tag: the same image, now with both tags.
    let again = imported(&env, &[&reference, "--tag", "again"]);
    assert_eq!(again, first);
    let listed = env.run(["images"]).success().stdout_text();
    assert_eq!(listed.matches(&first).count(), 2, "{listed}");
    assert!(
        listed.contains("again") && listed.contains("bb/x:v1"),
        "{listed}"
    );
    // New content under the same name is a new image, and the tag moves to it.
    change_image(&registry);
    let changed = imported(&env, &[&reference]);
    assert_ne!(changed, first);
    let listed = env.run(["images"]).success().stdout_text();
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&changed) && l.contains("bb/x:v1")),
        "{listed}"
    );
    check_view(&env, "bb/x:v1");
}

#[test]
fn pulls_authenticate_with_basic_auth_and_with_a_token_realm() {
    let env = Env::new();
    let Some(registry) = registry_with_image(&env) else {
        return;
    };
    for (auth, tag) in [(Auth::Basic, "basic"), (Auth::Token, "token")] {
        let (front, _) = auth_front(registry.addr.clone(), auth);
        let reference = format!("{front}/bb/x:v1");
        // Without credentials the registry says no, and nothing is imported.
        let denied = env
            .run(["images", "import", &reference, "--tag", tag])
            .code(1);
        assert!(
            denied.stderr_text().contains("401") || denied.stderr_text().contains("username"),
            "{}",
            denied.stderr_text()
        );
        env.run([
            "images",
            "import",
            &reference,
            "--tag",
            tag,
            "--username",
            "user",
            "--password",
            "wrong",
        ])
        .code(1);
        env.run([
            "images",
            "import",
            &reference,
            "--tag",
            tag,
            "--username",
            "user",
            "--password",
            "pass",
        ])
        .success();
        check_view(&env, tag);
    }
}

#[test]
fn serve_imports_from_a_registry_into_the_importing_namespace() {
    use crate::serve::{our_client, Server, TOKEN_A, TOKEN_B};
    let env = Env::new();
    let Some(registry) = registry_with_image(&env) else {
        return;
    };
    let server = Server::start();
    // Our CLI in remote mode: `images import` becomes POST /images/import, then the import
    // operation followed to its end.
    let bob = our_client(&server);
    let reference = format!("{}/bb/x:v1", registry.addr);
    bob.run(["images", "import", &reference])
        .success()
        .stdout_contains("bb/x:v1")
        .stderr_contains("[INFO] Imported");
    bob.run(["images"]).success().stdout_contains("bb/x:v1");
    bob.run([
        "run",
        "--use",
        "tag:bb/x:v1",
        "--",
        "/bin/busybox",
        "echo",
        "ok",
    ])
    .success()
    .stdout("ok\n");
    // Another namespace sees neither the image nor its tag.
    let theirs = server.get("/v1/images?tag=bb/", TOKEN_A).json();
    assert_eq!(theirs["images"], json!([]), "{theirs}");

    // Imported again, unchanged: the same image. Another namespace importing it gets one of
    // its own, which bob's namespace does not see.
    let import = |token: &str| {
        let body = json!({"registry": {"url": format!("docker://{reference}")}, "tag": "same"});
        let reply = server.post_json("/v1/images/import", token, &body);
        assert_eq!(reply.status, 201, "{}", reply.text());
        let op = reply.json()["uuid"].as_str().unwrap().to_string();
        let events = server.events(&op, token, None);
        let last = events.last().expect("completion").clone();
        assert_eq!(last["data"]["status"], "SUCCESS", "{last}");
        last["data"]["result_image_uuid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let bobs = bob.run(["-o", "json", "images"]).success().json_lines();
    let first = bobs
        .iter()
        .find(|i| i["tag"] == "bb/x:v1")
        .and_then(|i| i["uuid"].as_str())
        .expect("bob's image")
        .to_string();
    assert_eq!(import(TOKEN_B), first);
    let alices = import(TOKEN_A);
    assert_ne!(alices, first);
    let seen = server
        .get(&format!("/v1/images?uuid={alices}"), TOKEN_B)
        .json();
    assert_eq!(seen["images"], json!([]), "{seen}");

    // A reference the registry does not have: the operation fails and says why.
    let body = json!({"registry": {"url": format!("docker://{}/bb/x:nope", registry.addr)}});
    let reply = server.post_json("/v1/images/import", TOKEN_B, &body);
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/operations/{op}").as_str())
    );
    let events = server.events(&op, TOKEN_B, None);
    let last = events.last().expect("completion");
    assert_eq!(last["data"]["status"], "FAILED", "{last}");
    assert!(
        last["data"]["error"].as_str().unwrap_or("").contains("404"),
        "{last}"
    );
    let bad = server.post_json("/v1/images/import", TOKEN_B, &json!({"tag": "x"}));
    assert_eq!(bad.status, 400, "{}", bad.text());

    // Our CLI again: braces make two references, -t is each import's timeout, and the one
    // that fails does not stop the other.
    let braced = format!("{}/bb/x:{{v1,nope}}", registry.addr);
    bob.run(["images", "import", "-t", "60", &braced])
        .code(1)
        .stdout_contains("bb/x:v1")
        .stderr_contains("bb/x:nope")
        .stderr_contains("1 of 2 imports failed");
    let imports = bob
        .run(["ps", "-a", "-q", "-k", "image_import"])
        .success()
        .stdout_text();
    let timeouts: Vec<Value> = imports
        .lines()
        .map(|op| {
            server.get(&format!("/v1/operations/{op}"), TOKEN_B).json()["metadata"]["timeout"]
                .clone()
        })
        .collect();
    assert_eq!(
        timeouts.iter().filter(|t| **t == json!(60)).count(),
        2,
        "{timeouts:?}"
    );
}

#[test]
fn serve_gives_up_a_stalled_import_at_its_timeout() {
    use crate::serve::{Server, TOKEN_A, TOKEN_B};
    let env = Env::new();
    let Some(registry) = registry_with_image(&env) else {
        return;
    };
    // Every blob stalls for 1.5 s: the download would take 4.5 s.
    let (front, hang_ups) = auth_front(registry.addr.clone(), Auth::Stalled);
    let server = Server::start();
    let listed = |token: &str| server.get("/v1/images", token).json()["images"].clone();
    let before = (listed(TOKEN_A), listed(TOKEN_B));
    let body = json!({"registry": {"url": format!("docker://{front}/bb/x:v1")},
                      "tag": "slow", "timeout": 1});
    let started = std::time::Instant::now();
    let reply = server.post_json("/v1/images/import", TOKEN_B, &body);
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();
    let events = server.events(&op, TOKEN_B, None);
    let last = events.last().expect("completion");
    assert_eq!(last["data"]["status"], "FAILED", "{last}");
    assert!(
        last["data"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("time"),
        "{last}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The download was dropped with it (the front door saw the server hang up mid-blob), so
    // no image can turn up later, for anyone.
    wait_until(
        Duration::from_secs(10),
        "the server to drop the stalled download",
        || hang_ups.load(Ordering::SeqCst) > 0,
    );
    assert_eq!((listed(TOKEN_A), listed(TOKEN_B)), before);
}

#[test]
fn a_big_pull_shows_download_and_import_progress_on_a_terminal_only() {
    let env = Env::new();
    let Some(registry) = loopback_registry(&env) else {
        return;
    };
    // One uncompressed layer holding a 20 MiB file.
    let big = crate::progress::big_content(4);
    env.write("big-root/data/big.bin", &big);
    let layer = tar_of(&env.work().join("big-root"), false);
    let base = format!("http://{}/v2/big/x", registry.addr);
    push_manifest(&base, &[(&layer, "tar")]);
    let reference = format!("{}/big/x:v1", registry.addr);
    let Some(out) = env.run_on_terminal(["images", "import", &reference, "--tag", "big"]) else {
        return;
    };
    let text = out.success().stdout_text();
    for bar in [
        format!("downloading {reference} ["),
        "importing 1 layer(s) [".to_string(),
    ] {
        assert!(text.contains(&bar), "no {bar:?} bar: {text:?}");
    }
    // Another data dir pulls it again (this one would reuse its image) with no terminal.
    let quiet = Env::new();
    let out = quiet
        .run(["images", "import", &reference, "--tag", "big"])
        .success();
    let stderr = out.stderr_text();
    assert!(
        !stderr.contains("downloading")
            && !stderr.contains("importing")
            && !stderr.contains('\x1b'),
        "a bar without a terminal: {stderr:?}"
    );
    for env in [&env, &quiet] {
        env.run(["use", "tag:big"]).success();
        env.run(["cat", "/data/big.bin"])
            .success()
            .check("the big file came through", |o| o.stdout == big);
    }
}

/// The SDK's `images.oci` imports through `POST /images/import` and waits on the operation,
/// whose metadata it structures as the import's request (password masked).
#[test]
fn sdk_imports_from_a_registry_and_runs_the_image() {
    use crate::serve::{Server, TOKEN_A};
    let env = Env::new();
    let Some(registry) = registry_with_image(&env) else {
        return;
    };
    let server = Server::start();
    let script = format!(
        r#"
c = ContreeSync(config=config())
img = c.images.oci("docker://{}/bb/x:v1", tag="sdk/bb")
check("tag", img.tag, "sdk/bb")
check("runs", img.run("/bin/busybox", args=["echo", "imported"]).wait().stdout, "imported\n")
"#,
        registry.addr
    );
    let Some(out) = crate::sdk::run_script(&server, &script) else {
        return;
    };
    out.success().stdout_contains("ok runs");
    let ops = server
        .get("/v1/operations?kind=image_import", TOKEN_A)
        .json();
    let op = ops[0]["uuid"].as_str().expect("the import's operation");
    let import = server.get(&format!("/v1/operations/{op}"), TOKEN_A).json();
    let url = format!("docker://{}/bb/x:v1", registry.addr);
    assert_eq!(import["metadata"]["registry"]["url"], url, "{import}");
    assert_eq!(import["metadata"]["tag"], "sdk/bb", "{import}");
    assert_eq!(import["result"]["tag"], "sdk/bb", "{import}");
    // Credentials given are shown, the password never.
    let body = json!({
        "registry": {"url": url, "credentials": {"username": "u", "password": "hunter2"}},
    });
    let reply = server.post_json("/v1/images/import", TOKEN_A, &body);
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();
    let shown = server.get(&format!("/v1/operations/{op}"), TOKEN_A);
    assert!(!shown.text().contains("hunter2"), "{}", shown.text());
    let creds = &shown.json()["metadata"]["registry"]["credentials"];
    assert_eq!(creds, &json!({"username": "u", "password": "<MASKED>"}));
    assert_eq!(shown.json()["metadata"]["timeout"], 300);
}
