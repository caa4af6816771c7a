//! A run's network is its own: a namespace of its own connected through a user-mode stack
//! (pasta, else slirp4netns), loopback only with `--no-network`, and nothing a sandbox does
//! reaches the host's interfaces, routes or ports. Each probe is what an attacker (or a
//! curious user) would try, and passes only if the defence held.
//!
//! Network rule for these tests: they talk only to loopback and to servers in network
//! namespaces they make themselves. Every run that sends a packet runs inside a `TestNet`:
//! two network namespaces made by the test, joined by a veth pair, one standing in for the
//! host's network and one for the internet beyond its default gateway. Servers the sandbox
//! reaches live in them, and the host side's resolv.conf names the test's own DNS server,
//! so no packet can leave the machine even if a defence fails. The real host's network
//! configuration is only ever read.

use crate::harness::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The test network's addresses: the "host" side (what pasta copies into the sandbox), its
/// default gateway (which the stack maps to the host's loopback), and a server on the
/// "internet" side, which is also the upstream DNS resolver.
const HOST_ADDR: &str = "10.0.0.2";
const GATEWAY: &str = "10.0.0.1";
const OUTSIDE: &str = "198.51.100.7";
/// slirp4netns's fixed addresses.
const SLIRP_GATEWAY: &str = "10.0.2.2";

/// The sandbox's resolv.conf names this with pasta (see `engine::network`).
const PASTA_DNS: &str = "169.254.1.1";

/// The error a networked run gets without a stack, word for word.
const NO_HELPER: &str = "[ERROR] networking needs pasta (Debian/Ubuntu: apt install passt) or slirp4netns; or run with --no-network\n";

/// pasta is installed (CI installs it); otherwise the test reports itself skipped.
pub(crate) fn have_pasta() -> bool {
    if find_program("pasta").is_none() {
        skip("needs pasta (apt-get install passt)");
        return false;
    }
    true
}

/// Two network namespaces made by the test. The host side has `v0` (10.0.0.2/24) and a
/// default route via 10.0.0.1; that is `v1`, its veth peer, in the "outside" namespace,
/// which also has 198.51.100.7 for servers on the internet. A resolv.conf naming the test's
/// DNS server (198.51.100.7) is bound over /etc/resolv.conf for the contree processes run
/// on the host side.
pub(crate) struct TestNet {
    ns: OwnedFd,
    outside: OwnedFd,
    resolv: PathBuf,
    _dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
}

