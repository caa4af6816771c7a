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
        Ok(limits::Limits::resolve(
            req.resources_limits.as_ref(),
            &config.defaults,
        ))
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
