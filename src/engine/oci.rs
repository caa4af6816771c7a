//! Importing container images: an OCI image layout (a directory, or a tar of one) and a
//! `docker save` archive. Each image layer becomes one store layer, applied in order: the
//! OCI whiteout `.wh.NAME` becomes an overlay whiteout (a 0/0 character device) and the
//! opaque marker `.wh..wh..opq` the `trusted.overlay.opaque` xattr on its directory, so the
//! engine's overlay mounts and the inspection code read the layers as they are
//! (image-spec `layer.md`, "Whiteouts").
//!
//! Only local files are read; `registry` downloads into a layout and then calls this.

use super::layers;
use super::store::{ImageRow, Store};
use crate::progress::{self, Counted, Show};
use crate::wire;
use indicatif::ProgressBar;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// Why an import (a root filesystem, a tar, an OCI layout or a registry pull) failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot import '{path}': {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot import '{0}': not a directory, tar or tar.gz archive")]
    Unsupported(String),
    /// Writing into the store failed: nothing of the import is kept.
    #[error("cannot import '{path}': writing the store failed: {source}; nothing was imported")]
    StoreWrite {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Store(#[from] super::store::StoreError),
}

impl ImportError {
    /// An I/O error while importing `path`: a full disk is the store's, whatever the step.
    pub fn io(path: &str, source: io::Error) -> ImportError {
        if super::store::disk_full(&source) {
            ImportError::StoreWrite {
                path: path.to_string(),
                source,
            }
        } else {
            ImportError::Io {
                path: path.to_string(),
                source,
            }
        }
    }
}

/// The layers (bottom first, as paths of tar or tar.gz files) and the environment of an
/// image found in an unpacked OCI layout or `docker save` archive.
struct Found {
    layers: Vec<PathBuf>,
    env: BTreeMap<String, String>,
}

/// True when `dir` looks like an OCI layout or an unpacked `docker save` archive.
pub fn is_image_dir(dir: &Path) -> bool {
    dir.join("oci-layout").is_file() || dir.join("manifest.json").is_file()
}

/// True when the tar at `source` holds an OCI layout or a `docker save` archive (judged by
/// its top-level `oci-layout` / `manifest.json` entries).
pub fn is_image_archive(source: &Path) -> bool {
    let Ok(reader) = open_maybe_gzip(source, None) else {
        return false;
    };
    let mut archive = tar::Archive::new(reader);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    for entry in entries.flatten() {
        let Ok(path) = entry.path() else { continue };
        let clean = normal(&path);
        if clean == Path::new("oci-layout") || clean == Path::new("manifest.json") {
            return true;
        }
    }
    false
}

/// Imports the image in the OCI layout / `docker save` directory `dir`, with a progress bar
/// over the layers' bytes when they are big (see `progress`).
pub fn import_dir(
    store: &Store,
    dir: &Path,
    tag: Option<&str>,
    show: Show,
) -> Result<String, ImportError> {
    let shown = dir.display().to_string();
    let found = find(dir).map_err(|e| ImportError::Io {
        path: shown.clone(),
        source: e,
    })?;
    let bytes = match show {
        Show::Never => 0,
        Show::OnTerminal => found
            .layers
            .iter()
            .map(|l| fs::metadata(l).map_or(0, |m| m.len()))
            .sum(),
    };
    let bar = progress::bar(show, bytes, || {
        format!("importing {} layer(s)", found.layers.len())
    });
    let mut new_layers: Vec<(String, u64)> = Vec::new();
    // Held until the image's row is committed: `gc` leaves a claimed layer dir alone.
    let mut claims: Vec<super::claim::Claim> = Vec::new();
    let cleanup = |made: Vec<super::claim::Claim>| {
        for claim in made {
            let _ = claim.remove();
        }
    };
    for layer in &found.layers {
        let id = format!("import-{}", uuid::Uuid::new_v4());
        let mut staging = match store.layout().staging_dir(&id) {
            Ok(claim) => claim,
            Err(e) => {
                cleanup(claims);
                return Err(ImportError::StoreWrite {
                    path: shown,
                    source: e,
                });
            }
        };
        if let Err(e) = apply_layer_counted(layer, staging.path(), bar.clone()) {
            let _ = staging.remove();
            cleanup(claims);
            return Err(ImportError::io(
                &format!("{shown}: layer {}", layer.display()),
                e,
            ));
        }
        let size = layers::layer_size(staging.path());
        if let Err(e) = staging.rename(&store.layer_dir(&id)) {
            let _ = staging.remove();
            cleanup(claims);
            return Err(ImportError::StoreWrite {
                path: shown,
                source: e,
            });
        }
        claims.push(staging);
        new_layers.push((id, size));
        crate::failpoint::hit("import:layer-moved");
    }
    if new_layers.is_empty() {
        return Err(ImportError::Unsupported(format!(
            "{shown} (an image without layers)"
        )));
    }
    let image = ImageRow {
        uuid: uuid::Uuid::new_v4().to_string(),
        created_at: wire::now_ts(),
        parent: None,
        operation: None,
        // The store keeps the top layer first.
        layers: new_layers.iter().rev().map(|(id, _)| id.clone()).collect(),
        env: found.env,
        tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
    };
    if let Err(e) = store.insert_image(&image, &new_layers) {
        cleanup(claims);
        return Err(e.into());
    }
    Ok(image.uuid)
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_json(path: &Path) -> io::Result<Value> {
    let text = fs::read(path)?;
    serde_json::from_slice(&text).map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// `sha256:abc…` → `<dir>/blobs/sha256/abc…`.
fn blob(dir: &Path, digest: &str) -> io::Result<PathBuf> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| bad(format!("bad digest '{digest}'")))?;
    if alg.contains(['/', '.']) || hex.contains(['/', '.']) || hex.is_empty() {
        return Err(bad(format!("bad digest '{digest}'")));
    }
    Ok(dir.join("blobs").join(alg).join(hex))
}

/// A path inside the image directory named by the archive itself; never outside it.
fn inside(dir: &Path, rel: &str) -> io::Result<PathBuf> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(format!("path '{rel}' leaves the image")));
    }
    Ok(dir.join(p))
}

