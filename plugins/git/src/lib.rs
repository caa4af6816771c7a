//! `--file git:REV:PATH`: attach the files git tracks under PATH at revision REV of the
//! repository contree runs in, not the working tree.
//!
//! PATH is relative to contree's working directory (as `git` itself reads paths), `.` is
//! that directory; REV is anything `git rev-parse` accepts. Files keep git's modes (0644 or
//! 0755); owners default to 0:0 since git stores none. Symlinks and submodules are skipped:
//! a link's target may not exist in the sandbox and a submodule is another repository.
//!
//! It runs the `git` command (`ls-tree` and `cat-file --batch`) rather than reading objects
//! itself: packs, alternates, partial clones and replace refs then behave exactly as the
//! user's git does, and the plugin stays small.

use contree_plugin::{
    export_plugin, Plugin, ResolveRequest, Resolved, ResolvedFile, Resolver, ResolverDef,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

pub struct Git;

impl Resolver for Git {
    fn resolve(&self, request: &ResolveRequest) -> Result<Resolved, String> {
        let (rev, path) = request
            .rest
            .split_once(':')
            .ok_or_else(|| format!("'{}' is not REV:PATH", request.rest))?;
        if rev.is_empty() || path.is_empty() {
            return Err(format!("'{}' is not REV:PATH", request.rest));
        }
        resolve(Path::new(&request.cwd), rev, path)
    }
}

/// One tracked file at REV.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    oid: String,
    /// From the repository's top, `/`-separated.
    path: String,
}

fn resolve(cwd: &Path, rev: &str, path: &str) -> Result<Resolved, String> {
    // `--show-prefix` is where cwd sits inside the work tree ("" at the top, "sub/" below).
    let prefix = git(cwd, &["rev-parse", "--show-prefix"])?;
    let prefix = String::from_utf8_lossy(&prefix)
        .trim_end_matches('\n')
        .to_string();
    let target = normalize(&format!("{prefix}{path}"))
        .ok_or_else(|| format!("'{path}' leaves the repository"))?;
    let commit = format!("{rev}^{{commit}}");
    git(cwd, &["rev-parse", "--verify", "--quiet", &commit])
        .map_err(|_| format!("'{rev}' is not a commit in this repository"))?;
    let listing = git(
        cwd,
        &[
            "ls-tree",
            "-r",
            "-z",
            "--full-tree",
            &commit,
            "--",
            &top_pathspec(&target),
        ],
    )?;
    let mut entries = Vec::new();
    for record in listing.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let entry = parse_ls_tree(record)?;
        let inside = target.is_empty()
            || entry.path == target
            || entry.path.starts_with(&format!("{target}/"));
        // Regular files only: 120000 is a symlink, 160000 a submodule (a commit).
        if inside && (entry.mode == 0o100644 || entry.mode == 0o100755) {
            entries.push(entry);
        }
    }
    if entries.is_empty() {
        return Err(format!("no tracked files at '{path}' in {rev}"));
    }
    let contents = cat_blobs(cwd, &entries)?;
    let files = entries
        .iter()
        .zip(contents)
        .map(|(e, content)| {
            let rel = if e.path == target {
                String::new()
            } else if target.is_empty() {
                e.path.clone()
            } else {
                e.path[target.len() + 1..].to_string()
            };
            ResolvedFile::content(rel, content).mode(e.mode & 0o7777)
        })
        .collect();
    Ok(Resolved {
        name: path.to_string(),
        files,
    })
}

/// `a/./b/../c/` → `a/c`; `None` when `..` climbs above the top.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// A literal pathspec for the top-relative `target` (`:(top,literal)` so `*` and `?` in
/// file names are not globs); the whole tree for `""`.
fn top_pathspec(target: &str) -> String {
    if target.is_empty() {
        ":(top)".into()
    } else {
        format!(":(top,literal){target}")
    }
}

/// `<mode> SP <type> SP <oid> TAB <path>` (one `ls-tree -z` record).
fn parse_ls_tree(record: &[u8]) -> Result<Entry, String> {
    let text = std::str::from_utf8(record).map_err(|_| {
        format!(
            "a tracked path is not UTF-8: {}",
            String::from_utf8_lossy(record)
        )
    })?;
    let bad = || format!("unexpected git ls-tree output: {text:?}");
    let (meta, path) = text.split_once('\t').ok_or_else(bad)?;
    let mut fields = meta.split(' ');
    let mode = fields.next().ok_or_else(bad)?;
    let _kind = fields.next().ok_or_else(bad)?;
    let oid = fields.next().ok_or_else(bad)?;
    Ok(Entry {
        mode: u32::from_str_radix(mode, 8).map_err(|_| bad())?,
        oid: oid.to_string(),
        path: path.to_string(),
    })
}

