//! Escape probes for `contree serve` and the inspection commands: a tenant reading the
//! server's own process, files or other mounted filesystems through `/v1/inspect` (and the
//! CLI doing the same through `cat`/`cp`), one tenant reaching another's ids, and another
//! local user reaching a setuid file that a run left in a layer. Each probe passes only if
//! the defence held: they were each seen to fail before it existed (issue 12).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{find_program, skip, sleepers, unique_token, wait_until, Env};
use crate::serve::{stdout_of, Official, Server, TOKEN_A, TOKEN_B};

// ---- helpers ----------------------------------------------------------------------------

/// A scratch dir in a part of the host that the `host` image shows (`/var/lib`), removed at
/// the end with anything the test mounted in it. Tests never write elsewhere on the host.
struct HostScratch {
    dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl HostScratch {
    fn new() -> HostScratch {
        let dir = Path::new("/var/lib").join(format!("contree-escape-{}", unique_token()));
        std::fs::create_dir_all(&dir).expect("create host scratch dir");
        HostScratch {
            dir,
            mounts: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `content` at `rel` (parents created) and returns the path.
    fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).expect("create parents");
        std::fs::write(&path, content).expect("write scratch file");
        path
    }

    /// Mounts a small tmpfs on the directory `rel` (created): another filesystem.
    fn mount_tmpfs(&mut self, rel: &str) -> PathBuf {
        self.mount(
            rel,
            Some(Path::new("tmpfs")),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
        )
    }

    /// Bind-mounts `source` on the directory `rel` (created): the same filesystem, seen
    /// where the image's overlay of `/` does not show it.
    fn bind(&mut self, source: &Path, rel: &str) -> PathBuf {
        self.mount(rel, Some(source), None, nix::mount::MsFlags::MS_BIND)
    }

    fn mount(
        &mut self,
        rel: &str,
        source: Option<&Path>,
        fstype: Option<&str>,
        flags: nix::mount::MsFlags,
    ) -> PathBuf {
        let path = self.dir.join(rel);
        std::fs::create_dir_all(&path).expect("create mount point");
        nix::mount::mount(source, &path, fstype, flags, Some("size=1m"))
            .expect("mount in the scratch dir");
        self.mounts.push(path.clone());
        path
    }
}

impl Drop for HostScratch {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A file only this test creates, in `/dev/shm` (a tmpfs under `/dev`), removed at the end.
struct ShmCanary(PathBuf);

impl Drop for ShmCanary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len().max(1))
        .any(|w| w == needle.as_bytes())
}

fn inspect(image: &str, what: &str, path: &str) -> String {
    format!("/v1/inspect/{image}/{what}?path={path}")
}

/// `GET url` as `token` is refused with 404 and an error body, and holds none of `secrets`.
#[track_caller]
fn refused(server: &Server, url: &str, token: &str, secrets: &[&str]) {
    let reply = server.get(url, token);
    assert_eq!(reply.status, 404, "{url} was served: {}", reply.text());
    assert!(
        reply.json()["error"].is_string(),
        "{url}: no error body: {}",
        reply.text()
    );
    for s in secrets {
        assert!(!contains(&reply.body, s), "{url} answered with {s:?}");
    }
}

/// Entry names of a tar archive, with `/` after directories.
fn tar_names(body: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for entry in tar::Archive::new(body).entries().expect("a tar archive") {
        let entry = entry.expect("a tar entry");
        let mut name = entry.path().unwrap().display().to_string();
        if entry.header().entry_type().is_dir() {
            name.push('/');
        }
        names.push(name);
    }
    names.sort();
    names
}

/// The result image of a finished operation of `token`.
fn result_image(server: &Server, op: &str, token: &str) -> String {
    server.events(op, token, None);
    server.get(&format!("/v1/operations/{op}"), token).json()["result_image_uuid"]
        .as_str()
        .expect("a result image")
        .to_string()
}

