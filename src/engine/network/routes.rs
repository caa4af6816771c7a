//! Default routes: the ones the host has (which pasta copies into the sandbox), and a
//! netlink watch on the sandbox's namespace that says when they are there, which is when
//! pasta has configured it.

use nix::unistd::Pid;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Default routes, by family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Routes {
    v4: bool,
    v6: bool,
}

impl Routes {
    pub(super) fn covers(self, want: Routes) -> bool {
        (self.v4 || !want.v4) && (self.v6 || !want.v6)
    }
}

/// Which default routes pasta copies into the sandbox: those of the host (ours), by family.
pub(super) fn host_default_routes() -> Routes {
    let v4 =
        std::fs::read_to_string("/proc/self/net/route").is_ok_and(|t| ipv4_gateway(&t).is_some());
    let v6 = std::fs::read_to_string("/proc/self/net/ipv6_route")
        .is_ok_and(|t| ipv6_gateway(&t).is_some());
    Routes { v4, v6 }
}

/// A netlink socket in the sandbox's network namespace, subscribed to route changes
/// (made on a thread that joins the namespace: a socket stays in the one it was made in).
pub(super) fn route_socket(init: Pid) -> io::Result<OwnedFd> {
    let ns = std::fs::File::open(format!("/proc/{init}/ns/net"))?;
    std::thread::spawn(move || -> io::Result<OwnedFd> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        // SAFETY: socket(2) with constant arguments; the fd is owned right below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = (libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_ROUTE) as u32;
        // SAFETY: bind(2) with a valid sockaddr_nl and its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("route watch thread panicked")))
}

/// Asks for every route (RTM_GETROUTE dump): routes added before the subscription come
/// in the dump, later ones as notifications.
pub(super) fn request_routes(sock: &OwnedFd) -> io::Result<()> {
    // struct nlmsghdr (16 bytes) + struct rtmsg (12 bytes, all zero: any family).
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&28u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: send(2) of a buffer we own to the kernel (the socket's default peer).
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n != req.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads what the route socket has and adds the default routes it names to `seen`.
pub(super) fn read_routes(sock: &OwnedFd, mut seen: Routes) -> Routes {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: recv(2) into a buffer we own, of its size.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return seen;
        }
        seen = default_routes(&buf[..n as usize], seen);
    }
}

/// Adds the default unicast routes among the netlink messages in `msgs` to `seen`.
fn default_routes(msgs: &[u8], mut seen: Routes) -> Routes {
    let mut at = 0;
    while at + 16 <= msgs.len() {
        let len = u32::from_ne_bytes(msgs[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(msgs[at + 4..at + 6].try_into().expect("2 bytes"));
        if len < 16 || at + len > msgs.len() {
            break;
        }
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type.
        if kind == libc::RTM_NEWROUTE && len >= 28 {
            let rtm = &msgs[at + 16..at + 28];
            if rtm[1] == 0 && rtm[7] == libc::RTN_UNICAST {
                match rtm[0] as i32 {
                    libc::AF_INET => seen.v4 = true,
                    libc::AF_INET6 => seen.v6 = true,
                    _ => {}
                }
            }
        }
        // Messages are aligned to 4 bytes (NLMSG_ALIGN).
        at += (len + 3) & !3;
    }
    seen
}

/// The default route's gateway in /proc/net/route, which prints the address's bytes as a
/// native-endian u32.
pub(super) fn ipv4_gateway(route: &str) -> Option<String> {
    route.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[1] != "00000000" || f[7] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        (gw != 0).then(|| std::net::Ipv4Addr::from(gw.to_ne_bytes()).to_string())
    })
}

/// The default route's next hop in /proc/net/ipv6_route.
pub(super) fn ipv6_gateway(route: &str) -> Option<String> {
    route.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[0] != "0".repeat(32) || f[1] != "00" {
            return None;
        }
        let hop = u128::from_str_radix(f[4], 16).ok()?;
        (hop != 0).then(|| std::net::Ipv6Addr::from(hop).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_are_read_from_proc() {
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(ipv4_gateway(route).as_deref(), Some("192.0.2.1"));
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n";
        assert_eq!(ipv6_gateway(v6).as_deref(), Some("fd00::1"));
    }

    #[test]
    fn default_routes_are_found_in_netlink_messages() {
        let msg = |family: u8, dst_len: u8| {
            let mut m = vec![0u8; 28];
            m[0..4].copy_from_slice(&28u32.to_ne_bytes());
            m[4..6].copy_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
            m[16] = family;
            m[17] = dst_len;
            m[20] = libc::RT_TABLE_MAIN;
            m[23] = libc::RTN_UNICAST;
            m
        };
        let subnet = msg(libc::AF_INET as u8, 24);
        assert_eq!(
            default_routes(&subnet, Routes::default()),
            Routes::default()
        );
        let mut both = msg(libc::AF_INET as u8, 0);
        both.extend(msg(libc::AF_INET6 as u8, 0));
        let seen = default_routes(&both, Routes::default());
        assert!(seen.covers(Routes { v4: true, v6: true }));
        assert!(!Routes {
            v4: true,
            v6: false
        }
        .covers(Routes { v4: true, v6: true }));
    }
}
