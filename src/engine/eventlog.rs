//! Per-operation event logs in the /v1 `OperationEvent` shapes.
//!
//! On disk each event is one frame: `u32 LE header length`, `u32 LE payload length`, the
//! header as JSON (`id, ts, spid, type, data`), then the payload. Output events keep their
//! bytes raw in the payload instead of base64 inside JSON, so a gigabyte of output costs a
//! copy, not an encode and a decode; `to_wire` produces the API's `{value, encoding}` form.
//! A frame is written with one `write` on an `O_APPEND` file, so a reader never sees half
//! of one unless the writer died mid-write, and then the torn tail is simply never read.

mod reader;

pub use reader::LogReader;

use crate::wire::{self, Event};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// One event as stored: the header and, for stream events, the raw bytes.
#[derive(Debug, Clone)]
pub struct LogEvent {
    pub header: Event,
    pub payload: Vec<u8>,
    /// The payload's length when it was skipped (see `LogReader::skip_stream_payloads`).
    pub skipped: u64,
}

/// An event read from a log (its header, and a stream event's bytes) as the API shows it:
/// a stream event's bytes go into `data.value` + `data.encoding`.
pub fn to_wire(mut event: Event, payload: &[u8]) -> Event {
    if matches!(event.kind.as_str(), "stdout" | "stderr" | "stdin") {
        let (value, encoding) = wire::encode_bytes(payload);
        event.data.insert("value".into(), Value::String(value));
        event
            .data
            .insert("encoding".into(), Value::String(encoding.into()));
        event.data.insert("truncated".into(), Value::Bool(false));
    }
    event
}

/// The data of a `completion` event.
pub fn completion(
    status: crate::wire::Status,
    duration_ms: u64,
    result_image: Option<&str>,
    error: Option<&str>,
    image_size: u64,
) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("status".into(), status.as_str().into());
    data.insert("duration_ms".into(), duration_ms.into());
    data.insert("result_image_uuid".into(), result_image.into());
    data.insert("error".into(), error.into());
    data.insert("image_size_bytes".into(), image_size.into());
    data
}

pub struct LogWriter {
    /// `None` until the first event of a `deferred` log. Not opened for appending: frames
    /// are written at `end` (splice refuses O_APPEND files), and this is the only writer.
    file: Option<File>,
    path: std::path::PathBuf,
    /// Where the next frame goes: the end of the last complete frame.
    end: u64,
    /// Poked (one byte, never blocking) after each frame so a follower wakes at once.
    notify: Option<std::os::fd::OwnedFd>,
    /// Whether stdout and stderr frames poke `notify` too (see `live_follower`).
    notify_streams: bool,
    next_id: u64,
    buf: Vec<u8>,
    /// Blocks are allocated (fallocate, size kept) up to here; trimmed back to `end` on drop.
    reserved: u64,
    /// Cleared when the filesystem cannot preallocate.
    preallocate: bool,
    /// The `completion` an adopted log already ends with, and its main process's exit.
    ending: Option<Map<String, Value>>,
    exit: Option<(i32, bool)>,
}

/// A log is preallocated once it holds this much; smaller logs never pay for it.
const PREALLOC_FROM: u64 = 1 << 20;
/// The most one preallocation reserves (it grows with the log up to this).
const PREALLOC_MAX: u64 = 64 << 20;