impl TestNet {
    /// `None` (the test reported skipped) without `ip`, `nsenter` or `unshare`.
    pub(crate) fn new() -> Option<TestNet> {
        for tool in ["ip", "nsenter", "unshare"] {
            if find_program(tool).is_none() {
                skip(&format!("needs `{tool}` (iproute2, util-linux)"));
                return None;
            }
        }
        let new_netns = || {
            std::thread::spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(NEWNET)");
                OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("open netns"))
            })
            .join()
            .expect("netns thread")
        };
        let (ns, outside) = (new_netns(), new_netns());
        let dir = tempfile::tempdir().expect("tempdir");
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, format!("nameserver {OUTSIDE}\n")).expect("write resolv.conf");
        let net = TestNet {
            ns,
            outside,
            resolv,
            _dir: dir,
            stop: Arc::new(AtomicBool::new(false)),
        };
        let outside_path = format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            net.outside.as_raw_fd()
        );
        for args in [
            "link set lo up",
            "link add v0 type veth peer name v1",
            &format!("link set v1 netns {outside_path}"),
            &format!("addr add {HOST_ADDR}/24 dev v0"),
            "link set v0 up",
            &format!("route add default via {GATEWAY}"),
        ] {
            net.ip(args);
        }
        for args in [
            "link set lo up",
            &format!("addr add {GATEWAY}/24 dev v1"),
            &format!("addr add {OUTSIDE}/32 dev lo"),
            "link set v1 up",
        ] {
            ip_in(&net.outside, args);
        }
        Some(net)
    }

    /// `ip ARGS` on the host side of the test network.
    fn ip(&self, args: &str) -> String {
        ip_in(&self.ns, args)
    }

    /// The namespace where `addr` lives: the outside for `OUTSIDE`, else the host side.
    fn side(&self, addr: &str) -> &OwnedFd {
        if addr == OUTSIDE {
            &self.outside
        } else {
            &self.ns
        }
    }

    /// Runs `f` on a thread that joined the host side of the test network.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        enter(&self.ns, f)
    }

    /// `contree ARGS…` of `env`, run inside the test network with its resolv.conf, and
    /// `PATH` set to `path` for contree itself when given.
    fn contree(&self, env: &Env, path: Option<&Path>, args: &[&str]) -> Cmd {
        let mut argv = vec!["/usr/bin/env".to_string()];
        if let Some(path) = path {
            argv.push(format!("PATH={}", path.display()));
        }
        argv.push(CONTREE.to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        self.command(env, "", &argv)
    }

    /// `argv` run inside the test network with its resolv.conf, in a mount namespace of its
    /// own where the shell commands `prelude` (each ending in `&&`) ran first.
    pub(crate) fn command(&self, env: &Env, prelude: &str, argv: &[String]) -> Cmd {
        let mut cmd = env
            .program("nsenter")
            .arg(format!(
                "--net=/proc/{}/fd/{}",
                std::process::id(),
                self.ns.as_raw_fd()
            ))
            .arg("--")
            .arg("unshare")
            .arg("--mount")
            .arg("--")
            .arg("/bin/sh")
            .arg("-c")
            .arg(format!(
                r#"mount --bind "$0" /etc/resolv.conf && {prelude} exec "$@""#
            ))
            .arg(&self.resolv);
        for a in argv {
            cmd = cmd.arg(a);
        }
        cmd
    }

    fn run(&self, env: &Env, args: &[&str]) -> Output {
        self.contree(env, None, args).output()
    }

    /// A TCP server at `addr` in the test network that answers every connection with
    /// `reply`, then closes it. Returns its port.
    pub(crate) fn tcp_server(&self, addr: &str, reply: &'static str) -> u16 {
        let side = self.side(addr);
        let addr = format!("{addr}:0");
        let listener = enter(side, move || {
            TcpListener::bind(addr).expect("bind test server")
        });
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        port
    }

    /// A UDP server at `addr` that answers each datagram with `reply`. Returns its port.
    fn udp_server(&self, addr: &str, reply: &'static str) -> u16 {
        let side = self.side(addr);
        let addr = format!("{addr}:0");
        let sock = enter(side, move || {
            UdpSocket::bind(addr).expect("bind udp server")
        });
        let port = sock.local_addr().expect("local addr").port();
        self.serve_udp(sock, move |_| Some(reply.as_bytes().to_vec()));
        port
    }

    /// The test's DNS server on `OUTSIDE`:53 (the test resolv.conf's nameserver): `name`
    /// has the A record `answer`, every other name does not exist.
    fn dns_server(&self, name: &'static str, answer: [u8; 4]) {
        let sock = enter(&self.outside, || {
            UdpSocket::bind((OUTSIDE, 53)).expect("bind the test DNS server")
        });
        self.serve_udp(sock, move |query| dns_answer(query, name, answer));
    }

    fn serve_udp(
        &self,
        sock: UdpSocket,
        answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static,
    ) {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if let Some(reply) = answer(&buf[..n]) {
                        let _ = sock.send_to(&reply, from);
                    }
                }
            }
        });
    }

    /// Whether a TCP connection to `addr:port`, made from the test network, is accepted.
    fn connects(&self, addr: &str, port: u16) -> bool {
        let target = format!("{addr}:{port}");
        self.enter(move || {
            let addr = target.parse().expect("socket address");
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
        })
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `ip ARGS` in network namespace `ns`.
fn ip_in(ns: &OwnedFd, args: &str) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(args.split_whitespace());
    let ns = ns.as_raw_fd();
    // SAFETY: setns(2) in the forked child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread that joined network namespace `ns` (sockets it makes live there).
fn enter<T: Send + 'static>(ns: &OwnedFd, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.try_clone().expect("dup netns fd");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in the test network")
}

