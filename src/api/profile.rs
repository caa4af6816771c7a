//! Profiles: the official client's `auth.ini` layout (§6 of the behaviour notes).
//!
//! `[DEFAULT] profile = NAME` names the active profile; each `[profile:NAME]` holds `url`,
//! `token`, `type` (`iam`|`jwt`) and `project`. The choice is `-p` > `$CONTREE_PROFILE` >
//! `[DEFAULT] profile` > `default`. The file is written with mode 0600, atomically. A
//! token is never printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The URL IAM profiles use when they name none.
pub const IAM_URL: &str = "https://api.tokenfactory.nebius.com/sandboxes";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub url: String,
    pub token: String,
    pub kind: String,
    pub project: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("Profile '{0}' does not exist. Run `contree auth` first.")]
    Missing(String),
    #[error("No token configured for profile '{0}'. Run `contree auth` first.")]
    NoToken(String),
    #[error("No URL configured for profile '{0}'. Run `contree auth` first.")]
    NoUrl(String),
    #[error("profile '{name}': URL '{url}' must start with http:// or https://")]
    BadUrl { name: String, url: String },
    /// `auth.ini` is not valid INI.
    #[error("{path}: {source}")]
    File {
        path: String,
        source: config::ConfigError,
    },
    /// `auth.ini` cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// An INI file as sections of key → value. Read with the `config` crate; written back by
