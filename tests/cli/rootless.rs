//! Rootless: the real binary run by ordinary users (docs/rootless.md). The test (root) makes
//! two users once and keeps them: `contree-rl`, with no /etc/subuid or /etc/subgid line (its
//! own id only), and `contree-rl-sub`, with 65536 subordinate ids (lines added only when
//! missing). Each test gives its user a scratch HOME (chown'd to it, removed afterwards) and
//! runs contree as that user with `setpriv`. Nothing here writes a kernel knob: a host that
//! forbids user namespaces is the `userns-forbidden` failpoint; /dev/net/tun is looked at
//! with access(2) as the user.

use crate::harness::*;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Serialises useradd and /etc/subuid edits between the tests' threads.
static USERS: Mutex<()> = Mutex::new(());

const OWN: &str = "contree-rl";
const SUB: &str = "contree-rl-sub";

struct User {
    uid: u32,
    gid: u32,
    subids: bool,
}

/// The user `name`, made when missing (a system user: useradd gives it no subordinate ids),
/// with a subordinate range of 65536 ids when `subids`.
fn user(name: &str, subids: bool) -> Option<User> {
    let _held = USERS.lock().unwrap_or_else(|e| e.into_inner());
    if find_program("setpriv").is_none() || find_program("useradd").is_none() {
        skip("needs setpriv and useradd (util-linux, passwd)");
        return None;
    }
    if subids && (find_program("newuidmap").is_none() || find_program("newgidmap").is_none()) {
        skip("needs newuidmap/newgidmap (apt-get install uidmap)");
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(name).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(name)
            .status()
            .expect("useradd");
        assert!(made.success(), "useradd {name}");
    }
    let named = |file: &str| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{name}:")))
    };
    for file in ["/etc/subuid", "/etc/subgid"] {
        if subids && !named(file) {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            // Above every range the file names already.
            let end = text
                .lines()
                .filter_map(|l| {
                    let mut p = l.split(':').skip(1);
                    Some(p.next()?.parse::<u64>().ok()? + p.next()?.parse::<u64>().ok()?)
                })
                .max()
                .unwrap_or(100_000)
                .max(100_000);
            let start = end.div_ceil(65536) * 65536;
            let mut text = text;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("{name}:{start}:65536\n"));
            std::fs::write(file, text).expect("add a subordinate range");
        }
        assert_eq!(
            named(file),
            subids,
            "{file}: {name} should{} have a line",
            if subids { "" } else { " not" }
        );
    }
    Some(User {
        uid: id("-u")?,
        gid: id("-g")?,
        subids,
    })
}

/// A scratch HOME (and work dir) owned by a test user; contree's data goes to its default
/// place, `$HOME/.local/share/contree`.
struct Rl {
    dir: tempfile::TempDir,
    user: User,
}

impl Rl {
    fn new(name: &str, subids: bool) -> Option<Rl> {
        let user = user(name, subids)?;
        let dir = tempfile::Builder::new()
            .prefix("contree-rl-")
            .tempdir()
            .expect("scratch dir");
        for sub in ["", "home", "work"] {
            let p = dir.path().join(sub);
            std::fs::create_dir_all(&p).unwrap();
            std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid)).unwrap();
        }
        // The binary where the user reaches it (the build's may be in a directory only root
        // may enter, such as /root): a hard link, else a copy, in the scratch dir.
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let exe = bin.join("contree");
        if std::fs::hard_link(CONTREE, &exe).is_err() {
            std::fs::copy(CONTREE, &exe).expect("copy the binary for the user");
        }
        Some(Rl { dir, user })
    }

    /// The binary the user runs (see `new`).
    fn exe(&self) -> String {
        self.dir.path().join("bin/contree").display().to_string()
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn store(&self) -> PathBuf {
        self.home().join(".local/share/contree/store")
    }

    /// `contree ARGS…` as the user.
    fn cmd<'a>(&self, args: impl AsRef<[&'a str]>) -> Cmd {
        let env = Env::new();
        let argv = self.argv(args.as_ref());
        let mut cmd = env.program(&argv[0]);
        for a in &argv[1..] {
            cmd = cmd.arg(a);
        }
        self.user_env(cmd)
    }

    /// The command line of `contree ARGS…` as the user (with `user_env`).
    fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut argv = vec![
            "setpriv".to_string(),
            format!("--reuid={}", self.user.uid),
            format!("--regid={}", self.user.gid),
            "--clear-groups".to_string(),
            "env".to_string(),
            "-u".to_string(),
            "CONTREE_HOME".to_string(),
            self.exe(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// The user's environment and working dir for `cmd`.
    fn user_env(&self, cmd: Cmd) -> Cmd {
        cmd.env("HOME", self.home())
            .env("CONTREE_SESSION", "t")
            .current_dir(self.work())
    }

    fn run<'a>(&self, args: impl AsRef<[&'a str]>) -> Output {
        self.cmd(args).output()
    }

    /// `contree run --no-network -D -- COMMAND…` as the user.
    fn sandboxed(&self, command: &[&str]) -> Output {
        let mut args = vec!["run", "--no-network", "-D", "--"];
        args.extend_from_slice(command);
        self.run(args)
    }

    /// Writes a file the user may read, in the work dir.
    fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.work().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        let mut p = path.clone();
        while p != self.work() {
            std::os::unix::fs::chown(&p, Some(self.user.uid), Some(self.user.gid)).unwrap();
            p = p.parent().unwrap().to_path_buf();
        }
        path
    }
}

