//! Pulling an image from an OCI / Docker registry (distribution-spec v2) into the local
//! store: the manifest (through an index for this platform), the config and the layers are
//! downloaded into a temporary OCI image layout, checked against their digests, and
//! imported by `oci` like a layout on disk.
//!
//! Authentication follows the registry's `WWW-Authenticate` answer: `Basic` gets the
//! credentials, `Bearer realm=…,service=…,scope=…` gets a token from the realm (anonymous, or
//! with the credentials as basic auth), as Docker Hub and most registries do. Loopback
//! registries are spoken to over plain HTTP (as Docker does), everything else over HTTPS.

use super::import::ImportError;
use super::store::Store;
use crate::progress::{self, Show};
use crate::wire::reference::Reference;
use base64::Engine as _;
use indicatif::ProgressBar;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

/// The registry's v2 API for the repository: plain HTTP for loopback registries (as
/// Docker does), HTTPS for everything else.
fn base(r: &Reference) -> String {
    let host = if r.registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        &r.registry
    };
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let plain = matches!(name, "localhost" | "127.0.0.1" | "[::1]") || name.starts_with("127.");
    format!(
        "{}://{host}/v2/{}",
        if plain { "http" } else { "https" },
        r.repository
    )
}

/// Registry credentials for basic auth or the token realm (as `POST /images/import` takes
/// them too: either may be missing).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

struct Client {
    http: reqwest::blocking::Client,
    creds: Credentials,
    /// The `Authorization` header that worked last.
    auth: Option<String>,
    /// When the whole pull must be over: every request gets what is left as its timeout.
    deadline: Option<std::time::Instant>,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the pull ran out of time")
}

/// A header of `resp` that is text.
fn header<'a>(resp: &'a reqwest::blocking::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

impl Client {
    fn basic(&self) -> Option<String> {
        let user = self.creds.username.as_deref()?;
        let pass = self.creds.password.as_deref().unwrap_or("");
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))
    }

    /// GET with the registry's auth dance on a 401.
    fn get(&mut self, url: &str, accept: Option<&str>) -> io::Result<reqwest::blocking::Response> {
        for attempt in 0..2 {
            let mut req = self.http.get(url);
            if let Some(deadline) = self.deadline {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(timed_out());
                }
                // From connecting until the body is read: a stalled download ends too.
                req = req.timeout(left);
            }
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(auth) = &self.auth {
                req = req.header("Authorization", auth);
            }
            let resp = req.send().map_err(|e| err(format!("{url}: {e}")))?;
            let code = resp.status().as_u16();
            if code == 401 && attempt == 0 {
                let challenge = header(&resp, "www-authenticate").unwrap_or("");
                self.auth = Some(self.authenticate(challenge)?);
                continue;
            }
            if code >= 400 {
                let body = resp.text().unwrap_or_default();
                return Err(err(format!("{url}: HTTP {code}: {}", body.trim())));
            }
            return Ok(resp);
        }
        Err(err(format!("{url}: HTTP 401: authentication failed")))
    }

    fn authenticate(&self, challenge: &str) -> io::Result<String> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return self
                .basic()
                .ok_or_else(|| err("the registry wants a username and password (--username)"));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(err(format!(
                "unsupported registry authentication '{challenge}'"
            )));
        }
        let field = |name: &str| -> Option<String> {
            let at = params.find(&format!("{name}=\""))? + name.len() + 2;
            let end = params[at..].find('"')? + at;
            Some(params[at..end].to_string())
        };
        let realm = field("realm").ok_or_else(|| err("bearer challenge without a realm"))?;
        let mut req = self.http.get(&realm);
        for key in ["service", "scope"] {
            if let Some(v) = field(key) {
                req = req.query(&[(key, v)]);
            }
        }
        if let Some(b) = self.basic() {
            req = req.header("Authorization", b);
        }
        let text = req
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .map_err(|e| err(format!("token from {realm}: {e}")))?;
        let body: Value =
            serde_json::from_str(&text).map_err(|e| err(format!("token from {realm}: {e}")))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("token from {realm}: no token in the answer")))?;
        Ok(format!("Bearer {token}"))
    }

    /// Downloads a blob or manifest into `dest`, checking its sha256 digest.
    fn fetch(
        &mut self,
        url: &str,
        accept: Option<&str>,
        digest: &str,
        dest: &Path,
        bar: Option<&ProgressBar>,
    ) -> io::Result<()> {
        let resp = self.get(url, accept)?;
        let tmp = dest.with_extension("part");
        let mut out = fs::File::create(&tmp)?;
        let mut hasher = Sha256::new();
        let mut reader = resp;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            if let Some(bar) = bar {
                bar.inc(n as u64);
            }
        }
        let got = format!("sha256:{}", crate::sha256::hex(&hasher.finalize()));
        if digest.starts_with("sha256:") && got != digest {
            let _ = fs::remove_file(&tmp);
            return Err(err(format!(
                "{url}: digest mismatch (expected {digest}, got {got})"
            )));
        }
        fs::rename(&tmp, dest)
    }
}

