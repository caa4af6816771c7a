//! Parsing of `session rollback` targets (run-behaviour.md §3.6). Pure: no store access.

use super::SessionError;

/// Where a rollback goes, relative to the active branch's tip or absolutely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `-N`: N steps along parents.
    Back(u64),
    /// `+N`: N steps, each to the newest (highest id) child.
    Forward(u64),
    /// Bare `N`: the history entry with id N, which must belong to the session.
    Absolute(i64),
}

impl std::str::FromStr for Target {
    type Err = SessionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let invalid = || SessionError::InvalidTarget(s.to_string());
        // Only ASCII digits after the optional sign: `u64::from_str` would also take a second
        // `+`, which is not a navigation target.
        let digits = |d: &str| -> Result<u64, SessionError> {
            if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            d.parse::<u64>().map_err(|_| invalid())
        };
        let target = if let Some(d) = t.strip_prefix('-') {
            Target::Back(digits(d)?)
        } else if let Some(d) = t.strip_prefix('+') {
            Target::Forward(digits(d)?)
        } else {
            Target::Absolute(i64::try_from(digits(t)?).map_err(|_| invalid())?)
        };
        match target {
            Target::Back(0) | Target::Forward(0) | Target::Absolute(0) => {
                Err(SessionError::ZeroTarget)
            }
            t => Ok(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_by_sign() {
        assert_eq!("-3".parse::<Target>().unwrap(), Target::Back(3));
        assert_eq!("+2".parse::<Target>().unwrap(), Target::Forward(2));
        assert_eq!("17".parse::<Target>().unwrap(), Target::Absolute(17));
        assert_eq!(" -1 ".parse::<Target>().unwrap(), Target::Back(1));
    }

    #[test]
    fn zero_and_garbage_are_rejected_with_the_documented_texts() {
        for z in ["0", "+0", "-0", "000"] {
            assert_eq!(
                z.parse::<Target>().unwrap_err().to_string(),
                "Navigation target must not be 0"
            );
        }
        for bad in [
            "",
            "-",
            "+",
            "abc",
            "+-1",
            "--1",
            "1.5",
            "99999999999999999999",
        ] {
            assert_eq!(
                bad.parse::<Target>().unwrap_err().to_string(),
                format!("invalid rollback target '{bad}'")
            );
        }
    }
}
