//! The sandbox's seccomp filter: what the command may not ask the kernel, checked by the
//! kernel on every system call of the command and of everything it starts.
//!
//! A deny list, compiled with `seccompiler` (Firecracker's compiler; no hand-written BPF):
//! every call the common container default profile (Docker's, Podman's) refuses to a
//! container without extra capabilities is refused here with EPERM, plus io_uring (its
//! operations bypass seccomp), AF_VSOCK sockets (a channel to the hypervisor) and TIOCSTI
//! (typing into the user's terminal). `clone3` gets ENOSYS instead: its flags sit in memory
//! a filter cannot read, and C libraries fall back to `clone`, whose flags it can check.
//! Each filter first checks the architecture and kills a process that calls through another
//! one (32-bit `int 0x80` on x86_64). Where the kernel runs x32 programs, the x32 numbers of
//! every denied call are denied too, so the x32 ABI is no way around the list.
//!
//! Calls the profile allows and this list keeps: `ptrace`, `process_vm_readv/writev`,
//! `kcmp`, `pidfd_getfd` (debuggers and strace work; the PID namespace confines them to the
//! sandbox, and the init, which holds more capabilities, is not dumpable, so the kernel
//! refuses to let the command trace it).

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// The two programs the command's process installs before execve.
pub struct Filters {
    /// EPERM for the denied calls.
    pub deny: BpfProgram,
    /// ENOSYS for `clone3`.
    pub absent: BpfProgram,
    /// How many system call numbers `deny` refuses (for `contree doctor`).
    pub denied: usize,
}

/// x32 system calls are x86_64 calls with this bit set in the number (asm/unistd.h).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// `open_tree_attr` (Linux 6.15), not in the libc crate yet; one number on every arch.
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// Namespace flags of clone(2) and unshare(2) (linux/sched.h).
const NEW_NAMESPACES: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
/// `CLONE_NEWTIME`: unshare only (in clone's flags this bit is part of the exit signal).
const CLONE_NEWTIME: u64 = 0x80;

/// TIOCSTI ("simulate terminal input"), asm-generic/ioctls.h: the same on x86_64 and aarch64.
const TIOCSTI: u64 = 0x5412;

/// personality(2) values the profile allows: Linux, 32-bit Linux, `uname26` and the query.
const PERSONALITIES: [u64; 5] = [0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

/// Denied whatever the arguments.
const ALWAYS: &[i64] = &[
    // Kernel modules and replacing the kernel.
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    // Kernel programs, tracing and the kernel log.
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_syslog,
    libc::SYS_lookup_dcookie,
    // Keyrings: the kernel's keyrings are per user, not per namespace.
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    // File handles open any file of a filesystem, past the sandbox's root.
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    // The machine itself.
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_vhangup,
    // Memory of other processes' pages and NUMA policy (gated by CAP_SYS_NICE in the profile).
    libc::SYS_userfaultfd,
    libc::SYS_mbind,
    libc::SYS_set_mempolicy,
    libc::SYS_get_mempolicy,
    libc::SYS_move_pages,
    libc::SYS_migrate_pages,
    libc::SYS_set_mempolicy_home_node,
    // Mounts: the sandbox's mounts (the /proc and /sys masks among them) stay as set up.
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    SYS_OPEN_TREE_ATTR,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_fanotify_init,
    // Entering other namespaces.
    libc::SYS_setns,
    // io_uring runs operations that no seccomp filter sees.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// x86_64-only calls of the same kinds (I/O ports, old library, sysctl and filesystem
/// calls). Not listed: `create_module`, `get_kernel_syms`, `query_module` and `nfsservctl`,
/// which no kernel since 2.6 (3.1 for nfsservctl) implements; every entry costs each run
/// time when the kernel loads the filter.
#[cfg(target_arch = "x86_64")]
const ALWAYS_X86_64: &[i64] = &[
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_uselib,
    libc::SYS_ustat,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
];
#[cfg(not(target_arch = "x86_64"))]
const ALWAYS_X86_64: &[i64] = &[];

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, Len::Dword, op, value)
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(conds)
}

/// One rule per flag: any of `flags` set in argument `arg` matches.
fn any_flag(arg: u8, flags: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    flags
        .iter()
        .map(|&f| rule(vec![cond(arg, Op::MaskedEq(f), f)?]))
        .collect()
}

/// mknod(2)/mknodat(2) of a character or block device (mode in `mode_arg`, device number
/// in the next). A 0/0 character device stays allowed: it is an overlay whiteout, not a
/// device, and layer-building tools make them.
fn device_nodes(mode_arg: u8) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let fmt = libc::S_IFMT as u64;
    Ok(vec![
        rule(vec![
            cond(mode_arg, Op::MaskedEq(fmt), libc::S_IFCHR as u64)?,
            cond(mode_arg + 1, Op::Ne, 0)?,
        ])?,
        rule(vec![cond(
            mode_arg,
            Op::MaskedEq(fmt),
            libc::S_IFBLK as u64,
        )?])?,
    ])
}

