//! The event-log follower `Tail`: what `events` returns for the local engine, and so what
//! every reader of an operation's events uses: `run`'s live output, `show`, `wait`, and
//! `serve`'s SSE streams. It reads an operation's log as it grows, and for the CLI's own
//! foreground run also the live pipes that carry its output straight from the supervisor.

use super::eventlog::{LogReader, LogWriter};
use super::{claim, eventlog, launch, LocalEngine};
use crate::backend::{BackendError, EventItem, EventStream};
use crate::interrupt;
use nix::sys::inotify::Inotify;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a follower woken by inotify waits before it checks that someone still owns
/// the operation.
const WATCH_CHECK: Duration = Duration::from_millis(250);

/// Follows a growing event log. The process that spawned the operation is woken by the
/// supervisor's notify pipe (and sees it close when the supervisor exits); any other
/// follower is woken by inotify, or where that fails polls with a backoff of 2 to 100 ms.
/// Either way a dead supervisor is noticed, and its operation recovered.
pub(super) struct Tail<'a> {
    engine: &'a LocalEngine,
    op: String,
    path: PathBuf,
    /// `None` until the supervisor of a just-spawned run has created the log.
    reader: Option<LogReader>,
    /// Our own foreground run's stdout and stderr, straight from its supervisor (see
    /// `Run::live`): the log's copies of them are then skipped. Each closes at its end.
    live: [Option<OwnedFd>; 2],
    live_used: bool,
    /// The streams our supervisor writes to our stdout or stderr itself: their live pipes
    /// carry nothing, and their log frames say how much went out.
    direct: [bool; 2],
    /// Which live pipe to try first (they take turns).
    live_turn: usize,
    /// Where live output goes by splice(2) instead of through `bytes`: our own stdout and
    /// stderr, for a run spawned with `direct` (see `Backend::spawn_followed`).
    pass: Option<[std::os::fd::RawFd; 2]>,
    /// An `exit`, `truncated` or `completion` read from the log before the live pipes
    /// ended: it waits for them, so no output comes after it.
    held: Option<EventItem>,
    follow: bool,
    notify: Option<OwnedFd>,
    idle: Duration,
    done: bool,
    /// A pipe whose reader we watch (see `EventStream::watch_reader`).
    reader_fd: Option<std::os::fd::RawFd>,
    /// Nobody owns the operation any more: what the log holds now is all it will hold.
    gone: bool,
    /// Past this, `next_event` stops waiting (see `EventStream::set_deadline`).
    deadline: Option<Instant>,
    /// When a follower stopped by its deadline last checked the operation's owner.
    checked: Instant,
    /// Wakes a follower without a notify pipe when the log changes; made on its first wait.
    watch: Option<Inotify>,
    /// The operation was spawned by this engine, which has its notify pipe.
    spawned_here: bool,
    watch_tried: bool,
    /// The id of the last event read from the log.
    last_id: u64,
}

impl<'a> Tail<'a> {
    /// Opens the log of `op` for reading; a follower also takes the notify and live pipes
    /// of a run this engine spawned.
    pub(super) fn open(
        engine: &'a LocalEngine,
        op: &str,
        follow: bool,
    ) -> Result<Self, BackendError> {
        let path = engine.store.op_dir(op).join("events");
        let notify = if follow {
            super::lock(&engine.notify).remove(op)
        } else {
            None
        };
        let live = if follow {
            super::lock(&engine.live).remove(op)
        } else {
            None
        };
        let reader = match LogReader::open(&path) {
            Ok(mut reader) => {
                // The output comes through the live pipes: the log's copy is not read.
                if live.is_some() {
                    reader.skip_stream_payloads();
                }
                Some(reader)
            }
            // A run whose supervisor creates the log while its sandbox starts (our own
            // foreground run, or another CLI's): it comes in a moment.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => None,
            Err(e) => return Err(BackendError::Store(format!("{}: {e}", path.display()))),
        };
        let direct = live.as_ref().map(|l| l.direct).unwrap_or_default();
        let spawned_here = notify.is_some();
        let pass = live.as_ref().filter(|l| l.pass).map(|_| launch::OUTPUT);
        Ok(Tail {
            engine,
            op: op.to_string(),
            path,
            reader,
            live_used: live.is_some(),
            live: live.map(|l| l.pipes.map(Some)).unwrap_or([None, None]),
            direct,
            live_turn: 0,
            pass,
            held: None,
            follow,
            notify,
            idle: Duration::ZERO,
            done: false,
            reader_fd: None,
            gone: false,
            deadline: None,
            checked: Instant::now(),
            spawned_here,
            watch: None,
            watch_tried: false,
            last_id: 0,
        })
    }
}