impl LogWriter {
    /// Opens a log for appending; ids continue after the last complete frame. The writer
    /// owns the operation (see `own`): an error if a live process does.
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        match Self::take_over(path)? {
            Some(log) => Ok(log),
            None => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is being written by another process", path.display()),
            )),
        }
    }

    /// Opens the log of an operation whose owner may be gone, creating it if need be:
    /// `None` while a live process holds it (see `own`).
    pub fn take_over(path: &Path) -> io::Result<Option<LogWriter>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        if !super::claim::lock_file(&file, false)? {
            return Ok(None);
        }
        Self::adopt(file, path).map(Some)
    }

    /// Continues the log `file` (at `path`), whose lock this process holds: taken over
    /// from the process that made it, or just taken. A torn last frame (its writer died
    /// mid-frame) is cut.
    pub fn adopt(file: File, path: &Path) -> io::Result<LogWriter> {
        let mut next_id = 1;
        let mut reader = LogReader::open(path)?;
        reader.skip_stream_payloads();
        let (mut ending, mut exit) = (None, None);
        while let Some(ev) = reader.next()? {
            next_id = ev.header.id + 1;
            match ev.header.kind.as_str() {
                "completion" => ending = Some(ev.header.data),
                "exit" if ev.header.spid == Some(1) => {
                    let code = ev.header.data.get("code").and_then(|c| c.as_i64());
                    let timed_out = ev.header.data.get("timed_out") == Some(&Value::Bool(true));
                    exit = code.map(|c| (c as i32, timed_out));
                }
                _ => {}
            }
        }
        let end = reader.consumed();
        file.set_len(end)?;
        let mut log = LogWriter::deferred(path);
        log.file = Some(file);
        log.end = end;
        log.next_id = next_id;
        log.ending = ending;
        log.exit = exit;
        Ok(log)
    }

    /// The data of the log's `completion`, if it has one (as found when it was opened).
    pub fn ending(&self) -> Option<&Map<String, Value>> {
        self.ending.as_ref()
    }

    /// The main process's exit code and whether it timed out, from the log's `exit` event.
    pub fn exit(&self) -> Option<(i32, bool)> {
        self.exit
    }

    /// Creates the empty log of a new operation and locks it: the operation is owned by
    /// whoever holds this lock (its creator, then the supervisor it hands the descriptor
    /// to), and recovery fails an unfinished operation only once nobody does. The lock goes
    /// with the last descriptor of the file, so a process that hands it over must close
    /// its own copy, never unlock it.
    pub fn own(path: &Path) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        super::claim::lock_file(&file, true)?;
        Ok(file)
    }

    /// Whether a live process owns the operation whose log is at `path` (see `own`).
    pub fn owned(path: &Path) -> bool {
        match File::open(path) {
            Ok(file) => matches!(super::claim::lock_file(&file, false), Ok(false)),
            Err(_) => false,
        }
    }

    /// A new log whose file (and directory) are created with its first event, so a
    /// supervisor can create them when it suits it (see `Job::created_at`).
    pub fn deferred(path: &Path) -> LogWriter {
        LogWriter {
            file: None,
            path: path.to_path_buf(),
            end: 0,
            notify: None,
            notify_streams: true,
            next_id: 1,
            buf: Vec::with_capacity(64 * 1024),
            reserved: 0,
            preallocate: true,
            ending: None,
            exit: None,
        }
    }

    /// Creates a deferred log now (and so takes the operation's lock: see `own`).
    pub fn ensure_open(&mut self) -> io::Result<()> {
        self.file().map(drop)
    }

    fn file(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.file = Some(Self::own(&self.path)?);
        }
        Ok(self.file.as_ref().expect("opened just above"))
    }

    /// The follower gets the output through pipes of its own and only reads the other events
    /// here: waking it for every chunk of output would only make it preempt the writer.
    pub fn live_follower(&mut self) {
        self.notify_streams = false;
    }

    /// Numbers the next frame `id` (a log rewritten to keep its last frame keeps its id).
    pub fn continue_from(&mut self, id: u64) {
        self.next_id = id;
    }

    /// Wakes whoever holds the other end of `fd` after every event.
    pub fn notify_to(&mut self, fd: std::os::fd::OwnedFd) {
        self.notify = Some(fd);
    }

    pub fn append(
        &mut self,
        kind: &str,
        spid: Option<u32>,
        data: Map<String, Value>,
    ) -> io::Result<u64> {
        self.append_with_payload(kind, spid, data, &[])
    }

    pub fn append_stream(&mut self, kind: &str, spid: u32, bytes: &[u8]) -> io::Result<u64> {
        self.append_with_payload(kind, Some(spid), Map::new(), bytes)
    }

    /// A stream frame whose `len` payload bytes wait in the pipe `from`: they are moved into
    /// the log with splice(2), so they are copied once, into the page cache, and never pass
    /// through our memory. Falls back to reading them when the file takes no splice.
    pub fn append_stream_from_pipe(
        &mut self,
        kind: &str,
        spid: u32,
        from: std::os::fd::BorrowedFd<'_>,
        len: usize,
    ) -> io::Result<u64> {
        let (end, total) = self.begin_frame(kind, Some(spid), Map::new(), len)?;
        let file = self.file.as_ref().expect("opened by begin_frame");
        write_all_at(file, &self.buf, end)?;
        let mut at = end + self.buf.len() as u64;
        let mut left = len;
        while left > 0 {
            let mut off = at as libc::off_t;
            // SAFETY: splice(2) between descriptors we hold; `off` outlives the call.
            let n = unsafe {
                libc::splice(
                    from.as_raw_fd(),
                    std::ptr::null_mut(),
                    file.as_raw_fd(),
                    &mut off,
                    left,
                    libc::SPLICE_F_MOVE,
                )
            };
            match n {
                n if n > 0 => {
                    at += n as u64;
                    left -= n as usize;
                }
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "relay pipe")),
                _ => {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::EINVAL) => {
                            // This filesystem takes no splice: read the bytes and write them.
                            let mut bytes = vec![0; left];
                            let mut pipe = File::from(from.try_clone_to_owned()?);
                            io::Read::read_exact(&mut pipe, &mut bytes)?;
                            write_all_at(file, &bytes, at)?;
                            left = 0;
                        }
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(self.written(total as u64, true))
    }

    /// Starts the next frame: its header in `self.buf`, the file open, room reserved.
    /// Returns where the frame goes and its whole length.
    fn begin_frame(
        &mut self,
        kind: &str,
        spid: Option<u32>,
        data: Map<String, Value>,
        payload_len: usize,
    ) -> io::Result<(u64, usize)> {
        self.header(kind, spid, data, payload_len)?;
        let end = self.end;
        self.file()?;
        let total = self.buf.len() + payload_len;
        self.reserve(end + total as u64);
        Ok((end, total))
    }

    /// The frame's header (length fields and JSON) in `self.buf`.
    fn header(
        &mut self,
        kind: &str,
        spid: Option<u32>,
        data: Map<String, Value>,
        payload_len: usize,
    ) -> io::Result<()> {
        let header = Event {
            id: self.next_id,
            ts: wire::now_ts(),
            spid,
            kind: kind.to_string(),
            data,
        };
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 8]);
        serde_json::to_writer(&mut self.buf, &header).map_err(io::Error::other)?;
        let hlen = (self.buf.len() - 8) as u32;
        self.buf[0..4].copy_from_slice(&hlen.to_le_bytes());
        self.buf[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
        Ok(())
    }

    /// A frame is complete: count it and wake the follower.
    fn written(&mut self, len: u64, stream: bool) -> u64 {
        let id = self.next_id;
        self.end += len;
        self.next_id += 1;
        if let (Some(fd), false) = (&self.notify, stream && !self.notify_streams) {
            // A full pipe already means "there is news": EAGAIN is fine.
            let _ = nix::unistd::write(fd, b"!");
        }
        id
    }

    fn append_with_payload(
        &mut self,
        kind: &str,
        spid: Option<u32>,
        data: Map<String, Value>,
        payload: &[u8],
    ) -> io::Result<u64> {
        let (end, total) = self.begin_frame(kind, spid, data, payload.len())?;
        let file = self.file.as_ref().expect("opened by begin_frame");
        // One pwritev: the payload is not copied into our buffer. Readers only take whole
        // frames, so a frame written in parts is never seen half-done.
        let mut at = 0usize;
        while at < total {
            let (head, tail) = if at < self.buf.len() {
                (&self.buf[at..], payload)
            } else {
                (&[][..], &payload[at - self.buf.len()..])
            };
            let n = nix::sys::uio::pwritev(
                file,
                &[io::IoSlice::new(head), io::IoSlice::new(tail)],
                (end + at as u64) as libc::off_t,
            )
            .map_err(io::Error::from)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "event log write"));
            }
            at += n;
        }
        Ok(self.written(total as u64, is_stream(kind)))
    }

    /// Allocates the blocks up to past `upto` ahead of a big log's writes. A write into
    /// allocated blocks skips ext4's delayed-allocation bookkeeping, which measured over a
    /// third of the cost of recording output (see docs/benchmarks.md, "Hooks"). The file's
    /// size is kept, so readers see only complete frames; the rest is trimmed on drop.
    fn reserve(&mut self, upto: u64) {
        if !self.preallocate || upto <= self.reserved || upto < PREALLOC_FROM {
            return;
        }
        let Some(file) = &self.file else {
            return;
        };
        let from = self.reserved.max(self.end);
        let len = upto - from + upto.clamp(PREALLOC_FROM, PREALLOC_MAX);
        match nix::fcntl::fallocate(
            file.as_raw_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            from as libc::off_t,
            len as libc::off_t,
        ) {
            Ok(()) => self.reserved = from + len,
            // Unsupported, or no room: the writes allocate as they go (and report ENOSPC).
            Err(_) => self.preallocate = false,
        }
    }
}

