//! Searching an image's files without a sandbox (`GET /inspect/{image}/grep`): ripgrep's
//! searcher over the layer chain as `inspect::View` merges it, so whiteouts and opaque
//! directories hide what a run would not see, and nothing of the host is read but through
//! `View` (`walk`, `resolve`, `Found::open`).
//!
//! As ripgrep with `--hidden --no-ignore --sort path -g …`: hidden files are searched,
//! `.gitignore` files in the image mean nothing, symlinks met in the walk are never
//! followed (a root given as a symlink is resolved inside the image), and a file with a
//! NUL byte is binary and left out. The work is bounded: by `max_total`, by a deadline and
//! by how much text the answer may hold; any of them stopping the search says
//! `truncated`.

use super::inspect::{Found, InspectError, View};
use crate::wire::{GrepLineKind, GrepMatch, GrepRequest, GrepResult, GrepSubmatch};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use grep_matcher::Matcher;
use grep_regex::{RegexMatcher, RegexMatcherBuilder};
use grep_searcher::{
    BinaryDetection, LineIter, Searcher, SearcherBuilder, Sink, SinkContext, SinkContextKind,
    SinkMatch,
};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

pub const MAX_PATTERNS: usize = 16;
pub const MAX_PATTERN_CHARS: usize = 1024;
pub const MAX_PATHS: usize = 16;
/// The spec sets no number; this many globs is far more than a filter needs.
pub const MAX_GLOBS: usize = 64;
pub const MAX_COUNT: u64 = 10_000;
pub const DEFAULT_MAX_TOTAL: u64 = 1000;
pub const MAX_TOTAL: u64 = 10_000;
pub const MAX_CONTEXT: u64 = 50;
/// `line_text` holds at most this many bytes of a line (`line_bytes` says the rest).
pub const LINE_CAP: usize = 4096;
/// How long one search may take before it stops with what it found.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Text (lines and submatches) one answer may hold: 10,000 capped lines with 50 lines of
/// context each would be gigabytes.
const TEXT_BUDGET: usize = 16 << 20;
/// The longest line the searcher buffers; a file with a longer one is left out.
const HEAP_LIMIT: usize = 16 << 20;
/// What a compiled regex may take: sixteen patterns of 1024 characters can still ask for
/// an automaton of gigabytes (`\w{1000}`).
const REGEX_SIZE_LIMIT: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GrepError {
    #[error("at least one pattern is required")]
    NoPattern,
    #[error("at most {MAX_PATTERNS} patterns may be given, not {0}")]
    TooManyPatterns(usize),
    #[error("pattern {index} has {chars} characters; at most {MAX_PATTERN_CHARS} are allowed")]
    PatternTooLong { index: usize, chars: usize },
    #[error("invalid regex: {0}")]
    Regex(#[source] grep_regex::Error),
    #[error("at most {MAX_PATHS} paths may be given, not {0}")]
    TooManyPaths(usize),
    #[error("path '{0}' must be absolute and must not contain '..'")]
    BadPath(String),
    #[error("at most {MAX_GLOBS} globs may be given, not {0}")]
    TooManyGlobs(usize),
    #[error("invalid glob '{glob}': {source}")]
    Glob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("case must be sensitive, insensitive or smart, not '{0}'")]
    Case(String),
    #[error("{name} must be an integer from {min} to {max}, not {value}")]
    OutOfRange {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    /// A root that is not in the image (or cannot be read).
    #[error(transparent)]
    Inspect(#[from] InspectError),
}

/// Searches the image `view` shows as `req` asks, stopping at `deadline`. Rows name each
/// file by its path in the image, a root's symlinks resolved (a root `/alias` of `/data`
/// gives `/data/...`).
pub fn search(view: &View, req: &GrepRequest, deadline: Instant) -> Result<GrepResult, GrepError> {
    let plan = Plan::new(req)?;
    // Every root is checked before anything is searched: a missing one is the answer.
    let mut roots = Vec::new();
    for root in &plan.roots {
        let (rel, found) = view.resolve(root, true)?;
        roots.push((format!("/{}", rel.display()), found));
    }
    let mut state = State {
        rows: Vec::new(),
        total: 0,
        max_total: plan.max_total,
        text: 0,
        deadline,
        truncated: false,
    };
    let mut searcher = plan.searcher();
    for (root, found) in &roots {
        if state.truncated {
            break;
        }
        if found.meta.is_file() {
            // A file named as a root is searched whatever the globs say, as ripgrep does.
            search_file(&plan, &mut searcher, &mut state, root.clone(), found);
        } else if found.meta.is_dir() && !found.mount_point {
            walk(view, &plan, &mut searcher, &mut state, root)?;
        }
    }
    Ok(GrepResult {
        path: plan.roots[0].clone(),
        patterns: req.patterns.clone(),
        matches: state.rows,
        truncated: state.truncated,
    })
}

/// The request, checked and compiled.
struct Plan {
    matcher: RegexMatcher,
    roots: Vec<String>,
    globs: Globs,
    max_count: Option<u64>,
    max_total: u64,
    before: usize,
    after: usize,
}

impl Plan {
    fn new(req: &GrepRequest) -> Result<Plan, GrepError> {
        if req.patterns.is_empty() {
            return Err(GrepError::NoPattern);
        }
        if req.patterns.len() > MAX_PATTERNS {
            return Err(GrepError::TooManyPatterns(req.patterns.len()));
        }
        for (i, p) in req.patterns.iter().enumerate() {
            let chars = p.chars().count();
            if chars > MAX_PATTERN_CHARS {
                return Err(GrepError::PatternTooLong {
                    index: i + 1,
                    chars,
                });
            }
        }
        if req.paths.len() > MAX_PATHS {
            return Err(GrepError::TooManyPaths(req.paths.len()));
        }
        let mut roots = req.paths.clone();
        if roots.is_empty() {
            roots.push("/".into());
        }
        if let Some(bad) = roots
            .iter()
            .find(|p| !p.starts_with('/') || p.split('/').any(|c| c == "..") || p.contains('\0'))
        {
            return Err(GrepError::BadPath(bad.clone()));
        }
        let mut builder = RegexMatcherBuilder::new();
        // Lines never hold a line terminator, so no match can span two.
        builder
            .line_terminator(Some(b'\n'))
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT);
        match req.case.as_deref().unwrap_or("sensitive") {
            "sensitive" => {}
            "insensitive" => {
                builder.case_insensitive(true);
            }
            "smart" => {
                builder.case_smart(true);
            }
            other => return Err(GrepError::Case(other.to_string())),
        }
        let matcher = builder
            .build_many(&req.patterns)
            .map_err(GrepError::Regex)?;
        let range = |name, value: Option<u64>, min, max, default| match value {
            None => Ok(default),
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(value) => Err(GrepError::OutOfRange {
                name,
                value,
                min,
                max,
            }),
        };
        let max_count = match req.max_count {
            None => None,
            some => Some(range("max_count", some, 1, MAX_COUNT, 0)?),
        };
        Ok(Plan {
            max_total: range("max_total", req.max_total, 1, MAX_TOTAL, DEFAULT_MAX_TOTAL)?,
            before: range("before", req.before, 0, MAX_CONTEXT, 0)? as usize,
            after: range("after", req.after, 0, MAX_CONTEXT, 0)? as usize,
            max_count,
            globs: Globs::new(&req.globs)?,
            matcher,
            roots,
        })
    }

    fn searcher(&self) -> Searcher {
        SearcherBuilder::new()
            .line_number(true)
            .before_context(self.before)
            .after_context(self.after)
            .max_matches(self.max_count)
            .binary_detection(BinaryDetection::quit(0))
            // Offsets are the file's bytes: no transcoding of a UTF-16 file with a BOM
            // (whose NUL bytes make it binary, as the spec says).
            .bom_sniffing(false)
            .heap_limit(Some(HEAP_LIMIT))
            .build()
    }
}

/// ripgrep's `-g`: globs match the path relative to the search root, one without a slash
/// matches a name at any depth, a leading `/` anchors, a trailing `/` matches directories
/// only, and `!` excludes. The last glob that matches decides; a file no glob matches is
/// left out when some glob includes. A directory is left out only by an excluding glob.
struct Globs {
    set: GlobSet,
    rules: Vec<Rule>,
    including: bool,
}

struct Rule {
    exclude: bool,
    dir_only: bool,
}

impl Globs {
    fn new(globs: &[String]) -> Result<Globs, GrepError> {
        if globs.len() > MAX_GLOBS {
            return Err(GrepError::TooManyGlobs(globs.len()));
        }
        let mut set = GlobSetBuilder::new();
        let mut rules = Vec::new();
        for text in globs {
            let (exclude, rest) = match text.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (
                    false,
                    text.strip_prefix("\\!")
                        .map_or(text.as_str(), |_| &text[1..]),
                ),
            };
            let (dir_only, rest) = match rest.strip_suffix('/') {
                Some(r) if !r.is_empty() => (true, r),
                _ => (false, rest),
            };
            let glob = match rest.strip_prefix('/') {
                Some(anchored) => anchored.to_string(),
                None if !rest.contains('/') => format!("**/{rest}"),
                None => rest.to_string(),
            };
            let built = GlobBuilder::new(&glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| GrepError::Glob {
                    glob: text.clone(),
                    source,
                })?;
            set.add(built);
            rules.push(Rule { exclude, dir_only });
        }
        let set = set.build().map_err(|source| GrepError::Glob {
            glob: globs.join(" "),
            source,
        })?;
        let including = rules.iter().any(|r| !r.exclude);
        Ok(Globs {
            set,
            rules,
            including,
        })
    }

    /// Whether the entry at `rel` (relative to the search root) is searched or entered.
    fn allows(&self, rel: &Path, is_dir: bool) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let last = self
            .set
            .matches(rel)
            .into_iter()
            .rfind(|&i| is_dir || !self.rules[i].dir_only);
        match last {
            Some(i) => !self.rules[i].exclude,
            None => is_dir || !self.including,
        }
    }
}