/// A DNS reply to `query`: the A record `answer` for `name`, else NXDOMAIN (RFC 1035 4.1).
fn dns_answer(query: &[u8], name: &str, answer: [u8; 4]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    while i < query.len() && query[i] != 0 {
        let len = query[i] as usize;
        labels.push(String::from_utf8_lossy(query.get(i + 1..i + 1 + len)?).to_lowercase());
        i += 1 + len;
    }
    let end = i + 5;
    let question = query.get(12..end)?;
    let qtype = u16::from_be_bytes([query[i + 1], query[i + 2]]);
    let found = labels.join(".") == name;
    let mut reply = Vec::new();
    reply.extend_from_slice(&query[..2]);
    // QR, the query's RD, RA; NXDOMAIN for names we do not have.
    reply.push(0x80 | (query[2] & 0x01));
    reply.push(if found { 0x80 } else { 0x83 });
    let answers: u16 = (found && qtype == 1).into();
    for n in [1u16, answers, 0, 0] {
        reply.extend_from_slice(&n.to_be_bytes());
    }
    reply.extend_from_slice(question);
    if answers == 1 {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&answer);
    }
    Some(reply)
}

/// The links `ip -j -d link` lists, as (name, kind) with kind "" for plain devices.
fn links(ip_json: &str) -> BTreeSet<(String, String)> {
    let v: Value = serde_json::from_str(ip_json.trim()).expect("ip -j link output");
    v.as_array()
        .expect("a JSON array of links")
        .iter()
        .map(|l| {
            (
                l["ifname"].as_str().unwrap_or("").to_string(),
                l["linkinfo"]["info_kind"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

/// A stable picture of a network namespace's configuration: links, addresses and routes
/// (without counters or lifetimes, which change by themselves).
fn picture(links_json: &str, addrs_json: &str, routes_json: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (name, kind) in links(links_json) {
        out.insert(format!("link {name} {kind}"));
    }
    let addrs: Value = serde_json::from_str(addrs_json.trim()).expect("ip -j addr output");
    for link in addrs.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            out.insert(format!(
                "addr {} {}/{}",
                link["ifname"].as_str().unwrap_or(""),
                a["local"].as_str().unwrap_or(""),
                a["prefixlen"]
            ));
        }
    }
    let routes: Value = serde_json::from_str(routes_json.trim()).expect("ip -j route output");
    for r in routes.as_array().into_iter().flatten() {
        out.insert(format!(
            "route {} {} via {} dev {}",
            r["table"].as_str().unwrap_or("main"),
            r["dst"].as_str().unwrap_or(""),
            r["gateway"].as_str().unwrap_or("-"),
            r["dev"].as_str().unwrap_or("")
        ));
    }
    out
}

/// `picture` of the real host's network namespace, read with `ip` (read-only).
fn host_picture() -> BTreeSet<String> {
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    picture(
        &ip(&["-j", "-d", "link", "show"]),
        &ip(&["-j", "addr", "show"]),
        &ip(&["-j", "route", "show", "table", "all"]),
    )
}

fn test_net_picture(net: &TestNet) -> BTreeSet<String> {
    picture(
        &net.ip("-j -d link show"),
        &net.ip("-j addr show"),
        &net.ip("-j route show table all"),
    )
}

/// The inode of the network namespace `/proc/<pid>/ns/net` names.
fn netns_id(link: &str) -> String {
    link.trim().to_string()
}

#[test]
fn a_networked_run_has_a_network_namespace_of_its_own() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    let env = Env::host();
    let out = net
        .run(
            &env,
            &[
                "run",
                "-D",
                "--",
                "sh",
                "-c",
                "readlink /proc/self/ns/net; ip -j -d link show",
            ],
        )
        .success();
    let text = out.stdout_text();
    let (inside, links_json) = text.split_once('\n').expect("two outputs");
    let outside = std::fs::read_link(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        net.ns.as_raw_fd()
    ))
    .expect("readlink the test netns");
    assert_ne!(
        netns_id(inside),
        outside.to_string_lossy(),
        "the sandbox is in the network namespace it was started from"
    );
    let real_host = std::fs::read_link("/proc/self/ns/net").expect("readlink own netns");
    assert_ne!(netns_id(inside), real_host.to_string_lossy());
    // Loopback and the stack's tap device: none of the veth pair of the "host".
    let seen = links(links_json);
    let kinds: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(seen.len(), 2, "only lo and the stack's interface: {seen:?}");
    assert!(
        seen.contains(&("lo".to_string(), String::new())),
        "{seen:?}"
    );
    assert!(kinds.contains(&"tun"), "the stack's tap device: {seen:?}");
    assert!(
        !kinds.contains(&"veth"),
        "a host interface is visible: {seen:?}"
    );
}

#[test]
fn the_command_starts_only_once_the_network_is_up() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    let env = Env::host();
    // The command's first look: the default route is there already (a command started
    // before the stack configured the interface would see an empty table).
    let out = net
        .run(&env, &["run", "-D", "--", "cat", "/proc/net/route"])
        .success();
    assert!(
        out.stdout_text()
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000")),
        "no default route when the command started:\n{}",
        out.stdout_text()
    );
}

