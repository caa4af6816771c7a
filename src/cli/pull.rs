//! `images import REF` for a registry reference: pull, import, the new image's record.

use crate::backend::Pull;
use crate::context::Context;
use crate::engine::registry::Credentials;
use crate::error::CommandResult;
use crate::format::Record;

/// True when `text` reads as a registry reference rather than a local path.
pub fn is_reference(text: &str) -> bool {
    // A missing `rootfs.tar` is a typo'd path, not an image on Docker Hub.
    let archive = [".tar", ".tar.gz", ".tgz", ".gz"]
        .iter()
        .any(|ext| text.ends_with(ext));
    text.starts_with("docker://")
        || (!archive
            && !text.starts_with(['/', '.', '~'])
            && crate::wire::reference::Reference::parse(text).is_some())
}

/// The default tag (run-behaviour.md §5): the reference minus `docker://`, minus a dotted
/// (or ported) registry host, minus `library/`.
pub fn default_tag(reference: &str) -> String {
    let rest = reference.strip_prefix("docker://").unwrap_or(reference);
    let rest = match rest.split_once('/') {
        Some((first, tail)) if first.contains(['.', ':']) || first == "localhost" => tail,
        _ => rest,
    };
    let rest = rest.strip_prefix("library/").unwrap_or(rest);
    if rest.contains(':') || rest.contains('@') {
        rest.to_string()
    } else {
        format!("{rest}:latest")
    }
}

/// Pulls `reference` and imports it; the new image's record.
pub fn pull(
    ctx: &Context,
    reference: &str,
    flags: &super::images::Import,
) -> CommandResult<Record> {
    let tag = flags.tag.clone().unwrap_or_else(|| default_tag(reference));
    crate::info!("Pulling {reference}");
    let uuid = ctx.backend.pull_image(&Pull {
        reference,
        credentials: Credentials {
            username: flags.username.clone(),
            password: flags.password.clone(),
        },
        tag: Some(&tag),
        timeout: flags.timeout,
    })?;
    crate::info!("Imported {reference} as image {uuid} (tag {tag})");
    let mut rec = Record::new();
    rec.insert("uuid".into(), uuid.into());
    rec.insert("tag".into(), tag.into());
    rec.insert("source".into(), reference.into());
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tags_drop_the_registry_and_library() {
        assert_eq!(default_tag("ubuntu"), "ubuntu:latest");
        assert_eq!(
            default_tag("docker://docker.io/library/ubuntu:22.04"),
            "ubuntu:22.04"
        );
        assert_eq!(default_tag("127.0.0.1:5000/bb/x:v1"), "bb/x:v1");
        assert_eq!(default_tag("user/img"), "user/img:latest");
        assert!(is_reference("alpine:3"));
        assert!(!is_reference("./rootfs.tar"));
        assert!(!is_reference("/abs/dir"));
        assert!(!is_reference("rootfs.tar.gz"));
    }
}