impl Drop for Rl {
    fn drop(&mut self) {
        crate::harness::settle(self.dir.path());
    }
}

/// Host image, snapshot, -D, the masks, the store's place and owner, and what each mapping
/// allows: the same checks for both users.
fn host_image_runs_and_snapshots(rl: &Rl) {
    rl.run(["use", "host"]).success();
    let maps = rl
        .sandboxed(&["cat", "/proc/self/uid_map"])
        .success()
        .stdout_text();
    let lines: Vec<Vec<u64>> = maps
        .lines()
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    assert_eq!(lines[0], [0, rl.user.uid as u64, 1], "{maps}");
    assert_eq!(lines.len(), if rl.user.subids { 2 } else { 1 }, "{maps}");
    rl.run([
        "run",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo kept > /root/f; echo e > /etc/made; id -u",
    ])
    .success()
    .stdout("0\n");
    rl.run(["run", "--no-network", "--", "cat", "/root/f", "/etc/made"])
        .success()
        .stdout("kept\ne\n");
    rl.sandboxed(&["sh", "-c", "echo gone > /root/g"]).success();
    rl.run(["run", "--no-network", "--", "test", "!", "-e", "/root/g"])
        .success();
    // The host's system dirs show; secrets, home dirs and the data dir do not.
    rl.sandboxed(&["test", "-x", "/usr/bin/env"]).success();
    rl.sandboxed(&["test", "!", "-e", "/etc/shadow"]).success();
    rl.sandboxed(&["ls", "-A", "/home", "/tmp"])
        .success()
        .stdout("/home:\n\n/tmp:\n");
    let store = rl.store();
    rl.sandboxed(&["test", "!", "-e", store.to_str().unwrap()])
        .success();
    // chown to another id: only with subordinate ids.
    let chown = rl.sandboxed(&["chown", "1000:1000", "/root/f"]);
    if rl.user.subids {
        chown.success();
    } else {
        chown.code(1).stderr_contains("Invalid argument");
    }
    // The store is the user's, marked rootless, and root's contree refuses it (last: root
    // opening the user's data dir may leave files there that are root's).
    let meta = std::fs::metadata(&store).expect("the store under ~/.local/share/contree");
    assert_eq!(meta.uid(), rl.user.uid);
    assert!(store.join("rootless").exists());
    let env = Env::new();
    env.program(CONTREE)
        .env("CONTREE_HOME", store.parent().unwrap())
        .arg("images")
        .output()
        .code(69)
        .stderr_contains("is the store of contree run by an ordinary user (rootless)");
}

#[test]
fn rootless_with_its_own_id_runs_the_host_image() {
    let Some(rl) = Rl::new(OWN, false) else {
        return;
    };
    host_image_runs_and_snapshots(&rl);
}

#[test]
fn rootless_with_subordinate_ids_runs_the_host_image() {
    let Some(rl) = Rl::new(SUB, true) else {
        return;
    };
    host_image_runs_and_snapshots(&rl);
}

