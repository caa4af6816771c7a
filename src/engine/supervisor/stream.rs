//! One stream of the command's output (stdout or stderr) on its way from the command's
//! pipe into the event log and, for a followed run, to the CLI: by tee(2) and splice(2)
//! where it can be, so the bytes are copied as few times as the kernel allows. What is
//! past the request's cap is counted and dropped.

use crate::engine::recorder::{Recorder, Relay};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// The most output taken from the command in one go (its pipes hold as much).
const CHUNK: usize = 1 << 20;

/// Where a stream's output goes besides the log.
pub(super) enum Out {
    /// A pipe: the CLI's live pipe, or the CLI's own stdout or stderr when that is a pipe.
    /// It gets the bytes by tee(2) before they are recorded, which copies nothing.
    Pipe(OwnedFd),
    /// The CLI's own stdout or stderr when that is not a pipe (a file, /dev/null): it gets
    /// the bytes by splice(2) once they are recorded.
    File(OwnedFd),
}

impl Out {
    /// The CLI's own descriptor, handed over to take this stream directly (see `Live`).
    pub(super) fn direct(fd: OwnedFd) -> Out {
        match nix::sys::stat::fstat(fd.as_raw_fd()) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFIFO => {
                // A pipe to the CLI's reader (`contree run … | cat`) holds 64 KiB: as much as
                // a chunk, so a tee moves a chunk at a time instead of a sixteenth of one.
                // Best effort: a pipe that cannot grow (past a user's pipe quota) stays.
                let _ = nix::fcntl::fcntl(
                    fd.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as libc::c_int),
                );
                Out::Pipe(fd)
            }
            _ => Out::File(fd),
        }
    }
}

/// A followed run's output: pipes to the CLI, and the CLI's own stdout and stderr where
/// the supervisor may write that stream itself. A stream delivered directly goes from the
/// command to its destination without passing through the CLI, which then only learns
/// from its pipe's end that the stream is over (and, from the pipe's reader going away,
/// that the CLI is gone and delivery must stop).
pub struct Live {
    pub pipes: [OwnedFd; 2],
    pub direct: [Option<OwnedFd>; 2],
}

/// Per-stream bookkeeping: bytes recorded up to the cap, the rest counted and dropped.
pub(super) struct Stream {
    pub(super) name: &'static str,
    pub(super) fd: Option<OwnedFd>,
    /// Where the output goes besides the log (see `Run::live`).
    pub(super) out: Option<Out>,
    /// `out` (a pipe) was full last time: wait for room before taking more from `fd`.
    pub(super) out_full: bool,
    /// With direct delivery, the CLI's pipe for this stream: closed at the end, polled to
    /// see the CLI go.
    pub(super) marker: Option<OwnedFd>,
    cap: u64,
    pub(super) emitted: u64,
    pub(super) dropped: u64,
}

impl Stream {
    pub(super) fn new(name: &'static str, fd: OwnedFd, cap: u64) -> Stream {
        Stream {
            name,
            fd: Some(fd),
            out: None,
            out_full: false,
            marker: None,
            cap,
            emitted: 0,
            dropped: 0,
        }
    }

    /// The stream is over, or its reader is gone: no more output goes anywhere.
    pub(super) fn close_output(&mut self) {
        self.out = None;
        self.marker = None;
    }

    /// The CLI is gone: what it would have shown is only recorded from now on.
    pub(super) fn cli_gone(&mut self) {
        if self.marker.is_some() {
            self.close_output();
        }
    }