/// Reads every blob with one `git cat-file --batch`, in order.
fn cat_blobs(cwd: &Path, entries: &[Entry]) -> Result<Vec<Vec<u8>>, String> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(cwd)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let wanted: String = entries.iter().map(|e| format!("{}\n", e.oid)).collect();
    // Written from a thread: git answers while it reads, and both pipes can fill up.
    let writer = std::thread::spawn(move || stdin.write_all(wanted.as_bytes()));
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut blobs = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut header = String::new();
        out.read_line(&mut header)
            .map_err(|e| format!("reading git cat-file: {e}"))?;
        // `<oid> SP blob SP <size> LF <content> LF`, or `<oid> missing LF`.
        let size = header
            .trim_end()
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|_| header.contains(" blob "))
            .ok_or_else(|| {
                format!(
                    "git cannot read {} ({}): {}",
                    entry.path,
                    entry.oid,
                    header.trim_end()
                )
            })?;
        let mut content = vec![0; size + 1];
        out.read_exact(&mut content)
            .map_err(|e| format!("reading {} from git: {e}", entry.path))?;
        content.pop();
        blobs.push(content);
    }
    let _ = writer.join();
    let status = child.wait().map_err(|e| format!("waiting for git: {e}"))?;
    if !status.success() {
        return Err(format!("git cat-file failed ({status})"));
    }
    Ok(blobs)
}

/// Runs `git -C cwd ARGS` and returns its stdout; its stderr becomes the error.
fn git(cwd: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(cwd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "git {}: {}",
            args.first().unwrap_or(&""),
            err.trim().lines().last().unwrap_or("failed")
        ));
    }
    Ok(out.stdout)
}

export_plugin!(Plugin {
    name: "git",
    version: env!("CARGO_PKG_VERSION"),
    formatters: &[],
    resolvers: &[ResolverDef {
        scheme: "git",
        parts: 2,
        usage: "git:REV:PATH",
        resolver: &Git,
    }],
});

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    }

    fn repo() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "contree-git-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        sh(
            &dir,
            "git init -q . && mkdir -p src/sub && printf one > src/a.txt && printf 'x*' > 'src/s*' \
             && printf '#!/bin/sh\\n' > src/sub/run.sh && chmod 755 src/sub/run.sh && ln -s a.txt src/link \
             && printf top > top.txt && git add -A && git commit -qm one && git tag v1 \
             && printf two > src/a.txt && printf new > src/new.txt && git add -A && git commit -qm two \
             && printf dirty > src/a.txt && printf untracked > src/untracked.txt",
        );
        dir
    }

    fn files(r: &Resolved) -> Vec<(String, String, u32)> {
        r.files
            .iter()
            .map(|f| {
                (
                    f.path.clone(),
                    String::from_utf8_lossy(f.content.as_deref().unwrap()).into_owned(),
                    f.mode.unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_directory_at_a_revision_is_its_tracked_regular_files() {
        let dir = repo();
        let got = resolve(&dir, "v1", "src").unwrap();
        assert_eq!(got.name, "src");
        assert_eq!(
            files(&got),
            [
                ("a.txt".into(), "one".into(), 0o644),
                ("s*".into(), "x*".into(), 0o644),
                ("sub/run.sh".into(), "#!/bin/sh\n".into(), 0o755),
            ]
        );
        let head = resolve(&dir, "HEAD", "src/").unwrap();
        assert!(files(&head).contains(&("new.txt".into(), "new".into(), 0o644)));
        assert!(files(&head).contains(&("a.txt".into(), "two".into(), 0o644)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn paths_are_relative_to_the_working_directory() {
        let dir = repo();
        let one = resolve(&dir.join("src/sub"), "v1", "../a.txt").unwrap();
        assert_eq!(files(&one), [("".into(), "one".into(), 0o644)]);
        let all = resolve(&dir.join("src"), "v1", ".").unwrap();
        assert_eq!(all.files.len(), 3);
        let top = resolve(&dir, "v1", ".").unwrap();
        assert_eq!(top.files.len(), 4);
        assert!(resolve(&dir, "v1", "../x")
            .unwrap_err()
            .contains("leaves the repository"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_revisions_and_paths_say_what_is_wrong() {
        let dir = repo();
        assert_eq!(
            resolve(&dir, "nope", "src").unwrap_err(),
            "'nope' is not a commit in this repository"
        );
        assert_eq!(
            resolve(&dir, "v1", "src/new.txt").unwrap_err(),
            "no tracked files at 'src/new.txt' in v1"
        );
        assert_eq!(
            Git.resolve(&ResolveRequest {
                scheme: "git".into(),
                rest: "HEAD".into(),
                cwd: dir.display().to_string()
            })
            .unwrap_err(),
            "'HEAD' is not REV:PATH"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
