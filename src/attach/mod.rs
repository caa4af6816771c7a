//! Attachments: turning `--file` specs into the files a run uploads, and hashing them.
//!
//! `spec` parses the `HOST[:/inst][:uUID][:gGID][:mMODE]` grammar without touching the disk,
//! `expand` stats hosts and walks directories into [`Attachment`]s, and `digest` computes
//! content hashes with a local cache so unchanged files are never read twice. `resolve`
//! routes each spec to its resolver: the built-in local one, or a plugin's for
//! `SCHEME:REST` specs.
//! Nothing here talks to a backend; uploading is the caller's job.

pub mod digest;
pub mod expand;
pub mod resolve;
pub mod spec;

pub use digest::{digest_files, sha256_file, DigestCache};
pub use expand::{expand, Attachment, Excludes, DEFAULT_EXCLUDES};
pub use resolve::{expand_with, NoSchemes, Resolver, Schemes};
pub use spec::{parse_spec, parse_spec_with, FileSpec};

use std::io;

/// Everything that can go wrong while resolving or hashing attachments.
///
/// The Display texts are the user-facing messages; the caller adds the `[ERROR]` prefix.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("invalid file spec '{spec}': host_path is required")]
    MissingHost { spec: String },

    #[error("invalid file spec '{spec}': duplicate instance path")]
    DuplicateInstance { spec: String },

    #[error(
        "invalid file spec '{spec}': unknown field '{field}' (expected /path, u<uid>, g<gid>, or m<mode>)"
    )]
    UnknownField { spec: String, field: String },

    /// `m` followed by something that is not octal digits.
    #[error("invalid file spec '{spec}': mode '{mode}' is not octal (like m0644 or m4755)")]
    ModeNotOctal { spec: String, mode: String },

    /// More than the permission bits: file-type bits (`m100644`) or a typo.
    #[error(
        "invalid file spec '{spec}': mode '{mode}' is above 07777 (permission bits only, like m0644 or m4755)"
    )]
    ModeTooLarge { spec: String, mode: String },

    /// A numeric uid/gid that no file can have: negative, or past `(uid_t)-1`, which
    /// chown(2) reads as "leave unchanged".
    #[error("invalid file spec '{spec}': {field} '{value}' is out of range (0 to {max})", max = MAX_ID)]
    IdOutOfRange {
        spec: String,
        field: &'static str,
        value: String,
    },

    /// `u`, `g` or `m` with nothing after it.
    #[error("invalid file spec '{spec}': the {field} field is empty")]
    EmptyField { spec: String, field: &'static str },

    /// A file's destination with no name in it: `/`, `/x/..`.
    #[error("invalid file spec '{spec}': '{instance}' is not a file path; give the file a name, like '{suggestion}'")]
    NotAFilePath {
        spec: String,
        instance: String,
        suggestion: String,
    },

    #[error("cannot stat host file '{host}': {source}")]
    Stat { host: String, source: io::Error },

    #[error("host path '{host}' is neither file nor directory")]
    NotFileOrDir { host: String },

    /// A walked file name cannot become an instance path, which is a JSON string.
    #[error("host path '{path}' is not valid UTF-8")]
    NonUtf8Path { path: String },

    #[error("invalid exclude pattern '{pattern}': {reason}")]
    BadExclude { pattern: String, reason: String },

    #[error("cannot read host file '{path}': {source}")]
    Read { path: String, source: io::Error },

    #[error("attachment cache error: cannot create directory '{dir}': {source}")]
    CacheDir { dir: String, source: io::Error },

    #[error("attachment cache error: {0}")]
    Cache(#[from] rusqlite::Error),

    /// A `SCHEME:REST` spec with too few REST pieces for its resolver.
    #[error("invalid file spec '{spec}': expected {usage}[:/inst][:uUID][:gGID][:mMODE]")]
    SchemeUsage { spec: String, usage: String },

    /// What a resolver found cannot be placed.
    #[error("cannot resolve file spec '{spec}': {reason}")]
    Place { spec: String, reason: PlaceError },

    /// The spec's scheme is claimed by two plugins.
    #[error("cannot resolve file spec '{spec}': {source}")]
    Scheme {
        spec: String,
        #[source]
        source: Box<crate::plugin::PluginError>,
    },

    #[error("cannot resolve file spec '{spec}': no plugin provides the '{scheme}:' scheme")]
    NoScheme { spec: String, scheme: String },

    /// A plugin resolver failed or answered something unusable (it names the plugin).
    #[error("cannot resolve file spec '{spec}': {source}")]
    Plugin {
        spec: String,
        #[source]
        source: Box<crate::plugin::resolver::ResolveError>,
    },

    #[error("attachment cache error: cannot write '{path}': {source}")]
    CacheWrite { path: String, source: io::Error },
}

/// Why the files a resolver answered cannot be placed (see `resolve::place`).
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("the resolver named no place for its files; add :/inst")]
    NoPlace,
    #[error("the resolver answered a lone file and other files")]
    LoneFile,
    #[error("the resolver answered a bad path '{0}'")]
    BadPath(String),
}

impl AttachError {
    /// Whether this is local I/O on the attachment cache (exit 74), not bad input.
    pub fn is_cache_io(&self) -> bool {
        matches!(
            self,
            AttachError::CacheDir { .. } | AttachError::Cache(_) | AttachError::CacheWrite { .. }
        )
    }
}

/// The largest uid/gid a spec may give: one less than `(uid_t)-1`.
pub const MAX_ID: u32 = u32::MAX - 1;

/// Renders permission bits as the wire wants them: octal, at least four digits (`0644`, `4755`).
///
/// File-type bits are masked off so a raw `st_mode` can be passed safely.
pub fn mode_string(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_string_pads_to_four_octal_digits() {
        assert_eq!(mode_string(0o644), "0644");
        assert_eq!(mode_string(0o755), "0755");
        assert_eq!(mode_string(0o4755), "4755");
        assert_eq!(mode_string(0), "0000");
        assert_eq!(mode_string(0o100644), "0644");
    }
}
