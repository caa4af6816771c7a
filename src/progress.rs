//! Progress bars for long work: hashing, storing and staging attachments, image imports,
//! registry pulls and uploads. A bar is drawn on stderr, only when stderr is a terminal, the
//! work is big (`MIN_BYTES`) and `CONTREE_PROGRESS` is not `never`.
//!
//! Small work must not pay for this: callers size their work from what they already know,
//! and only big work gets the terminal check (one `isatty`, once per process). No bar starts
//! a thread (no steady tick): a run forks its supervisor only from a single-threaded CLI.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// Work of fewer bytes gets no bar: it is over before a bar would tell anything.
pub const MIN_BYTES: u64 = 16 << 20;

/// Reads are counted on a bar in pieces this big, so that one large file moves it smoothly.
const CHUNK: u64 = 8 << 20;

/// Whether work may draw a bar at all. The CLI's commands may (on a terminal); `contree
/// serve` never does: its stderr is a log that concurrent requests share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    OnTerminal,
    Never,
}

/// stderr is a terminal and bars are not turned off (asked once per process).
fn on_terminal() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        use std::io::IsTerminal;
        std::env::var_os("CONTREE_PROGRESS").is_none_or(|v| v != "never")
            && io::stderr().is_terminal()
    })
}

fn new_bar(total: Option<u64>, template: &str) -> ProgressBar {
    // Cleared however it ends, an error included: the message that follows stands alone.
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
        .with_finish(ProgressFinish::AndClear);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Whether `total` bytes of work get a bar: the work is big, `show` allows it and stderr is
/// a terminal.
pub fn shows(show: Show, total: u64) -> bool {
    total >= MIN_BYTES && show == Show::OnTerminal && on_terminal()
}

/// A bar for `total` bytes of work that `what` names ("hashing 3 files"), or `None` unless
/// it `shows`. Dropping it clears it.
pub fn bar(show: Show, total: u64, what: impl FnOnce() -> String) -> Option<ProgressBar> {
    if !shows(show, total) {
        return None;
    }
    let bar = new_bar(
        Some(total),
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
    );
    bar.set_message(what());
    bar.tick();
    Some(bar)
}

/// Counts the files of work whose total is not known beforehand (a directory being copied):
/// a bar with the bytes done and the rate appears once the files add up to `MIN_BYTES`.
pub struct Meter {
    show: Show,
    what: String,
    done: u64,
    bar: Option<ProgressBar>,
}

impl Meter {
    pub fn new(show: Show, what: String) -> Meter {
        Meter {
            show,
            what,
            done: 0,
            bar: None,
        }
    }

    /// Counts a file of `len` bytes about to be copied; returns the bar to count its bytes
    /// on as they go (see `copy`) once the work is big enough for one.
    pub fn next(&mut self, len: u64) -> Option<&ProgressBar> {
        if self.bar.is_none() {
            let before = self.done;
            self.done += len;
            let big = before < MIN_BYTES && self.done >= MIN_BYTES;
            if !big || self.show == Show::Never || !on_terminal() {
                return None;
            }
            let bar = new_bar(None, "{msg} {bytes} {bytes_per_sec}");
            bar.set_message(std::mem::take(&mut self.what));
            bar.set_position(before);
            self.bar = Some(bar);
        }
        self.bar.as_ref()
    }
}

/// A reader that counts the bytes read on `bar`.
pub struct Counted<R> {
    inner: R,
    bar: Option<ProgressBar>,
}

impl<R> Counted<R> {
    pub fn new(inner: R, bar: Option<ProgressBar>) -> Counted<R> {
        Counted { inner, bar }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}

/// `fs::copy` (content and permission bits), counting the bytes on `bar` as they go.
pub fn copy(src: &Path, dst: &Path, bar: Option<&ProgressBar>) -> io::Result<u64> {
    let Some(bar) = bar else {
        return std::fs::copy(src, dst);
    };
    // Most files are small: one `fs::copy`, counted when done, costs the fewest syscalls.
    if std::fs::metadata(src)?.len() <= CHUNK {
        let n = std::fs::copy(src, dst)?;
        bar.inc(n);
        return Ok(n);
    }
    let from = File::open(src)?;
    let permissions = from.metadata()?.permissions();
    let mut to = File::create(dst)?;
    to.set_permissions(permissions)?;
    let mut total = 0;
    loop {
        // `io::copy` still copies each piece in the kernel (copy_file_range).
        let n = io::copy(&mut (&from).take(CHUNK), &mut to)?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        bar.inc(n);
    }
}
