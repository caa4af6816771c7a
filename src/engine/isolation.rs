//! Whether sandboxes get a user namespace on this machine: probed once per kernel, the
//! verdict kept in `store/isolation` for the runs after.

use super::{idmap, LocalEngine};

/// Why sandboxes here get no user namespace.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(transparent)]
    Probe(#[from] idmap::ProbeError),
    /// The probe's directory could not be made.
    #[error(transparent)]
    Staging(std::io::Error),
    /// The verdict an earlier probe on this kernel wrote to `store/isolation`, as written.
    #[error("{0}")]
    Recorded(String),
}

impl LocalEngine {
    /// The id range sandboxes' user namespaces map to, or `None` where this machine cannot
    /// give sandboxes one (see `idmap`).
    pub(super) fn userns(&self) -> Option<idmap::Range> {
        // Rootless, the whole engine is in the user's own namespace already (`rootless`):
        // the sandbox shares it, as bubblewrap's does.
        if std::env::var_os("CONTREE_USERNS").is_some_and(|v| v == "0") || crate::rootless::active()
        {
            return None;
        }
        let range = idmap::Range::for_contree();
        self.isolation(range).ok().map(|_| range)
    }

    /// Whether this machine gives sandboxes a user namespace (see `idmap::probe`): tried
    /// once per kernel and remembered in `store/isolation`; the first time it cannot, says
    /// so on stderr. The error is the reason.
    pub fn isolation(&self, range: idmap::Range) -> Result<(), IsolationError> {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = self.store.root.join("isolation");
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if lines.next() == Some(kernel.as_str()) {
                return match lines.next() {
                    Some("userns") => Ok(()),
                    other => Err(IsolationError::Recorded(
                        other.unwrap_or("unknown").to_string(),
                    )),
                };
            }
        }
        let result = self
            .store
            .layout()
            .staging_dir(&format!("probe-{}", uuid::Uuid::new_v4().simple()))
            .map_err(IsolationError::Staging)
            .and_then(|dir| {
                let probed = idmap::probe(&self.store.root, dir.path(), range);
                let _ = dir.remove();
                Ok(probed?)
            });
        let verdict = match &result {
            Ok(()) => "userns".to_string(),
            Err(e) => e.to_string(),
        };
        let tmp = self
            .store
            .root
            // Per call: a server's threads may probe at once.
            .join(format!("isolation.{}", uuid::Uuid::new_v4().simple()));
        if std::fs::write(&tmp, format!("{kernel}\n{verdict}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
        if let Err(e) = &result {
            crate::warn!(
                "sandboxes run without a user namespace on this machine ({e}): root inside them is root outside; see `contree doctor`"
            );
        }
        result
    }
}