/// Spawns `command` (a shell line) on the host image as `token`, with `env`.
fn spawn_with_env(server: &Server, token: &str, command: &str, env: Value) -> String {
    let image = server.host_image(token);
    let reply = server.post_json(
        "/v1/instances",
        token,
        &json!({"image": image, "command": command, "shell": true, "env": env}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["uuid"].as_str().unwrap().to_string()
}

// ---- the server's own process, /proc, /sys, /dev ----------------------------------------

#[test]
fn the_servers_own_process_is_not_readable_through_the_host_image() {
    let server = Server::start();
    let host = server.host_image(TOKEN_A);
    let pid = server.pid();
    // What the server's environment and command line hold: its data dir and tokens path.
    let secrets = ["CONTREE_HOME", "--tokens", TOKEN_A, TOKEN_B];
    for path in [
        "/proc/self/environ".to_string(),
        "/proc/self/cmdline".to_string(),
        "/proc/thread-self/environ".to_string(),
        format!("/proc/{pid}/environ"),
        format!("/proc/{pid}/cmdline"),
        "/proc/1/environ".to_string(),
        "/proc/self/root/etc/hostname".to_string(),
    ] {
        for what in ["download", "archive", "list"] {
            refused(&server, &inspect(&host, what, &path), TOKEN_A, &secrets);
        }
    }
    // HEAD (the official client's existence check) is refused as well.
    let head = server.request(
        "HEAD",
        &inspect(&host, "archive", "/proc/self/environ"),
        Some(TOKEN_A),
        b"",
    );
    assert_eq!(head.status, 404);
    // /proc itself is what the image holds there: an empty directory (a sandbox mounts its
    // own); none of the host's processes show in it.
    let listing = server.get(&inspect(&host, "list", "/proc"), TOKEN_A);
    assert_eq!(listing.status, 200, "{}", listing.text());
    assert_eq!(listing.json()["files"], json!([]), "{}", listing.text());
    let archive = server.get(&inspect(&host, "archive", "/proc"), TOKEN_A);
    assert_eq!(archive.status, 200, "{}", archive.text());
    assert_eq!(tar_names(&archive.body), Vec::<String>::new());
}

#[test]
fn sys_and_dev_are_not_readable_through_the_host_image() {
    let server = Server::start();
    let host = server.host_image(TOKEN_A);
    let sys = [
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/kernel/uevent_seqnum",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("a readable sysfs file");
    let secret = format!("shm-canary-{}", unique_token());
    let shm = ShmCanary(PathBuf::from(format!(
        "/dev/shm/contree-escape-{}",
        unique_token()
    )));
    std::fs::write(&shm.0, &secret).expect("write the /dev/shm canary");
    let shm_path = shm.0.display().to_string();
    for path in [
        sys,
        "/sys/kernel",
        "/dev/shm",
        &shm_path,
        "/dev/stdin",
        "/dev/fd/0",
    ] {
        for what in ["download", "archive", "list"] {
            refused(&server, &inspect(&host, what, path), TOKEN_A, &[&secret]);
        }
    }
    for dir in ["/sys", "/dev"] {
        let archive = server.get(&inspect(&host, "archive", dir), TOKEN_A);
        assert_eq!(archive.status, 200, "{}", archive.text());
        assert_eq!(tar_names(&archive.body), Vec::<String>::new(), "{dir}");
    }
}

#[test]
fn another_tenants_process_environment_is_not_readable() {
    let server = Server::start();
    let token = unique_token();
    let secret = format!("bob-secret-{token}");
    let op = spawn_with_env(
        &server,
        TOKEN_B,
        &format!("sleep 60.{token}"),
        json!({ "BOB_SECRET": secret }),
    );
    wait_until(Duration::from_secs(30), "bob's sleeper", || {
        !sleepers(&token).is_empty()
    });
    let host = server.host_image(TOKEN_A);
    for pid in sleepers(&token) {
        for file in ["environ", "cmdline"] {
            for what in ["download", "archive"] {
                let path = format!("/proc/{pid}/{file}");
                refused(&server, &inspect(&host, what, &path), TOKEN_A, &[&secret]);
            }
        }
    }
    let cancel = server.request(
        "DELETE",
        &format!("/v1/operations/{op}"),
        Some(TOKEN_B),
        b"",
    );
    assert_eq!(cancel.status, 202, "{}", cancel.text());
}

#[test]
fn symlinks_to_proc_inside_an_image_do_not_leak() {
    let server = Server::start();
    let host = server.host_image(TOKEN_A);
    let secrets = ["CONTREE_HOME", "--tokens", " proc "];
    // The host's own links into /proc (Debian: /etc/mtab -> ../proc/self/mounts).
    for path in ["/etc/mtab", "/dev/stdin"] {
        refused(
            &server,
            &inspect(&host, "download", path),
            TOKEN_A,
            &secrets,
        );
    }
    // Links a run planted in its image.
    let op = server.spawn(
        TOKEN_A,
        "ln -s /proc/self/environ /leak && ln -s ../proc /up && mkdir /d && ln -s /proc/1 /d/init",
    );
    let image = result_image(&server, &op, TOKEN_A);
    for path in [
        "/leak",
        "/up/self/environ",
        "/up/self/cmdline",
        "/d/init/environ",
    ] {
        for what in ["download", "archive"] {
            refused(&server, &inspect(&image, what, path), TOKEN_A, &secrets);
        }
    }
    // A directory holding such a link archives the link itself, never what it points to.
    let archive = server.get(&inspect(&image, "archive", "/d"), TOKEN_A);
    assert_eq!(archive.status, 200, "{}", archive.text());
    assert_eq!(tar_names(&archive.body), vec!["init".to_string()]);
    for s in secrets {
        assert!(!contains(&archive.body, s), "the archive holds {s:?}");
    }
}

#[test]
fn a_mount_point_inside_a_directory_is_skipped_not_followed() {
    let mut scratch = HostScratch::new();
    scratch.write("tree/a", "plain file\n");
    let secret = format!("mounted-canary-{}", unique_token());
    let mounted = scratch.mount_tmpfs("tree/m");
    std::fs::write(mounted.join("canary"), &secret).expect("write the canary");
    // A bind mount of a directory the image hides (under /tmp), on the same filesystem.
    let hidden = tempfile::tempdir().expect("a dir under /tmp");
    std::fs::write(hidden.path().join("canary"), &secret).expect("write the canary");
    scratch.bind(hidden.path(), "tree/b");
    let server = Server::start();
    let host = server.host_image(TOKEN_A);
    let tree = scratch.path().join("tree").display().to_string();
    let archive = server.get(&inspect(&host, "archive", &tree), TOKEN_A);
    assert_eq!(archive.status, 200, "{}", archive.text());
    assert_eq!(tar_names(&archive.body), vec!["a", "b/", "m/"]);
    assert!(!contains(&archive.body, &secret));
    for mount in ["m", "b"] {
        let canary = format!("{tree}/{mount}/canary");
        for what in ["download", "archive", "list"] {
            refused(&server, &inspect(&host, what, &canary), TOKEN_A, &[&secret]);
        }
        let listing = server.get(&inspect(&host, "list", &format!("{tree}/{mount}")), TOKEN_A);
        assert_eq!(listing.status, 200, "{}", listing.text());
        assert_eq!(listing.json()["files"], json!([]), "{mount}");
    }
    let canary = format!("{tree}/m/canary");

    // The CLI reads through the same view: `cp` of the tree skips the mount's content.
    let env = Env::host();
    let dest = env.work().join("copy");
    env.cmd(["cp", &tree]).arg(&dest).output().success();
    assert_eq!(
        std::fs::read_to_string(dest.join("a")).unwrap(),
        "plain file\n"
    );
    for mount in ["m", "b"] {
        assert!(dest.join(mount).is_dir());
        assert_eq!(std::fs::read_dir(dest.join(mount)).unwrap().count(), 0);
    }
    env.run(["cat", &canary])
        .code(1)
        .stdout_empty()
        .stderr_contains("[ERROR]")
        .stderr_contains("another filesystem");
}

#[test]
fn the_official_client_cannot_cat_the_servers_environment() {
    let server = Server::start();
    let Some(cli) = Official::new(&server) else {
        return;
    };
    let out = cli.run(["cat", "/proc/self/environ"]);
    assert!(!out.status.success(), "the official client read /proc");
    assert!(!out.stdout_text().contains("CONTREE_HOME"));
    let out = cli.run(["cat", "/etc/mtab"]);
    assert!(!out.status.success(), "the official client read /etc/mtab");
}

// ---- the server's secrets in the host image -----------------------------------------------

#[test]
fn the_servers_tokens_file_config_dir_and_home_are_hidden_from_tenants() {
    let scratch = HostScratch::new();
    let tokens = scratch.write(
        "tokens",
        &format!("# test tokens\n{TOKEN_A} alice\n{TOKEN_B} bob\n"),
    );
    let canary = format!("config-canary-{}", unique_token());
    let config = scratch.write("config/contree/config.toml", &format!("# {canary}\n"));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A service account's home outside /home, with a key in it.
    let key = scratch.write("svc/.ssh/id_ed25519", &format!("{canary}-key\n"));
    let env = Env::new();
    let data = env.home().display().to_string();
    let config_home = scratch.path().join("config").display().to_string();
    let svc_home = scratch.path().join("svc").display().to_string();
    let server = Server::start_in_with(
        env,
        &["--tokens", tokens.to_str().unwrap()],
        &[
            ("CONTREE_HOME", ""),
            ("XDG_DATA_HOME", &data),
            ("XDG_CONFIG_HOME", &config_home),
            ("HOME", &svc_home),
        ],
    );
    let host = server.host_image(TOKEN_A);
    let secrets = [TOKEN_A, TOKEN_B, canary.as_str()];
    let tokens_path = tokens.display().to_string();
    let config_path = config.display().to_string();
    let key_path = key.display().to_string();
    for path in [&tokens_path, &config_path, &key_path] {
        for what in ["download", "archive", "list"] {
            refused(&server, &inspect(&host, what, path), TOKEN_B, &secrets);
        }
    }
    // The directory holding them: the tokens file is gone, the config dir and home empty.
    let dir = scratch.path().display().to_string();
    let archive = server.get(&inspect(&host, "archive", &dir), TOKEN_B);
    assert_eq!(archive.status, 200, "{}", archive.text());
    assert_eq!(
        tar_names(&archive.body),
        vec!["config/", "config/contree/", "svc/"]
    );
    for s in secrets {
        assert!(!contains(&archive.body, s), "the archive holds {s:?}");
    }
    // Nor can a tenant's command read them in a sandbox on the host image.
    let op = server.spawn(
        TOKEN_B,
        &format!(
            "cat {tokens_path} {config_path} {key_path}; ls -A {config_home}/contree {svc_home}; ls -A {dir}; true"
        ),
    );
    let out = stdout_of(&server.events(&op, TOKEN_B, None));
    for s in secrets {
        assert!(!out.contains(s), "a sandbox read {s:?}: {out}");
    }
    assert!(
        !out.contains("tokens"),
        "a sandbox lists the tokens file: {out}"
    );
    // Home directories and the server's data dir stay empty or hidden.
    for path in ["/root", "/home"] {
        let listing = server.get(&inspect(&host, "list", path), TOKEN_B);
        assert_eq!(listing.json()["files"], json!([]), "{path}");
    }
}

#[test]
fn the_cli_config_dir_is_hidden_from_runs_and_inspection() {
    let scratch = HostScratch::new();
    let canary = format!("config-canary-{}", unique_token());
    let secret = scratch.write("config/contree/secret.txt", &format!("{canary}\n"));
    let secret = secret.display().to_string();
    let env = Env::new();
    let data = env.home().display().to_string();
    let config_home = scratch.path().join("config").display().to_string();
    let contree = |args: &[&str]| {
        env.cmd(args)
            .env("CONTREE_HOME", "")
            .env("XDG_DATA_HOME", &data)
            .env("XDG_CONFIG_HOME", &config_home)
            .output()
    };
    contree(&["use", "host"]).success();
    contree(&[
        "run",
        "--",
        "sh",
        "-c",
        &format!("cat {secret}; ls -A {config_home}/contree; true"),
    ])
    .success()
    .stdout_empty();
    contree(&["cat", &secret]).code(1).stdout_lacks(&canary);
    contree(&["ls", &format!("{config_home}/contree")])
        .success()
        .stdout_empty();
}

// ---- one tenant, another's ids -----------------------------------------------------------

#[test]
fn a_second_tenant_cannot_reach_the_first_tenants_ids() {
    let server = Server::start();
    let op = server.spawn(TOKEN_A, "echo secret > /alice.txt");
    let image = result_image(&server, &op, TOKEN_A);
    let tag = server.request(
        "PATCH",
        &format!("/v1/images/{image}/tag"),
        Some(TOKEN_A),
        br#"{"tag":"mine"}"#,
    );
    assert_eq!(tag.status, 200, "{}", tag.text());
    let up = server.request("POST", "/v1/files", Some(TOKEN_A), b"alice's bytes");
    assert_eq!(up.status, 201, "{}", up.text());
    let file = up.json()["uuid"].as_str().unwrap().to_string();

    // Alice's image: not inspectable, not a base for bob's runs, not taggable.
    for url in [
        format!("/v1/inspect/{image}/"),
        inspect(&image, "list", "/"),
        inspect(&image, "download", "/alice.txt"),
        inspect(&image, "archive", "/alice.txt"),
    ] {
        refused(&server, &url, TOKEN_B, &["secret"]);
    }
    for base in [image.clone(), "tag:mine".into(), "mine".into()] {
        let reply = server.post_json(
            "/v1/instances",
            TOKEN_B,
            &json!({"image": base, "command": "cat /alice.txt", "shell": true}),
        );
        assert_eq!(reply.status, 404, "bob ran on {base}: {}", reply.text());
    }
    let retag = server.request(
        "PATCH",
        &format!("/v1/images/{image}/tag"),
        Some(TOKEN_B),
        br#"{"tag":"stolen"}"#,
    );
    assert_eq!(retag.status, 404, "{}", retag.text());
    let untag = server.request(
        "DELETE",
        &format!("/v1/images/{image}/tag?tag=mine"),
        Some(TOKEN_B),
        b"",
    );
    assert_eq!(untag.status, 404, "{}", untag.text());
    assert_eq!(server.get("/v1/inspect/?tag=mine", TOKEN_A).status, 302);
    let listed = server
        .get(&format!("/v1/images?uuid={image}"), TOKEN_B)
        .json();
    assert_eq!(listed["images"], json!([]));

    // Alice's file uuid cannot be attached by bob.
    let host = server.host_image(TOKEN_B);
    let attach = server.post_json(
        "/v1/instances",
        TOKEN_B,
        &json!({"image": host, "command": "true", "files": {"/f": {"uuid": file}}}),
    );
    assert_eq!(attach.status, 404, "{}", attach.text());

    // A running operation of alice: bob can neither signal it, feed it, read it nor cancel it.
    let token = unique_token();
    let running = server.spawn(TOKEN_A, &format!("sleep 60.{token}"));
    wait_until(Duration::from_secs(30), "alice's sleeper", || {
        !sleepers(&token).is_empty()
    });
    let b = Some(TOKEN_B);
    let attempts = [
        (
            "DELETE",
            format!("/v1/operations/{running}/subprocesses/1?signal=KILL"),
        ),
        (
            "POST",
            format!("/v1/operations/{running}/subprocesses/1/stdin"),
        ),
        ("GET", format!("/v1/operations/{running}/events")),
        ("GET", format!("/v1/operations/{running}")),
        ("DELETE", format!("/v1/operations/{running}")),
    ];
    for (method, url) in &attempts {
        let reply = server.request(method, url, b, br#"{"value":"eA==","encoding":"base64"}"#);
        assert_eq!(reply.status, 404, "{method} {url}: {}", reply.text());
    }
    assert!(!sleepers(&token).is_empty(), "bob ended alice's command");
    let cancel = server.request(
        "DELETE",
        &format!("/v1/operations/{running}"),
        Some(TOKEN_A),
        b"",
    );
    assert_eq!(cancel.status, 202, "{}", cancel.text());
}

// ---- the CLI on the host image -----------------------------------------------------------

#[test]
fn cat_cp_and_ls_refuse_proc_sys_and_dev_on_the_host_image() {
    let env = Env::host();
    for path in [
        "/proc/self/environ",
        "/proc/1/environ",
        "/etc/mtab",
        "/dev/stdin",
    ] {
        env.run(["cat", path])
            .code(1)
            .stdout_empty()
            .stderr_contains("[ERROR]")
            .stderr_contains("another filesystem");
    }
    let sys = "/sys/kernel/mm/transparent_hugepage/enabled";
    if Path::new(sys).exists() {
        let dest = env.work().join("thp");
        env.cmd(["cp", sys])
            .arg(&dest)
            .output()
            .code(1)
            .stderr_contains("another filesystem");
        assert!(!dest.exists(), "cp wrote {}", dest.display());
    }
    env.run(["ls", "/proc/self"])
        .code(1)
        .stderr_contains("another filesystem");
    env.run(["ls", "/proc"]).success().stdout_empty();
}

// ---- the store: private to its user --------------------------------------------------------

/// Whether uid/gid 65534 (`nobody`) can see `path` at all (`test -e` under `setpriv`, which
/// drops root's capabilities with the uid). `None` (reported skipped) without `setpriv`.
fn nobody_reaches(path: &Path) -> Option<bool> {
    let Some(setpriv) = find_program("setpriv") else {
        skip("needs util-linux's `setpriv` to act as another user");
        return None;
    };
    let status = std::process::Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "test",
            "-e",
        ])
        .arg(path)
        .status()
        .expect("run setpriv");
    Some(status.success())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A scratch dir that other users may traverse (0755), as a home directory often is: the
/// data dirs of the store tests live in it, so only contree's own modes protect them.
fn open_parent() -> OpenParent {
    let dir = tempfile::Builder::new()
        .prefix("contree-escape-")
        .tempdir()
        .expect("create scratch dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod scratch dir");
    OpenParent(dir)
}

/// `open_parent`'s dir, removed once the supervisors of the data dirs in it are done.
struct OpenParent(tempfile::TempDir);

impl OpenParent {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for OpenParent {
    fn drop(&mut self) {
        crate::harness::settle(self.0.path());
    }
}

/// The file `name` at the top of some layer of the store under `home`.
fn layer_file(home: &Path, name: &str) -> PathBuf {
    std::fs::read_dir(home.join("store/layers"))
        .expect("list layers")
        .flatten()
        .map(|e| e.path().join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no layer holds {name}"))
}

#[test]
fn a_fresh_data_dir_and_store_are_private() {
    let parent = open_parent();
    // $CONTREE_HOME that contree creates.
    let home = parent.path().join("home");
    let env = Env::new();
    let home_s = home.display().to_string();
    env.cmd(["use", "host"])
        .env("CONTREE_HOME", &home_s)
        .output()
        .success();
    for dir in [
        "",
        "store",
        "sessions",
        "cache",
        "store/layers",
        "store/blobs",
        "store/ops",
    ] {
        assert_eq!(mode(&home.join(dir)), 0o700, "{}/{dir}", home.display());
    }
    // The XDG data dir: `contree` in it is contree's own, made private even when it exists.
    let xdg = parent.path().join("xdg");
    let xdg_s = xdg.display().to_string();
    let use_host = || {
        env.cmd(["use", "host"])
            .env("CONTREE_HOME", "")
            .env("XDG_DATA_HOME", &xdg_s)
            .output()
            .success();
    };
    use_host();
    for dir in [xdg.clone(), xdg.join("contree"), xdg.join("contree/store")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    std::fs::set_permissions(xdg.join("contree"), std::fs::Permissions::from_mode(0o755)).unwrap();
    use_host();
    assert_eq!(mode(&xdg.join("contree")), 0o700);
}

/// A store under `home` (made by contree, in a parent others may traverse) holding what a
/// run leaves: a setuid file in a layer, an attached file's blob, the operation's event log,
/// the session database and the digest cache. Returns those paths.
fn store_with_a_setuid_file(env: &Env, home: &Path) -> Vec<PathBuf> {
    let home_s = home.display().to_string();
    let contree = |args: &[&str]| env.cmd(args).env("CONTREE_HOME", &home_s).output();
    contree(&["use", "host"]).success();
    let attached = env.write("attached.txt", "attached content\n");
    let spec = format!("{}:/attached.txt", attached.display());
    contree(&[
        "run",
        "-F",
        &spec,
        "--",
        "sh",
        "-c",
        "cp /bin/true /suid && chmod 4755 /suid",
    ])
    .success();
    // Its supervisor goes on after the CLI (its upkeep, its scratch dir given back): the
    // modes are changed below once it is done.
    crate::harness::wait_until(
        std::time::Duration::from_secs(20),
        "the run's supervisor to finish",
        || crate::harness::supervisors_in(home).is_empty(),
    );
    let suid = layer_file(home, "suid");
    assert_eq!(mode(&suid) & 0o4000, 0o4000, "the run left a setuid file");
    let sha = crate::harness::sha256_hex(b"attached content\n");
    let op = env
        .cmd(["ps", "-a", "-q"])
        .env("CONTREE_HOME", &home_s)
        .output()
        .success()
        .stdout_text()
        .lines()
        .next()
        .expect("an operation")
        .to_string();
    let paths = vec![
        suid,
        home.join("store/blobs/sha256").join(sha),
        home.join("store/ops").join(op).join("events"),
        home.join("sessions/local.db"),
        home.join("cache/digests.db"),
    ];
    for p in &paths {
        assert!(p.exists(), "{} missing", p.display());
    }
    paths
}

#[test]
fn a_setuid_file_a_run_wrote_is_out_of_other_users_reach() {
    let parent = open_parent();
    let home = parent.path().join("home");
    let env = Env::new();
    for path in store_with_a_setuid_file(&env, &home) {
        let Some(reached) = nobody_reaches(&path) else {
            return;
        };
        assert!(!reached, "another user reaches {}", path.display());
    }
}

#[test]
fn an_old_loose_store_is_tightened_on_open_without_a_recursive_chmod() {
    let parent = open_parent();
    let home = parent.path().join("home");
    let env = Env::new();
    let private = store_with_a_setuid_file(&env, &home);
    let layer = private[0].parent().unwrap().to_path_buf();
    // What an older contree left: every directory 0755.
    let loose = std::fs::Permissions::from_mode(0o755);
    for entry in walkdir(&home) {
        if entry.is_dir() {
            std::fs::set_permissions(&entry, loose.clone()).unwrap();
        }
    }
    for path in &private {
        let Some(reached) = nobody_reaches(path) else {
            return;
        };
        assert!(
            reached,
            "the probe cannot see {} even in a loose store",
            path.display()
        );
    }
    env.cmd(["images"])
        .env("CONTREE_HOME", home.display().to_string())
        .output()
        .success();
    for path in &private {
        assert_eq!(
            nobody_reaches(path),
            Some(false),
            "{} still reachable after a command",
            path.display()
        );
    }
    for dir in [
        "store",
        "store/layers",
        "store/blobs",
        "store/ops",
        "sessions",
        "cache",
    ] {
        assert_eq!(mode(&home.join(dir)), 0o700, "{dir}");
    }
    // $CONTREE_HOME is the user's own directory once it exists: left as it is. A layer's
    // root is the image's `/` (its mode shows in runs), and nothing deeper is visited.
    assert_eq!(mode(&home), 0o755);
    assert_eq!(mode(&layer), 0o755);
    assert_eq!(mode(private[2].parent().unwrap()), 0o755, "ops/<uuid>");
    // `doctor` says so, and reports a store another user owns (who could loosen it again).
    let doctor = || {
        env.cmd(["doctor"])
            .env("CONTREE_HOME", home.display().to_string())
            .output()
    };
    doctor().success().stdout_contains("ok        permissions");
    std::os::unix::fs::chown(home.join("store"), Some(65534), None).unwrap();
    doctor()
        .code(1)
        .stdout_contains("belongs to uid 65534, not to you");
    std::os::unix::fs::chown(home.join("store"), Some(0), None).unwrap();
    // The owner still reads what the run wrote.
    let mut first = [0u8; 4];
    std::fs::File::open(&private[0])
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert_eq!(&first, b"\x7fELF");
}

/// Every path under `dir`, `dir` included.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() && !out[i].is_symlink() {
            if let Ok(rd) = std::fs::read_dir(&out[i]) {
                out.extend(rd.flatten().map(|e| e.path()));
            }
        }
        i += 1;
    }
    out
}
