//! Hardening of the sandbox beyond its namespaces: what a command may still do once it runs
//! as root in its own mount, PID and IPC namespaces.
//!
//! - `mounts`: /proc knobs read-only and kernel internals masked, a read-only /sys, a
//!   read-only /dev and `nodev` on the writable root (in the init, before pivot_root);
//! - `caps`: the container engines' default capability set, `no_new_privs`;
//! - `seccomp`: a filter of system calls, installed last, right before execve.
//!
//! The init keeps what it needs to set the sandbox up and then only waits; it joins a fresh
//! session keyring and makes itself non-dumpable, so the command can neither read the
//! keys of whoever started contree nor trace the init (which holds more capabilities).
//! Nothing here may fail quietly: a step that fails ends the run with a setup error,
//! except /sys, which falls back to an empty directory (`mounts::Report::sys_fallback`).
//! Works with or without a user namespace: every step acts on the caller's own namespaces.

pub mod caps;
pub mod doctor;
pub mod mounts;
pub mod seccomp;

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    #[error("cannot compile the seccomp filter: {0}")]
    Compile(#[from] seccompiler::Error),
}

/// What the command's process applies to itself, prepared in the supervisor before the
/// clone so the sandbox does no compiling.
pub struct Plan {
    keep: u64,
    filters: seccomp::Filters,
}

/// A hardening step that failed in the command's process: reported as a setup failure.
pub struct StepError {
    pub step: &'static str,
    pub error: io::Error,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hardening ({}): {}", self.step, self.error)
    }
}

fn step(step: &'static str) -> impl Fn(io::Error) -> StepError {
    move |error| StepError { step, error }
}

impl Plan {
    /// `shares_host_network`: the sandbox has no network namespace of its own.
    pub fn new(shares_host_network: bool) -> Result<Plan, HardenError> {
        Ok(Plan {
            keep: caps::kept_mask(shares_host_network),
            filters: seccomp::compile()?,
        })
    }

    /// The capabilities the command keeps (a bit mask).
    pub fn kept(&self) -> u64 {
        self.keep
    }

    /// How many system call numbers the filter refuses.
    pub fn denied_calls(&self) -> usize {
        self.filters.denied
    }

    /// In the command's process while it is still root: cut the bounding set.
    pub fn before_credentials(&self) -> Result<(), StepError> {
        caps::cut_bounding_set(self.keep).map_err(step("bounding set"))
    }

    /// In the command's process once its uid, gid and cwd are final: cut the remaining
    /// capability sets, set `no_new_privs`, install the filter. Then only execve follows.
    pub fn before_exec(&self) -> Result<(), StepError> {
        caps::limit_sets(self.keep).map_err(step("capabilities"))?;
        caps::no_new_privs().map_err(step("no_new_privs"))?;
        self.filters.install().map_err(|e| StepError {
            step: "seccomp",
            error: match e {
                seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
                other => io::Error::other(other.to_string()),
            },
        })
    }
}

/// In the init, before it starts the command: a new anonymous session keyring (the one
/// inherited from the caller holds the caller's keys) and no ptrace or /proc access to the
/// init from the command.
pub fn init_process() -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a NULL name joins a new anonymous session keyring.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        // A kernel without keyrings has nothing to share.
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(err);
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