impl LogWriter {
    /// Gives back the blocks reserved past the log's end (before its last frame, so a reader
    /// that sees `completion` sees the log at its final size).
    pub fn trim(&mut self) {
        if self.reserved > self.end {
            if let Some(file) = &self.file {
                // Cutting to the size it has frees the blocks reserved past it.
                let _ = file.set_len(self.end);
            }
            self.reserved = 0;
            self.preallocate = false;
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.trim();
    }
}

fn write_all_at(file: &File, bytes: &[u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, at)
}

fn is_stream(kind: &str) -> bool {
    kind == "stdout" || kind == "stderr"
}

#[cfg(test)]
mod tests {
    use super::reader::READ_SIZE;
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    /// The path of an event log in a new temporary dir, which lives as long as the guard.
    fn temp_log() -> (tempfile::TempDir, PathBuf) {
        let (dir, path) = crate::paths::temp_path("events");
        (dir, path)
    }

    /// Appends one event with a writer of its own, as another process would; its id.
    fn append_alone(path: &Path, kind: &str, spid: Option<u32>) -> u64 {
        let mut w = LogWriter::open(path).unwrap();
        w.append(kind, spid, Map::new()).unwrap()
    }

    #[test]
    fn frames_round_trip_and_partial_frames_wait() {
        let (_dir, path) = temp_log();
        let mut w = LogWriter::open(&path).unwrap();
        let mut data = Map::new();
        data.insert("pid".into(), 7.into());
        w.append("spawn", Some(1), data).unwrap();
        w.append_stream("stdout", 1, b"\0bin\n").unwrap();
        let mut r = LogReader::open(&path).unwrap();
        let a = r.next().unwrap().unwrap();
        assert_eq!((a.header.id, a.header.kind.as_str()), (1, "spawn"));
        let b = r.next().unwrap().unwrap();
        assert_eq!(b.payload, b"\0bin\n");
        assert_eq!(
            to_wire(b.header.clone(), &b.payload).data["encoding"],
            "base64"
        );
        assert!(r.next().unwrap().is_none());
        // A torn frame is not returned, and the ids of a reopened writer continue.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[9, 0])
            .unwrap();
        assert!(r.next().unwrap().is_none());
    }

