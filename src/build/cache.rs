//! The build cache: each step's result image, keyed by the hash of the chain of steps up
//! to it. It lives in the profile's session store as one session per build context
//! (`build:<absolute context path>`): an entry per step, child of the previous step's,
//! and a branch `layer:<hash>` pointing at it. Being history, its images are what the
//! sessions reference, so `gc` keeps them; `contree session delete build:<path>` drops it.
//! It never decides whether a step may be reused: the executor asks, unless `--no-cache`.

use crate::session::{SessionError, SessionStore};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The key of a step: the previous step's key and what this one is (its text after
/// substitution, the parent image, the contents it copies), hashed.
pub fn chain(previous: &str, step: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(previous.as_bytes());
    h.update([0]);
    h.update(step.to_string().as_bytes());
    format!("{:x}", h.finalize())
}

pub struct Cache<'a> {
    sessions: &'a SessionStore,
    key: String,
}

/// A cached step: its entry in the build session and its image.
pub struct Hit {
    pub entry: i64,
    pub image: String,
}

impl<'a> Cache<'a> {
    pub fn new(sessions: &'a SessionStore, context: &Path) -> Cache<'a> {
        Cache {
            sessions,
            key: session_key(context),
        }
    }

    pub fn lookup(&self, hash: &str) -> Result<Option<Hit>, SessionError> {
        Ok(self
            .sessions
            .branch_entry(&self.key, &branch(hash))?
            .map(|e| Hit {
                entry: e.id,
                image: e.image,
            }))
    }

    /// Remembers `image` as the result of step `hash`; its entry's id (the next step's
    /// parent).
    pub fn record(
        &self,
        hash: &str,
        parent: Option<i64>,
        image: &str,
        title: &str,
    ) -> Result<i64, SessionError> {
        Ok(self
            .sessions
            .record_branch(&self.key, &branch(hash), parent, image, title)?
            .id)
    }
}

/// The build session of a context directory.
pub fn session_key(context: &Path) -> String {
    format!("build:{}", context.display())
}

fn branch(hash: &str) -> String {
    format!("layer:{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_key_depends_on_the_whole_chain() {
        let step = serde_json::json!({"run": "true"});
        let a = chain(&chain("", &serde_json::json!("FROM a")), &step);
        let b = chain(&chain("", &serde_json::json!("FROM b")), &step);
        assert_ne!(a, b);
        assert_eq!(a, chain(&chain("", &serde_json::json!("FROM a")), &step));
    }

    #[test]
    fn recorded_steps_are_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = SessionStore::open(&dir.path().join("s.db")).unwrap();
        let cache = Cache::new(&sessions, Path::new("/ctx"));
        assert!(cache.lookup("h1").unwrap().is_none());
        let first = cache.record("h1", None, "img-1", "FROM x").unwrap();
        let second = cache.record("h2", Some(first), "img-2", "RUN y").unwrap();
        let hit = cache.lookup("h2").unwrap().unwrap();
        assert_eq!((hit.entry, hit.image.as_str()), (second, "img-2"));
        // Another context has its own cache.
        assert!(Cache::new(&sessions, Path::new("/other"))
            .lookup("h2")
            .unwrap()
            .is_none());
    }
}
