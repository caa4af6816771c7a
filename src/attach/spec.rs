//! The `--file` spec grammar: `HOST[:/inst][:uUID][:gGID][:mMODE]`, fields in any order.
//!
//! Parsing never touches the disk: missing fields are filled in later from `stat(HOST)` by
//! `expand`. The only outside lookups are the local passwd/group database for named owners
//! and, for `SCHEME:REST` specs, the schemes plugins register (see `resolve`).

use std::fmt;

use super::resolve::{looks_like_scheme, NoSchemes, Schemes};
use super::{mode_string, AttachError, MAX_ID};

/// One parsed `--file` spec: `HOST[:/inst][:uUID][:gGID][:mMODE]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSpec {
    /// The host path as typed (relative stays relative).
    pub host: String,
    /// Explicit instance path, if given.
    pub instance: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits incl. setuid/setgid/sticky.
    pub mode: Option<u32>,
}

/// Parses a spec.
///
/// Named users/groups are resolved against the local passwd/group db; an unknown name yields
/// id 0 and pushes `Unknown user 'x', using uid 0` / `Unknown group 'x', using gid 0` into
/// `warnings`.
pub fn parse_spec(spec: &str, warnings: &mut Vec<String>) -> Result<FileSpec, AttachError> {
    parse_spec_with(spec, &NoSchemes, warnings)
}

/// Like [`parse_spec`], knowing the schemes plugins register: when the text before the
/// first `:` is one (`git:REV:PATH:/app`), the host is `SCHEME:REST`, REST being as many
/// `:`-separated pieces as the scheme takes. Anything else, a one-letter drive included,
/// is a host path; `schemes` is only asked when the text could be a scheme.
pub fn parse_spec_with(
    spec: &str,
    schemes: &dyn Schemes,
    warnings: &mut Vec<String>,
) -> Result<FileSpec, AttachError> {
    // Every `:` splits, so a host path containing `:` cannot be expressed (as upstream on POSIX).
    let mut pieces = spec.split(':');
    let first = pieces.next().unwrap_or_default();
    let mut host = first.to_string();
    if spec.len() > first.len() && looks_like_scheme(first) {
        let scheme = schemes
            .scheme(first)
            .map_err(|source| AttachError::Scheme {
                spec: spec.to_string(),
                source: Box::new(source),
            })?;
        if let Some(scheme) = scheme {
            for _ in 0..scheme.parts {
                match pieces.next() {
                    Some(piece) if !piece.is_empty() => {
                        host.push(':');
                        host.push_str(piece);
                    }
                    _ => {
                        return Err(AttachError::SchemeUsage {
                            spec: spec.to_string(),
                            usage: scheme.usage,
                        })
                    }
                }
            }
        }
    }
    if host.is_empty() {
        return Err(AttachError::MissingHost {
            spec: spec.to_string(),
        });
    }
    let mut parsed = FileSpec {
        host,
        instance: None,
        uid: None,
        gid: None,
        mode: None,
    };
    for field in pieces {
        // Fields are told apart by their first byte, which is ASCII for all valid ones.
        if field.starts_with('/') {
            if parsed.instance.is_some() {
                return Err(AttachError::DuplicateInstance {
                    spec: spec.to_string(),
                });
            }
            parsed.instance = Some(field.to_string());
        } else if let Some(user) = field.strip_prefix('u') {
            parsed.uid = Some(parse_owner(spec, user, Owner::User, warnings)?);
        } else if let Some(group) = field.strip_prefix('g') {
            parsed.gid = Some(parse_owner(spec, group, Owner::Group, warnings)?);
        } else if let Some(mode) = field.strip_prefix('m') {
            parsed.mode = Some(parse_mode(spec, mode)?);
        } else {
            return Err(AttachError::UnknownField {
                spec: spec.to_string(),
                field: field.to_string(),
            });
        }
    }
    Ok(parsed)
}

