//! The `network` event: the sandbox's interfaces and what the helper configured, read
//! from inside its namespace once it is up.

use super::routes::{ipv4_gateway, ipv6_gateway};
use super::Stack;
use nix::unistd::Pid;
use serde_json::{json, Map, Value};

/// The `network` event's data: every interface's counters (as the namespace's
/// /proc/net/dev says, right after set-up) and what was configured.
pub(super) fn event(init: Pid, stack: Stack) -> Value {
    let mut data = Map::new();
    match std::fs::read_to_string(format!("/proc/{init}/net/dev")) {
        Ok(text) => {
            data.insert("interfaces".into(), Value::Array(interfaces(&text)));
        }
        Err(e) => {
            data.insert("interfaces".into(), Value::Array(Vec::new()));
            data.insert("error".into(), Value::String(e.to_string()));
        }
    }
    data.insert("configured".into(), configured(init, stack));
    Value::Object(data)
}

/// /proc/net/dev's rows as the API's NetworkInterface objects.
fn interfaces(proc_net_dev: &str) -> Vec<Value> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let n: Vec<i64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            (n.len() >= 12).then(|| {
                json!({
                    "name": name.trim(),
                    "rx_bytes": n[0], "rx_packets": n[1], "rx_errs": n[2], "rx_drop": n[3],
                    "tx_bytes": n[8], "tx_packets": n[9], "tx_errs": n[10], "tx_drop": n[11],
                })
            })
        })
        .collect()
}

/// What the helper configured in the namespace: addresses (read from inside it), default
/// gateways, and the nameserver the sandbox's resolv.conf names.
fn configured(init: Pid, stack: Stack) -> Value {
    let mut c = Map::new();
    let (ip4, ip6) = addresses(init);
    let gateway = |table: &str, parse: fn(&str) -> Option<String>| {
        let text = std::fs::read_to_string(format!("/proc/{init}/net/{table}")).ok()?;
        parse(&text)
    };
    for (key, value) in [
        ("ip4", ip4),
        ("ip4_gw", gateway("route", ipv4_gateway)),
        ("ip6", ip6),
        ("ip6_gw", gateway("ipv6_route", ipv6_gateway)),
    ] {
        if let Some(v) = value {
            c.insert(key.into(), Value::String(v));
        }
    }
    c.insert(
        "nameserver".into(),
        Value::String(stack.nameserver().to_string()),
    );
    Value::Object(c)
}

/// The first global IPv4 and IPv6 address (with prefix length) of the namespace's
/// interfaces other than `lo`, from getifaddrs(3) in a thread that joins the namespace.
fn addresses(init: Pid) -> (Option<String>, Option<String>) {
    let Ok(ns) = std::fs::File::open(format!("/proc/{init}/ns/net")) else {
        return (None, None);
    };
    std::thread::spawn(move || {
        // A thread's network namespace is its own: the supervisor's other threads stay.
        if nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return (None, None);
        }
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
        if unsafe { libc::getifaddrs(&mut list) } != 0 {
            return (None, None);
        }
        let (mut ip4, mut ip6) = (None, None);
        let mut cur = list;
        while !cur.is_null() {
            // SAFETY: `cur` walks the list getifaddrs returned; each node is valid.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            // SAFETY: ifa_name is a NUL-terminated string.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            if name.to_bytes() == b"lo" || ifa.ifa_addr.is_null() {
                continue;
            }
            // SAFETY: sa_family says which sockaddr the pointers hold.
            unsafe {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET if ip4.is_none() => {
                        let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        let addr = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                        let prefix = if ifa.ifa_netmask.is_null() {
                            32
                        } else {
                            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                            u32::from_be(m.sin_addr.s_addr).count_ones()
                        };
                        ip4 = Some(format!("{addr}/{prefix}"));
                    }
                    libc::AF_INET6 if ip6.is_none() => {
                        let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        let addr = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                        // Link-local addresses are not what was configured.
                        if addr.segments()[0] & 0xffc0 == 0xfe80 {
                            continue;
                        }
                        let prefix = if ifa.ifa_netmask.is_null() {
                            128
                        } else {
                            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                            m.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum()
                        };
                        ip6 = Some(format!("{addr}/{prefix}"));
                    }
                    _ => {}
                }
            }
        }
        // SAFETY: freeing the list getifaddrs allocated, once.
        unsafe { libc::freeifaddrs(list) };
        (ip4, ip6)
    })
    .join()
    .unwrap_or((None, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_counters_follow_the_api() {
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n";
        let v = interfaces(dev);
        assert_eq!(v[0]["name"], "lo");
        assert_eq!(v[0]["rx_bytes"], 100);
        assert_eq!(v[0]["tx_packets"], 2);
    }
}