fn env_of(config: &Value) -> BTreeMap<String, String> {
    config
        .pointer("/config/Env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn find(dir: &Path) -> io::Result<Found> {
    // `docker save` (also written by newer Docker beside an OCI layout): the simplest form.
    let manifest = dir.join("manifest.json");
    if manifest.is_file() {
        let m = read_json(&manifest)?;
        let first = m
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| bad("manifest.json lists no image"))?;
        let layers = first
            .get("Layers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("manifest.json: no Layers"))?
            .iter()
            .map(|l| {
                l.as_str()
                    .ok_or_else(|| bad("manifest.json: a layer is not a path"))
                    .and_then(|l| inside(dir, l))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let env = match first.get("Config").and_then(Value::as_str) {
            Some(c) => env_of(&read_json(&inside(dir, c)?)?),
            None => BTreeMap::new(),
        };
        return Ok(Found { layers, env });
    }
    let index = read_json(&dir.join("index.json"))?;
    let mut desc = pick(&index)?;
    // An index may point at further indexes (multi-platform images).
    for _ in 0..8 {
        let doc = read_json(&blob(dir, digest_of(&desc)?)?)?;
        if doc.get("manifests").is_some() {
            desc = pick(&doc)?;
            continue;
        }
        let layers = doc
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("image manifest has no layers"))?
            .iter()
            .map(|l| blob(dir, digest_of(l)?))
            .collect::<io::Result<Vec<_>>>()?;
        let env = match doc.get("config") {
            Some(c) => env_of(&read_json(&blob(dir, digest_of(c)?)?)?),
            None => BTreeMap::new(),
        };
        return Ok(Found { layers, env });
    }
    Err(bad("image index nests too deeply"))
}

fn digest_of(desc: &Value) -> io::Result<&str> {
    desc.get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("descriptor without a digest"))
}

/// The manifest of an index to use: the one for this machine's platform, else the first.
pub fn pick_manifest(index: &Value) -> io::Result<Value> {
    pick(index)
}

fn pick(index: &Value) -> io::Result<Value> {
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("index.json lists no manifest"))?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let ours = manifests.iter().find(|m| {
        m.pointer("/platform/os").and_then(Value::as_str) == Some("linux")
            && m.pointer("/platform/architecture").and_then(Value::as_str) == Some(arch)
    });
    Ok(ours.unwrap_or(&manifests[0]).clone())
}

/// `path`'s content, gunzipped if it is gzip; the bytes read from the file count on `bar`.
fn open_maybe_gzip(path: &Path, bar: Option<ProgressBar>) -> io::Result<Box<dyn Read>> {
    let mut magic = [0u8; 2];
    let n = fs::File::open(path)?.read(&mut magic)?;
    let file = io::BufReader::new(Counted::new(fs::File::open(path)?, bar));
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

/// `./a/b` → `a/b`.
fn normal(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// `apply_layer`, counting the bytes read from the layer file on `bar`.
fn apply_layer_counted(layer: &Path, dest: &Path, bar: Option<ProgressBar>) -> io::Result<()> {
    let mut archive = tar::Archive::new(open_maybe_gzip(layer, bar)?);
    archive.set_preserve_permissions(true);
    // Rootless with only the user's own id, no other owner can be set: all are root's.
    archive.set_preserve_ownerships(!crate::rootless::one_id());
    archive.set_overwrite(true);
    // Directory modes are applied last by `unpack`, not by `unpack_in`: keep them for the end
    // so a read-only directory does not stop its own contents from being written.
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = normal(&entry.path()?);
        if path.as_os_str().is_empty()
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = dest.join(path.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            fs::create_dir_all(&parent)?;
            layers::set_opaque(&parent)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            fs::create_dir_all(&parent)?;
            let target = parent.join(hidden);
            if let Ok(meta) = fs::symlink_metadata(&target) {
                if meta.is_dir() {
                    fs::remove_dir_all(&target)?;
                } else {
                    fs::remove_file(&target)?;
                }
            }
            layers::make_whiteout(&target)?;
            continue;
        }
        if entry.header().entry_type().is_dir() {
            let mode = entry.header().mode().unwrap_or(0o755);
            dirs.push((dest.join(&path), mode));
        }
        entry.unpack_in(dest)?;
    }
    use std::os::unix::fs::PermissionsExt;
    for (dir, mode) in dirs.into_iter().rev() {
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode & 0o7777));
    }
    Ok(())
}

/// Unpacks an image archive (a tar of an OCI layout or a `docker save` output) into `dir`,
/// with a progress bar when it is big.
pub fn unpack_archive(source: &Path, dir: &Path, show: Show) -> io::Result<()> {
    let bytes = match show {
        Show::Never => 0,
        Show::OnTerminal => fs::metadata(source)?.len(),
    };
    let bar = progress::bar(show, bytes, || format!("unpacking {}", source.display()));
    let mut archive = tar::Archive::new(open_maybe_gzip(source, bar)?);
    archive.unpack(dir)
}
