//! Whether this process may build a sandbox: a mount namespace and overlayfs need
//! CAP_SYS_ADMIN (root has it). Checked before a local run so that a missing privilege is
//! one clear error with its own exit code, not an operation that fails in its supervisor.
//! It only reads the process's capabilities; it never changes them.

/// CAP_SYS_ADMIN's bit in the capability masks (`linux/capability.h`).
const CAP_SYS_ADMIN: u32 = 21;

/// Why a sandbox cannot be built by this process, or `None` when it can (or when
/// `/proc` cannot tell: then the sandbox itself reports what fails).
pub fn missing() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let effective = effective_caps(&status)?;
    if effective & (1 << CAP_SYS_ADMIN) != 0 {
        return None;
    }
    Some(format!(
        "running a sandbox needs root (or CAP_SYS_ADMIN), and this process (uid {}) has neither",
        nix::unistd::geteuid()
    ))
}

/// The `CapEff:` mask of a `/proc/PID/status` text (proc(5)).
fn effective_caps(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_mask_is_read_from_proc_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000200000\n";
        assert_eq!(effective_caps(status), Some(1 << CAP_SYS_ADMIN));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }
}
