//! The agent skill that `contree skill` installs: its files (embedded in the binary), where
//! each kind of agent looks for skills, installing, upgrading and removing them, and the
//! list of installs it remembers (`registry.rs`).
//!
//! It never overwrites or deletes a file it did not write, or one changed since it wrote
//! it, unless forced: each install keeps a manifest of what it wrote (`MANIFEST`, with each
//! file's sha256) and every later step checks the files against it first.

mod registry;

pub use registry::Registry;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The skill's name: its directory under an agent's `skills/`.
pub const NAME: &str = "contree";

/// The files, relative to the skill directory.
pub const FILES: &[(&str, &str)] = &[
    ("SKILL.md", include_str!("files/SKILL.md")),
    (
        "reference/workflow.md",
        include_str!("files/reference/workflow.md"),
    ),
    (
        "reference/safety.md",
        include_str!("files/reference/safety.md"),
    ),
];

/// What an install wrote, in the skill directory.
pub const MANIFEST: &str = ".contree-skill.json";

#[derive(Debug, Error)]
pub enum SkillError {
    #[error("unknown agent kind '{kind}' in '{spec}' (expected claude or codex)")]
    UnknownKind { spec: String, kind: String },
    #[error("no agent home found here or in {home}")]
    NothingDetected { home: String },
    #[error("{dir}: changed since contree installed it: {files}")]
    Changed { dir: String, files: String },
    #[error("{dir}: not installed by contree: {files}")]
    Foreign { dir: String, files: String },
    #[error("{dir}: no contree skill installed there")]
    NotInstalled { dir: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a skill list contree can read: {source}")]
    Registry {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl SkillError {
    pub fn io(path: &Path, source: std::io::Error) -> SkillError {
        SkillError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Whether `--force` would get past it.
    pub fn needs_force(&self) -> bool {
        matches!(
            self,
            SkillError::Changed { .. } | SkillError::Foreign { .. }
        )
    }
}

/// Which agent reads the skill (decides nothing but the label, once a directory is known).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agent {
    Claude,
    Codex,
    /// A directory given as is.
    Path,
}

impl Agent {
    pub fn name(self) -> &'static str {
        match self {
            Agent::Claude => "claude",
            Agent::Codex => "codex",
            Agent::Path => "path",
        }
    }

    /// Where this agent looks for skills under a home or project directory.
    fn skills_dir(self) -> &'static str {
        match self {
            Agent::Claude => ".claude/skills",
            Agent::Codex | Agent::Path => ".agents/skills",
        }
    }

    const KINDS: [Agent; 2] = [Agent::Claude, Agent::Codex];
}

/// One place to install into: the skill directory itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub agent: Agent,
    pub dir: PathBuf,
}

impl Target {
    fn under(agent: Agent, root: &Path) -> Target {
        Target {
            agent,
            dir: root.join(agent.skills_dir()).join(NAME),
        }
    }
}

/// What `~` and a relative path mean.
#[derive(Debug, Clone)]
pub struct Places {
    pub home: PathBuf,
    pub cwd: PathBuf,
}

impl Places {
    /// `path` with `~` for the home directory, for messages.
    pub fn show(&self, path: &Path) -> String {
        match path.strip_prefix(&self.home) {
            Ok(rest) if rest.as_os_str().is_empty() => "~".into(),
            Ok(rest) => format!("~/{}", rest.display()),
            Err(_) => path.display().to_string(),
        }
    }

    fn path(&self, text: &str) -> PathBuf {
        let path = match text.strip_prefix('~') {
            Some("") => self.home.clone(),
            Some(rest) if rest.starts_with('/') => self.home.join(&rest[1..]),
            _ => PathBuf::from(text),
        };
        let path = self.cwd.join(path);
        // Lexically: `.` and `..` out, so that one directory has one name in the list.
        let mut clean = PathBuf::new();
        for part in path.components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    clean.pop();
                }
                other => clean.push(other),
            }
        }
        clean
    }
}

