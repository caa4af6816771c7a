//! Which cgroup hierarchies this host has and which controllers each carries: cgroup2,
//! v1, or both (hybrid), read from `/sys/fs/cgroup` where it has the usual layout, else
//! from the mount table.

use super::{Host, PARENT};
use std::fs;
use std::path::{Path, PathBuf};

/// The controllers used for limits and accounting.
const WANTED: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];

/// One mounted hierarchy: where, which version, which of `WANTED` it carries (for v2: the
/// ones a child of `contree` can have).
#[derive(Debug, Clone)]
pub(super) struct Hierarchy {
    pub(super) mount: PathBuf,
    /// Where `contree/` goes: the mount for root; rootless, a cgroup delegated to the user
    /// (see `delegated`).
    pub(super) base: PathBuf,
    pub(super) v2: bool,
    pub(super) controllers: Vec<&'static str>,
}

impl Host {
    /// The hierarchies where systemd and most distributions put them (`/sys/fs/cgroup`),
    /// else as `/proc/self/mounts` shows them (which the kernel writes out for every mount:
    /// a tenth of a millisecond on every run's path).
    pub fn detect() -> Host {
        Host::standard().unwrap_or_else(|| {
            let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            Host::from_mounts(&mounts, |path| fs::read_to_string(path).ok())
        })
    }

    /// `/sys/fs/cgroup` as cgroup2 itself, or a tmpfs of v1 hierarchies (named for their
    /// controllers, `cpu,cpuacct` with `cpu` and `cpuacct` links to it) and maybe a v2 tree
    /// at `unified`. `None` for anything else.
    fn standard() -> Option<Host> {
        use nix::sys::statfs::{
            statfs, FsType, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC, TMPFS_MAGIC,
        };
        const ROOT: &str = "/sys/fs/cgroup";
        let magic = |p: &Path| -> Option<FsType> { statfs(p).ok().map(|s| s.filesystem_type()) };
        let v2 = |mount: PathBuf| {
            let offered = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
            let controllers = WANTED
                .iter()
                .copied()
                .filter(|c| offered.split_whitespace().any(|o| o == *c))
                .collect();
            Hierarchy {
                base: mount.clone(),
                mount,
                v2: true,
                controllers,
            }
        };
        let root = magic(Path::new(ROOT))?;
        if root == CGROUP2_SUPER_MAGIC {
            return Some(Host {
                hierarchies: vec![v2(ROOT.into())],
            });
        }
        if root != TMPFS_MAGIC {
            return None;
        }
        let mut hierarchies = Vec::new();
        for entry in fs::read_dir(ROOT).ok()?.flatten() {
            let path = entry.path();
            // Links (`cpu` → `cpu,cpuacct`) are the same hierarchy: only real dirs count.
            if !entry.file_type().ok()?.is_dir() {
                continue;
            }
            match magic(&path) {
                Some(m) if m == CGROUP2_SUPER_MAGIC => hierarchies.push(v2(path)),
                Some(m) if m == CGROUP_SUPER_MAGIC => {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let controllers: Vec<&'static str> = WANTED
                        .iter()
                        .copied()
                        .filter(|c| name.split(',').any(|n| n == *c))
                        .collect();
                    if !controllers.is_empty() {
                        hierarchies.push(Hierarchy {
                            base: path.clone(),
                            mount: path,
                            v2: false,
                            controllers,
                        });
                    }
                }
                _ => {}
            }
        }
        hierarchies.sort_by_key(|h| !h.v2);
        Some(Host { hierarchies })
    }

