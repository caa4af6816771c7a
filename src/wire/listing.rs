//! A directory listing as text (`ls -l` style): what the API serves with `text=1`, and
//! what `contree ls` prints.

use super::FileItem;

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
