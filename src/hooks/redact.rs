//! The native redactor behind `contree.redact{...}`: an on-output handler whose work runs in
//! Rust, so redacting a gigabyte of output costs a memchr pass, not a Lua call per byte.
//!
//! Patterns are hand-written scanners (no regex engine): each knows how to tell, at a
//! candidate position, whether a secret starts there, does not, or cannot be decided until
//! more bytes arrive. The undecided tail of a chunk is held back (a few dozen bytes at most)
//! and scanned again with the next chunk, so a secret split across chunks is still found;
//! the tail is flushed when the stream ends. It must never hold more than that tail.

use std::borrow::Cow;

/// What replaces a secret.
pub const MASK: &[u8] = b"[REDACTED]";

/// Token characters after `Bearer` (RFC 6750 `b64token`, without the trailing `=` padding).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

/// A bearer token shorter than this is left alone ("bearer of bad news").
pub const BEARER_MIN_TOKEN: usize = 8;
/// At most this many spaces or tabs between `Bearer` and the token.
const BEARER_MAX_GAP: usize = 16;
/// AWS access key ids: a four-byte prefix and sixteen more upper-case letters or digits.
const AWS_KEY_LEN: usize = 20;
const AWS_PREFIXES: &[&[u8]] = &[b"AKIA", b"ASIA", b"ABIA", b"ACCA"];

/// The names `contree.redact` accepts, with what they match (for errors and docs).
pub const BUILTIN_PATTERNS: &[(&str, &str)] = &[
    (
        "aws",
        "AWS access key ids: AKIA, ASIA, ABIA or ACCA, then 16 of [A-Z0-9]",
    ),
    (
        "bearer",
        "`Bearer <token>` (any case, 1-16 spaces or tabs, a token of 8+ characters of [A-Za-z0-9-._~+/] then any `=`)",
    ),
];

/// What `contree.redact` was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedactSpec {
    pub aws: bool,
    pub bearer: bool,
    /// Exact byte strings (e.g. a token read with `contree.env`); never empty.
    pub literals: Vec<Vec<u8>>,
}

impl RedactSpec {
    /// Adds a built-in pattern by name; `false` when the name is unknown.
    pub fn add_builtin(&mut self, name: &str) -> bool {
        match name {
            "aws" => self.aws = true,
            "bearer" => self.bearer = true,
            _ => return false,
        }
        true
    }
}

enum Step {
    /// No secret starts here.
    No,
    /// A secret of `len` bytes starts here; write `mask` instead. `open`: it runs to the end
    /// of the data and may go on in the next chunk (a bearer token).
    Match {
        len: usize,
        mask: Vec<u8>,
        open: bool,
    },
    /// The data ends before it can be decided.
    More,
}

#[derive(Default)]
struct StreamState {
    /// Undecided bytes from the previous chunk.
    pending: Vec<u8>,
    /// Inside a bearer token that started in an earlier chunk: drop token bytes.
    in_token: bool,
}

/// One registered redactor with its per-stream state (index 0 stdout, 1 stderr).
pub struct Redactor {
    spec: RedactSpec,
    /// Bytes a secret can start with.
    starts: Vec<u8>,
    start_table: [bool; 256],
    streams: [StreamState; 2],
}

impl Redactor {
    pub fn new(spec: RedactSpec) -> Redactor {
        let mut starts = Vec::new();
        if spec.aws {
            starts.push(b'A');
        }
        if spec.bearer {
            starts.extend_from_slice(b"bB");
        }
        for lit in &spec.literals {
            starts.push(lit[0]);
        }
        starts.sort_unstable();
        starts.dedup();
        let mut start_table = [false; 256];
        for &b in &starts {
            start_table[b as usize] = true;
        }
        Redactor {
            spec,
            starts,
            start_table,
            streams: Default::default(),
        }
    }

    fn next_candidate(&self, data: &[u8], from: usize) -> Option<usize> {
        let hay = &data[from..];
        let found = match *self.starts.as_slice() {
            [] => None,
            [a] => memchr::memchr(a, hay),
            [a, b] => memchr::memchr2(a, b, hay),
            [a, b, c] => memchr::memchr3(a, b, c, hay),
            _ => hay.iter().position(|&b| self.start_table[b as usize]),
        };
        found.map(|i| i + from)
    }