    fn from_mounts(mounts: &str, read: impl Fn(&Path) -> Option<String>) -> Host {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            let mount = PathBuf::from(unescape(f[1]));
            if hierarchies.iter().any(|h| h.mount == mount) {
                continue;
            }
            match f[2] {
                "cgroup2" => {
                    // What the root offers; `contree` may enable those for its children.
                    let offered = read(&mount.join("cgroup.controllers")).unwrap_or_default();
                    let controllers = WANTED
                        .iter()
                        .copied()
                        .filter(|c| offered.split_whitespace().any(|o| o == *c))
                        .collect();
                    hierarchies.push(Hierarchy {
                        base: mount.clone(),
                        mount,
                        v2: true,
                        controllers,
                    });
                }
                "cgroup" => {
                    let controllers: Vec<&'static str> = WANTED
                        .iter()
                        .copied()
                        .filter(|c| f[3].split(',').any(|o| o == *c))
                        .collect();
                    // A controller lives in one hierarchy; a second mount of it is the same.
                    let taken = controllers.iter().any(|c| {
                        hierarchies
                            .iter()
                            .any(|h| !h.v2 && h.controllers.contains(c))
                    });
                    if !controllers.is_empty() && !taken {
                        hierarchies.push(Hierarchy {
                            base: mount.clone(),
                            mount,
                            v2: false,
                            controllers,
                        });
                    }
                }
                _ => {}
            }
        }
        // v2 first: a controller enabled there is not in any v1 hierarchy.
        hierarchies.sort_by_key(|h| !h.v2);
        Host { hierarchies }
    }

    /// The hierarchies contree may use as this process: all of them as root; rootless,
    /// only those delegated to the user (`delegated`), under the delegated cgroup.
    pub fn usable() -> Host {
        let host = Host::detect();
        if crate::rootless::active() {
            host.delegated()
        } else {
            host
        }
    }

    /// The hierarchies where this process's own cgroup (`/proc/self/cgroup`), or for v2
    /// its parent, was delegated to the user: a directory it may write, whose
    /// `cgroup.procs` (and on v2 `cgroup.subtree_control`) it may write too. Writability
    /// is asked of access(2): inside the user namespace the user's files look like root's.
    /// A child made there is the user's too (the kernel gives it its maker's ids), so its
    /// limit files are writable.
    pub fn delegated(&self) -> Host {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let writable = |p: &Path| {
            use nix::unistd::{access, AccessFlags};
            access(p, AccessFlags::W_OK).is_ok()
        };
        let read = |p: &Path| fs::read_to_string(p).ok();
        Host {
            hierarchies: self
                .hierarchies
                .iter()
                .filter_map(|h| delegate(h, &own, &writable, &read))
                .collect(),
        }
    }

    /// Whether a limit through `controller` can be enforced.
    pub fn carries(&self, controller: &str) -> bool {
        self.carrier(controller).is_some()
    }

    pub(super) fn v2(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.v2)
    }

    /// The hierarchy that carries `controller`, if any.
    pub(super) fn carrier(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.controllers.contains(&controller))
    }

    /// The v2 tree's mount, if any.
    pub fn v2_mount(&self) -> Option<&Path> {
        self.v2().map(|h| h.mount.as_path())
    }

    /// Where each limit is enforced, for `contree doctor` and the docs: `(limit, "v2 PATH")`.
    pub fn summary(&self) -> Vec<(&'static str, Option<String>)> {
        ["memory", "pids", "cpu"]
            .into_iter()
            .map(|c| {
                let at = self
                    .carrier(c)
                    .map(|h| format!("{} {}", if h.v2 { "v2" } else { "v1" }, h.base.display()));
                (c, at)
            })
            .collect()
    }

    /// `v2`, `v1` or `hybrid` (v1 controllers next to a v2 tree), or `none`.
    pub fn version(&self) -> &'static str {
        let v1 = self.hierarchies.iter().any(|h| !h.v2);
        match (self.v2().is_some(), v1) {
            (true, true) => "hybrid",
            (true, false) => "v2",
            (false, true) => "v1",
            (false, false) => "none",
        }
    }

    /// The roots of every hierarchy (where `contree/` lives).
    pub(super) fn roots(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.hierarchies.iter().map(|h| h.base.join(PARENT))
    }
}

/// `h` with `base` at the cgroup delegated to this process, if there is one (see
/// `Host::delegated`); `own` is `/proc/self/cgroup`.
fn delegate(
    h: &Hierarchy,
    own: &str,
    writable: &dyn Fn(&Path) -> bool,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Option<Hierarchy> {
    let path = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let ours = if h.v2 {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| h.controllers.contains(&c))
        };
        ours.then(|| path.trim_start_matches('/').to_string())
    })?;
    // A cgroup namespace's view (`/..`) is not a place under this mount.
    if path.split('/').any(|c| c == "..") {
        return None;
    }
    let dir = h.mount.join(&path);
    let usable = |dir: &Path, files: &[&str]| {
        dir != h.mount && writable(dir) && files.iter().all(|f| writable(&dir.join(f)))
    };
    if !h.v2 {
        return usable(&dir, &["cgroup.procs", "tasks"]).then(|| Hierarchy {
            mount: h.mount.clone(),
            base: dir,
            v2: false,
            controllers: h.controllers.clone(),
        });
    }
    // v2 lets a cgroup enable controllers for its children only while it holds no process,
    // and contree is in its own: there only what is enabled already; else its parent
    // (systemd keeps processes out of inner nodes), where contree/ is a sibling of its own.
    let listed = |dir: &Path, file: &str| -> Vec<String> {
        read(&dir.join(file))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let wanted = |names: &[String]| -> Vec<&'static str> {
        h.controllers
            .iter()
            .copied()
            .filter(|c| names.iter().any(|n| n == c))
            .collect()
    };
    let files = ["cgroup.procs", "cgroup.subtree_control"];
    let here = wanted(&listed(&dir, "cgroup.subtree_control"));
    let parent = dir.parent().map(Path::to_path_buf);
    let (base, controllers) = match parent {
        Some(p) if here.is_empty() && usable(&p, &files) => {
            let mut names = listed(&p, "cgroup.subtree_control");
            if listed(&p, "cgroup.procs").is_empty() {
                names.extend(listed(&p, "cgroup.controllers"));
            }
            let c = wanted(&names);
            (p, c)
        }
        _ if usable(&dir, &files) => (dir, here),
        _ => return None,
    };
    Some(Hierarchy {
        mount: h.mount.clone(),
        base,
        v2: true,
        controllers,
    })
}

