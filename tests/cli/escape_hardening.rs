//! Escape probes for the sandbox's hardening layers (capabilities, seccomp, /proc, /sys and
//! devices): each test is an attack a command would try from inside `contree run` on the
//! `host` image, and passes only if the defence held.
//!
//! Safe by construction: writability is checked with access(2) (`test -w`), never by
//! writing a kernel knob; every system call is made with arguments that would change
//! nothing on the host even if it were allowed (a nonexistent swap file, a bad reboot magic,
//! an invalid time, NULL pointers); devices are only opened, never read or written.
//! The probes run python3 inside the sandbox (the `host` image is the host's own /usr), so a
//! missing python3 fails them loudly: `.ci/run` installs it.

use crate::harness::*;
use std::fmt::Write as _;

/// Capabilities a command keeps: Docker's default set (CapBnd of a default container).
const KEPT: u64 = 0xa804_25fb;
const CAP_NET_RAW: u64 = 1 << 13;

fn require_python() {
    assert!(
        std::path::Path::new("/usr/bin/python3").is_file(),
        "the escape probes run /usr/bin/python3 inside the host image: install python3 (.ci/run does)"
    );
}

/// Python that defines `call(name, nr, *args)`: makes the system call and prints
/// `name RESULT`, RESULT being `ok` or the errno's name.
const PRELUDE: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def arg(a):
    if isinstance(a, bytes): return ctypes.c_char_p(a)
    if a is None: return ctypes.c_void_p(None)
    if isinstance(a, int): return ctypes.c_long(a)
    return a
def call(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[arg(a) for a in args])
    e = ctypes.get_errno()
    print(name, "ok" if r >= 0 else errno.errorcode.get(e, str(e)), flush=True)
    return r
"#;

/// `python3 -c PRELUDE+body` in a disposable sandbox without network.
fn python(env: &Env, body: &str) -> Output {
    require_python();
    let code = format!("{PRELUDE}\n{body}");
    env.run(["run", "-D", "--no-network", "--", "python3", "-c", &code])
}

/// `sh -c script` in a disposable sandbox without network.
fn shell(env: &Env, script: &str) -> Output {
    env.run(["run", "-D", "--no-network", "--", "sh", "-c", script])
}

/// Python lines calling each `(name, nr, args)`.
fn calls(list: &[(&str, i64, &str)]) -> String {
    let mut code = String::new();
    for (name, nr, args) in list {
        let sep = if args.is_empty() { "" } else { ", " };
        let _ = writeln!(code, "call({name:?}, {nr}{sep}{args})");
    }
    code
}

/// Every call of `list` printed `name want`.
#[track_caller]
fn all_refused(out: Output, list: &[(&str, i64, &str)], want: &str) {
    let mut out = out.success();
    for (name, _, _) in list {
        let expected = format!("{name} {want}");
        out = out.check(&format!("{name} answers {want}"), |o| {
            o.stdout_text().lines().any(|l| l == expected)
        });
    }
}

/// The value of a `Name:\tvalue` line of /proc/PID/status text.
fn status_field(text: &str, name: &str) -> Option<u64> {
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
        .trim();
    u64::from_str_radix(value, 16).ok()
}

// --- capabilities and privileges -----------------------------------------------------

#[test]
fn a_root_command_holds_only_the_container_default_capabilities() {
    let env = Env::host();
    let out = shell(&env, "cat /proc/self/status").success();
    let text = out.stdout_text();
    for (field, want) in [
        ("CapBnd", KEPT),
        ("CapPrm", KEPT),
        ("CapEff", KEPT),
        ("CapInh", 0),
        ("CapAmb", 0),
        ("NoNewPrivs", 1),
        ("Seccomp", 2),
    ] {
        let got = status_field(&text, field);
        assert_eq!(got, Some(want), "{field} in\n{text}");
    }
}

#[test]
fn root_inside_cannot_raise_a_dropped_capability_again() {
    let env = Env::host();
    let body = format!(
        r#"
CAP_SYS_ADMIN = 21
print("bounding sys_admin", libc.prctl(23, CAP_SYS_ADMIN, 0, 0, 0))  # PR_CAPBSET_READ
hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)()
call("capget", {capget}, ctypes.byref(hdr), ctypes.byref(data))
data[0] |= 1 << CAP_SYS_ADMIN
data[1] |= 1 << CAP_SYS_ADMIN
call("capset", {capset}, ctypes.byref(hdr), ctypes.byref(data))
# PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE
call("ambient", {prctl}, 47, 2, CAP_SYS_ADMIN, 0, 0)
"#,
        capget = libc::SYS_capget,
        capset = libc::SYS_capset,
        prctl = libc::SYS_prctl,
    );
    python(&env, &body)
        .success()
        .stdout_contains("bounding sys_admin 0\n")
        .stdout_contains("capget ok\n")
        .stdout_contains("capset EPERM\n")
        .stdout_contains("ambient EPERM\n");
}

