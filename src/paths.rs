//! Where contree keeps its data and configuration.
//!
//! `$CONTREE_HOME` holds everything when set (as the official client does for its config);
//! otherwise data goes to the XDG data dir and configuration to the XDG config dir.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Paths {
    /// The local engine's store and the session databases.
    pub data: PathBuf,
    /// `auth.ini`, hook files, the config file.
    pub config: PathBuf,
}

impl Paths {
    pub fn from_env() -> Paths {
        if let Some(home) = non_empty("CONTREE_HOME") {
            let home = absolute(PathBuf::from(home));
            return Paths {
                data: home.clone(),
                config: home,
            };
        }
        let user_home = non_empty("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/root".into());
        let data = non_empty("XDG_DATA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| user_home.join(".local/share"))
            .join("contree");
        let config = non_empty("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| user_home.join(".config"))
            .join("contree");
        Paths {
            data: absolute(data),
            config: absolute(config),
        }
    }

    pub fn store(&self) -> PathBuf {
        self.data.join("store")
    }

    pub fn session_db(&self, profile: &str) -> PathBuf {
        if let Some(path) = non_empty("CONTREE_SESSION_DB") {
            return PathBuf::from(path);
        }
        self.data.join("sessions").join(format!("{profile}.db"))
    }
}

fn non_empty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}