/// Renders the spec back to text: host, then `/inst`, `uN`, `gN`, `mOOOO` for the present fields.
impl fmt::Display for FileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        if let Some(instance) = &self.instance {
            write!(f, ":{instance}")?;
        }
        if let Some(uid) = self.uid {
            write!(f, ":u{uid}")?;
        }
        if let Some(gid) = self.gid {
            write!(f, ":g{gid}")?;
        }
        if let Some(mode) = self.mode {
            write!(f, ":m{}", mode_string(mode))?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Owner {
    User,
    Group,
}

/// A decimal id, else a local name; an unknown name becomes 0 with a warning (upstream
/// does the same). A number no file can be owned by (`-1`, `99999999999`) is an error: it
/// is a typo, not a name.
fn parse_owner(
    spec: &str,
    text: &str,
    kind: Owner,
    warnings: &mut Vec<String>,
) -> Result<u32, AttachError> {
    let field = match kind {
        Owner::User => "uid",
        Owner::Group => "gid",
    };
    if text.is_empty() {
        return Err(AttachError::EmptyField {
            spec: spec.to_string(),
            field,
        });
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(id) if id <= MAX_ID => Ok(id),
            _ if digits.bytes().all(|b| b == b'0') => Ok(0),
            _ => Err(AttachError::IdOutOfRange {
                spec: spec.to_string(),
                field,
                value: text.to_string(),
            }),
        };
    }
    // nix wraps getpwnam_r/getgrnam_r (thread-safe, grows its buffer on ERANGE). A lookup
    // error is treated like an unknown name: the spec is still usable, and the user is told.
    let found = match kind {
        Owner::User => nix::unistd::User::from_name(text)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw()),
        Owner::Group => nix::unistd::Group::from_name(text)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw()),
    };
    Ok(found.unwrap_or_else(|| {
        warnings.push(match kind {
            Owner::User => format!("Unknown user '{text}', using uid 0"),
            Owner::Group => format!("Unknown group '{text}', using gid 0"),
        });
        0
    }))
}

