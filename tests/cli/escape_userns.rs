//! Escape probes, layer 1: root inside a sandbox is not root outside. Each probe is what a
//! hostile command would try, and passes only if the defence held. Nothing here writes a
//! kernel knob or a host file: writability is checked with access(2) (`test -w`).

use crate::harness::*;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// The host ids a sandbox's ids map to (docs/sandbox.md): the default, as no /etc/subuid line
/// names `contree` on a test machine (checked).
fn base() -> u64 {
    let named = |file: &str| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("contree:"))
    };
    assert!(
        !named("/etc/subuid") && !named("/etc/subgid"),
        "these probes expect the default range: /etc/subuid or /etc/subgid names contree"
    );
    0x7000_0000
}

#[test]
fn root_inside_maps_to_an_unprivileged_host_range() {
    let env = Env::host();
    let out = env
        .run([
            "run",
            "-D",
            "--",
            "cat",
            "/proc/self/uid_map",
            "/proc/self/gid_map",
        ])
        .success()
        .stdout_text();
    let maps: Vec<Vec<u64>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        maps,
        vec![vec![0, base(), 65536], vec![0, base(), 65536]],
        "{out}"
    );
    // Seen from the host, the sandbox's processes run as that range, not as root.
    let token = unique_token();
    let running = env
        .cmd(["run", "-D", "--", "sleep", &format!("30.{token}")])
        .spawn();
    wait_until(Duration::from_secs(20), "the sandbox runs", || {
        !sleepers(&token).is_empty()
    });
    for pid in sleepers(&token) {
        let meta = std::fs::metadata(format!("/proc/{pid}")).expect("/proc/PID");
        assert_eq!(
            meta.uid() as u64,
            base(),
            "a sandboxed process runs as host uid {}",
            meta.uid()
        );
    }
    drop(running);
}

#[test]
fn capabilities_inside_count_only_inside() {
    let env = Env::host();
    // Host kernel knobs: root-owned sysctls are not writable by root inside (checked with
    // access(2), never written), and neither is the host's own hostname knob.
    for knob in [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/vm/drop_caches",
        "/proc/sys/kernel/hostname",
        "/proc/sysrq-trigger",
    ] {
        env.run(["run", "-D", "--", "sh", "-c", &format!("test -w {knob}")])
            .code(1);
    }
    // No device node that reaches the host's kernel can be made.
    env.run(["run", "-D", "--", "mknod", "/root/kmsg", "c", "1", "11"])
        .check("mknod of /dev/kmsg fails", |o| !o.status.success());
    env.run(["run", "-D", "--", "mknod", "/root/loop0", "b", "7", "0"])
        .check("mknod of a loop device fails", |o| !o.status.success());
}

#[test]
fn image_files_keep_their_owners_and_what_root_makes_is_stored_as_root() {
    let env = Env::host();
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "echo r > /root/by-root; echo u > /root/by-user; chown 1000:1001 /root/by-user; \
         mkdir /root/tree; chmod 4755 /root/tree",
    ])
    .success();
    let layer = env.home().join("store/layers").join(env.last_op());
    // Inside the next run, as on disk: root's file is root's, the chowned one is 1000's.
    env.run([
        "run",
        "-D",
        "--",
        "stat",
        "-c",
        "%u:%g %n",
        "/etc/passwd",
        "/root/by-root",
        "/root/by-user",
    ])
    .success()
    .stdout("0:0 /etc/passwd\n0:0 /root/by-root\n1000:1001 /root/by-user\n");
    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(layer.join(p)).expect("file in the layer");
        (m.uid(), m.gid())
    };
    assert_eq!(owner("root/by-root"), (0, 0));
    assert_eq!(owner("root/by-user"), (1000, 1001));
    // `contree ls` reads the layers as they are on disk (names from the image's passwd).
    let listing = env.run(["ls", "/root"]).success().stdout_text();
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("by-root").contains(" root     root "), "{listing}");
    assert!(!line("by-user").contains("root"), "{listing}");
}

#[test]
fn a_sandbox_dies_with_its_supervisor() {
    let env = Env::host();
    let token = unique_token();
    env.json(["run", "-d", "--", "sleep", &format!("60.{token}")]);
    wait_until(Duration::from_secs(20), "the sandbox runs", || {
        !sleepers(&token).is_empty()
    });
    // Not any contree-super of this env: an earlier run's may still be finishing.
    let supervisor = supervisor_of(sleepers(&token)[0]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the supervisor");
    wait_until(Duration::from_secs(10), "the sandbox is gone", || {
        sleepers(&token).is_empty()
    });
}

#[test]
fn the_host_cgroup_tree_is_out_of_reach() {
    let env = Env::host();
    // Whatever a mount of cgroup2 inside gives, it is not the host's tree: the test's own
    // process is in no cgroup.procs file it can read.
    let me = std::process::id();
    let out = env.run([
        "run",
        "-D",
        "--",
        "sh",
        "-c",
        "mkdir -p /root/cg && mount -t cgroup2 none /root/cg 2>/dev/null && cat /root/cg/cgroup.procs; true",
    ]);
    let procs = out.success().stdout_text();
    assert!(
        !procs.lines().any(|l| l.trim() == me.to_string()),
        "the host's cgroup tree is visible: {procs}"
    );
}

#[test]
fn without_a_user_namespace_runs_still_work_and_doctor_says_so() {
    let env = Env::host();
    env.cmd([
        "run",
        "--",
        "sh",
        "-c",
        "echo x > /root/x; cat /proc/self/uid_map",
    ])
    .env("CONTREE_USERNS", "0")
    .output()
    .success()
    .stdout_contains("4294967295");
    env.run(["cat", "/root/x"]).success().stdout("x\n");
    env.cmd(["doctor"])
        .env("CONTREE_USERNS", "0")
        .output()
        .success()
        .stdout_contains("isolation    no user namespace: turned off by CONTREE_USERNS=0");
    env.run(["doctor"])
        .success()
        .stdout_contains("isolation    user namespace with idmapped mounts");
}