/// What the search has found so far, and what bounds it.
struct State {
    rows: Vec<GrepMatch>,
    /// Match rows in `rows`.
    total: u64,
    max_total: u64,
    /// Bytes of text in `rows` (see `TEXT_BUDGET`).
    text: usize,
    deadline: Instant,
    /// A bound stopped the search.
    truncated: bool,
}

/// Walks the directory `root`, searching the files the globs let through.
fn walk(
    view: &View,
    plan: &Plan,
    searcher: &mut Searcher,
    state: &mut State,
    root: &str,
) -> Result<(), GrepError> {
    let prefix = root.trim_end_matches('/');
    let walked = view.walk_pruned(root, &mut |rel, found| {
        if state.truncated || Instant::now() >= state.deadline {
            state.truncated = true;
            return Err(io::Error::other("stopped"));
        }
        if found.meta.is_dir() {
            return Ok(plan.globs.allows(rel, true));
        }
        if found.meta.is_file() && plan.globs.allows(rel, false) {
            let path = format!("{prefix}/{}", rel.display());
            search_file(plan, searcher, state, path, found);
        }
        Ok(false)
    });
    match walked {
        Err(_) if state.truncated => Ok(()),
        Err(e) => Err(GrepError::Inspect(InspectError::Io {
            path: root.to_string(),
            source: e,
        })),
        Ok(()) => Ok(()),
    }
}