    /// Moves what the pipe holds into the log (up to the cap; the rest is counted and
    /// dropped). Clears `fd` at EOF. Bytes within the cap go through a relay pipe (see
    /// `recorder::Relay`) and are never read by us; near the cap they are read, so
    /// they can be cut.
    ///
    /// A pipe in `out` first gets the bytes by tee(2), which copies no data: the CLI (or
    /// whatever reads its stdout) gets the output at pipe speed, exactly the bytes that are
    /// recorded. A file in `out` gets them after they are recorded.
    pub(super) fn pump(&mut self, log: &mut Recorder) {
        let room = self.cap.saturating_sub(self.emitted) as usize;
        if matches!(self.out, Some(Out::File(_))) && room >= CHUNK && self.record_then_deliver(log)
        {
            return;
        }
        if room == 0 && self.pass_past_cap() {
            return;
        }
        let Some(fd) = self.fd.as_ref() else {
            return;
        };
        let mut want = CHUNK;
        if let (Some(Out::Pipe(out)), 1..) = (&self.out, room) {
            // SAFETY: tee(2) between two pipes we hold; no pointers involved.
            let rc = unsafe {
                libc::tee(
                    fd.as_raw_fd(),
                    out.as_raw_fd(),
                    room.min(CHUNK),
                    libc::SPLICE_F_NONBLOCK,
                )
            };
            match rc {
                0 => {
                    self.fd = None;
                    self.close_output();
                    return;
                }
                // Take exactly what was duplicated.
                n if n > 0 => want = n as usize,
                _ => {
                    match nix::errno::Errno::last() {
                        // Either nothing to take yet or no room in the reader's pipe.
                        nix::errno::Errno::EAGAIN => {
                            let mut ready: libc::c_int = 0;
                            // SAFETY: FIONREAD stores the pipe's byte count in `ready`.
                            let rc =
                                unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut ready) };
                            self.out_full = rc == 0 && ready > 0;
                        }
                        nix::errno::Errno::EINTR => {}
                        // The reader is gone (EPIPE): record on without it.
                        _ => self.close_output(),
                    }
                    return;
                }
            }
        }
        if room >= want {
            match self.relay(log, want) {
                Some(0) => return,
                Some(left) => want = left,
                None => return,
            }
        }
        let Some(fd) = self.fd.as_ref() else {
            return;
        };
        let exact = matches!(self.out, Some(Out::Pipe(_)));
        let mut buf = log.buffer(CHUNK);
        let mut failed = false;
        while buf.len() < want {
            let missing = want - buf.len();
            let spare = &mut buf.spare_capacity_mut()[..missing];
            // SAFETY: read(2) into the vector's spare capacity; only the bytes it reports
            // are then marked initialised.
            let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
            if n > 0 {
                // SAFETY: read just initialised `n` more bytes.
                unsafe { buf.set_len(buf.len() + n as usize) };
                if !exact {
                    // Nothing was duplicated ahead: take what there is.
                    break;
                }
                continue;
            }
            match nix::errno::Errno::last() {
                nix::errno::Errno::EINTR if n < 0 => continue,
                nix::errno::Errno::EAGAIN if n < 0 => {}
                _ => failed = true,
            }
            break;
        }
        if buf.is_empty() && failed {
            // EOF (or a broken pipe): the stream is over.
            self.fd = None;
            self.close_output();
            return;
        }
        let keep = room.min(buf.len());
        if let Some(Out::File(out)) = &self.out {
            if write_all_fd(out.as_fd(), &buf[..keep]).is_err() {
                self.close_output();
            }
        }
        self.record(log, buf);
    }

    /// Past the cap, where nothing more is recorded or shown: moves the next chunk from
    /// the command's pipe to /dev/null by splice(2), counted as dropped without being
    /// copied (1 GiB of output past the default cap costs the pipe's speed, not a read of
    /// every byte). False when that cannot be done (no /dev/null): the caller reads.
    fn pass_past_cap(&mut self) -> bool {
        let (Some(fd), Some(null)) = (self.fd.as_ref().map(|f| f.as_raw_fd()), dev_null()) else {
            return self.fd.is_none();
        };
        // SAFETY: splice(2) from the command's pipe to /dev/null; no pointers but the null
        // offsets.
        let n = unsafe {
            libc::splice(
                fd,
                std::ptr::null_mut(),
                null,
                std::ptr::null_mut(),
                CHUNK,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n > 0 {
            self.dropped += n as u64;
            return true;
        }
        if n == 0 {
            self.fd = None;
            self.close_output();
            return true;
        }
        matches!(
            nix::errno::Errno::last(),
            nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR
        )
    }

    /// For a file in `out`: duplicates the next chunk into a relay (tee(2)), records it,
    /// then moves it from the command's pipe into the file. False when this cannot be done
    /// (no relay): the caller then reads the chunk.
    fn record_then_deliver(&mut self, log: &mut Recorder) -> bool {
        let Some(fd) = self.fd.as_ref() else {
            return true;
        };
        let Some(relay) = log.relay(CHUNK) else {
            return false;
        };
        // SAFETY: tee(2) between two pipes we hold; no pointers involved.
        let n = unsafe {
            libc::tee(
                fd.as_raw_fd(),
                relay.input().as_raw_fd(),
                relay.capacity,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n > 0 {
            let n = n as usize;
            self.emitted += n as u64;
            log.relayed(self.name, relay, n);
            self.deliver(n);
            return true;
        }
        match self.moved_nothing(log, relay, n) {
            None | Some(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => true,
            Some(_) => false,
        }
    }

    /// After a tee or splice into `relay` that returned `n` < 1: the relay goes back unused,
    /// and at EOF (`n == 0`) the stream ends. The error otherwise.
    fn moved_nothing(
        &mut self,
        log: &mut Recorder,
        relay: Relay,
        n: isize,
    ) -> Option<nix::errno::Errno> {
        let errno = nix::errno::Errno::last();
        log.unused(relay);
        if n == 0 {
            self.fd = None;
            self.close_output();
            return None;
        }
        Some(errno)
    }

    /// Moves the next `n` bytes of the command's pipe, already recorded, into the file in
    /// `out`; if it takes no more, they are discarded.
    fn deliver(&mut self, n: usize) {
        let Some(fd) = self.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let mut left = n;
        let mut scratch = Vec::new();
        while left > 0 {
            if let Some(Out::File(out)) = &self.out {
                // SAFETY: splice(2) from the command's pipe (which holds these bytes) to a
                // descriptor we hold; no pointers but the null offsets.
                let rc = unsafe {
                    libc::splice(
                        fd,
                        std::ptr::null_mut(),
                        out.as_raw_fd(),
                        std::ptr::null_mut(),
                        left,
                        libc::SPLICE_F_MOVE,
                    )
                };
                if rc > 0 {
                    left -= rc as usize;
                    continue;
                }
                match nix::errno::Errno::last() {
                    nix::errno::Errno::EINTR => continue,
                    // A file that takes no splice (opened for appending): read and write.
                    nix::errno::Errno::EINVAL if rc < 0 => {
                        scratch.resize(left, 0);
                        let got = nix::unistd::read(fd, &mut scratch).unwrap_or(0);
                        if got == 0 {
                            return;
                        }
                        left -= got;
                        if write_all_fd(out.as_fd(), &scratch[..got]).is_err() {
                            self.close_output();
                        }
                        continue;
                    }
                    // It takes no more (full, gone): the rest is only recorded.
                    _ => self.close_output(),
                }
            }
            scratch.resize(left.min(CHUNK), 0);
            match nix::unistd::read(fd, &mut scratch) {
                Ok(0) => return,
                Ok(got) => left -= got,
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Moves up to `want` bytes (exactly `want` when they were teed) into the log through
    /// relay pipes (see `recorder::Relay`), without reading them. Returns how many
    /// bytes are still to be taken another way (no relay could be had), or `None` when the
    /// stream ended or the pipe is empty.
    fn relay(&mut self, log: &mut Recorder, want: usize) -> Option<usize> {
        let exact = matches!(self.out, Some(Out::Pipe(_)));
        let mut left = want;
        while left > 0 {
            let fd = self.fd.as_ref()?;
            let Some(relay) = log.relay(CHUNK) else {
                return Some(left);
            };
            // SAFETY: splice(2) between two pipes we hold; no pointers but the null offsets.
            let n = unsafe {
                libc::splice(
                    fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    relay.input().as_raw_fd(),
                    std::ptr::null_mut(),
                    left.min(relay.capacity),
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            };
            if n > 0 {
                let n = n as usize;
                self.emitted += n as u64;
                log.relayed(self.name, relay, n);
                left -= n;
                if !exact {
                    // Nothing was duplicated ahead: take what there is.
                    return None;
                }
                continue;
            }
            match self.moved_nothing(log, relay, n) {
                None => return None,
                Some(nix::errno::Errno::EINTR) => continue,
                Some(nix::errno::Errno::EAGAIN) if !exact => return None,
                Some(_) => return Some(left),
            }
        }
        Some(0)
    }

    fn record(&mut self, log: &mut Recorder, mut bytes: Vec<u8>) {
        let room = self.cap.saturating_sub(self.emitted) as usize;
        let keep = room.min(bytes.len());
        self.dropped += (bytes.len() - keep) as u64;
        if keep > 0 {
            bytes.truncate(keep);
            self.emitted += keep as u64;
            log.stream(self.name, bytes);
        }
    }
}

/// /dev/null, opened once: where output past the cap goes when no one takes it.
fn dev_null() -> Option<std::os::fd::RawFd> {
    static NULL: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    NULL.get_or_init(|| {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .ok()
    })
    .as_ref()
    .map(|f| f.as_raw_fd())
}

/// write(2) until all of `bytes` is written.
fn write_all_fd(fd: std::os::fd::BorrowedFd<'_>, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err(nix::errno::Errno::EIO),
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
