//! Paths inside an image, as the user writes them: absolute, or relative to a working
//! directory (the session's `cd`, a Dockerfile's WORKDIR), with `.` and `..` folded the way
//! the image's own shell would (`..` at the root stays at the root).

/// `path` against `cwd`, absolute and normalised.
pub fn resolve(cwd: &str, path: &str) -> String {
    let base = if path.starts_with('/') { "/" } else { cwd };
    let mut parts: Vec<&str> = Vec::new();
    for part in base.split('/').chain(path.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn paths_resolve_against_the_working_directory() {
        assert_eq!(resolve("/", "app"), "/app");
        assert_eq!(resolve("/app", "src/../lib"), "/app/lib");
        assert_eq!(resolve("/app", "/opt/"), "/opt");
        assert_eq!(resolve("/", ".."), "/");
        assert_eq!(resolve("/a/b", "./c/."), "/a/b/c");
    }
}
