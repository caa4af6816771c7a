//! Checking a spawn request before anything is started, and gathering what its supervisor
//! needs (the image row, the attachments' blobs, the limits): a request refused here
//! leaves nothing behind.

use super::{limits, network, store, LocalEngine};
use crate::backend::BackendError;
use crate::wire::SpawnRequest;

/// What `LocalEngine::validate` gathers: the image, the blobs (file uuid → sha256) and how
/// many bytes the attachments take.
pub(super) type Validated = (
    store::ImageRow,
    std::collections::BTreeMap<String, String>,
    u64,
);

impl LocalEngine {
    /// The limits a run of `req` gets.
    pub(super) fn run_limits(&self, req: &SpawnRequest) -> Result<limits::Limits, BackendError> {
        let config = self.limits_config()?;
        let mut limits = limits::Limits::resolve(req.resources_limits.as_ref(), &config.defaults);
        if crate::rootless::active() {
            rootless_limits(req, &mut limits)?;
        }
        Ok(limits)
    }

    /// Checks the request and gathers what the supervisor needs: the image and the blobs;
    /// also how many bytes the attachments take.
    pub(super) fn validate(&self, req: &SpawnRequest) -> Result<Validated, BackendError> {
        let Some(image) = self.store.image(&req.image)? else {
            return Err(BackendError::NotFound(
                format!("image {} not found", req.image).into(),
            ));
        };
        let mut blobs = std::collections::BTreeMap::new();
        let mut attached = 0;
        if let Some(cwd) = &req.cwd {
            if !cwd.is_empty() && !cwd.starts_with('/') {
                return Err(BackendError::Invalid(
                    format!("cwd '{cwd}' must be an absolute path").into(),
                ));
            }
        }
        if req.hostname.is_empty() || req.hostname.len() > 64 || req.hostname.contains('/') {
            return Err(BackendError::Invalid(
                format!(
                    "hostname '{}' is not valid (1 to 64 characters, no '/')",
                    req.hostname
                )
                .into(),
            ));
        }
        if req.shell && req.command.is_empty() {
            return Err(BackendError::Invalid("shell command is empty".into()));
        }
        // Never a silent fallback to the host's network: no stack, no networked run.
        if req.network_enabled() {
            network::find()?;
        }
        for (path, file) in req.files.iter().flatten() {
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(BackendError::Invalid(
                    format!("file path '{path}' must be absolute and must not contain '..'").into(),
                ));
            }
            match self.store.blob_by_uuid(&file.uuid)? {
                Some((sha, size)) => {
                    blobs.insert(file.uuid.clone(), sha);
                    attached += size;
                }
                None => {
                    return Err(BackendError::NotFound(
                        format!("file {} (for {path}) not found", file.uuid).into(),
                    ))
                }
            }
            if file.permissions().is_none() {
                return Err(BackendError::Invalid(
                    format!("file mode '{}' for {path} is not octal", file.mode).into(),
                ));
            }
        }
        if let Some(stdin) = &req.stdin {
            stdin.bytes().map_err(|e| {
                BackendError::Invalid(format!("stdin is not valid base64: {e}").into())
            })?;
        }
        if let Some(asked) = &req.resources_limits {
            limits::validate(asked)
                .map_err(|e| BackendError::Invalid(format!("resources_limits: {e}").into()))?;
        }
        Ok((image, blobs, attached))
    }
}

/// Rootless, a memory, pids or CPU limit needs a cgroup delegated to the user with that
/// controller (`cgroup::Host::delegated`): one the request names without it is refused,
/// never silently dropped, and a default without it is not applied (it would only be
/// reported as unenforced on every run), as bubblewrap applies none. The writable
/// layer's limit stays.
fn rootless_limits(req: &SpawnRequest, limits: &mut limits::Limits) -> Result<(), BackendError> {
    let host = super::cgroup::Host::usable();
    let asked = req.resources_limits.as_ref();
    let wants = [
        (
            "memory",
            "memory",
            asked.and_then(|r| r.max_memory_bytes).unwrap_or(0) != 0,
        ),
        (
            "pids",
            "pids",
            asked.and_then(|r| r.max_pids).unwrap_or(0) != 0,
        ),
        (
            "cpus",
            "cpu",
            asked.and_then(|r| r.max_cpus).unwrap_or(0.0) != 0.0,
        ),
    ];
    let named: Vec<&str> = wants
        .iter()
        .filter(|(_, controller, on)| *on && !host.carries(controller))
        .map(|(name, _, _)| *name)
        .collect();
    if !named.is_empty() {
        return Err(BackendError::NeedsRoot(format!(
            "a {} limit needs a cgroup, and contree run as an ordinary user has none here (no cgroup delegated to this user carries that controller: see `contree doctor`)",
            named.join(", ")
        )));
    }
    if !host.carries("memory") {
        limits.memory = None;
    }
    if !host.carries("pids") {
        limits.pids = None;
    }
    if !host.carries("cpu") {
        limits.cpus = None;
    }
    Ok(())
}
