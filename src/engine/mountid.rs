//! Which mount a path is on (statx's mount id): how the host view and a listing tell the
//! image's own files from the host's other filesystems.

use std::path::Path;

/// The id of the mount `path` is on, not following a last symlink: statx(2) with
/// `STATX_MNT_ID` (Linux 5.8); `None` before, or when `path` cannot be read.
pub(crate) fn mount_id(path: &Path) -> Option<u64> {
    let c =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).ok()?;
    statx_mount_id(libc::AT_FDCWD, &c, libc::AT_SYMLINK_NOFOLLOW)
}

pub(crate) fn statx_mount_id(
    dirfd: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_int,
) -> Option<u64> {
    // SAFETY: a zeroed `statx` is a valid value to be filled in.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stx` a writable `statx`.
    let r = unsafe { libc::statx(dirfd, path.as_ptr(), flags, libc::STATX_MNT_ID, &mut stx) };
    (r == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}
