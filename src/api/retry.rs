//! When to try a request again: a bounded backoff on connection errors and 5xx, longer
//! patience with a busy server (429), `Retry-After` honoured, and no replay of a request
//! the server may have acted on.

use reqwest::StatusCode;

/// Delays between attempts; the length bounds the retries.
pub(super) const BACKOFF: [f64; 5] = [0.1, 0.2, 0.5, 1.0, 2.0];
/// Busy answers (429) waited out before they count as failures: a busy server is waited
/// for longer than a failing one, up to 10 minutes at the longest wait.
pub(super) const BUSY_WAITS: u32 = 600;

/// How one attempt went, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Tried {
    /// The server answered, with `Retry-After` seconds if it sent them.
    Answered {
        status: StatusCode,
        retry_after: Option<f64>,
    },
    /// No connection could be made (refused, unresolved, or timed out connecting).
    NoConnection,
    /// The request went out but the answer did not come in time.
    TimedOut,
    /// Anything else that broke the exchange.
    Broken,
}

/// What `send` does after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Next {
    /// Hand the answer back: success, or a status that trying again would not change.
    Return,
    /// Stop; this attempt's failure is the error.
    GiveUp,
    /// The server is busy: wait `secs` (saying so on the `first` wait) and try again.
    WaitBusy { secs: f64, first: bool },
    /// Try again after `secs`; at most `left` more tries, this one included.
    Retry { secs: f64, left: usize },
}

/// The retry policy of one request, kept apart from the network so it can be tested.
#[derive(Debug)]
pub(super) struct Retries {
    replayable: bool,
    attempt: usize,
    busy_waits: u32,
}

impl Retries {
    pub(super) fn new(replayable: bool) -> Retries {
        Retries {
            replayable,
            attempt: 0,
            busy_waits: 0,
        }
    }

    pub(super) fn next(&mut self, tried: Tried) -> Next {
        let wait = match tried {
            Tried::Answered {
                status,
                retry_after,
            } => {
                let retry = status == StatusCode::TOO_MANY_REQUESTS
                    || status.as_u16() == 425
                    || (self.replayable && (status.is_server_error() || status.as_u16() == 410));
                if !retry {
                    return Next::Return;
                }
                if status == StatusCode::TOO_MANY_REQUESTS && self.busy_waits < BUSY_WAITS {
                    self.busy_waits += 1;
                    return Next::WaitBusy {
                        secs: retry_after.unwrap_or(1.0).clamp(0.1, 30.0),
                        first: self.busy_waits == 1,
                    };
                }
                retry_after
            }
            Tried::TimedOut => return Next::GiveUp,
            Tried::NoConnection => None,
            Tried::Broken if self.replayable => None,
            Tried::Broken => return Next::GiveUp,
        };
        if self.attempt >= BACKOFF.len() {
            return Next::GiveUp;
        }
        let secs = wait.unwrap_or(BACKOFF[self.attempt]).min(30.0);
        let left = BACKOFF.len() - self.attempt;
        self.attempt += 1;
        Next::Retry { secs, left }
    }
}

/// A `Retry-After` of seconds; a value no sleep can take (negative, NaN, infinite) is
/// ignored rather than trusted. (The HTTP-date form is not used by the API.)
pub(super) fn retry_after_secs(value: &str) -> Option<f64> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
}