#[test]
fn rootless_files_stdin_timeout_and_network() {
    let Some(rl) = Rl::new(OWN, false) else {
        return;
    };
    rl.run(["use", "host"]).success();
    let file = rl.write("a.txt", "from a file\n");
    rl.write("dir/one", "1\n");
    rl.write("dir/sub/two", "2\n");
    let dir = rl.work().join("dir");
    let spec_file = format!("{}:/data/a.txt", file.display());
    let spec_dir = format!("{}:/data/dir", dir.display());
    rl.run([
        "run",
        "--no-network",
        "-F",
        &spec_file,
        "-F",
        &spec_dir,
        "--",
        "cat",
        "/data/a.txt",
        "/data/dir/one",
        "/data/dir/sub/two",
    ])
    .success()
    .stdout("from a file\n1\n2\n");
    rl.cmd(["run", "--no-network", "-D", "--", "tr", "a-z", "A-Z"])
        .stdin("piped in\n")
        .output()
        .success()
        .stdout("PIPED IN\n");
    rl.run([
        "run",
        "--no-network",
        "-D",
        "--timeout",
        "1",
        "--",
        "sleep",
        "30",
    ])
    .code(255);
    rl.sandboxed(&["ls", "/sys/class/net"])
        .success()
        .stdout("lo\n");
    // Networking goes through pasta or slirp4netns, which open /dev/net/tun as the user.
    let tun = Command::new("setpriv")
        .arg(format!("--reuid={}", rl.user.uid))
        .arg(format!("--regid={}", rl.user.gid))
        .args([
            "--clear-groups",
            "test",
            "-r",
            "/dev/net/tun",
            "-a",
            "-w",
            "/dev/net/tun",
        ])
        .status()
        .expect("setpriv test")
        .success();
    let net = rl.run(["run", "-D", "--", "ls", "/sys/class/net"]);
    if tun {
        net.success().check("an interface besides lo", |o| {
            o.stdout_text().lines().any(|l| l != "lo")
        });
    } else {
        net.code(69)
            .stderr_contains("needs /dev/net/tun open to you");
    }
}

/// A mount namespace's own /dev/net/tun, open to every user, as most distributions ship it
/// (this machine's is 0600): made in a tmpfs over /dev/net, never on the host's /dev.
const TUN_FOR_USERS: &str =
    "mount -t tmpfs -o mode=0755 tmpfs /dev/net && mknod -m 0666 /dev/net/tun c 10 200 &&";

#[test]
fn rootless_networked_run_reaches_the_hosts_loopback_through_the_stack() {
    if !crate::escape_network::have_pasta() {
        return;
    }
    let Some(net) = crate::escape_network::TestNet::new() else {
        return;
    };
    let Some(rl) = Rl::new(OWN, false) else {
        return;
    };
    rl.run(["use", "host"]).success();
    let port = net.tcp_server("127.0.0.1", "hello, rootless\n");
    let script = format!(
        "ip -o -4 addr show scope global | grep -q inet && exec 3<>/dev/tcp/$(ip route show default | awk '{{print $3}}')/{port} && cat <&3"
    );
    let argv = rl.argv(&["run", "-D", "--", "timeout", "20", "bash", "-c", &script]);
    rl.user_env(net.command(&Env::new(), TUN_FOR_USERS, &argv))
        .output()
        .success()
        .stdout("hello, rootless\n");
}

