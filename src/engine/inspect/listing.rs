//! An image's directory entries as the API's `FileItem`s, and as the text listing that
//! `inspect ls` and the server's text answer print.

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

/// The plain-text listing (`ls -l` style) the API serves with `text=1`.
pub fn text_listing(items: &[FileItem]) -> String {
    let mut out = String::new();
    for it in items {
        let kind = if it.is_dir {
            'd'
        } else if it.is_symlink {
            'l'
        } else {
            '-'
        };
        let perms = mode_text(it.mode);
        let name = if it.is_symlink {
            format!("{} -> {}", it.path, it.symlink_to)
        } else {
            it.path.clone()
        };
        let owner = it
            .owner
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| it.uid.to_string());
        let group = it
            .group
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| it.gid.to_string());
        let time = chrono::DateTime::from_timestamp(it.mtime, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "{kind}{perms} {:>3} {owner:<8} {group:<8} {:>10} {time} {name}\n",
            it.nlink, it.size
        ));
    }
    out
}

fn mode_text(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for (i, c) in ['r', 'w', 'x', 'r', 'w', 'x', 'r', 'w', 'x']
        .iter()
        .enumerate()
    {
        let bit = 1 << (8 - i);
        s.push(if mode & bit != 0 { *c } else { '-' });
    }
    s
}
