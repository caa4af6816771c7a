//! Capabilities of the command: the container engines' default set, nothing more.
//!
//! The bounding set is cut first (it needs CAP_SETPCAP, which a process that changed to a
//! non-root uid no longer has), then, once the uid is final, the effective and permitted
//! sets are cut to it and the inheritable set emptied (as moby does since CVE-2022-24769, so
//! a file's inheritable capabilities grant nothing), and the ambient set is cleared: a
//! non-root command starts with no capability at all.

use std::io;

/// The default set of Docker, Podman and containerd: what package managers and build tools
/// need (changing owners, binding low ports, chroot, device nodes that `nodev` makes inert).
pub const KEPT: [(u32, &str); 14] = [
    (0, "chown"),
    (1, "dac_override"),
    (3, "fowner"),
    (4, "fsetid"),
    (5, "kill"),
    (6, "setgid"),
    (7, "setuid"),
    (8, "setpcap"),
    (10, "net_bind_service"),
    (13, "net_raw"),
    (18, "sys_chroot"),
    (27, "mknod"),
    (29, "audit_write"),
    (31, "setfcap"),
];

pub const CAP_NET_RAW: u32 = 13;

/// The set as a bit mask; without NET_RAW for a sandbox in the host's network namespace,
/// where raw and packet sockets would see (and forge) the host's traffic.
pub fn kept_mask(shares_host_network: bool) -> u64 {
    KEPT.iter()
        .filter(|(cap, _)| !(shares_host_network && *cap == CAP_NET_RAW))
        .fold(0, |mask, (cap, _)| mask | 1 << cap)
}

/// Names of the capabilities in `mask`, lowest first.
pub fn names(mask: u64) -> Vec<&'static str> {
    KEPT.iter()
        .filter(|(cap, _)| mask & (1 << cap) != 0)
        .map(|(_, name)| *name)
        .collect()
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Drops every capability outside `keep` from the bounding set, so no exec (of a setuid or
/// file-capability binary, or as root) can ever hold it again.
pub fn cut_bounding_set(keep: u64) -> io::Result<()> {
    for cap in 0..64u32 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // Past the kernel's last capability.
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(err);
        }
    }
    Ok(())
}

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two of them (capabilities 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

/// Cuts the effective and permitted sets to `keep`, empties the inheritable and ambient
/// sets. Only ever removes: a non-root process (already without capabilities) stays so.
pub fn limit_sets(keep: u64) -> io::Result<()> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget fills two data structs for version 3.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } as i32)?;
    for (i, d) in data.iter_mut().enumerate() {
        let keep = (keep >> (32 * i)) as u32;
        d.permitted &= keep;
        d.effective &= keep;
        d.inheritable = 0;
    }
    // SAFETY: capset reads two data structs for version 3.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as i32)?;
    // SAFETY: prctl with integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })
}

/// `no_new_privs`: no exec can gain privileges (setuid bits and file capabilities are
/// ignored), and the seccomp filter may be installed without CAP_SYS_ADMIN.
pub fn no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_set_is_the_container_engines_default() {
        // CapBnd of a default Docker container.
        assert_eq!(kept_mask(false), 0xa804_25fb);
        assert_eq!(kept_mask(true), 0xa804_25fb & !(1 << CAP_NET_RAW));
        assert_eq!(names(1 << 13 | 1), ["chown", "net_raw"]);
    }
}