#[test]
fn rootless_imported_busybox_branches_and_rollback() {
    let Some(busybox) = static_busybox() else {
        skip("needs a static /bin/busybox (apt-get install busybox-static)");
        return;
    };
    let Some(rl) = Rl::new(SUB, true) else {
        return;
    };
    let root = busybox_rootfs(&busybox, &rl.work());
    Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", rl.user.uid, rl.user.gid))
        .arg(&root)
        .status()
        .unwrap();
    rl.run(["images", "import", root.to_str().unwrap(), "--tag", "bb"])
        .success();
    rl.run(["use", "bb"]).success();
    rl.run(["run", "--no-network", "--", "sh", "-c", "echo a > /a"])
        .success();
    rl.run(["session", "branch", "keep"]).success();
    rl.run(["run", "--no-network", "--", "sh", "-c", "echo b > /b"])
        .success();
    rl.sandboxed(&["cat", "/a", "/b"])
        .success()
        .stdout("a\nb\n");
    rl.run(["session", "rollback"]).success();
    rl.sandboxed(&["test", "!", "-e", "/b"]).success();
    rl.run(["session", "checkout", "keep"]).success();
    rl.sandboxed(&["cat", "/a"]).success().stdout("a\n");
    // Detached, then waited for.
    let out = rl.run([
        "-o",
        "json",
        "run",
        "--no-network",
        "-d",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    let op = out.success().json()["uuid"].as_str().unwrap().to_string();
    rl.run(["wait", &op]).code(3);
}

#[test]
fn rootless_limits_are_refused_and_doctor_says_so() {
    let Some(rl) = Rl::new(OWN, false) else {
        return;
    };
    rl.run(["use", "host"]).success();
    rl.run(["run", "--no-network", "--memory", "64M", "--", "true"])
        .code(78)
        .stderr_contains("a memory limit needs a cgroup");
    let doctor = rl.run(["doctor"]);
    let text = doctor.stdout_text();
    assert!(
        text.contains("rootless: contree runs in a user namespace"),
        "{text}"
    );
    assert!(text.contains("limits are unavailable"), "{text}");
    assert!(text.contains("only the user's own id is mapped"), "{text}");
    // A host that forbids user namespaces: the settings are named, exit 69.
    rl.cmd(["run", "--no-network", "--", "true"])
        .env("CONTREE_FAILPOINTS", "userns-forbidden")
        .output()
        .code(69)
        .stderr_contains("does not let ordinary users create user namespaces");
}

/// Cgroups delegated to a test user as an administrator would on a cgroup v1 host: a
/// directory `contree-test-TOKEN` under the root of each of the memory and pids
/// hierarchies, chown'd (with its files) to the user. The user's contree is put in them by
/// a root shell that writes its own pid into each `cgroup.procs` and then execs setpriv.
/// Dropped after the user's runs are over: what is left in them moves back to the root,
/// and the directories go, children first. Only v1 is tested (this is where the host has
/// its controllers); a v2 delegation (systemd's `user@UID.service`) has unit tests only.
struct Delegated {
    dirs: Vec<PathBuf>,
}

impl Delegated {
    fn new(user: &User) -> Option<Delegated> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let v1 = |c: &str| {
            mounts.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&format!("/sys/fs/cgroup/{c}").as_str())
                    && f.get(2) == Some(&"cgroup")
                    && f.get(3).is_some_and(|o| o.split(',').any(|x| x == c))
            })
        };
        if !v1("memory") || !v1("pids") {
            skip("needs the v1 memory and pids hierarchies at /sys/fs/cgroup/{memory,pids}");
            return None;
        }
        let name = format!("contree-test-{}", unique_token());
        let mut dg = Delegated { dirs: Vec::new() };
        for c in ["memory", "pids"] {
            let dir = PathBuf::from(format!("/sys/fs/cgroup/{c}/{name}"));
            std::fs::create_dir(&dir).expect("a cgroup for the user");
            dg.dirs.push(dir.clone());
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                std::os::unix::fs::chown(entry.path(), Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        Some(dg)
    }

    /// The shell script that moves itself into the delegated cgroups and execs its
    /// arguments.
    fn script(&self) -> String {
        let mut s = String::new();
        for dir in &self.dirs {
            s.push_str(&format!("echo $$ > {}/cgroup.procs && ", dir.display()));
        }
        s.push_str("exec \"$@\"");
        s
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        fn empty(dir: &std::path::Path, root: &std::path::Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        empty(&e.path(), root);
                    }
                }
            }
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for dir in &self.dirs {
            empty(dir, dir.parent().unwrap());
        }
    }
}

impl Rl {
    /// `contree -o json show` of the newest operation.
    fn show_last(&self) -> serde_json::Value {
        let text = self.run(["ps", "-a", "-q"]).success().stdout_text();
        let op = text.lines().next().expect("an operation").to_string();
        self.run(["-o", "json", "show", &op]).success().json()
    }

    /// `contree ARGS…` as the user, its process in the cgroups of `dg`.
    fn delegated(&self, dg: &Delegated, args: &[&str]) -> Cmd {
        let env = Env::new();
        let mut cmd = env.program("sh").arg("-c").arg(dg.script()).arg("sh");
        for a in self.argv(&[]) {
            cmd = cmd.arg(a);
        }
        for a in args {
            cmd = cmd.arg(a);
        }
        self.user_env(cmd)
    }
}