/// The deny list for this architecture: system call number → rules (empty: always).
fn deny_rules(x32: bool) -> Result<Rules, seccompiler::BackendError> {
    let mut rules: Rules = ALWAYS
        .iter()
        .chain(ALWAYS_X86_64)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    rules.insert(libc::SYS_clone, any_flag(0, &NEW_NAMESPACES)?);
    let mut unshare = NEW_NAMESPACES.to_vec();
    unshare.push(CLONE_NEWTIME);
    rules.insert(libc::SYS_unshare, any_flag(0, &unshare)?);
    let others = PERSONALITIES
        .iter()
        .map(|&p| cond(0, Op::Ne, p))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_personality, vec![rule(others)?]);
    let tiocsti = vec![rule(vec![cond(1, Op::Eq, TIOCSTI)?])?];
    rules.insert(libc::SYS_ioctl, tiocsti.clone());
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![cond(0, Op::Eq, libc::AF_VSOCK as u64)?])?],
    );
    rules.insert(libc::SYS_mknodat, device_nodes(2)?);
    #[cfg(target_arch = "x86_64")]
    {
        rules.insert(libc::SYS_mknod, device_nodes(1)?);
        if x32 {
            let native: Vec<(i64, Vec<SeccompRule>)> =
                rules.iter().map(|(n, r)| (*n, r.clone())).collect();
            for (nr, r) in native {
                rules.insert(nr | X32_SYSCALL_BIT, r);
            }
            // Calls whose x32 entry has its own number (arch/x86/entry/syscalls/syscall_64.tbl).
            rules.insert(514 | X32_SYSCALL_BIT, tiocsti); // ioctl
            rules.insert(528 | X32_SYSCALL_BIT, Vec::new()); // kexec_load
            rules.insert(533 | X32_SYSCALL_BIT, Vec::new()); // move_pages
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x32, tiocsti);
    Ok(rules)
}

fn absent_rules(x32: bool) -> Rules {
    let mut rules: Rules = [(libc::SYS_clone3, Vec::new())].into_iter().collect();
    #[cfg(target_arch = "x86_64")]
    if x32 {
        rules.insert(libc::SYS_clone3 | X32_SYSCALL_BIT, Vec::new());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x32;
    rules
}

fn arch() -> Result<TargetArch, seccompiler::BackendError> {
    TargetArch::try_from(std::env::consts::ARCH)
}

/// True when this kernel may run x32 system calls: `getpid` through the x32 ABI answers.
/// Under a seccomp filter already (a hardened service unit) the probe itself could be
/// killed (libseccomp's filters kill other ABIs), so there the answer is yes, unasked.
fn x32_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: prctl with integer arguments; 0 means no seccomp mode.
        if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } != 0 {
            return true;
        }
        // SAFETY: getpid has no arguments and no effects; an x32-less kernel says ENOSYS.
        unsafe { libc::syscall(libc::SYS_getpid | X32_SYSCALL_BIT) > 0 }
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Compiles both programs for this machine (a few dozen microseconds; once per supervisor).
pub fn compile() -> Result<Filters, seccompiler::Error> {
    let x32 = x32_enabled();
    let arch = arch()?;
    let deny = deny_rules(x32)?;
    let denied = deny.len();
    let deny = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let absent = SeccompFilter::new(
        absent_rules(x32),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(Filters {
        deny: deny.try_into()?,
        absent: absent.try_into()?,
        denied,
    })
}

impl Filters {
    /// Installs both programs in the calling thread (and sets `no_new_privs`, which
    /// seccomp requires of a process without CAP_SYS_ADMIN). Nothing can remove them.
    pub fn install(&self) -> Result<(), seccompiler::Error> {
        seccompiler::apply_filter(&self.deny)?;
        seccompiler::apply_filter(&self.absent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_machine_within_the_kernels_size_limit() {
        let f = compile().expect("compile");
        // BPF_MAXINSNS: the kernel refuses longer programs.
        assert!(f.deny.len() < 4096 && f.absent.len() < 4096);
        assert!(f.denied > 50, "{} calls denied", f.denied);
    }

    #[test]
    fn x32_numbers_of_denied_calls_are_denied_too() {
        let native = deny_rules(false).unwrap();
        let both = deny_rules(true).unwrap();
        if cfg!(target_arch = "x86_64") {
            assert!(both.len() >= 2 * native.len());
            assert!(both.contains_key(&(0x4000_0000 | libc::SYS_keyctl)));
            assert!(absent_rules(true).contains_key(&(0x4000_0000 | libc::SYS_clone3)));
        } else {
            assert_eq!(both.len(), native.len());
        }
        assert!(
            !native.contains_key(&libc::SYS_clone3),
            "clone3 is ENOSYS, not EPERM"
        );
        assert!(
            !native.contains_key(&libc::SYS_ptrace),
            "ptrace stays (see module docs)"
        );
    }
}
