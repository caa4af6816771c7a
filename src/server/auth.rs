//! Bearer-token authentication: each token names a namespace.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time against every
//! known digest (no early exit, no length leak). Neither a token nor its digest is ever
//! logged or echoed; a missing or wrong token gets 401 and nothing else.

use super::{ServeError, Shared};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Who is asking: the namespace and a stable, non-secret id of the token.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub name: String,
    pub token_id: String,
}

#[derive(Clone)]
pub struct Tokens {
    entries: Vec<([u8; 32], Namespace)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} entries)", self.entries.len())
    }
}

/// Why the tokens could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("line {0}: expected `TOKEN NAMESPACE`")]
    Line(usize),
    #[error(
        "line {line}: namespace '{namespace}' may hold only letters, digits, '-', '_' and '.'"
    )]
    Namespace { line: usize, namespace: String },
    #[error("no tokens")]
    Empty,
    /// The config file, in `config`'s words.
    #[error("{0}")]
    Config(crate::config::ConfigError),
    #[error(transparent)]
    Stat(std::io::Error),
    #[error("it holds serve tokens but others may read it (mode {mode:o}); run `chmod 600 {}`", path.display())]
    Readable { mode: u32, path: PathBuf },
}

/// Parses `TOKEN NAMESPACE` lines (`#` starts a comment line; blank lines are skipped).
pub fn parse_tokens(text: &str) -> Result<Tokens, TokensError> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(token), Some(ns), None) = (words.next(), words.next(), words.next()) else {
            return Err(TokensError::Line(n + 1));
        };
        if !ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(TokensError::Namespace {
                line: n + 1,
                namespace: ns.to_string(),
            });
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let token_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &digest).to_string();
        entries.push((
            digest,
            Namespace {
                name: ns.to_string(),
                token_id,
            },
        ));
    }
    if entries.is_empty() {
        return Err(TokensError::Empty);
    }
    Ok(Tokens { entries })
}

impl Tokens {
    /// The namespace of `token`, comparing against every entry in constant time.
    pub fn check(&self, token: &str) -> Option<&Namespace> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (known, ns) in &self.entries {
            let diff = known
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            // black_box keeps the optimiser from turning the fold into an early exit.
            if std::hint::black_box(diff) == 0 {
                found = Some(ns);
            }
        }
        found
    }
}

/// `<data>/serve.tokens`, created (mode 0600) with one random token for namespace
/// `default` when missing; the user reads the token from the file, never from a log.
/// Tokens from the config file's `[[serve.tokens]]` entries (`token = "..."`, `namespace =
/// "..."`), if it has any. A file that holds tokens must be private to its owner.
pub fn config_tokens(file: &Path) -> Result<Option<Tokens>, TokensError> {
    let config = crate::config::Config::load(file).map_err(TokensError::Config)?;
    let Some(entries) = config.serve.tokens else {
        return Ok(None);
    };
    let lines: String = entries
        .map_err(TokensError::Config)?
        .iter()
        .map(|t| format!("{} {}\n", t.token, t.namespace))
        .collect();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(file)
            .map_err(TokensError::Stat)?
            .permissions(),
    );
    if mode & 0o077 != 0 {
        return Err(TokensError::Readable {
            mode: mode & 0o777,
            path: file.to_path_buf(),
        });
    }
    parse_tokens(&lines).map(Some)
}

pub fn default_tokens_file(data: &Path) -> Result<PathBuf, ServeError> {
    let path = data.join("serve.tokens");
    if path.exists() {
        return Ok(path);
    }
    crate::paths::create_private(data)?;
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let text = format!("# TOKEN NAMESPACE (one pair per line)\n{token} default\n");
    crate::paths::write_atomic(
        &path,
        &data.join(".serve.tokens.tmp"),
        0o600,
        text.as_bytes(),
    )?;
    eprintln!(
        "contree serve: created {} with a token for namespace 'default'",
        path.display()
    );
    Ok(path)
}

pub async fn require_token(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match token.and_then(|t| state.tokens.check(t)) {
        Some(ns) => {
            req.extensions_mut().insert(ns.clone());
            next.run(req).await
        }
        None => {
            let mut resp = super::ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token",
            )
            .into_response();
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_namespaces_and_wrong_ones_do_not() {
        let t = parse_tokens("# c\nsecret-a alice\n\nsecret-b bob\n").unwrap();
        assert_eq!(t.check("secret-a").unwrap().name, "alice");
        assert_eq!(t.check("secret-b").unwrap().name, "bob");
        assert!(t.check("secret-").is_none());
        assert!(t.check("").is_none());
        assert!(format!("{t:?}").contains("2 entries"));
        assert!(parse_tokens("only-token\n").is_err());
        assert!(parse_tokens("t bad/ns\n").is_err());
    }
}
