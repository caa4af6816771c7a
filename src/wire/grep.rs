//! `GET /inspect/{image}/grep`: the request as its query parameters carry it, and the
//! `GrepResult` it answers. The request stays unchecked here (strings and numbers as
//! given), so a remote server and the local engine judge the same values the same way;
//! the engine's `grep` module checks it.

use serde::{Deserialize, Serialize};

/// The query of `/inspect/{image}/grep`: `pattern`, `path` and `glob` may be repeated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrepRequest {
    /// Regexes, OR-ed.
    pub patterns: Vec<String>,
    /// Roots to search in this order; none means `/`.
    pub paths: Vec<String>,
    /// ripgrep `-g` globs (`!` negates).
    pub globs: Vec<String>,
    pub max_count: Option<u64>,
    pub max_total: Option<u64>,
    /// `sensitive`, `insensitive` or `smart`; `None` is `sensitive`.
    pub case: Option<String>,
    pub before: Option<u64>,
    pub after: Option<u64>,
}

impl GrepRequest {
    /// The query pairs, repeated keys in order, for a client to send.
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        pairs.extend(self.patterns.iter().map(|p| ("pattern", p.clone())));
        pairs.extend(self.paths.iter().map(|p| ("path", p.clone())));
        pairs.extend(self.globs.iter().map(|g| ("glob", g.clone())));
        let numbers = [
            ("max_count", self.max_count),
            ("max_total", self.max_total),
            ("before", self.before),
            ("after", self.after),
        ];
        pairs.extend(
            numbers
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v.to_string()))),
        );
        if let Some(case) = &self.case {
            pairs.push(("case", case.clone()));
        }
        pairs
    }
}

/// `GrepSubmatch`: one match inside a line, by byte offsets into the line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrepSubmatch {
    pub text: String,
    pub start: u64,
    pub end: u64,
}

/// Whether a row is a matching line or context around one (ripgrep's `--json` type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrepLineKind {
    Match,
    Context,
}

/// `GrepMatch`: one line of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrepMatch {
    /// Absolute inside the image.
    pub path: String,
    /// 1-based.
    pub line_number: u64,
    /// Byte offset of the line from the start of the file.
    pub absolute_offset: u64,
    /// The line with its terminator, capped (see `line_bytes`).
    pub line_text: String,
    /// The line's real length in bytes.
    pub line_bytes: u64,
    /// Empty for context rows.
    pub submatches: Vec<GrepSubmatch>,
    #[serde(rename = "type")]
    pub kind: GrepLineKind,
}

/// `GrepResult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrepResult {
    /// The first root searched.
    pub path: String,
    pub patterns: Vec<String>,
    pub matches: Vec<GrepMatch>,
    /// `max_total` or the deadline stopped the search early.
    pub truncated: bool,
}
