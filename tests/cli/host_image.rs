//! The built-in `host` image: a read-only view of this machine's system directories with
//! private places (home dirs, /tmp, /run, secrets, contree's own data dir) hidden, where
//! sandbox writes never reach the host.

use std::path::Path;

use crate::harness::{find_program, skip, unique_token, Env};

#[test]
fn system_directories_are_the_hosts() {
    let env = Env::host();
    env.run(["run", "--", "test", "-x", "/usr/bin/env"])
        .success();
    let os_release = std::fs::read("/etc/os-release").expect("host /etc/os-release");
    env.run(["run", "--", "cat", "/etc/os-release"])
        .success()
        .stdout_bytes(&os_release);
    let passwd = std::fs::read("/etc/passwd").expect("host /etc/passwd");
    env.run(["run", "--", "cat", "/etc/passwd"])
        .success()
        .stdout_bytes(&passwd);
}

#[test]
fn private_directories_appear_empty() {
    let env = Env::host();
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "for d in /root /home /tmp /run; do test -d $d || echo \"$d missing\"; ls -A $d; done",
    ])
    .success()
    .stdout_empty();
}

#[test]
fn secrets_are_absent() {
    let env = Env::host();
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "for f in /etc/shadow /etc/gshadow; do test -e $f && echo \"$f visible\"; done; true",
    ])
    .success()
    .stdout_empty();
    // ssh host private keys are hidden, their public halves are not.
    let keys: Vec<String> = std::fs::read_dir("/etc/ssh")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ssh_host_"))
                .collect()
        })
        .unwrap_or_default();
    for key in keys {
        let path = format!("/etc/ssh/{key}");
        let expected = if key.ends_with(".pub") { 0 } else { 1 };
        env.run(["run", "--", "test", "-e", &path]).code(expected);
    }
}

#[test]
fn the_data_dir_contents_are_not_visible() {
    // Under /var/tmp rather than /tmp, which the host image hides anyway.
    let env = Env::with_home_in("/var/tmp");
    env.use_host();
    assert!(
        env.home().read_dir().unwrap().next().is_some(),
        "the data dir is empty"
    );
    let home = env.home().to_str().unwrap();
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        &format!("ls -A {home} 2>/dev/null"),
    ])
    .stdout_empty();
}

#[test]
fn the_data_dir_is_not_visible_at_all() {
    let env = Env::with_home_in("/var/tmp");
    env.use_host();
    let home = env.home().to_str().unwrap();
    let name = env.home().file_name().unwrap().to_str().unwrap();
    env.run(["run", "--", "test", "-e", home]).code(1);
    env.run(["run", "--", "ls", "-A", "/var/tmp"])
        .success()
        .stdout_lacks(name);
}

#[test]
fn host_processes_are_not_visible() {
    let env = Env::host();
    // A fresh PID namespace: the sandbox's init, the shell and `ls` at most.
    let out = env
        .run(["run", "--", "sh", "-c", "ls /proc | grep -c '^[0-9]'"])
        .success();
    let count: u32 = out.stdout_text().trim().parse().expect("a number");
    assert!(count <= 5, "{count} processes visible in the sandbox");
}

#[test]
fn writes_in_the_sandbox_never_reach_the_host() {
    // The probe must exist before the host image is first used: its view is taken then.
    let dir = Path::new("/var/lib").join(format!("contree-probe-{}", unique_token()));
    std::fs::create_dir_all(&dir).expect("create probe dir");
    std::fs::write(dir.join("keep"), "host content\n").expect("write probe");
    let env = Env::host();
    let d = dir.to_str().unwrap();
    let result = std::panic::catch_unwind(|| {
        env.run(["run", "--", "cat", &format!("{d}/keep")])
            .success()
            .stdout("host content\n");
        env.run([
            "run",
            "--",
            "sh",
            "-c",
            &format!("echo changed > {d}/keep && touch {d}/new && rm -f {d}/keep"),
        ])
        .success();
        env.run(["run", "--", "ls", "-A", d])
            .success()
            .stdout("new\n");
        assert_eq!(
            std::fs::read_to_string(dir.join("keep")).ok().as_deref(),
            Some("host content\n")
        );
        assert!(
            !dir.join("new").exists(),
            "a sandbox file appeared on the host"
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn interfaces(proc_net_dev: &str) -> Vec<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn no_network_leaves_only_loopback() {
    let env = Env::host();
    let out = env
        .run(["run", "--no-network", "--", "cat", "/proc/net/dev"])
        .success();
    assert_eq!(interfaces(&out.stdout_text()), vec!["lo".to_string()]);
}

#[test]
fn a_networked_run_sees_its_own_interfaces_not_the_hosts() {
    if find_program("pasta").is_none() && find_program("slirp4netns").is_none() {
        skip("needs pasta (apt-get install passt) or slirp4netns");
        return;
    }
    let env = Env::host();
    let out = env.run(["run", "--", "cat", "/proc/net/dev"]).success();
    // Loopback and the network stack's one interface (more in escape_network.rs).
    let seen = interfaces(&out.stdout_text());
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.contains(&"lo".to_string()), "{seen:?}");
}