/// Limits through delegated cgroups: the run's cgroup is made under them, holds the
/// limits, and they hold (the OOM kill and the fork bomb as root mode reports them).
fn limits_through_delegated_cgroups(name: &str, subids: bool) {
    let Some(user) = user(name, subids) else {
        return;
    };
    let Some(dg) = Delegated::new(&user) else {
        return;
    };
    // Declared after `dg`, so dropped (its runs settled) before the cgroups go.
    let Some(rl) = Rl::new(name, subids) else {
        return;
    };
    rl.run(["use", "host"]).success();
    let doctor = rl.delegated(&dg, &["doctor"]).output().stdout_text();
    assert!(doctor.contains("rootless: delegated cgroups"), "{doctor}");
    assert!(
        doctor.contains(&format!("memory v1 {}", dg.dirs[0].display())),
        "{doctor}"
    );
    // The sandbox's cgroup, seen from the host while it sleeps: under the delegated one,
    // with the limits written.
    let token = unique_token();
    let sleep = format!("60.{token}");
    let running = rl
        .delegated(
            &dg,
            &[
                "run",
                "--no-network",
                "-D",
                "-t",
                "60",
                "--memory",
                "64M",
                "--pids",
                "20",
                "--",
                "sleep",
                &sleep,
            ],
        )
        .spawn();
    wait_until(Duration::from_secs(20), "the sandbox runs", || {
        !sleepers(&token).is_empty()
    });
    let pid = sleepers(&token)[0];
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for (c, file, want) in [
        ("memory", "memory.limit_in_bytes", (64u64 << 20).to_string()),
        ("pids", "pids.max", "21".to_string()),
    ] {
        let path = cgroups
            .lines()
            .find_map(|l| l.split_once(&format!(":{c}:")).map(|(_, p)| p.to_string()))
            .unwrap_or_else(|| panic!("{c} in {cgroups}"));
        let dir = PathBuf::from(format!("/sys/fs/cgroup/{c}{path}"));
        let delegated = dg
            .dirs
            .iter()
            .find(|d| d.starts_with(format!("/sys/fs/cgroup/{c}")));
        assert!(
            dir.starts_with(delegated.unwrap().join("contree")),
            "{} is not under the delegated cgroup",
            dir.display()
        );
        let value = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(value.trim(), want, "{}", dir.join(file).display());
    }
    for pid in sleepers(&token) {
        let _ = nix_kill(pid);
    }
    let _ = running.wait();
    // Past the memory limit: killed as out of memory, as root mode says it.
    rl.delegated(
        &dg,
        &[
            "run",
            "--no-network",
            "-t",
            "60",
            "--memory",
            "64M",
            "--",
            "perl",
            "-e",
            "$x = 'a' x (3 * 2**30); print length($x), qq(\\n)",
        ],
    )
    .output()
    .code(137)
    .stdout_lacks("3221225472")
    .stderr_contains("killed: out of memory (limit 64 MiB)");
    let shown = rl.show_last();
    assert_eq!(shown["exit_code"], 137);
    assert_eq!(shown["result"]["state"]["oom"], true);
    let peak = shown["consumed_memory"].as_u64().expect("consumed_memory");
    assert!(peak <= 64 * 1024, "peak {peak} KiB");
    // A fork bomb stops at the pids limit.
    let token = unique_token();
    let out = rl
        .delegated(
            &dg,
            &[
                "run",
                "--no-network",
                "-D",
                "-t",
                "60",
                "--pids",
                "20",
                "--",
                "perl",
                "-e",
                &crate::escape_limits::fork_loop(&token),
            ],
        )
        .output()
        .success();
    let text = out.stdout_text();
    let (made, failed) = crate::escape_limits::forks(&text);
    assert!(made <= 19, "{text}");
    assert!(failed >= 2000 - 19, "{text}");
    let limits = &rl.show_last()["result"]["limits"];
    assert_eq!(limits["max_pids"], 20);
    assert!(limits["forks_refused"].as_u64().unwrap() > 0, "{limits}");
    assert!(
        sleepers(&token).is_empty(),
        "sandboxed sleepers outlived the run"
    );
    // No cpu hierarchy was delegated: a CPU limit is still refused.
    rl.delegated(&dg, &["run", "--no-network", "--cpus", "1", "--", "true"])
        .output()
        .code(78)
        .stderr_contains("a cpus limit needs a cgroup");
}

#[test]
fn rootless_limits_hold_in_delegated_cgroups_with_its_own_id() {
    limits_through_delegated_cgroups(OWN, false);
}

#[test]
fn rootless_limits_hold_in_delegated_cgroups_with_subordinate_ids() {
    limits_through_delegated_cgroups(SUB, true);
}