/// Octal permission bits, at most 07777. Upstream turns anything unparsable into 0000
/// silently, which attaches a file nobody can read: here it is an error.
fn parse_mode(spec: &str, text: &str) -> Result<u32, AttachError> {
    // Python's int(x, 8) also accepts an `0o` prefix; keep that so copied specs still work.
    let digits = text
        .strip_prefix("0o")
        .or_else(|| text.strip_prefix("0O"))
        .unwrap_or(text);
    if text.is_empty() {
        return Err(AttachError::EmptyField {
            spec: spec.to_string(),
            field: "mode",
        });
    }
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(AttachError::ModeNotOctal {
            spec: spec.to_string(),
            mode: text.to_string(),
        });
    }
    // Leading zeros aside, more than four digits is always above 07777 (and may not fit).
    let significant = digits.trim_start_matches('0');
    match u32::from_str_radix(significant, 8) {
        Ok(mode) if significant.len() <= 4 && mode <= 0o7777 => Ok(mode),
        _ if significant.is_empty() => Ok(0),
        _ => Err(AttachError::ModeTooLarge {
            spec: spec.to_string(),
            mode: text.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<FileSpec, AttachError> {
        parse_spec(spec, &mut Vec::new())
    }

    fn err(spec: &str) -> String {
        match parse(spec) {
            Ok(parsed) => panic!("{spec} parsed as {parsed:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn host_only_leaves_every_field_for_stat() {
        let spec = parse("proj/a.txt").unwrap();
        assert_eq!(
            spec,
            FileSpec {
                host: "proj/a.txt".into(),
                instance: None,
                uid: None,
                gid: None,
                mode: None,
            }
        );
    }

    #[test]
    fn empty_host_is_rejected() {
        assert_eq!(err(""), "invalid file spec '': host_path is required");
        assert_eq!(err(":/x"), "invalid file spec ':/x': host_path is required");
    }

    #[test]
    fn unknown_fields_are_rejected_with_the_field_named() {
        assert_eq!(
            err("/a:badfield"),
            "invalid file spec '/a:badfield': unknown field 'badfield' (expected /path, u<uid>, g<gid>, or m<mode>)"
        );
        assert_eq!(
            err("/a:"),
            "invalid file spec '/a:': unknown field '' (expected /path, u<uid>, g<gid>, or m<mode>)"
        );
    }

    #[test]
    fn relative_instance_path_is_an_unknown_field() {
        assert_eq!(
            err("/a:app/x"),
            "invalid file spec '/a:app/x': unknown field 'app/x' (expected /path, u<uid>, g<gid>, or m<mode>)"
        );
    }

    #[test]
    fn windows_style_drive_splits_into_an_unknown_field() {
        assert_eq!(
            err("C:\\x:/app"),
            "invalid file spec 'C:\\x:/app': unknown field '\\x' (expected /path, u<uid>, g<gid>, or m<mode>)"
        );
    }

    #[test]
    fn second_instance_path_is_a_duplicate() {
        assert_eq!(
            err("/a:/b:/c"),
            "invalid file spec '/a:/b:/c': duplicate instance path"
        );
    }

    #[test]
    fn fields_come_in_any_order_without_touching_disk() {
        let expected = FileSpec {
            host: "/x".into(),
            instance: Some("/b".into()),
            uid: Some(0),
            gid: Some(0),
            mode: Some(0o644),
        };
        for spec in [
            "/x:/b:u0:g0:m0644",
            "/x:/b:m0644:g0:u0",
            "/x:/b:g0:m0644:u0",
        ] {
            assert_eq!(parse(spec).unwrap(), expected, "{spec}");
        }
        // A nonexistent host parses fine: the disk is only consulted by expand.
        let spec = parse("/nonexistent/x:/x:u1000:g100:m755").unwrap();
        assert_eq!(spec.uid, Some(1000));
        assert_eq!(spec.gid, Some(100));
        assert_eq!(spec.mode, Some(0o755));
    }

    #[test]
    fn named_root_resolves_to_zero_without_warning() {
        let mut warnings = Vec::new();
        let spec = parse_spec("/x:uroot:groot", &mut warnings).unwrap();
        assert_eq!((spec.uid, spec.gid), (Some(0), Some(0)));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn unknown_names_warn_and_use_zero() {
        let mut warnings = Vec::new();
        let spec = parse_spec("/x:uno-such-user-zz9:gno-such-group-zz9", &mut warnings).unwrap();
        assert_eq!((spec.uid, spec.gid), (Some(0), Some(0)));
        assert_eq!(
            warnings,
            [
                "Unknown user 'no-such-user-zz9', using uid 0",
                "Unknown group 'no-such-group-zz9', using gid 0",
            ]
        );
    }

    #[test]
    fn a_mode_must_be_octal_permission_bits() {
        assert_eq!(
            err("/x:m99999"),
            "invalid file spec '/x:m99999': mode '99999' is not octal (like m0644 or m4755)"
        );
        assert_eq!(
            err("/x:mxyz"),
            "invalid file spec '/x:mxyz': mode 'xyz' is not octal (like m0644 or m4755)"
        );
        assert_eq!(
            err("/x:m0o"),
            "invalid file spec '/x:m0o': mode '0o' is not octal (like m0644 or m4755)"
        );
        assert_eq!(
            err("/x:m"),
            "invalid file spec '/x:m': the mode field is empty"
        );
        for big in [
            "7777777777777",
            "10000",
            "100644",
            "77777777777777777777777",
        ] {
            assert_eq!(
                err(&format!("/x:m{big}")),
                format!("invalid file spec '/x:m{big}': mode '{big}' is above 07777 (permission bits only, like m0644 or m4755)")
            );
        }
    }

    #[test]
    fn mode_keeps_special_bits() {
        assert_eq!(parse("/x:m4755").unwrap().mode, Some(0o4755));
        assert_eq!(parse("/x:m7777").unwrap().mode, Some(0o7777));
        assert_eq!(parse("/x:m0o644").unwrap().mode, Some(0o644));
        assert_eq!(parse("/x:m00000644").unwrap().mode, Some(0o644));
        assert_eq!(parse("/x:m0").unwrap().mode, Some(0));
        assert_eq!(parse("/x:m000").unwrap().mode, Some(0));
    }

    #[test]
    fn numeric_ids_must_fit_a_uid() {
        assert_eq!(
            err("/x:u-1"),
            "invalid file spec '/x:u-1': uid '-1' is out of range (0 to 4294967294)"
        );
        assert_eq!(
            err("/x:g4294967295"),
            "invalid file spec '/x:g4294967295': gid '4294967295' is out of range (0 to 4294967294)"
        );
        assert_eq!(
            err("/x:u99999999999999999999"),
            "invalid file spec '/x:u99999999999999999999': uid '99999999999999999999' is out of range (0 to 4294967294)"
        );
        assert_eq!(
            err("/x:u"),
            "invalid file spec '/x:u': the uid field is empty"
        );
        assert_eq!(
            err("/x:g"),
            "invalid file spec '/x:g': the gid field is empty"
        );
        let spec = parse("/x:u4294967294:g-0").unwrap();
        assert_eq!((spec.uid, spec.gid), (Some(4294967294), Some(0)));
    }

    #[test]
    fn later_owner_fields_override_earlier_ones() {
        let spec = parse("/x:u1:u2").unwrap();
        assert_eq!(spec.uid, Some(2));
    }

    #[test]
    fn display_renders_present_fields_in_canonical_order() {
        let spec = parse("proj:m755:g5:/app:u7").unwrap();
        assert_eq!(spec.to_string(), "proj:/app:u7:g5:m0755");
        assert_eq!(parse(&spec.to_string()).unwrap(), spec);
        assert_eq!(parse("a.txt").unwrap().to_string(), "a.txt");
    }
}