/// Searches one regular file; its rows join `state` unless it turns out binary. A file
/// that cannot be read (or has a line past `HEAP_LIMIT`) keeps what was found before.
fn search_file(
    plan: &Plan,
    searcher: &mut Searcher,
    state: &mut State,
    path: String,
    found: &Found,
) {
    let Ok(file) = found.open() else {
        return;
    };
    let mut sink = FileSink {
        plan,
        state,
        path,
        rows: Vec::new(),
        matches: 0,
        text: 0,
        pending_before: 0,
        binary: false,
    };
    let reader = UntilDeadline {
        inner: file,
        deadline: sink.state.deadline,
    };
    let searched = searcher.search_reader(&plan.matcher, reader, &mut sink);
    if searched.is_err() && Instant::now() >= sink.state.deadline {
        sink.state.truncated = true;
    }
    if sink.binary {
        return;
    }
    let FileSink {
        state,
        rows,
        matches,
        text,
        ..
    } = sink;
    state.rows.extend(rows);
    state.total += matches;
    state.text += text;
}

/// Reads a file until the deadline, then fails: one huge file cannot hold the search.
struct UntilDeadline {
    inner: std::fs::File,
    deadline: Instant,
}

impl io::Read for UntilDeadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "search deadline"));
        }
        self.inner.read(buf)
    }
}

/// Gathers one file's rows, stopping the searcher when a bound is reached.
struct FileSink<'a> {
    plan: &'a Plan,
    state: &'a mut State,
    path: String,
    rows: Vec<GrepMatch>,
    matches: u64,
    text: usize,
    /// Before-context rows at the end of `rows`: they belong to the next match, and go
    /// if the search stops before it.
    pending_before: usize,
    binary: bool,
}