#[test]
fn what_a_sandbox_does_to_its_network_never_reaches_the_hosts() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    let env = Env::host();
    let real_before = host_picture();
    let before = test_net_picture(&net);
    // Root in the sandbox tries to add an interface, an address and routes, change the
    // MTU and take the interface down. Each may or may not be allowed inside (its own
    // namespace); none may show outside.
    let script = "dev=$(ip -o link show | awk -F': ' '$2 != \"lo\" {print $2; exit}'); \
        ip link add cx0 type bridge; ip addr add 203.0.113.9/32 dev lo; \
        ip route add 203.0.113.0/24 dev lo; ip route add 192.0.2.128/25 dev lo; \
        ip link set \"$dev\" mtu 1280; ip route del default; ip link set \"$dev\" down; \
        ip -o addr show; true";
    // (Without CAP_NET_ADMIN, which the hardening keeps out of a run's set, most of these
    // are refused even inside: whatever was not, must not show outside either.)
    net.run(&env, &["run", "-D", "--", "sh", "-c", script])
        .success();
    assert_eq!(
        test_net_picture(&net),
        before,
        "the host side (the test network) changed"
    );
    assert_eq!(
        host_picture(),
        real_before,
        "the real host's network changed"
    );
    // The host side still routes as before: the sandbox's `ip route del default` stayed in.
    assert!(net.ip("route show default").contains(GATEWAY));
}

#[test]
fn a_server_on_the_hosts_loopback_is_reached_through_the_gateway() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    let env = Env::host();
    let port = net.tcp_server("127.0.0.1", "hello from the host's loopback\n");
    let script =
        format!("exec 3<>/dev/tcp/$(ip route show default | awk '{{print $3}}')/{port} && cat <&3");
    net.run(
        &env,
        &["run", "-D", "--", "timeout", "20", "bash", "-c", &script],
    )
    .success()
    .stdout("hello from the host's loopback\n");
}

#[test]
fn outbound_tcp_and_udp_go_through_the_stack() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    let env = Env::host();
    let tcp = net.tcp_server(OUTSIDE, "tcp ok\n");
    let udp = net.udp_server(OUTSIDE, "udp ok\n");
    // `head` reads the reply datagram whole (bash's `read` takes one byte of it).
    let script = format!(
        "exec 3<>/dev/tcp/{OUTSIDE}/{tcp} && cat <&3 && \
         exec 4<>/dev/udp/{OUTSIDE}/{udp} && echo hi >&4 && head -n 1 <&4"
    );
    net.run(
        &env,
        &["run", "-D", "--", "timeout", "20", "bash", "-c", &script],
    )
    .success()
    .stdout("tcp ok\nudp ok\n");
}