fn digest_path(dir: &Path, digest: &str) -> io::Result<std::path::PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| err(format!("unsupported digest '{digest}'")))?;
    Ok(dir.join("blobs/sha256").join(hex))
}

/// What `download` got.
enum Fetched {
    /// The image, in the OCI layout, from the manifest with this digest.
    Layout(String),
    /// Nothing: `known` gave this image for the manifest.
    Known(String),
}

/// Downloads `reference` into the OCI layout `dir`, unless `known` has an image for the
/// digest of its manifest: then none of its blobs are fetched.
fn download(
    r: &Reference,
    creds: &Credentials,
    dir: &Path,
    known: &dyn Fn(&str) -> Option<String>,
    deadline: Option<std::time::Instant>,
    show: Show,
) -> io::Result<Fetched> {
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    let mut client = Client {
        http: reqwest::blocking::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .timeout(None)
            .build()
            .map_err(|e| err(format!("HTTP client: {e}")))?,
        creds: creds.clone(),
        auth: None,
        deadline,
    };
    let base = base(r);
    let mut want = r.reference.clone();
    for _ in 0..4 {
        let url = format!("{base}/manifests/{want}");
        let resp = client.get(&url, Some(MANIFEST_TYPES))?;
        let media = header(&resp, "content-type")
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        let mut bytes = Vec::new();
        let mut resp = resp;
        resp.read_to_end(&mut bytes)?;
        let digest = format!("sha256:{}", crate::sha256::of(&bytes));
        if want.starts_with("sha256:") && want != digest {
            return Err(err(format!("{url}: digest mismatch")));
        }
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("{url}: not a manifest: {e}")))?;
        fs::write(digest_path(dir, &digest)?, &bytes)?;
        if doc.get("manifests").is_some() {
            // An index: `oci::pick` chooses the same way on import, so pick here too.
            let index = doc.clone();
            let chosen = super::oci::pick_manifest(&index)?;
            want = chosen
                .get("digest")
                .and_then(Value::as_str)
                .ok_or_else(|| err("index entry without a digest"))?
                .to_string();
            continue;
        }
        if let Some(image) = known(&digest) {
            return Ok(Fetched::Known(image));
        }
        // The config and the layers, with the sizes their descriptors give.
        let mut blobs: Vec<(String, u64)> = Vec::new();
        let layers = doc.get("layers").and_then(Value::as_array);
        for desc in doc
            .get("config")
            .into_iter()
            .chain(layers.into_iter().flatten())
        {
            if let Some(d) = desc.get("digest").and_then(Value::as_str) {
                let size = desc.get("size").and_then(Value::as_u64).unwrap_or(0);
                blobs.push((d.to_string(), size));
            }
        }
        let total = blobs.iter().map(|(_, size)| size).sum();
        let bar = progress::bar(show, total, || {
            let at = if r.reference.starts_with("sha256:") {
                '@'
            } else {
                ':'
            };
            format!(
                "downloading {}/{}{at}{}",
                r.registry, r.repository, r.reference
            )
        });
        for (b, size) in blobs {
            let dest = digest_path(dir, &b)?;
            if !dest.exists() {
                client.fetch(&format!("{base}/blobs/{b}"), None, &b, &dest, bar.as_ref())?;
            } else if let Some(bar) = &bar {
                bar.inc(size);
            }
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": media, "digest": digest, "size": bytes.len()}]
        });
        fs::write(dir.join("index.json"), index.to_string())?;
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        return Ok(Fetched::Layout(digest));
    }
    Err(err("image indexes nest too deeply"))
}