/// Mount paths in /proc/mounts escape spaces and the like as `\040`.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn a_hybrid_host_limits_through_v1_and_places_through_v2() {
        let host = Host::from_mounts(HYBRID, |_| Some("hugetlb\n".into()));
        assert_eq!(host.version(), "hybrid");
        let v2 = host.v2().unwrap();
        assert!(v2.controllers.is_empty());
        assert_eq!(
            host.carrier("memory").unwrap().mount,
            Path::new("/sys/fs/cgroup/memory")
        );
        assert!(!host.carrier("pids").unwrap().v2);
        assert_eq!(
            host.summary()[0].1.as_deref(),
            Some("v1 /sys/fs/cgroup/memory")
        );
    }

    #[test]
    fn rootless_uses_only_the_cgroups_delegated_to_it() {
        let host = Host::from_mounts(HYBRID, |_| Some("hugetlb\n".into()));
        let own = "4:memory:/box\n8:pids:/\n1:cpu:/box\n0::/\n";
        let mine = |p: &Path| p.starts_with("/sys/fs/cgroup/memory/box");
        let used: Vec<_> = host
            .hierarchies
            .iter()
            .filter_map(|h| delegate(h, own, &mine, &|_| None))
            .collect();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].base, Path::new("/sys/fs/cgroup/memory/box"));
        assert_eq!(used[0].controllers, ["memory"]);
    }

    #[test]
    fn on_v2_the_run_goes_beside_contrees_own_cgroup() {
        let h = Hierarchy {
            mount: "/sys/fs/cgroup".into(),
            base: "/sys/fs/cgroup".into(),
            v2: true,
            controllers: vec!["memory", "pids", "cpu"],
        };
        let own = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope\n";
        let app =
            Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice");
        let read = |p: &Path| -> Option<String> {
            let name = p.file_name()?.to_str()?;
            match (p.parent()? == app, name) {
                (true, "cgroup.subtree_control") => Some("memory pids\n".into()),
                (true, "cgroup.procs") => Some(String::new()),
                (true, "cgroup.controllers") => Some("cpu memory pids\n".into()),
                _ => Some(String::new()),
            }
        };
        let d = delegate(&h, own, &|p: &Path| p.starts_with(app), &read).unwrap();
        assert_eq!(d.base, app);
        assert_eq!(d.controllers, ["memory", "pids", "cpu"]);
        // Nothing the user may write: nothing delegated.
        assert!(delegate(&h, own, &|_: &Path| false, &read).is_none());
    }

    #[test]
    fn a_pure_v2_host_takes_every_controller_there() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        let host = Host::from_mounts(mounts, |_| Some("cpuset cpu io memory pids\n".into()));
        assert_eq!(host.version(), "v2");
        for c in ["memory", "pids", "cpu"] {
            assert!(host.carrier(c).unwrap().v2, "{c}");
        }
        // CPU time comes from cpu.stat, which every v2 cgroup has.
        assert!(host.carrier("cpuacct").is_none());
    }

    #[test]
    fn co_mounted_v1_controllers_share_a_hierarchy() {
        let mounts = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
        let host = Host::from_mounts(mounts, |_| None);
        assert_eq!(host.version(), "v1");
        assert_eq!(
            host.carrier("cpu").unwrap().mount,
            host.carrier("cpuacct").unwrap().mount
        );
    }

    #[test]
    fn the_quick_look_at_sys_fs_cgroup_agrees_with_the_mount_table() {
        let Some(quick) = Host::standard() else {
            return; // not the usual layout here: the mount table is all there is
        };
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        let full = Host::from_mounts(&mounts, |p| fs::read_to_string(p).ok());
        let key = |h: &Host| {
            let mut v: Vec<_> = h
                .hierarchies
                .iter()
                .filter(|h| h.mount.starts_with("/sys/fs/cgroup"))
                .map(|h| (h.mount.clone(), h.v2, h.controllers.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(key(&quick), key(&full));
    }
}