    #[test]
    fn reopened_writer_continues_ids() {
        let (_dir, path) = temp_log();
        append_alone(&path, "init", Some(0));
        let id = append_alone(&path, "completion", None);
        assert_eq!(id, 2);
    }

    #[test]
    fn large_payloads_are_read_whole_between_small_frames() {
        let (_dir, path) = temp_log();
        let mut w = LogWriter::open(&path).unwrap();
        let big: Vec<u8> = (0..3 * READ_SIZE + 17).map(|i| (i % 251) as u8).collect();
        w.append("init", Some(0), Map::new()).unwrap();
        w.append_stream("stdout", 1, &big).unwrap();
        w.append_stream("stderr", 1, b"tail").unwrap();
        w.append_stream("stdout", 1, &big[..READ_SIZE]).unwrap();
        let mut r = LogReader::open(&path).unwrap();
        let kinds: Vec<(String, Vec<u8>)> = std::iter::from_fn(|| r.next().unwrap())
            .map(|e| (e.header.kind, e.payload))
            .collect();
        assert_eq!(kinds.len(), 4);
        assert_eq!(kinds[1], ("stdout".to_string(), big.clone()));
        assert_eq!(kinds[2], ("stderr".to_string(), b"tail".to_vec()));
        assert_eq!(kinds[3].1, big[..READ_SIZE].to_vec());
    }

    #[test]
    fn a_torn_last_frame_is_replaced_by_the_next_writer() {
        let (_dir, path) = temp_log();
        append_alone(&path, "init", Some(0));
        // A writer that died mid-frame: a length prefix promising more than is there.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
        append_alone(&path, "completion", None);
        let mut r = LogReader::open(&path).unwrap();
        let kinds: Vec<String> = std::iter::from_fn(|| r.next().unwrap())
            .map(|e| e.header.kind)
            .collect();
        assert_eq!(kinds, ["init", "completion"]);
    }
}
