//! Image references as `images import REF` and the API's `registry.url` take them:
//! `docker://reg/path:tag`, `reg/path@sha256:…`, `user/img`, `img`, read by Docker Hub's
//! rules. The engine pulls them (`engine::registry`); the CLI tells them from paths.

/// Where an image lives in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as typed (`docker.io` for Docker Hub).
    pub registry: String,
    /// Repository path (`library/alpine`).
    pub repository: String,
    /// Tag or `sha256:…` digest.
    pub reference: String,
}

impl Reference {
    /// `docker://reg/path:tag`, `reg/path@sha256:…`, `user/img`, `img` (Docker Hub rules:
    /// a first segment with `.` or `:` or `localhost` is a registry).
    pub fn parse(text: &str) -> Option<Reference> {
        let rest = text.strip_prefix("docker://").unwrap_or(text);
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return None;
        }
        let (first, tail) = match rest.split_once('/') {
            Some((f, t)) if f.contains(['.', ':']) || f == "localhost" => (f.to_string(), t),
            _ => ("docker.io".to_string(), rest),
        };
        let (path, reference) = if let Some((p, d)) = tail.split_once('@') {
            (p.to_string(), d.to_string())
        } else {
            match tail.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') => (p.to_string(), t.to_string()),
                _ => (tail.to_string(), "latest".to_string()),
            }
        };
        if path.is_empty() || reference.is_empty() {
            return None;
        }
        let repository = if first == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        Some(Reference {
            registry: first,
            repository,
            reference,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_follow_docker_hub_rules() {
        let p = |s| Reference::parse(s).unwrap();
        assert_eq!(p("ubuntu").repository, "library/ubuntu");
        assert_eq!(p("ubuntu").reference, "latest");
        assert_eq!(p("ubuntu").registry, "docker.io");
        assert_eq!(p("user/img:1.2").repository, "user/img");
        assert_eq!(p("user/img:1.2").reference, "1.2");
        assert_eq!(p("127.0.0.1:5000/bb/x:v1").registry, "127.0.0.1:5000");
        assert_eq!(p("127.0.0.1:5000/bb/x:v1").repository, "bb/x");
        assert_eq!(
            p("docker://docker.io/library/alpine@sha256:abc").reference,
            "sha256:abc"
        );
        assert!(Reference::parse("").is_none());
        assert!(Reference::parse("a b").is_none());
    }
}