#[test]
fn a_server_in_the_sandbox_is_not_reachable_from_the_host() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    if find_program("python3").is_none() {
        skip("needs python3 on the host (the host image runs it)");
        return;
    }
    let env = Env::host();
    // Below the ephemeral range (pasta's automatic forwarding leaves ephemeral ports
    // alone); free on both sides, whose namespaces are new.
    let port = 8080;
    let server = format!(
        "import socket, sys\n\
         s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', {port})); s.listen(8)\n\
         print('listening', flush=True)\n\
         s.settimeout(6)\n\
         try:\n    c, a = s.accept(); print('accepted', a, flush=True)\n\
         except socket.timeout:\n    print('nobody came', flush=True)\n"
    );
    let mut running = net
        .contree(&env, None, &["run", "-D", "--", "python3", "-c", &server])
        .spawn();
    running.wait_for_stdout("listening", Duration::from_secs(30));
    // pasta's automatic forwarding (`-t auto`, its default) would bind the sandbox's
    // listening ports on the host within a second of its periodic scan: give it three.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        for addr in ["127.0.0.1", HOST_ADDR] {
            assert!(
                !net.connects(addr, port),
                "the sandbox's port {port} is reachable from the host at {addr}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The server gives up after six seconds and says so.
    running
        .wait()
        .success()
        .stdout_contains("nobody came")
        .stdout_lacks("accepted");
}

#[test]
fn no_network_means_loopback_only_and_no_route_out() {
    let Some(net) = TestNet::new() else { return };
    let env = Env::host();
    let port = net.tcp_server(OUTSIDE, "reached\n");
    let gw = net.tcp_server("127.0.0.1", "reached\n");
    let script = format!(
        "ip -j -d link show; echo; cat /proc/net/route; ip route show default; \
         ip -6 route show default; \
         for t in {OUTSIDE}/{port} {GATEWAY}/{gw} {PASTA_DNS}/53; do \
           (exec 3<>/dev/tcp/$t && cat <&3) 2>&1 | tail -1; done"
    );
    let out = net
        .run(
            &env,
            &[
                "run",
                "-D",
                "--no-network",
                "--",
                "timeout",
                "20",
                "bash",
                "-c",
                &script,
            ],
        )
        .success();
    let text = out.stdout_text();
    let (links_json, rest) = text.split_once("\n\n").expect("links, then the rest");
    assert_eq!(
        links(links_json),
        BTreeSet::from([("lo".to_string(), String::new())]),
        "--no-network sees more than loopback"
    );
    let mut lines = rest.lines();
    assert!(
        lines.next().is_some_and(|l| l.starts_with("Iface")),
        "{rest}"
    );
    let rest: Vec<&str> = lines.collect();
    // No IPv4 route (the header only), no route from `ip`, and every connection refused by
    // the kernel at once (no route), none answered.
    assert_eq!(
        rest.iter().filter(|l| l.contains("unreachable")).count(),
        3,
        "{rest:?}"
    );
    assert!(!text.contains("reached"), "a connection got out: {text}");
    assert_eq!(rest.len(), 3, "routes in a --no-network sandbox: {rest:?}");
}

#[test]
fn dns_inside_goes_to_the_stacks_forwarder_and_resolves() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    net.dns_server("probe.contree.test", [10, 0, 0, 77]);
    let env = Env::host();
    let out = net
        .run(
            &env,
            &[
                "run",
                "-D",
                "--",
                "sh",
                "-c",
                "grep -v '^#' /etc/resolv.conf; getent hosts localhost | head -1; \
                 getent ahostsv4 probe.contree.test | head -1",
            ],
        )
        .success();
    let text = out.stdout_text();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(format!("nameserver {PASTA_DNS}").as_str()),
        "{text}"
    );
    assert!(
        lines.next().is_some_and(|l| l.contains("localhost")),
        "{text}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("10.0.0.77 ") || l.starts_with("10.0.0.77\t")),
        "the name did not resolve through the stack: {text}"
    );
}

#[test]
fn the_generated_resolv_conf_never_lands_in_a_snapshot() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    let env = Env::host();
    net.run(
        &env,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "cat /etc/resolv.conf > /root/seen && echo '# changed inside' >> /etc/resolv.conf",
        ],
    )
    .success();
    env.run(["cat", "/root/seen"])
        .success()
        .stdout_contains(&format!("nameserver {PASTA_DNS}\n"));
    let host = std::fs::read_to_string("/etc/resolv.conf").expect("read the host's resolv.conf");
    env.run(["cat", "/etc/resolv.conf"]).success().stdout(&host);
}