/// The targets a SPEC names:
/// - `claude:~`, `codex:~`: the user's global skills (`~/.claude/skills`, `~/.agents/skills`);
/// - `claude:`, `codex:`: the same under the current directory (the project's);
/// - `KIND:DIR`: the same under the project DIR;
/// - a directory with a `SKILL.md`, one whose parent is called `skills`, or one that does
///   not exist yet: the skill directory itself;
/// - any other directory: a project root, every kind under it.
pub fn parse_spec(spec: &str, places: &Places) -> Result<Vec<Target>, SkillError> {
    if let Some((kind, rest)) = spec.split_once(':') {
        let agent = match kind {
            "claude" => Agent::Claude,
            "codex" | "agents" => Agent::Codex,
            _ => {
                return Err(SkillError::UnknownKind {
                    spec: spec.into(),
                    kind: kind.into(),
                })
            }
        };
        let root = places.path(if rest.is_empty() { "." } else { rest });
        return Ok(vec![Target::under(agent, &root)]);
    }
    let path = places.path(spec);
    let is_skill_dir = !path.is_dir()
        || path.join("SKILL.md").exists()
        || path.parent().and_then(Path::file_name) == Some("skills".as_ref());
    if is_skill_dir {
        let text = path.to_string_lossy();
        let agent = if text.contains("/.claude/") {
            Agent::Claude
        } else if text.contains("/.agents/") || text.contains("/.codex/") {
            Agent::Codex
        } else {
            Agent::Path
        };
        return Ok(vec![Target { agent, dir: path }]);
    }
    Ok(Agent::KINDS
        .iter()
        .map(|&agent| Target::under(agent, &path))
        .collect())
}

/// The agent homes found: a project's (`.claude/` or `.agents/`/`.codex/` in the current
/// directory) and the user's (`~/.claude/`, `~/.agents/` or `~/.codex/`).
pub fn detect(places: &Places) -> Vec<Target> {
    let mut found = Vec::new();
    for root in [&places.cwd, &places.home] {
        if root.join(".claude").is_dir() {
            found.push(Target::under(Agent::Claude, root));
        }
        if root.join(".agents").is_dir() || root.join(".codex").is_dir() {
            found.push(Target::under(Agent::Codex, root));
        }
    }
    found.dedup();
    found
}

/// The version of the embedded files: the package's, and a digest of their contents (so a
/// change of text without a release still counts as newer).
pub fn version() -> String {
    let mut all = Vec::new();
    for (name, text) in FILES {
        all.extend_from_slice(name.as_bytes());
        all.push(0);
        all.extend_from_slice(text.as_bytes());
    }
    format!(
        "{}+{}",
        env!("CARGO_PKG_VERSION"),
        &crate::sha256::of(&all)[..8]
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    version: String,
    /// Relative path → sha256 of what was written.
    files: BTreeMap<String, String>,
}

/// Where an install stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Missing,
    /// Installed by contree: its version, and the files changed since.
    Installed {
        version: String,
        changed: Vec<String>,
    },
    /// Skill files there that contree did not write (no manifest).
    Foreign(Vec<String>),
}

pub fn state(dir: &Path) -> Result<State, SkillError> {
    let manifest_path = dir.join(MANIFEST);
    match std::fs::read(&manifest_path) {
        Ok(bytes) => {
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|source| SkillError::Registry {
                    path: manifest_path.display().to_string(),
                    source,
                })?;
            let mut changed = Vec::new();
            for (name, digest) in &manifest.files {
                match std::fs::read(dir.join(name)) {
                    Ok(bytes) if &crate::sha256::of(&bytes) == digest => {}
                    Ok(_) => changed.push(name.clone()),
                    // A file the user deleted is theirs to have deleted: not a change to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SkillError::io(&dir.join(name), e)),
                }
            }
            Ok(State::Installed {
                version: manifest.version,
                changed,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let present: Vec<String> = FILES
                .iter()
                .map(|(name, _)| name.to_string())
                .filter(|name| dir.join(name).exists())
                .collect();
            Ok(if present.is_empty() {
                State::Missing
            } else {
                State::Foreign(present)
            })
        }
        Err(e) => Err(SkillError::io(&manifest_path, e)),
    }
}

/// What `install` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    New,
    Upgraded,
    /// The same version was there, unchanged: nothing written.
    Current,
}

/// Writes the skill into `target` (an upgrade when an older one is there). Files changed
/// since the last install, or not contree's, stop it unless `force`.
pub fn install(target: &Target, force: bool) -> Result<Installed, SkillError> {
    let dir = &target.dir;
    let shown = dir.display().to_string();
    let before = state(dir)?;
    match &before {
        State::Installed { changed, .. } if !changed.is_empty() && !force => {
            return Err(SkillError::Changed {
                dir: shown,
                files: changed.join(", "),
            });
        }
        // Up to date (a file deleted by hand is written again below).
        State::Installed { version, changed }
            if changed.is_empty()
                && *version == self::version()
                && !force
                && FILES.iter().all(|(name, _)| dir.join(name).exists()) =>
        {
            return Ok(Installed::Current);
        }
        State::Foreign(files) if !force => {
            return Err(SkillError::Foreign {
                dir: shown,
                files: files.join(", "),
            });
        }
        _ => {}
    }
    let mut files = BTreeMap::new();
    for (name, text) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SkillError::io(parent, e))?;
        }
        write(&path, text.as_bytes())?;
        files.insert(name.to_string(), crate::sha256::of(text.as_bytes()));
    }
    let manifest = Manifest {
        version: version(),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    write(&dir.join(MANIFEST), &json)?;
    Ok(match before {
        State::Missing => Installed::New,
        _ => Installed::Upgraded,
    })
}