impl Tail<'_> {
    fn live_open(&self) -> bool {
        self.live.iter().any(Option::is_some)
    }

    /// A stream event for a chunk from live pipe `i` (0 stdout, 1 stderr); the other pipe
    /// goes first next time.
    fn live_item(&mut self, i: usize, bytes: Vec<u8>, passed: u64) -> EventItem {
        self.live_turn = (i + 1) % 2;
        self.idle = Duration::ZERO;
        EventItem {
            event: crate::wire::Event {
                id: 0,
                ts: crate::wire::now_ts(),
                spid: Some(1),
                kind: if i == 0 { "stdout" } else { "stderr" }.to_string(),
                data: serde_json::Map::new(),
            },
            bytes,
            passed,
        }
    }

    /// A chunk from a live pipe, if one has data; closes the pipes that have ended.
    fn read_live(&mut self) -> Result<Option<EventItem>, BackendError> {
        for k in 0..2 {
            let i = (self.live_turn + k) % 2;
            let Some(fd) = &self.live[i] else {
                continue;
            };
            if let Some(out) = self.pass.map(|p| p[i]) {
                // SAFETY: splice(2) from our live pipe to the output descriptor; no
                // pointers but the null offsets.
                let n = unsafe {
                    libc::splice(
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        out,
                        std::ptr::null_mut(),
                        1 << 20,
                        libc::SPLICE_F_MOVE,
                    )
                };
                if n > 0 {
                    return Ok(Some(self.live_item(i, Vec::new(), n as u64)));
                }
                match nix::errno::Errno::last() {
                    _ if n == 0 => self.live[i] = None,
                    nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR => {}
                    nix::errno::Errno::EPIPE => {
                        // The reader is gone: from now on the output is only recorded.
                        self.pass = None;
                        return Err(BackendError::OutputClosed);
                    }
                    // The output cannot take a splice (a terminal): read and hand over.
                    _ => self.pass = None,
                }
                continue;
            }
            let mut bytes = Vec::with_capacity(1 << 20);
            // SAFETY: read into the vector's spare capacity; only the bytes read are then
            // marked initialised.
            let n = unsafe {
                libc::read(
                    fd.as_raw_fd(),
                    bytes.spare_capacity_mut().as_mut_ptr().cast(),
                    bytes.capacity(),
                )
            };
            if n > 0 {
                // SAFETY: read just initialised `n` bytes.
                unsafe { bytes.set_len(n as usize) };
                return Ok(Some(self.live_item(i, bytes, 0)));
            }
            match nix::errno::Errno::last() {
                _ if n == 0 => self.live[i] = None,
                nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR => {}
                e => return Err(BackendError::Store(format!("live output: {e}"))),
            }
        }
        Ok(None)
    }

    /// Whether a live process owns the operation: it holds the log (see `LogWriter::own`)
    /// or, before the log exists, the scratch dir (see `LocalEngine::unrecorded`).
    fn owned(&self) -> bool {
        LogWriter::owned(&self.path) || claim::held(&self.engine.store.scratch_dir(&self.op))
    }

    /// Called when the log has had nothing new for a while, or its writer hung up: once
    /// nobody owns the operation, recovery gives it its ending, and `gone` makes the next
    /// read past the log's end final (see `ending`).
    fn check_supervisor(&mut self) -> Result<(), BackendError> {
        if self.gone || self.owned() {
            return Ok(());
        }
        if let Some(row) = self.engine.store.op(&self.op)? {
            if !row.status.is_terminal() {
                self.engine.recover_op(&row);
            }
        }
        self.gone = true;
        Ok(())
    }

    /// The log ended without `completion` and nobody will write one: the ending the row
    /// has, else an error that says what became of the operation.
    fn ending(&mut self) -> Result<EventItem, BackendError> {
        if let Some(row) = self.engine.store.op(&self.op)? {
            if row.status.is_terminal() {
                let data = eventlog::completion(
                    row.status,
                    (row.duration.unwrap_or(0.0) * 1000.0) as u64,
                    row.result_image.as_deref(),
                    row.error.as_deref(),
                    row.image_size.unwrap_or(0),
                );
                return Ok(EventItem {
                    event: crate::wire::Event {
                        // Where it would have been: a reader resuming by id still gets it.
                        id: self.last_id + 1,
                        ts: crate::wire::now_ts(),
                        spid: None,
                        kind: "completion".into(),
                        data,
                    },
                    bytes: Vec::new(),
                    passed: 0,
                });
            }
        }
        let why = self
            .engine
            .exit_of(&self.op)
            .unwrap_or_else(|| "its supervisor is gone".into());
        Err(BackendError::Store(format!(
            "operation {} ended without recording its result: {why}; nothing of the run was kept (see {})",
            self.op,
            self.engine.store.op_dir(&self.op).join("supervisor.log").display()
        )))
    }

    /// `d`, or less if the deadline comes sooner.
    fn capped(&self, d: Duration) -> Duration {
        match self.deadline {
            Some(t) => d.min(t.saturating_duration_since(Instant::now())),
            None => d,
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|t| Instant::now() >= t)
    }

    /// Waits for the log to grow (or for a sign that its writer is gone).
    fn wait(&mut self) -> Result<(), BackendError> {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        // SAFETY: the watched fd is our stdout, open for the whole process.
        let reader = self
            .reader_fd
            .map(|fd| unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) });
        let gone = |fds: &[PollFd]| {
            fds.iter().any(|f| {
                f.revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
            })
        };
        let live: Vec<PollFd> = self
            .live
            .iter()
            .flatten()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        let ms = |d: Duration| PollTimeout::from(u16::try_from(d.as_millis()).unwrap_or(u16::MAX));
        // Not for a run spawned here whose supervisor has just gone: closing an inotify
        // descriptor costs an RCU grace period, milliseconds on the run's path.
        if !self.watch_tried && !self.spawned_here && self.reader.is_some() {
            self.watch_tried = true;
            self.watch = watch_file(&self.path);
        }
        if let (None, Some(ino)) = (&self.notify, &self.watch) {
            let mut fds = vec![PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
            fds.extend(reader.iter().map(|r| PollFd::new(*r, PollFlags::empty())));
            let watched = fds.len();
            fds.extend(live);
            let changed = match nix::poll::poll(&mut fds, ms(self.capped(WATCH_CHECK))) {
                Ok(n) => n > 0,
                Err(nix::errno::Errno::EINTR) => return Ok(()),
                Err(e) => return Err(BackendError::Store(format!("poll: {e}"))),
            };
            if gone(&fds[1..watched]) {
                self.reader_fd = None;
                return Err(BackendError::OutputClosed);
            }
            if changed {
                while matches!(ino.read_events(), Ok(ev) if !ev.is_empty()) {}
                return Ok(());
            }
            return self.check_supervisor();
        }
        let Some(fd) = &self.notify else {
            self.idle = (self.idle * 2).clamp(Duration::from_millis(2), Duration::from_millis(100));
            let mut fds: Vec<PollFd> = reader
                .iter()
                .map(|r| PollFd::new(*r, PollFlags::empty()))
                .collect();
            fds.extend(live);
            let _ = nix::poll::poll(&mut fds, ms(self.capped(self.idle)));
            if gone(&fds) {
                self.reader_fd = None;
                return Err(BackendError::OutputClosed);
            }
            if self.idle >= Duration::from_millis(100) {
                self.check_supervisor()?;
            }
            return Ok(());
        };
        let mut fds = vec![PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        fds.extend(reader.iter().map(|r| PollFd::new(*r, PollFlags::empty())));
        let watched = fds.len();
        fds.extend(live);
        match nix::poll::poll(&mut fds, ms(self.capped(Duration::from_secs(1)))) {
            Ok(0) => self.check_supervisor(),
            Ok(_) => {
                if gone(&fds[1..watched]) {
                    self.reader_fd = None;
                    return Err(BackendError::OutputClosed);
                }
                let hangup = fds[0]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
                let mut buf = [0u8; 4096];
                while matches!(nix::unistd::read(fd.as_raw_fd(), &mut buf), Ok(n) if n > 0) {}
                if hangup {
                    // The supervisor is gone: whatever it wrote is in the log now.
                    self.notify = None;
                    self.idle = Duration::ZERO;
                }
                Ok(())
            }
            Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(BackendError::Store(format!("poll: {e}"))),
        }
    }
}

