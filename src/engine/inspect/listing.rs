//! An image's directory entries as the API's `FileItem`s (their text listing is
//! `wire::text_listing`).

use super::Found;
use crate::wire::FileItem;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The API's `FileItem` for one directory entry.
pub fn file_item(name: &str, found: &Found) -> FileItem {
    let m = &found.meta;
    let ft = m.file_type();
    let symlink_to = if ft.is_symlink() {
        found
            .link_target()
            .ok()
            .map(|t| t.display().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    // A mount point is the empty directory the image holds there: the size and link count
    // of what is mounted (procfs counts the host's processes) are not the image's.
    let (size, nlink) = if found.mount_point {
        (0, 2)
    } else {
        (m.size(), m.nlink())
    };
    FileItem {
        size,
        path: name.to_string(),
        owner: user_name(m.uid())
            .map(serde_json::Value::from)
            .unwrap_or_else(|| m.uid().into()),
        group: group_name(m.gid())
            .map(serde_json::Value::from)
            .unwrap_or_else(|| m.gid().into()),
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode(),
        mtime: m.mtime(),
        nlink,
        is_dir: ft.is_dir(),
        is_regular: ft.is_file(),
        is_symlink: ft.is_symlink(),
        is_socket: ft.is_socket(),
        is_fifo: ft.is_fifo(),
        symlink_to,
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}