/// Removes what an install wrote (and the directories it leaves empty). Changed files stop
/// it unless `force`; files contree did not write are never removed.
pub fn remove(target: &Target, force: bool) -> Result<(), SkillError> {
    let dir = &target.dir;
    let shown = dir.display().to_string();
    match state(dir)? {
        State::Missing => return Err(SkillError::NotInstalled { dir: shown }),
        State::Foreign(files) => {
            return Err(SkillError::Foreign {
                dir: shown,
                files: files.join(", "),
            })
        }
        State::Installed { changed, .. } if !changed.is_empty() && !force => {
            return Err(SkillError::Changed {
                dir: shown,
                files: changed.join(", "),
            })
        }
        State::Installed { .. } => {}
    }
    for name in FILES.iter().map(|(name, _)| *name).chain([MANIFEST]) {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SkillError::io(&path, e)),
        }
    }
    // Only directories left empty go: anything the user added stays, with its parents.
    for sub in ["reference", ""] {
        let _ = std::fs::remove_dir(dir.join(sub));
    }
    Ok(())
}

/// Through a temporary file and a rename: a reader never sees half a skill file.
fn write(path: &Path, bytes: &[u8]) -> Result<(), SkillError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    crate::paths::write_atomic(path, Path::new(&tmp), 0o644, bytes)
        .map_err(|e| SkillError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(dir: &Path) -> Places {
        let home = dir.join("home");
        let cwd = dir.join("proj");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&cwd).unwrap();
        Places { home, cwd }
    }

    #[test]
    fn the_skill_file_starts_with_its_front_matter() {
        let (_, skill) = FILES[0];
        let front = skill.strip_prefix("---\n").unwrap();
        let (front, _) = front.split_once("\n---\n").unwrap();
        assert!(front.contains(&format!("name: {NAME}\n")));
        assert!(front.contains("\ndescription: "));
    }

    #[test]
    fn specs_name_skill_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let p = places(tmp.path());
        let one = |spec| parse_spec(spec, &p).unwrap();
        assert_eq!(
            one("claude:~"),
            [Target {
                agent: Agent::Claude,
                dir: p.home.join(".claude/skills/contree")
            }]
        );
        assert_eq!(one("codex:")[0].dir, p.cwd.join(".agents/skills/contree"));
        assert_eq!(
            one("codex:../x")[0].dir,
            tmp.path().join("x/.agents/skills/contree")
        );
        // An existing directory without a skill in it is a project root: every kind.
        let both = one(".");
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].dir, p.cwd.join(".claude/skills/contree"));
        // A path that does not exist yet is the skill directory itself.
        assert_eq!(
            one("~/my-skills/contree"),
            [Target {
                agent: Agent::Path,
                dir: p.home.join("my-skills/contree")
            }]
        );
        assert!(matches!(
            parse_spec("cursor:~", &p),
            Err(SkillError::UnknownKind { .. })
        ));
        assert_eq!(p.show(&p.home.join(".claude")), "~/.claude");
    }

    #[test]
    fn detection_finds_project_and_user_homes() {
        let tmp = tempfile::tempdir().unwrap();
        let p = places(tmp.path());
        assert!(detect(&p).is_empty());
        std::fs::create_dir(p.home.join(".claude")).unwrap();
        std::fs::create_dir(p.cwd.join(".codex")).unwrap();
        let found = detect(&p);
        assert_eq!(
            found,
            [
                Target::under(Agent::Codex, &p.cwd),
                Target::under(Agent::Claude, &p.home)
            ]
        );
    }

    #[test]
    fn changed_files_are_kept_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        let target = Target {
            agent: Agent::Path,
            dir: tmp.path().join("s"),
        };
        assert_eq!(install(&target, false).unwrap(), Installed::New);
        assert_eq!(install(&target, false).unwrap(), Installed::Current);
        std::fs::write(target.dir.join("SKILL.md"), "mine").unwrap();
        let err = install(&target, false).unwrap_err();
        assert!(err.needs_force(), "{err}");
        assert!(remove(&target, false).unwrap_err().needs_force());
        assert_eq!(install(&target, true).unwrap(), Installed::Upgraded);
        remove(&target, false).unwrap();
        assert!(!target.dir.exists());
        // Files someone else put there are not ours to replace.
        std::fs::create_dir_all(&target.dir).unwrap();
        std::fs::write(target.dir.join("SKILL.md"), "theirs").unwrap();
        assert!(matches!(
            install(&target, false),
            Err(SkillError::Foreign { .. })
        ));
    }
}