#[test]
fn the_network_event_reports_the_configured_state() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    let env = Env::host();
    net.run(&env, &["run", "-D", "--", "true"]).success();
    let events = env
        .run(["-o", "json", "op", "events", &env.last_op()])
        .success()
        .json_lines();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let at = |k: &str| kinds.iter().position(|x| *x == k);
    let network = at("network").expect("a network event");
    assert!(network < at("spawn").expect("a spawn event"), "{kinds:?}");
    let data = &events[network]["data"];
    assert_eq!(events[network]["spid"], 0);
    let configured = &data["configured"];
    assert_eq!(configured["ip4"], format!("{HOST_ADDR}/24"), "{data}");
    assert_eq!(configured["ip4_gw"], GATEWAY, "{data}");
    assert_eq!(configured["nameserver"], PASTA_DNS, "{data}");
    let names: BTreeSet<&str> = data["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["lo", "v0"]), "{data}");
    for i in data["interfaces"].as_array().into_iter().flatten() {
        assert!(i["rx_bytes"].is_i64() && i["tx_drop"].is_i64(), "{i}");
    }
    // Absent for a run without network (the API's EventDataNetwork).
    net.run(&env, &["run", "-D", "--no-network", "--", "true"])
        .success();
    let events = env
        .run(["-o", "json", "op", "events", &env.last_op()])
        .success()
        .json_lines();
    assert!(events.iter().all(|e| e["type"] != "network"));
}

#[test]
fn slirp4netns_is_the_fallback_without_pasta() {
    let Some(slirp) = find_program("slirp4netns") else {
        skip("needs slirp4netns (apt-get install slirp4netns)");
        return;
    };
    let Some(net) = TestNet::new() else { return };
    let only = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(&slirp, only.path().join("slirp4netns")).expect("symlink");
    let env = Env::host();
    let host_lo = net.tcp_server("127.0.0.1", "loopback via slirp\n");
    let outside = net.tcp_server(OUTSIDE, "outside via slirp\n");
    let script = format!(
        "ip -j -d link show; echo; ip route show default; \
         exec 3<>/dev/tcp/{SLIRP_GATEWAY}/{host_lo} && cat <&3 && \
         exec 4<>/dev/tcp/{OUTSIDE}/{outside} && cat <&4"
    );
    let out = net
        .contree(
            &env,
            Some(only.path()),
            &["run", "-D", "--", "timeout", "20", "bash", "-c", &script],
        )
        .output()
        .success();
    let text = out.stdout_text();
    let (links_json, rest) = text.split_once("\n\n").expect("links, then the rest");
    assert_eq!(
        links(links_json),
        BTreeSet::from([
            ("lo".to_string(), String::new()),
            ("tap0".to_string(), "tun".to_string())
        ])
    );
    assert_eq!(
        rest,
        format!("default via {SLIRP_GATEWAY} dev tap0 \nloopback via slirp\noutside via slirp\n")
    );
}

#[test]
fn without_a_network_stack_a_networked_run_fails_clearly_with_69() {
    let Some(sh) = find_program("sh") else {
        skip("needs sh");
        return;
    };
    let env = Env::host();
    // A PATH with a shell but neither pasta nor slirp4netns.
    let bare = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(&sh, bare.path().join("sh")).expect("symlink");
    let images = env.all_ops().len();
    env.cmd(["run", "--", "echo", "ran"])
        .env("PATH", bare.path())
        .output()
        .code(69)
        .stdout_empty()
        .stderr(NO_HELPER);
    assert_eq!(env.all_ops().len(), images, "an operation was started");
    // Without the network the same machine runs fine.
    env.cmd(["run", "-D", "--no-network", "--", "echo", "ran"])
        .env("PATH", bare.path())
        .output()
        .success()
        .stdout("ran\n");
}