/// A pulled image.
pub struct Pulled {
    pub image: String,
    /// An image pulled earlier from the same manifest, given back instead of a new one.
    pub reused: bool,
}

/// How to pull.
pub struct PullOptions<'a> {
    /// Tags the image.
    pub tag: Option<&'a str>,
    /// Whether an image pulled earlier from the same manifest may be given back.
    pub reuse: &'a dyn Fn(&str) -> bool,
    /// When to give up, downloads in flight included.
    pub deadline: Option<std::time::Instant>,
    /// Whether the download and the import may show progress bars.
    pub show: Show,
}

/// Pulls `reference` and imports it. If an image was pulled from the same manifest before
/// (the same content, whatever its name) and `reuse` accepts it, that image is given back
/// (and tagged) without downloading its layers. Past the deadline nothing is imported.
pub fn pull(
    store: &Store,
    reference: &str,
    creds: &Credentials,
    opts: &PullOptions<'_>,
) -> Result<Pulled, ImportError> {
    let (tag, reuse, deadline, show) = (opts.tag, opts.reuse, opts.deadline, opts.show);
    let r = Reference::parse(reference)
        .ok_or_else(|| ImportError::Unsupported(reference.to_string()))?;
    let staging = store
        .layout()
        .staging_dir(&format!("pull-{}", uuid::Uuid::new_v4()))
        .map_err(|source| ImportError::StoreWrite {
            path: reference.to_string(),
            source,
        })?;
    let dir = staging.path().to_path_buf();
    let known = |digest: &str| {
        let images = store.images_from_manifest(digest).ok()?;
        images.into_iter().find(|image| reuse(image))
    };
    let late = || deadline.is_some_and(|d| std::time::Instant::now() >= d);
    // Past the deadline, whatever failed (a request cut off mid-body says only "body
    // error") failed for want of time, and nothing more is imported.
    let result = download(&r, creds, &dir, &known, deadline, show)
        .and_then(|fetched| {
            if late() {
                Err(timed_out())
            } else {
                Ok(fetched)
            }
        })
        .map_err(|e| if late() { timed_out() } else { e })
        .map_err(|source| ImportError::io(reference, source))
        .and_then(|fetched| match fetched {
            Fetched::Known(image) => {
                if let Some(tag) = tag {
                    store.set_tag(&image, tag)?;
                }
                Ok(Pulled {
                    image,
                    reused: true,
                })
            }
            Fetched::Layout(digest) => {
                let image = super::oci::import_dir(store, &dir, tag, show)?;
                store.set_image_manifest(&image, &digest)?;
                Ok(Pulled {
                    image,
                    reused: false,
                })
            }
        });
    let _ = staging.remove();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_spoken_to_over_plain_http() {
        let p = |s| Reference::parse(s).unwrap();
        assert_eq!(
            base(&p("127.0.0.1:5000/bb/x:v1")),
            "http://127.0.0.1:5000/v2/bb/x"
        );
        assert_eq!(
            base(&p("docker://docker.io/library/alpine@sha256:abc")),
            "https://registry-1.docker.io/v2/library/alpine"
        );
        assert_eq!(base(&p("ghcr.io/o/r")), "https://ghcr.io/v2/o/r");
    }
}