#[test]
fn a_setuid_root_file_does_not_make_a_user_root() {
    let env = Env::host();
    // Root inside makes a setuid copy of `id`, then runs it as uid 1000.
    shell(
        &env,
        "cp /usr/bin/id /tmp/id && chmod 4755 /tmp/id && \
         setpriv --reuid 1000 --regid 1000 --clear-groups /tmp/id -u",
    )
    .success()
    .stdout("1000\n");
}

#[test]
fn a_non_root_uid_from_the_api_starts_with_no_capabilities() {
    use crate::serve::{Server, TOKEN_A};
    let server = Server::start();
    let found = server.get("/v1/inspect/?tag=host", TOKEN_A);
    let location = found
        .header("location")
        .expect("Location of the host image");
    let image = location.trim_end_matches('/').rsplit('/').next().unwrap();
    let reply = server.post_json(
        "/v1/instances",
        TOKEN_A,
        &serde_json::json!({
            "image": image, "shell": true, "uid": 1000, "gid": 1000,
            "networking": {"enabled": false},
            "command": "id -u; cat /proc/self/status",
        }),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();
    let stdout: String = server
        .events(&op, TOKEN_A, None)
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"]["value"].as_str().unwrap().to_string())
        .collect();
    assert!(stdout.starts_with("1000\n"), "{stdout}");
    for (field, want) in [
        ("CapBnd", KEPT),
        ("CapPrm", 0),
        ("CapEff", 0),
        ("CapInh", 0),
        ("CapAmb", 0),
        ("NoNewPrivs", 1),
    ] {
        assert_eq!(
            status_field(&stdout, field),
            Some(want),
            "{field} in\n{stdout}"
        );
    }
}

#[test]
fn raw_sockets_are_not_held_in_the_hosts_network_namespace() {
    let env = Env::host();
    let host_net = std::fs::read_link("/proc/self/ns/net").expect("host netns");
    let out = env
        .run([
            "run",
            "-D",
            "--",
            "sh",
            "-c",
            "readlink /proc/self/ns/net; grep CapEff /proc/self/status",
        ])
        .success();
    let text = out.stdout_text();
    let shared = text.lines().next() == Some(&*host_net.to_string_lossy());
    let eff = status_field(&text, "CapEff").expect("CapEff");
    if shared {
        assert_eq!(
            eff,
            KEPT & !CAP_NET_RAW,
            "net_raw in the host netns:\n{text}"
        );
    } else {
        assert_eq!(eff, KEPT, "{text}");
    }
}

#[test]
fn the_init_cannot_be_traced_or_read_by_the_command() {
    let env = Env::host();
    let body = format!(
        r#"
call("ptrace seize init", {ptrace}, 0x4206, 1, 0, 0)
try:
    open("/proc/1/environ", "rb").read()
    print("environ read")
except OSError as e:
    print("environ", errno.errorcode[e.errno])
try:
    os.readlink("/proc/1/fd/" + os.listdir("/proc/1/fd")[0])
    print("fd read")
except OSError as e:
    print("fds", errno.errorcode[e.errno])
"#,
        ptrace = libc::SYS_ptrace,
    );
    python(&env, &body)
        .success()
        .stdout_contains("ptrace seize init EPERM\n")
        .stdout_contains("environ EACCES\n")
        .stdout_contains("fds EACCES\n");
}

// --- seccomp -----------------------------------------------------------------------------

#[test]
fn kernel_modules_kexec_bpf_perf_and_the_kernel_log_are_refused() {
    let env = Env::host();
    let mut list = vec![
        ("init_module", libc::SYS_init_module, "None, 0, b''"),
        ("finit_module", libc::SYS_finit_module, "-1, b'', 0"),
        (
            "delete_module",
            libc::SYS_delete_module,
            "b'contree_absent', 0",
        ),
        // 1000 segments: EINVAL where allowed (more than KEXEC_SEGMENT_MAX).
        ("kexec_load", libc::SYS_kexec_load, "0, 1000, None, 0"),
        (
            "kexec_file_load",
            libc::SYS_kexec_file_load,
            "-1, -1, 0, None, 0x80000000",
        ),
        ("bpf", libc::SYS_bpf, "5, None, 0"),
        (
            "perf_event_open",
            libc::SYS_perf_event_open,
            "None, 0, -1, -1, 0",
        ),
        // SYSLOG_ACTION_SIZE_BUFFER: only reads the buffer's size.
        ("syslog", libc::SYS_syslog, "10, None, 0"),
        ("io_uring_setup", libc::SYS_io_uring_setup, "1, None"),
        ("userfaultfd", libc::SYS_userfaultfd, "0"),
        (
            "open_by_handle_at",
            libc::SYS_open_by_handle_at,
            "-1, None, 0",
        ),
        (
            "name_to_handle_at",
            libc::SYS_name_to_handle_at,
            "-100, b'/', None, None, 0",
        ),
        ("fanotify_init", libc::SYS_fanotify_init, "0, 0"),
    ];
    if cfg!(target_arch = "x86_64") {
        // Levels above 3 and empty ranges are EINVAL where allowed.
        list.push(("iopl", 172, "4"));
        list.push(("ioperm", 173, "0, 0, 0"));
    }
    all_refused(python(&env, &calls(&list)), &list, "EPERM");
}

#[test]
fn keyrings_are_refused_and_the_callers_keys_stay_out_of_reach() {
    require_python();
    let env = Env::host();
    let canary = format!("contree-canary-{}", unique_token());
    let inner = format!(
        "{PRELUDE}\nprint('canary in /proc/keys', {canary:?} in open('/proc/keys').read())\n{}",
        calls(&[
            (
                "keyctl search",
                libc::SYS_keyctl,
                &format!("10, -3, b'user', b'{canary}', 0")
            ),
            ("keyctl user keyring", libc::SYS_keyctl, "0, -4, 0"),
            (
                "add_key",
                libc::SYS_add_key,
                "b'user', b'contree-probe', b'x', 1, -2"
            ),
            (
                "request_key",
                libc::SYS_request_key,
                "b'user', b'contree-absent', None, 0"
            ),
        ])
    );
    // On the host, in a session keyring of its own: a key as the caller of contree holds
    // one, then contree runs in that session (the keyring dies with it).
    let host = format!(
        r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
if libc.syscall(ctypes.c_long({keyctl}), ctypes.c_long(1), None) < 0:
    sys.exit("cannot join a new session keyring: errno %d" % ctypes.get_errno())
secret = b"s3cret"
if libc.syscall(ctypes.c_long({add_key}), b"user", {canary:?}.encode(), secret, ctypes.c_long(len(secret)), ctypes.c_long(-3)) < 0:
    sys.exit("cannot add the canary key: errno %d" % ctypes.get_errno())
os.execv({contree:?}, [{contree:?}, "run", "-D", "--no-network", "--", "python3", "-c", {inner:?}])
"#,
        keyctl = libc::SYS_keyctl,
        add_key = libc::SYS_add_key,
        contree = CONTREE,
    );
    env.program("/usr/bin/python3")
        .arg("-c")
        .arg(host)
        .output()
        .success()
        .stdout_contains("canary in /proc/keys False\n")
        .stdout_contains("keyctl search EPERM\n")
        .stdout_contains("keyctl user keyring EPERM\n")
        .stdout_contains("add_key EPERM\n")
        .stdout_contains("request_key EPERM\n");
}

#[test]
fn reboot_swap_clock_accounting_and_quota_calls_are_refused() {
    let env = Env::host();
    let list = [
        // A bad magic: EINVAL where allowed.
        ("reboot", libc::SYS_reboot, "0, 0, 0, None"),
        ("swapon", libc::SYS_swapon, "b'/contree-absent', 0"),
        ("swapoff", libc::SYS_swapoff, "b'/contree-absent'"),
        // NULL time and zone: changes nothing where allowed.
        ("settimeofday", libc::SYS_settimeofday, "None, None"),
        // An invalid time: EINVAL where allowed.
        (
            "clock_settime",
            libc::SYS_clock_settime,
            "0, ctypes.byref((ctypes.c_long * 2)(0, -1))",
        ),
        // modes 0 only reads the clock's state.
        (
            "clock_adjtime",
            libc::SYS_clock_adjtime,
            "0, ctypes.create_string_buffer(512)",
        ),
        ("acct", libc::SYS_acct, "b'/contree-absent'"),
        (
            "quotactl",
            libc::SYS_quotactl,
            "0x800004, b'/contree-absent', 0, None",
        ),
        (
            "quotactl_fd",
            libc::SYS_quotactl_fd,
            "-1, 0x800004, 0, None",
        ),
        ("vhangup", libc::SYS_vhangup, ""),
        (
            "get_mempolicy",
            libc::SYS_get_mempolicy,
            "None, None, 0, None, 0",
        ),
    ];
    all_refused(python(&env, &calls(&list)), &list, "EPERM");
}

#[test]
fn new_namespaces_and_setns_are_refused_and_clone3_looks_absent() {
    let env = Env::host();
    let list = [
        ("unshare user", libc::SYS_unshare, "0x10000000"),
        ("unshare mount", libc::SYS_unshare, "0x00020000"),
        ("unshare net", libc::SYS_unshare, "0x40000000"),
        ("unshare time", libc::SYS_unshare, "0x80"),
        (
            "setns",
            libc::SYS_setns,
            "os.open('/proc/self/ns/uts', os.O_RDONLY), 0",
        ),
    ];
    let mut body = calls(&list);
    // clone with CLONE_NEWUSER | SIGCHLD: a child that gets through leaves at once.
    let _ = write!(
        body,
        r#"
r = libc.syscall(ctypes.c_long({clone}), ctypes.c_long(0x10000000 | 17), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
if r == 0:
    os._exit(0)
if r > 0:
    os.waitpid(r, 0)
print("clone user", "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()])
call("clone3", {clone3}, None, 0)
"#,
        clone = libc::SYS_clone,
        clone3 = libc::SYS_clone3,
    );
    let out = python(&env, &body);
    let out = out
        .stdout_contains("clone user EPERM\n")
        .stdout_contains("clone3 ENOSYS\n");
    all_refused(out, &list, "EPERM");
    // util-linux as a user would try it.
    shell(&env, "unshare -U -r true || echo refused")
        .success()
        .stdout("refused\n");
}

#[test]
fn mount_calls_are_refused_so_the_masks_cannot_be_undone() {
    let env = Env::host();
    let list = [
        (
            "mount",
            libc::SYS_mount,
            "b'none', b'/mnt', b'tmpfs', 0, None",
        ),
        ("umount2", libc::SYS_umount2, "b'/proc/sys', 2"),
        ("pivot_root", libc::SYS_pivot_root, "b'/', b'/'"),
        ("open_tree", libc::SYS_open_tree, "-100, b'/', 1"),
        ("move_mount", libc::SYS_move_mount, "-1, b'', -1, b'', 0"),
        ("fsopen", libc::SYS_fsopen, "b'sysfs', 0"),
        ("fsconfig", libc::SYS_fsconfig, "-1, 0, None, None, 0"),
        ("fsmount", libc::SYS_fsmount, "-1, 0, 0"),
        ("fspick", libc::SYS_fspick, "-100, b'/', 0"),
        (
            "mount_setattr",
            libc::SYS_mount_setattr,
            "-1, b'', 0, None, 0",
        ),
    ];
    all_refused(python(&env, &calls(&list)), &list, "EPERM");
    // The mounts a user would try with mount(8): sysfs, the host's cgroup tree, proc, tmpfs.
    shell(
        &env,
        "for t in sysfs cgroup2 proc tmpfs; do \
           if mount -t $t none /mnt 2>/dev/null; then echo \"mounted $t\"; fi; \
         done; \
         mount --bind / /mnt 2>/dev/null && echo 'mounted bind'; \
         ls -A /sys/fs/cgroup; echo done",
    )
    .success()
    .stdout("done\n");
}

#[test]
fn personality_tricks_vsock_and_terminal_injection_are_refused() {
    let env = Env::host();
    let list = [
        // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC.
        ("personality no-aslr", libc::SYS_personality, "0x0040000"),
        ("personality exec", libc::SYS_personality, "0x0400000"),
        // AF_VSOCK, SOCK_STREAM: a socket to the hypervisor.
        ("socket vsock", libc::SYS_socket, "40, 1, 0"),
        // TIOCSTI on a pipe: ENOTTY where allowed.
        (
            "ioctl tiocsti",
            libc::SYS_ioctl,
            "os.pipe()[1], 0x5412, ctypes.byref(ctypes.c_char(b'x'))",
        ),
    ];
    all_refused(python(&env, &calls(&list)), &list, "EPERM");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_32_bit_system_call_kills_the_process() {
    let env = Env::host();
    require_python();
    // `mov eax, 20 (getpid); int 0x80; ret` from executable memory: the i386 ABI.
    let code = r#"
import ctypes, mmap
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(bytes([0xb8, 0x14, 0, 0, 0, 0xcd, 0x80, 0xc3]))
f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
print("getpid", f(), flush=True)
"#;
    shell(&env, &format!("python3 -c '{code}'; echo \"status $?\""))
        .success()
        // 128 + SIGSYS.
        .stdout("status 159\n");
}

// --- /proc, /sys and devices -----------------------------------------------------------

#[test]
fn kernel_knobs_in_proc_are_not_writable() {
    let env = Env::host();
    let knobs = [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/vm/drop_caches",
        "/proc/sys/kernel/modprobe",
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sysrq-trigger",
        "/proc/irq/default_smp_affinity",
    ];
    let script = format!(
        "for f in {}; do \
           if [ -e $f ]; then if test -w $f; then echo \"writable $f\"; else echo \"refused $f\"; fi; fi; \
         done",
        knobs.join(" ")
    );
    shell(&env, &script)
        .success()
        .stdout_lacks("writable")
        .stdout_contains("refused /proc/sys/kernel/core_pattern\n")
        .stdout_contains("refused /proc/sys/vm/drop_caches\n");
    // Each of these is a read-only mount, whatever files the kernel adds under it.
    let out = shell(&env, "cat /proc/self/mountinfo").success();
    let mountinfo = out.stdout_text();
    for dir in ["sys", "irq", "bus", "fs"] {
        if !std::path::Path::new("/proc").join(dir).exists() {
            continue;
        }
        let point = format!("/proc/{dir}");
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(&point))
            .unwrap_or_else(|| panic!("{point} is not a mount of its own:\n{mountinfo}"));
        let options = line.split(' ').nth(5).unwrap();
        assert!(options.split(',').any(|o| o == "ro"), "{line}");
    }
}

#[test]
fn kernel_memory_keys_timers_and_symbols_in_proc_are_masked() {
    let env = Env::host();
    let entries = [
        "kcore",
        "keys",
        "kallsyms",
        "timer_list",
        "sched_debug",
        "kpageflags",
        "vmallocinfo",
        "slabinfo",
    ];
    let present: Vec<&str> = entries
        .into_iter()
        .filter(|e| std::path::Path::new("/proc").join(e).exists())
        .collect();
    assert!(present.contains(&"kallsyms") && present.contains(&"timer_list"));
    // A masked file is /dev/null, a character device 1:3. The kernel log is only opened
    // (reading /proc/kmsg would take messages from the host's reader).
    let script = format!(
        "cd /proc && stat -c '%n %F %t:%T' {}; \
         ( : < kmsg ) 2>/dev/null && echo kmsg opened || echo kmsg refused; \
         echo kallsyms addresses $(head -c 4096 kallsyms | grep -cv '^0* '); \
         echo timer_list bytes $(head -c 4096 timer_list | wc -c)",
        present.join(" ")
    );
    let out = shell(&env, &script).success();
    let text = out.stdout_text();
    for entry in present {
        let line = format!("{entry} character special file 1:3\n");
        assert!(text.contains(&line), "/proc/{entry} is not masked:\n{text}");
    }
    assert!(text.contains("kmsg refused\n"), "{text}");
    // No symbol with a real address, and no timer list.
    assert!(text.contains("kallsyms addresses 0\n"), "{text}");
    assert!(text.contains("timer_list bytes 0\n"), "{text}");
}

#[test]
fn sys_is_a_read_only_sysfs_with_firmware_masked() {
    let env = Env::host();
    shell(
        &env,
        "test -d /sys/devices/system/cpu/cpu0 && echo cpus; \
         test -e /sys/kernel/mm/transparent_hugepage/enabled && \
           { test -w /sys/kernel/mm/transparent_hugepage/enabled && echo thp-writable || echo thp-refused; }; \
         touch /sys/contree-probe 2>/dev/null && echo created; \
         echo firmware $(ls -A /sys/firmware | wc -l); \
         grep -c ' /sys ro,.* - sysfs ' /proc/self/mountinfo",
    )
    .success()
    .stdout_contains("cpus\n")
    .stdout_lacks("thp-writable")
    .stdout_lacks("created")
    .stdout_contains("firmware 0\n")
    .check("/sys is one read-only sysfs", |o| o.stdout_text().ends_with("\n1\n"));
}

#[test]
fn device_nodes_cannot_be_made_and_dev_is_read_only() {
    let env = Env::host();
    let list = [
        // /dev/kmsg and a loop device: the two the issue names.
        (
            "mknodat kmsg",
            libc::SYS_mknodat,
            "-100, b'/tmp/kmsg', 0o20600, os.makedev(1, 11)",
        ),
        (
            "mknodat loop0",
            libc::SYS_mknodat,
            "-100, b'/tmp/loop0', 0o60600, os.makedev(7, 0)",
        ),
    ];
    all_refused(python(&env, &calls(&list)), &list, "EPERM");
    shell(
        &env,
        "mknod /tmp/kmsg c 1 11 2>/dev/null && echo made-kmsg; \
         mknod /dev/loop0 b 7 0 2>/dev/null && echo made-loop; \
         test -w /dev && echo dev-writable; \
         ls /dev | tr '\\n' ' '; echo; \
         awk '$5 == \"/\" || $5 == \"/dev/shm\" {print $5, $6}' /proc/self/mountinfo",
    )
    .success()
    .stdout_lacks("made-")
    .stdout_lacks("dev-writable")
    .check("/ and /dev/shm are nodev", |o| {
        let text = o.stdout_text();
        ["/ ", "/dev/shm "].iter().all(|p| {
            text.lines()
                .any(|l| l.starts_with(p) && l.split([' ', ',']).any(|f| f == "nodev"))
        })
    });
}

#[test]
fn a_device_node_shipped_in_an_image_cannot_be_opened() {
    let Some(busybox) = static_busybox() else {
        skip("needs a static busybox (apt-get install busybox-static)");
        return;
    };
    let env = Env::new();
    let root = busybox_rootfs(&busybox, env.work());
    // What a hostile image would carry: the kernel log device (1:11) at its root.
    nix::sys::stat::mknod(
        &root.join("kmsg"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 11),
    )
    .expect("mknod in the scratch dir");
    env.run([
        "images",
        "import",
        root.to_str().unwrap(),
        "--tag",
        "devnode",
    ])
    .success();
    env.run([
        "run",
        "--use",
        "tag:devnode",
        "-D",
        "--no-network",
        "--",
        "/bin/sh",
        "-c",
        "ls -l /kmsg >/dev/null && ( : < /kmsg ) 2>/dev/null && echo opened || echo refused",
    ])
    .success()
    .stdout("refused\n");
}

// --- what must keep working ------------------------------------------------------------

#[test]
fn package_manager_work_still_runs_inside() {
    let env = Env::host();
    shell(
        &env,
        "set -e; cd /tmp; echo x > f; \
         chown 1000:1000 f; chmod 4755 f; stat -c '%u:%g %a' f; \
         mkfifo p; mknod p2 p; mknod /dev/shm/w c 0 0; stat -c %F p p2 /dev/shm/w; \
         cp -a f g; ln -s f l; tar cf t.tar f g l; mkdir x; tar xf t.tar -C x --same-owner; stat -c %u x/g; \
         setpriv --reuid 1000 --regid 1000 --clear-groups id -u; \
         chroot / true && echo chroot; \
         setarch $(uname -m) true && echo setarch; \
         python3 -c 'import threading; t = threading.Thread(target=print, args=(\"thread\",)); t.start(); t.join()'",
    )
    .success()
    .stdout(
        "1000:1000 4755\nfifo\nfifo\ncharacter special file\n1000\n1000\nchroot\nsetarch\nthread\n",
    );
    // A debugger traces its own child.
    let body = format!(
        r#"
pid = os.fork()
if pid == 0:
    libc.syscall(ctypes.c_long({ptrace}), ctypes.c_long(0), 0, 0, 0)  # PTRACE_TRACEME
    os.kill(os.getpid(), 19)
    os._exit(7)
os.waitpid(pid, os.WUNTRACED)
call("ptrace cont", {ptrace}, 7, pid, 0, 0)
print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"#,
        ptrace = libc::SYS_ptrace,
    );
    python(&env, &body)
        .success()
        .stdout("ptrace cont ok\nchild 7\n");
}

#[test]
fn doctor_reports_the_hardening_in_effect() {
    let env = Env::host();
    env.run(["doctor"])
        .success()
        .stdout_contains("ok        seccomp      filter active:")
        .stdout_contains("ok        capabilities 14 kept (chown dac_override")
        .stdout_contains("ok        /proc, /sys  /proc:")
        .stdout_contains("/sys: a read-only sysfs");
}