/// The escape probes of the containment work that apply rootless: the sandbox's processes
/// are the user's on the host, and they cannot mount, write kernel knobs or see the store.
#[test]
fn rootless_escape_probes() {
    let Some(rl) = Rl::new(SUB, true) else {
        return;
    };
    rl.run(["use", "host"]).success();
    let token = unique_token();
    let running = rl
        .cmd([
            "run",
            "--no-network",
            "-D",
            "--",
            "sleep",
            &format!("30.{token}"),
        ])
        .spawn();
    wait_until(Duration::from_secs(20), "the sandbox runs", || {
        !sleepers(&token).is_empty()
    });
    for pid in sleepers(&token) {
        let meta = std::fs::metadata(format!("/proc/{pid}")).expect("/proc/PID");
        assert_eq!(meta.uid(), rl.user.uid, "the sandbox's root is the user");
        let _ = nix_kill(pid);
    }
    let _ = running.wait();
    rl.sandboxed(&["test", "!", "-w", "/proc/sys/kernel/hostname"])
        .success();
    rl.sandboxed(&["mount", "-t", "tmpfs", "x", "/mnt"])
        .check("mount refused", |o| o.status.code() != Some(0));
    rl.sandboxed(&["sh", "-c", "grep CapEff /proc/self/status"])
        .success()
        .check("no CAP_SYS_ADMIN", |o| {
            let mask = o
                .stdout_text()
                .split_whitespace()
                .nth(1)
                .map(|m| u64::from_str_radix(m, 16).unwrap_or(u64::MAX));
            mask.is_some_and(|m| m & (1 << 21) == 0)
        });
}

fn nix_kill(pid: i32) -> std::io::Result<()> {
    let status = Command::new("kill").arg(pid.to_string()).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

/// `serve` run by the user on a port above 1024: the official wire format, the user's
/// engine behind it (root inside is the user's namespace root).
#[test]
fn rootless_hooks_and_plugins_run_as_for_root() {
    let Some(rl) = Rl::new(SUB, true) else {
        return;
    };
    rl.run(["use", "host"]).success();
    // A Lua hook: the native redactor masks a token in the output.
    let hook = rl.write(
        "hooks/redact.lua",
        "contree.on(\"on-output\", contree.redact { \"bearer\" })\n",
    );
    rl.run([
        "run",
        "--no-network",
        "-D",
        "--hook",
        hook.to_str().unwrap(),
        "--",
        "echo",
        "Authorization: Bearer abc.def.ghi",
    ])
    .success()
    .stdout("Authorization: Bearer [REDACTED]\n");
    // A plugin built from plugins/: its output format, loaded from the user's own copy.
    let lib = rl.work().join("junit.so");
    std::fs::copy(&crate::plugins::built().junit, &lib).unwrap();
    std::os::unix::fs::chown(&lib, Some(rl.user.uid), Some(rl.user.gid)).unwrap();
    let out = rl
        .cmd([
            "-o",
            "junit",
            "run",
            "--no-network",
            "--",
            "sh",
            "-c",
            "echo from a plugin run",
        ])
        .env("CONTREE_PLUGIN_PATH", &lib)
        .output()
        .success();
    let xml = out.stdout_text();
    assert!(xml.contains("tests=\"1\" failures=\"0\""), "{xml}");
    assert!(
        xml.contains("<system-out>from a plugin run&#10;</system-out>"),
        "{xml}"
    );
}

#[test]
fn rootless_serve_runs_for_a_client() {
    let Some(rl) = Rl::new(OWN, false) else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = rl.cmd(["serve", "--listen", &listen]).spawn();
    server.wait_for_stderr("listening on", Duration::from_secs(30));
    let tokens = rl.home().join(".local/share/contree/serve.tokens");
    let text = std::fs::read_to_string(&tokens).expect("serve.tokens");
    let token = text
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 2 && !l.starts_with('#')).then(|| f[0].to_string())
        })
        .expect("a token");
    let url = format!("http://{listen}");
    rl.run(["--url", &url, "--token", &token, "use", "host"])
        .success();
    rl.run([
        "--url",
        &url,
        "--token",
        &token,
        "run",
        "--no-network",
        "--",
        "id",
        "-u",
    ])
    .success()
    .stdout("0\n");
    let _ = server.child.kill();
    let _ = server.wait();
}