    /// Redacts one chunk of `stream`. Returns the bytes to pass on, which may be shorter than
    /// the input (a held-back tail) or borrowed unchanged when nothing was found.
    pub fn process<'a>(&mut self, stream: usize, input: &'a [u8]) -> Cow<'a, [u8]> {
        let state = &mut self.streams[stream];
        if state.pending.is_empty() && !state.in_token {
            return self.scan(stream, Cow::Borrowed(input), false);
        }
        let mut data = std::mem::take(&mut state.pending);
        data.extend_from_slice(input);
        self.scan(stream, Cow::Owned(data), false)
    }

    /// The held-back tail of `stream`, decided now that nothing more will come.
    pub fn flush(&mut self, stream: usize) -> Vec<u8> {
        let state = &mut self.streams[stream];
        state.in_token = false;
        let data = std::mem::take(&mut state.pending);
        if data.is_empty() {
            return data;
        }
        self.scan(stream, Cow::Owned(data), true).into_owned()
    }

    fn scan<'a>(&mut self, stream: usize, data: Cow<'a, [u8]>, at_end: bool) -> Cow<'a, [u8]> {
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0; // data[..copied] is accounted for in `out`
        let mut pos = 0;
        if self.streams[stream].in_token {
            let skip = data
                .iter()
                .position(|&b| !is_token_byte(b) && b != b'=')
                .unwrap_or(data.len());
            if skip == data.len() {
                return Cow::Owned(Vec::new());
            }
            self.streams[stream].in_token = false;
            out = Some(Vec::with_capacity(data.len()));
            copied = skip;
            pos = skip;
        }
        while let Some(i) = self.next_candidate(&data, pos) {
            match self.try_at(&data, i, at_end) {
                Step::No => pos = i + 1,
                Step::Match { len, mask, open } => {
                    let buf = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
                    buf.extend_from_slice(&data[copied..i]);
                    buf.extend_from_slice(&mask);
                    copied = i + len;
                    pos = copied;
                    if open {
                        self.streams[stream].in_token = true;
                        break;
                    }
                }
                Step::More => {
                    let buf = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
                    buf.extend_from_slice(&data[copied..i]);
                    self.streams[stream].pending = data[i..].to_vec();
                    return Cow::Owned(std::mem::take(buf));
                }
            }
        }
        match out {
            None => data,
            Some(mut buf) => {
                buf.extend_from_slice(&data[copied..]);
                Cow::Owned(buf)
            }
        }
    }

    fn try_at(&self, data: &[u8], i: usize, at_end: bool) -> Step {
        let rest = &data[i..];
        let mut undecided = false;
        if self.spec.aws && rest[0] == b'A' {
            match aws_key(rest, at_end) {
                Step::No => {}
                Step::More => undecided = true,
                m => return m,
            }
        }
        if self.spec.bearer && (rest[0] | 0x20) == b'b' {
            match bearer(rest, at_end) {
                Step::No => {}
                Step::More => undecided = true,
                m => return m,
            }
        }
        for lit in &self.spec.literals {
            if rest.len() >= lit.len() {
                if rest.starts_with(lit) {
                    return Step::Match {
                        len: lit.len(),
                        mask: MASK.to_vec(),
                        open: false,
                    };
                }
            } else if !at_end && lit.starts_with(rest) {
                undecided = true;
            }
        }
        // An undecided pattern wins over a later "no": the bytes wait for the next chunk.
        if undecided {
            Step::More
        } else {
            Step::No
        }
    }
}

fn aws_key(rest: &[u8], at_end: bool) -> Step {
    let n = rest.len().min(AWS_KEY_LEN);
    let prefix_ok = AWS_PREFIXES.iter().any(|p| {
        let k = n.min(p.len());
        rest[..k] == p[..k]
    });
    let body_ok = rest[..n]
        .iter()
        .skip(4)
        .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !prefix_ok || !body_ok {
        Step::No
    } else if n == AWS_KEY_LEN {
        Step::Match {
            len: AWS_KEY_LEN,
            mask: MASK.to_vec(),
            open: false,
        }
    } else if at_end {
        Step::No
    } else {
        Step::More
    }
}