#[test]
fn doctor_reports_the_network_mode() {
    let env = Env::host();
    if find_program("pasta").is_some() {
        env.run(["doctor"])
            .success()
            .check("a network line naming pasta", |out| {
                out.stdout_text()
                    .lines()
                    .any(|l| l.starts_with("ok ") && l.contains("network") && l.contains("pasta ("))
            });
    } else {
        skip("needs pasta (apt-get install passt)");
    }
    let bare = tempfile::tempdir().expect("tempdir");
    env.cmd(["doctor"])
        .env("PATH", bare.path())
        .output()
        .code(1)
        .check("the network line says unavailable", |out| {
            out.stdout_text().lines().any(|l| {
                l.starts_with("problem") && l.contains("network") && l.contains("unavailable")
            })
        })
        .stdout_contains("networking needs pasta");
}

/// The network helpers (pasta, slirp4netns) that hold network namespace `netns` (as
/// `/proc/PID/ns/net` names it) open: found by what they hold, not by who started them, so
/// a helper that slipped away from its keeper is found too. (pid, start time) each.
fn helpers_holding(netns: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for (pid, dir) in processes() {
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !["pasta", "passt", "slirp4netns"]
            .iter()
            .any(|h| comm.trim().starts_with(h))
        {
            continue;
        }
        let holds = std::fs::read_dir(dir.join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == netns));
        let start = start_time(pid);
        if holds && alive(pid, &start) {
            found.push((pid, start));
        }
    }
    found
}

/// Whether process `pid` (as found at `start`, its start time) still exists.
fn alive(pid: i32, start: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 2..]
            .split_whitespace()
            .collect();
        fields.first() != Some(&"Z") && fields.get(19) == Some(&start)
    })
}

fn start_time(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat[stat.rfind(')').map_or(0, |i| i + 2)..]
        .split_whitespace()
        .nth(19)
        .unwrap_or("")
        .to_string()
}

/// Starts a run in the test network whose command first talks to a server on the host's
/// loopback through the stack (so pasta's long-lived process is up and relaying, not only
/// the one that configured the namespace), then sleeps SECONDS.<token>. Returns it with its
/// supervisor (the network keeper's parent, while there is one) and the helper processes
/// (pid, start time).
fn running_with_helper(
    net: &TestNet,
    env: &Env,
    seconds: u32,
) -> (Running, Option<i32>, Vec<(i32, String)>) {
    let token = unique_token();
    let port = net.tcp_server("127.0.0.1", "up\n");
    let script =
        format!("exec 3<>/dev/tcp/{GATEWAY}/{port} && cat <&3 && exec sleep {seconds}.{token}");
    let running = net
        .contree(env, None, &["run", "-D", "--", "bash", "-c", &script])
        .spawn();
    let mut netns = String::new();
    wait_until(Duration::from_secs(30), "the sandbox runs", || {
        let sleeper = sleepers(&token).into_iter().next();
        netns = sleeper
            .and_then(|p| std::fs::read_link(format!("/proc/{p}/ns/net")).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        !netns.is_empty()
    });
    let helpers = helpers_holding(&netns);
    assert!(!helpers.is_empty(), "no helper holds the sandbox's network");
    let supervisor = crate::faults::env_processes(env.home())
        .into_iter()
        .find(|(_, _, comm)| comm == "contree-net")
        .map(|(_, ppid, _)| ppid);
    (running, supervisor, helpers)
}

#[test]
fn the_helper_ends_with_the_run() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    let env = Env::host();
    let (running, _, processes) = running_with_helper(&net, &env, 1);
    running.wait().success().stdout("up\n");
    wait_until(
        Duration::from_secs(10),
        "the network helper is gone",
        || processes.iter().all(|(p, s)| !alive(*p, s)),
    );
}

#[test]
fn the_helper_dies_with_a_killed_supervisor() {
    if !have_pasta() {
        return;
    }
    let Some(net) = TestNet::new() else { return };
    let env = Env::host();
    let (running, supervisor, processes) = running_with_helper(&net, &env, 30);
    let supervisor = supervisor.expect("the run's network keeper and its supervisor");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the supervisor");
    wait_until(
        Duration::from_secs(10),
        "the network helper is gone after its supervisor was killed",
        || processes.iter().all(|(p, s)| !alive(*p, s)),
    );
    let _ = running.wait();
}
