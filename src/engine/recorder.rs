//! Writing a run's event log from a thread of its own.
//!
//! The supervisor hands each chunk of the command's output over, in a relay pipe (see
//! `Relay`) or, near the output cap, in a buffer; the thread writes the frames. Taking the
//! next chunk then overlaps with writing the last one into the page cache, which is most of
//! the cost of recording a run's output. Every event goes through the same queue, so the
//! log keeps their order.
//!
//! The thread is started only once the sandbox exists (`start`): the sandbox is cloned from
//! the supervisor, and a copy made while another thread holds the allocator's lock would
//! deadlock in its first allocation.

use super::eventlog::LogWriter;
use serde_json::{Map, Value};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Chunks in flight at most (each up to the supervisor's read size).
const QUEUE: usize = 8;

/// Relay pipes at most (see `Relay`).
const RELAYS: usize = 4;

enum Frame {
    /// Create the log if it is deferred, and say how that went.
    Open(SyncSender<std::io::Result<()>>),
    Event(String, Option<u32>, Map<String, Value>),
    Stream(&'static str, Vec<u8>),
    /// A subprocess's output (see `stream_of`).
    StreamOf(&'static str, u32, Vec<u8>),
    Relayed(&'static str, Relay, usize),
}

/// A pipe that carries one chunk of output from the command's pipe to the log. The
/// supervisor moves the chunk in with splice(2), which only passes page references, so the
/// command's pipe is locked for moments; the recorder then splices it into the file,
/// holding only this pipe's lock while the bytes are copied into the page cache. (Splicing
/// the command's pipe into the file directly holds the lock the command writes under for
/// that whole copy: measured slower.) Each relay carries one chunk at a time and comes back
/// when it is written.
pub struct Relay {
    read: OwnedFd,
    write: OwnedFd,
    /// What one chunk may hold: the pipe's capacity.
    pub capacity: usize,
}

impl Relay {
    fn new(size: usize) -> std::io::Result<Relay> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Its bytes are always there before it is read, so the read end need never block;
        // draining after a failed write relies on that.
        nix::fcntl::fcntl(
            read.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // A smaller pipe (over the user's pipe budget) still works, a chunk at a time.
        let _ = nix::fcntl::fcntl(
            write.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(size as libc::c_int),
        );
        let capacity =
            nix::fcntl::fcntl(write.as_raw_fd(), nix::fcntl::FcntlArg::F_GETPIPE_SZ)? as usize;
        Ok(Relay {
            read,
            write,
            capacity: capacity.min(size),
        })
    }

    /// The end output is spliced into.
    pub fn input(&self) -> std::os::fd::BorrowedFd<'_> {
        self.write.as_fd()
    }
}

pub struct Recorder {
    state: State,
    /// Relays not in use (see `relay`).
    relays: Vec<Relay>,
    /// Relays made so far.
    made: usize,
    /// Relays the thread is done with.
    relays_back: Option<Receiver<Relay>>,
}

enum State {
    Direct(LogWriter),
    Threaded {
        queue: SyncSender<Frame>,
        /// Buffers the thread is done with, for the next chunks.
        spent: Receiver<Vec<u8>>,
        thread: JoinHandle<LogWriter>,
    },
    Closed,
}

impl Recorder {
    pub fn new(log: LogWriter) -> Recorder {
        Recorder {
            state: State::Direct(log),
            relays: Vec::new(),
            made: 0,
            relays_back: None,
        }
    }

    /// Moves the writing to a thread (see the module's doc for when this is safe).
    pub fn start(&mut self) {
        let State::Direct(_) = self.state else {
            return;
        };
        let State::Direct(mut log) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let (queue, frames) = sync_channel::<Frame>(QUEUE);
        let (give_back, spent) = sync_channel::<Vec<u8>>(QUEUE + 2);
        let (relay_back, relays_back) = sync_channel::<Relay>(RELAYS);
        self.relays_back = Some(relays_back);
        let thread = std::thread::spawn(move || {
            for frame in frames {
                match frame {
                    Frame::Open(done) => {
                        let _ = done.send(log.ensure_open());
                    }
                    Frame::Event(kind, spid, data) => {
                        let _ = log.append(&kind, spid, data);
                    }
                    Frame::Stream(name, bytes) => {
                        let _ = log.append_stream(name, 1, &bytes);
                        let _ = give_back.try_send(bytes);
                    }
                    Frame::StreamOf(name, spid, bytes) => {
                        let _ = log.append_stream(name, spid, &bytes);
                    }
                    Frame::Relayed(name, relay, len) => {
                        let _ =
                            relay_back.try_send(Self::write_relayed(&mut log, name, relay, len));
                    }
                }
            }
            log
        });
        self.state = State::Threaded {
            queue,
            spent,
            thread,
        };
    }

    pub fn event(&mut self, kind: &str, spid: Option<u32>, data: Map<String, Value>) {
        match &mut self.state {
            State::Direct(log) => {
                let _ = log.append(kind, spid, data);
            }
            State::Threaded { queue, .. } => {
                let _ = queue.send(Frame::Event(kind.to_string(), spid, data));
            }
            State::Closed => {}
        }
    }

    /// Makes sure the log exists (after the events handed over so far): the operation is
    /// then this process's (see `LogWriter::own`).
    pub fn ensure_open(&mut self) -> std::io::Result<()> {
        match &mut self.state {
            State::Direct(log) => log.ensure_open(),
            State::Threaded { queue, .. } => {
                let (done, answer) = sync_channel(1);
                queue
                    .send(Frame::Open(done))
                    .map_err(|_| std::io::Error::other("the event log's writer is gone"))?;
                answer
                    .recv()
                    .map_err(|_| std::io::Error::other("the event log's writer is gone"))?
            }
            State::Closed => Err(std::io::Error::other("the event log is closed")),
        }
    }

    /// A buffer for the next chunk of output (an empty one, with room for `size` bytes).
    pub fn buffer(&mut self, size: usize) -> Vec<u8> {
        if let State::Threaded { spent, .. } = &self.state {
            if let Ok(mut buf) = spent.try_recv() {
                buf.clear();
                return buf;
            }
        }
        Vec::with_capacity(size)
    }

    pub fn stream(&mut self, name: &'static str, bytes: Vec<u8>) {
        match &mut self.state {
            State::Direct(log) => {
                let _ = log.append_stream(name, 1, &bytes);
            }
            State::Threaded { queue, .. } => {
                let _ = queue.send(Frame::Stream(name, bytes));
            }
            State::Closed => {}
        }
    }

    /// Output of subprocess `spid` (2 or more): a few reads now and then, so no relays.
    pub fn stream_of(&mut self, name: &'static str, spid: u32, bytes: Vec<u8>) {
        match &mut self.state {
            State::Direct(log) => {
                let _ = log.append_stream(name, spid, &bytes);
            }
            State::Threaded { queue, .. } => {
                let _ = queue.send(Frame::StreamOf(name, spid, bytes));
            }
            State::Closed => {}
        }
    }

    /// An empty relay for the next chunk; waits for one when all are in flight. `None` only
    /// when no pipe can be made (the caller then reads the chunk instead).
    pub fn relay(&mut self, size: usize) -> Option<Relay> {
        if let Some(back) = &self.relays_back {
            self.relays.extend(back.try_iter());
        }
        if let Some(relay) = self.relays.pop() {
            return Some(relay);
        }
        if self.made < RELAYS {
            if let Ok(relay) = Relay::new(size) {
                self.made += 1;
                return Some(relay);
            }
        }
        self.relays_back.as_ref()?.recv().ok()
    }

    /// Takes back a relay that carried nothing.
    pub fn unused(&mut self, relay: Relay) {
        self.relays.push(relay);
    }

    /// Records the `len` bytes waiting in `relay` as one stream frame.
    pub fn relayed(&mut self, name: &'static str, relay: Relay, len: usize) {
        match &mut self.state {
            State::Direct(log) => {
                let relay = Self::write_relayed(log, name, relay, len);
                self.relays.push(relay);
            }
            State::Threaded { queue, .. } => {
                let _ = queue.send(Frame::Relayed(name, relay, len));
            }
            State::Closed => {}
        }
    }

    /// Writes a relayed chunk and hands the relay back empty: bytes a failed write left in
    /// it are drained, so the next chunk never follows stale ones.
    fn write_relayed(log: &mut LogWriter, name: &'static str, relay: Relay, len: usize) -> Relay {
        if log
            .append_stream_from_pipe(name, 1, relay.read.as_fd(), len)
            .is_err()
        {
            let mut scratch = vec![0u8; 64 * 1024];
            // The read end never blocks (see `Relay::new`): this stops when it is empty.
            while matches!(nix::unistd::read(relay.read.as_raw_fd(), &mut scratch), Ok(n) if n > 0)
            {
            }
        }
        relay
    }

    /// Writes the log's last event at once, after everything handed over so far, and says
    /// whether it made it into the log (the caller's `completion` must, or the follower is
    /// told). The log's preallocated blocks are given back first.
    pub fn append_now(
        &mut self,
        kind: &str,
        spid: Option<u32>,
        data: Map<String, Value>,
    ) -> std::io::Result<()> {
        self.flush();
        match &mut self.state {
            State::Direct(log) => {
                log.trim();
                log.append(kind, spid, data).map(drop)
            }
            _ => Err(std::io::Error::other("the event log is closed")),
        }
    }

    /// Waits until everything handed over is written.
    pub fn flush(&mut self) {
        if let State::Threaded { .. } = self.state {
            if let State::Threaded { queue, thread, .. } =
                std::mem::replace(&mut self.state, State::Closed)
            {
                drop(queue);
                if let Ok(log) = thread.join() {
                    self.state = State::Direct(log);
                }
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}