impl FileSink<'_> {
    fn total_reached(&self) -> bool {
        self.state.total + self.matches >= self.state.max_total
    }

    /// Whether another row of `bytes` of text (a match row when `counted`) may be added;
    /// else the search stops, truncated.
    fn room(&mut self, bytes: usize, counted: bool) -> bool {
        let full = (counted && self.total_reached())
            || self.state.text + self.text + bytes > TEXT_BUDGET
            || Instant::now() >= self.state.deadline;
        if full {
            self.state.truncated = true;
        }
        !full
    }

    /// Takes back the before-context of a match that will not be shown.
    fn drop_pending_before(&mut self) {
        let kept = self.rows.len() - self.pending_before;
        for row in self.rows.drain(kept..) {
            self.text -= row.line_text.len() + row.path.len();
        }
        self.pending_before = 0;
    }

    fn row(&self, line: &[u8], number: u64, offset: u64, kind: GrepLineKind) -> GrepMatch {
        GrepMatch {
            path: self.path.clone(),
            line_number: number,
            absolute_offset: offset,
            line_text: capped(line, LINE_CAP),
            line_bytes: line.len() as u64,
            submatches: Vec::new(),
            kind,
        }
    }
}

impl Sink for FileSink<'_> {
    type Error = io::Error;

    fn matched(&mut self, _: &Searcher, mat: &SinkMatch<'_>) -> Result<bool, io::Error> {
        let mut offset = mat.absolute_byte_offset();
        for (number, line) in (mat.line_number().unwrap_or(0)..).zip(mat.lines()) {
            let mut submatches = Vec::new();
            let shown = line.len().min(LINE_CAP);
            let _ = self.plan.matcher.find_iter(line, |m| {
                // Matches that start past the capped text are left out with it.
                if m.start() < shown {
                    submatches.push(GrepSubmatch {
                        text: capped(&line[m.start()..m.end()], LINE_CAP),
                        start: m.start() as u64,
                        end: m.end() as u64,
                    });
                }
                true
            });
            let mut row = self.row(line, number, offset, GrepLineKind::Match);
            let bytes = row.line_text.len()
                + submatches.iter().map(|s| s.text.len() + 32).sum::<usize>()
                + self.path.len();
            if !self.room(bytes, true) {
                self.drop_pending_before();
                return Ok(false);
            }
            row.submatches = submatches;
            self.rows.push(row);
            self.matches += 1;
            self.text += bytes;
            self.pending_before = 0;
            offset += line.len() as u64;
        }
        Ok(true)
    }

    fn context(&mut self, _: &Searcher, ctx: &SinkContext<'_>) -> Result<bool, io::Error> {
        let before = matches!(ctx.kind(), SinkContextKind::Before);
        if before && self.total_reached() {
            // Before-context comes just ahead of its match, which is one too many.
            self.state.truncated = true;
            return Ok(false);
        }
        let mut offset = ctx.absolute_byte_offset();
        let lines = LineIter::new(b'\n', ctx.bytes());
        for (number, line) in (ctx.line_number().unwrap_or(0)..).zip(lines) {
            let row = self.row(line, number, offset, GrepLineKind::Context);
            let bytes = row.line_text.len() + self.path.len();
            // After-context of the last match allowed is still shown, as ripgrep does
            // after --max-count: only the text budget and the deadline stop it.
            if !self.room(bytes, false) {
                self.drop_pending_before();
                return Ok(false);
            }
            self.rows.push(row);
            self.text += bytes;
            self.pending_before = if before { self.pending_before + 1 } else { 0 };
            offset += line.len() as u64;
        }
        Ok(true)
    }

    fn binary_data(&mut self, _: &Searcher, _offset: u64) -> Result<bool, io::Error> {
        self.binary = true;
        Ok(false)
    }
}

/// The first `cap` bytes of `bytes` (cut back to a character boundary) as text, invalid
/// UTF-8 replaced.
fn capped(bytes: &[u8], cap: usize) -> String {
    let mut cut = bytes.len().min(cap);
    if cut < bytes.len() {
        // At most three continuation bytes precede a cut inside a character.
        let mut back = 0;
        while cut > 0 && back < 3 && bytes[cut] & 0xC0 == 0x80 {
            cut -= 1;
            back += 1;
        }
    }
    String::from_utf8_lossy(&bytes[..cut]).into_owned()
}

#[cfg(test)]
mod tests;