impl EventStream for Tail<'_> {
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    fn watch_reader(&mut self) {
        let fd = launch::OUTPUT[0];
        // Only a pipe or socket has a reader that can go away.
        if let Ok(st) = nix::sys::stat::fstat(fd) {
            let kind = st.st_mode & libc::S_IFMT;
            if kind == libc::S_IFIFO || kind == libc::S_IFSOCK {
                self.reader_fd = Some(fd);
            }
        }
    }

    fn next_event(&mut self) -> Result<Option<EventItem>, BackendError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.live_open() {
                if let Some(item) = self.read_live()? {
                    return Ok(Some(item));
                }
            } else if let Some(item) = self.held.take() {
                if item.event.kind == "completion" {
                    self.done = true;
                }
                return Ok(Some(item));
            }
            if self.held.is_some() {
                // Waiting for the live pipes to end.
                if self.past_deadline() {
                    return Ok(None);
                }
                self.wait()?;
                continue;
            }
            if self.reader.is_none() {
                match LogReader::open(&self.path) {
                    Ok(mut reader) => {
                        if self.live_used {
                            reader.skip_stream_payloads();
                        }
                        self.reader = Some(reader)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if self.notify.is_none() && !self.owned() {
                            // Its supervisor is gone (the notify pipe hung up) without one.
                            return Err(BackendError::Store(format!(
                                "operation {} has no event log: its supervisor exited before starting it",
                                self.op
                            )));
                        }
                    }
                    Err(e) => {
                        return Err(BackendError::Store(format!("{}: {e}", self.path.display())))
                    }
                }
            }
            let next = match self.reader.as_mut() {
                Some(reader) => reader
                    .next()
                    .map_err(|e| BackendError::Store(format!("event log of {}: {e}", self.op)))?,
                None => None,
            };
            if let Some(ev) = next {
                self.idle = Duration::ZERO;
                self.last_id = self.last_id.max(ev.header.id);
                let kind = ev.header.kind.clone();
                if self.live_used && (kind == "stdout" || kind == "stderr") {
                    if self.direct[usize::from(kind == "stderr")] {
                        // Written to our output by the supervisor: only its length is news.
                        return Ok(Some(EventItem {
                            event: ev.header,
                            bytes: Vec::new(),
                            passed: ev.skipped,
                        }));
                    }
                    continue;
                }
                let item = EventItem {
                    event: ev.header,
                    bytes: ev.payload,
                    passed: 0,
                };
                if self.live_open() && matches!(kind.as_str(), "exit" | "truncated" | "completion")
                {
                    self.held = Some(item);
                    continue;
                }
                if item.event.kind == "completion" {
                    self.done = true;
                }
                return Ok(Some(item));
            }
            if !self.follow {
                return Ok(None);
            }
            if self.gone && !self.live_open() {
                let item = self.ending()?;
                self.done = true;
                return Ok(Some(item));
            }
            if interrupt::take() {
                return Err(BackendError::Interrupted);
            }
            if self.past_deadline() {
                // A caller that only looks (`wait` on several operations) never waits
                // here: it still learns in time that nobody owns the operation any more.
                if self.checked.elapsed() >= WATCH_CHECK {
                    self.checked = Instant::now();
                    self.check_supervisor()?;
                }
                return Ok(None);
            }
            self.wait()?;
        }
    }
}

/// An inotify watch on the log, for a follower that has no notify pipe.
fn watch_file(path: &std::path::Path) -> Option<Inotify> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags};
    let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok()?;
    ino.add_watch(
        path,
        AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE,
    )
    .ok()?;
    Some(ino)
}

impl LocalEngine {
    /// Whether `op`'s event log has its `completion` (headers only: the output is skipped).
    pub(super) fn log_has_completion(&self, op: &str) -> bool {
        let Ok(mut log) = LogReader::open(&self.store.op_dir(op).join("events")) else {
            return false;
        };
        log.skip_stream_payloads();
        while let Ok(Some(event)) = log.next() {
            if event.header.kind == "completion" {
                return true;
            }
        }
        false
    }
}