/// `render` (the crate does not write files).
#[derive(Debug, Clone, Default)]
pub struct Ini {
    pub sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Ini {
    /// Parses `text`. Keys are case-insensitive (as Python's configparser, which the
    /// official client uses, lowercases them); values outside any section go to `DEFAULT`.
    pub fn parse(text: &str) -> Result<Ini, config::ConfigError> {
        let parsed = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Ini))
            .build()
            .and_then(|c| c.try_deserialize::<BTreeMap<String, config::Value>>())?;
        let mut ini = Ini::default();
        for (name, value) in parsed {
            match value.clone().into_table() {
                Ok(table) => {
                    let section = if name.eq_ignore_ascii_case("default") {
                        "DEFAULT".to_string()
                    } else {
                        name
                    };
                    let keys = ini.sections.entry(section).or_default();
                    for (k, v) in table {
                        keys.insert(
                            k.to_ascii_lowercase(),
                            v.into_string().unwrap_or_default().trim().to_string(),
                        );
                    }
                }
                Err(_) => {
                    ini.sections.entry("DEFAULT".into()).or_default().insert(
                        name.to_ascii_lowercase(),
                        value.into_string().unwrap_or_default().trim().to_string(),
                    );
                }
            }
        }
        Ok(ini)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let order = self
            .sections
            .keys()
            .filter(|k| *k == "DEFAULT")
            .chain(self.sections.keys().filter(|k| *k != "DEFAULT"));
        for name in order {
            out.push_str(&format!("[{name}]\n"));
            for (k, v) in &self.sections[name] {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        out
    }

    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// `auth.ini` (or the `-c` path).
pub fn auth_path(config_dir: &Path, explicit: Option<&str>) -> PathBuf {
    explicit
        .map(PathBuf::from)
        .unwrap_or_else(|| config_dir.join("auth.ini"))
}

pub fn read(path: &Path) -> Result<Option<Ini>, ProfileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ini::parse(&text)
            .map(Some)
            .map_err(|source| ProfileError::File {
                path: path.display().to_string(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ProfileError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// What the command line says about the backend.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub profile: Option<String>,
    pub url: Option<String>,
    pub token: Option<String>,
    pub project: Option<String>,
}

/// The remote profile to use, or `None` for the local engine: no `auth.ini`, no profile
/// asked for and no `--url` means local.
pub fn select(ini: Option<&Ini>, sel: &Selection) -> Result<Option<Profile>, ProfileError> {
    let asked = sel.profile.clone();
    let name = asked
        .clone()
        .or_else(|| ini.and_then(|i| i.get("DEFAULT", "profile").map(str::to_string)))
        .unwrap_or_else(|| "default".to_string());
    let section = ini.and_then(|i| i.sections.get(&format!("profile:{name}")));
    let mut profile = match section {
        Some(s) => Profile {
            name: name.clone(),
            url: s.get("url").cloned().unwrap_or_default(),
            token: s.get("token").cloned().unwrap_or_default(),
            kind: s.get("type").cloned().unwrap_or_else(|| "jwt".into()),
            project: s.get("project").cloned().filter(|p| !p.is_empty()),
        },
        None if asked.is_some() => return Err(ProfileError::Missing(name)),
        None if sel.url.is_some() => Profile {
            name: name.clone(),
            kind: "jwt".into(),
            ..Profile::default()
        },
        None => return Ok(None),
    };
    if let Some(u) = &sel.url {
        profile.url = u.clone();
    }
    if let Some(t) = &sel.token {
        profile.token = t.clone();
    }
    if let Some(p) = &sel.project {
        profile.project = Some(p.clone());
    }
    if profile.url.is_empty() && profile.kind == "iam" {
        profile.url = IAM_URL.into();
    }
    if profile.token.is_empty() {
        return Err(ProfileError::NoToken(name));
    }
    if profile.url.is_empty() {
        return Err(ProfileError::NoUrl(name));
    }
    if !(profile.url.starts_with("http://") || profile.url.starts_with("https://")) {
        return Err(ProfileError::BadUrl {
            name,
            url: profile.url,
        });
    }
    Ok(Some(profile))
}

/// Saves `profile` into `auth.ini` (mode 0600, written to a temporary file and renamed),
/// making it the active one.
pub fn save(path: &Path, profile: &Profile) -> Result<(), ProfileError> {
    let mut ini = read(path)?.unwrap_or_default();
    ini.sections
        .entry("DEFAULT".into())
        .or_default()
        .insert("profile".into(), profile.name.clone());
    let section = ini
        .sections
        .entry(format!("profile:{}", profile.name))
        .or_default();
    section.insert("url".into(), profile.url.clone());
    section.insert("token".into(), profile.token.clone());
    section.insert("type".into(), profile.kind.clone());
    match &profile.project {
        Some(p) => section.insert("project".into(), p.clone()),
        None => section.remove("project"),
    };
    write(path, &ini)
}

/// Writes `ini` to `path` (mode 0600, through a temporary file and a rename).
pub fn write(path: &Path, ini: &Ini) -> Result<(), ProfileError> {
    let err = |source: std::io::Error| ProfileError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        crate::paths::create_private(dir).map_err(err)?;
    }
    let tmp = path.with_extension("ini.tmp");
    crate::paths::write_atomic(path, &tmp, 0o600, ini.render().as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "[DEFAULT]\nprofile = work\n\n[profile:work]\nurl = http://h:1\ntoken = T\ntype = jwt\n\n[profile:other]\nurl = https://o\ntoken = U\n";

    #[test]
    fn the_profile_comes_from_flag_then_default_section() {
        let ini = Ini::parse(INI).unwrap();
        let p = select(Some(&ini), &Selection::default()).unwrap().unwrap();
        assert_eq!((p.name.as_str(), p.url.as_str()), ("work", "http://h:1"));
        let sel = Selection {
            profile: Some("other".into()),
            ..Selection::default()
        };
        assert_eq!(select(Some(&ini), &sel).unwrap().unwrap().token, "U");
        let missing = Selection {
            profile: Some("nope".into()),
            ..Selection::default()
        };
        assert!(matches!(
            select(Some(&ini), &missing),
            Err(ProfileError::Missing(_))
        ));
    }

    #[test]
    fn no_file_and_no_flags_means_local() {
        assert!(select(None, &Selection::default()).unwrap().is_none());
        let url_only = Selection {
            url: Some("http://x".into()),
            token: Some("t".into()),
            ..Selection::default()
        };
        assert_eq!(select(None, &url_only).unwrap().unwrap().url, "http://x");
    }

    #[test]
    fn saving_keeps_other_profiles_and_is_private() {
        let (_dir, path) = crate::paths::temp_path("auth.ini");
        std::fs::write(&path, INI).unwrap();
        let p = Profile {
            name: "new".into(),
            url: "http://n".into(),
            token: "N".into(),
            kind: "jwt".into(),
            project: None,
        };
        save(&path, &p).unwrap();
        let ini = read(&path).unwrap().unwrap();
        assert_eq!(ini.get("DEFAULT", "profile"), Some("new"));
        assert_eq!(ini.get("profile:work", "token"), Some("T"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_official_clients_files_read_the_same() {
        // configparser style: `:` separators, comments, any key case, a profile named in
        // mixed case.
        let text = "; written by hand\n[DEFAULT]\nProfile: Work-1\n\n[profile:Work-1]\n# the endpoint\nURL = http://h:1\nToken: T\ntype = jwt\n";
        let ini = Ini::parse(text).unwrap();
        let p = select(Some(&ini), &Selection::default()).unwrap().unwrap();
        assert_eq!(
            (p.name.as_str(), p.url.as_str(), p.token.as_str()),
            ("Work-1", "http://h:1", "T")
        );
        assert!(Ini::parse("[broken\nx = 1\n").is_err());
    }
}