fn bearer(rest: &[u8], at_end: bool) -> Step {
    let undecided = if at_end { Step::No } else { Step::More };
    const WORD: &[u8] = b"bearer";
    let n = rest.len().min(WORD.len());
    if !rest[..n].eq_ignore_ascii_case(&WORD[..n]) {
        return Step::No;
    }
    if n < WORD.len() {
        return undecided;
    }
    let gap = rest[WORD.len()..]
        .iter()
        .take(BEARER_MAX_GAP + 1)
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let token_start = WORD.len() + gap;
    if gap == 0 || gap > BEARER_MAX_GAP {
        return if token_start == rest.len() && gap == 0 {
            undecided
        } else {
            Step::No
        };
    }
    let token = rest[token_start..]
        .iter()
        .take_while(|&&b| is_token_byte(b))
        .count();
    let mut end = token_start + token;
    if end == rest.len() {
        // The token (or the gap) runs to the end of the data.
        return if token >= BEARER_MIN_TOKEN {
            let mut mask = rest[..token_start].to_vec();
            mask.extend_from_slice(MASK);
            Step::Match {
                len: end,
                mask,
                open: !at_end,
            }
        } else {
            undecided
        };
    }
    if token < BEARER_MIN_TOKEN {
        return Step::No;
    }
    while end < rest.len() && rest[end] == b'=' {
        end += 1;
    }
    let mut mask = rest[..token_start].to_vec();
    mask.extend_from_slice(MASK);
    Step::Match {
        len: end,
        mask,
        open: end == rest.len() && !at_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RedactSpec {
        RedactSpec {
            aws: true,
            bearer: true,
            literals: vec![b"hunter2-secret".to_vec()],
        }
    }

    /// Feeds `input` in pieces cut at `cuts`, then flushes; returns what came out.
    fn run(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut r = Redactor::new(spec());
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            out.extend_from_slice(&r.process(0, &input[last..c]));
            last = c;
        }
        out.extend_from_slice(&r.flush(0));
        out
    }

    fn whole(input: &str) -> String {
        String::from_utf8(run(input.as_bytes(), &[])).unwrap()
    }

    #[test]
    fn known_secrets_are_masked() {
        assert_eq!(whole("key=AKIAIOSFODNN7EXAMPLE\n"), "key=[REDACTED]\n");
        assert_eq!(
            whole("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc==; next\n"),
            "Authorization: Bearer [REDACTED]; next\n"
        );
        assert_eq!(
            whole("curl -H 'authorization: bearer\tabcdefgh'"),
            "curl -H 'authorization: bearer\t[REDACTED]'"
        );
        assert_eq!(whole("pw hunter2-secret!"), "pw [REDACTED]!");
    }

    #[test]
    fn near_misses_are_left_alone() {
        for text in [
            "AKIA short",
            "AKIAiosfodnn7example lower case",
            "the bearer of bad news",
            "Bearer",
            "Bearer ",
            "AKIAIOSFODNN7EXAMPL",
            "hunter2",
            "ABBA",
        ] {
            assert_eq!(whole(text), text);
        }
    }

    #[test]
    fn secrets_split_at_every_chunk_boundary_are_still_masked() {
        let input = b"a AKIAIOSFODNN7EXAMPLE b Bearer abcdefghijklmnop== c hunter2-secret d\n";
        let expected = b"a [REDACTED] b Bearer [REDACTED] c [REDACTED] d\n".to_vec();
        for cut in 0..=input.len() {
            assert_eq!(run(input, &[cut]), expected, "cut at {cut}");
        }
        // Every byte its own chunk.
        let cuts: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(input, &cuts), expected);
    }

    #[test]
    fn a_long_token_spanning_many_chunks_is_dropped_whole() {
        let token = "x".repeat(10_000);
        let input = format!("Bearer {token} end");
        let cuts: Vec<usize> = (1..input.len()).step_by(7).collect();
        assert_eq!(run(input.as_bytes(), &cuts), b"Bearer [REDACTED] end");
    }

    #[test]
    fn an_undecided_tail_is_flushed_unchanged_at_the_end() {
        assert_eq!(run(b"ends with AKIAIOSF", &[12]), b"ends with AKIAIOSF");
        assert_eq!(run(b"ends with Bear", &[]), b"ends with Bear");
        assert_eq!(run(b"Bearer abcdefgh", &[]), b"Bearer [REDACTED]");
    }

    #[test]
    fn clean_output_is_passed_on_without_a_copy() {
        let mut r = Redactor::new(spec());
        let data = vec![0u8; 1 << 16];
        assert!(matches!(r.process(0, &data), Cow::Borrowed(_)));
    }

    #[test]
    fn streams_keep_separate_tails() {
        let mut r = Redactor::new(spec());
        let mut out = r.process(0, b"AKIAIOSF").into_owned();
        assert_eq!(&*r.process(1, b"ODNN7EXAMPLE"), b"ODNN7EXAMPLE");
        out.extend_from_slice(&r.process(0, b"ODNN7EXAMPLE"));
        assert_eq!(out, b"[REDACTED]");
    }
}
