//! `--since` / `--until` values (run-behaviour.md §4): `30m`, `2h`, `1d` (that long ago),
//! `+N`/`-N` with a unit `s m h d M y`, `HH:MM[:SS]` (today, UTC), a date or a datetime.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// The instant `text` names, relative to `now`.
pub fn parse(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "invalid time '{text}' (expected 30m, 2h, 1d, -N/+N with s m h d M y, HH:MM[:SS], a date or a datetime)"
        )
    };
    if let Some(offset) = relative(t) {
        return offset.map(|d| now + d).ok_or_else(bad);
    }
    for fmt in ["%H:%M:%S", "%H:%M"] {
        if let Ok(time) = NaiveTime::parse_from_str(t, fmt) {
            return Ok(now.date_naive().and_time(time).and_utc());
        }
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t.trim_end_matches('Z'), fmt) {
            return Ok(dt.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_time(NaiveTime::MIN).and_utc());
    }
    Err(bad())
}

/// `Some(None)` for a relative form with an out-of-range number; `None` when `t` is not a
/// relative form at all. A bare `30m` means 30 minutes ago.
fn relative(t: &str) -> Option<Option<Duration>> {
    let (sign, rest) = match t.as_bytes().first()? {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => (-1, t),
    };
    let unit = rest.chars().last()?;
    let digits = &rest[..rest.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = match digits.parse() {
        Ok(n) => n,
        Err(_) => return Some(None),
    };
    let seconds = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'M' => 30 * 86_400,
        'y' => 365 * 86_400,
        _ => return None,
    };
    Some(
        n.checked_mul(seconds)
            .and_then(|s| s.checked_mul(sign))
            .map(Duration::seconds),
    )
}

/// One end of a `--since`/`--until` range; `None` is open.
pub type Bound = Option<DateTime<Utc>>;

/// `--since` and `--until` as instants, both counted from the same moment.
pub fn bounds(since: Option<&str>, until: Option<&str>) -> Result<(Bound, Bound), String> {
    let now = Utc::now();
    let at = |v: Option<&str>| v.map(|t| parse(t, now)).transpose();
    Ok((at(since)?, at(until)?))
}

/// True when the RFC 3339 / `…Z` timestamp `ts` lies within `[since, until]`; a timestamp
/// that does not parse is kept (better shown than silently dropped).
pub fn within(ts: &str, since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> bool {
    let Ok(at) = DateTime::parse_from_rfc3339(ts).map(|d| d.with_timezone(&Utc)) else {
        return true;
    };
    since.is_none_or(|s| at >= s) && until.is_none_or(|u| at <= u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Asserts that each form reads as its instant (RFC 3339), counted from `now()`.
    fn assert_reads(cases: &[(&str, &str)]) {
        for (form, instant) in cases {
            assert_eq!(parse(form, now()).unwrap().to_rfc3339(), *instant, "{form}");
        }
    }

    #[test]
    fn relative_forms_count_back_from_now() {
        assert_reads(&[
            ("30m", "2026-05-01T11:30:00+00:00"),
            ("-2h", "2026-05-01T10:00:00+00:00"),
            ("+1d", "2026-05-02T12:00:00+00:00"),
            ("1M", "2026-04-01T12:00:00+00:00"),
        ]);
    }

    #[test]
    fn clock_times_dates_and_datetimes_are_utc() {
        assert_reads(&[
            ("09:15", "2026-05-01T09:15:00+00:00"),
            ("2026-04-30", "2026-04-30T00:00:00+00:00"),
            ("2026-04-30T08:00:00Z", "2026-04-30T08:00:00+00:00"),
            ("2026-04-30 08:00", "2026-04-30T08:00:00+00:00"),
        ]);
        assert!(parse("soon", now()).is_err());
        assert!(parse("5x", now()).is_err());
    }

    #[test]
    fn within_bounds_is_inclusive() {
        let since = parse("1h", now()).ok();
        assert!(within("2026-05-01T11:30:00Z", since, None));
        assert!(!within("2026-05-01T10:30:00Z", since, None));
        assert!(within("2026-05-01T10:30:00Z", None, since));
    }
}
