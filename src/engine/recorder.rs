//! Writing a run's event log from a thread of its own.
//!
//! The supervisor reads the command's output and hands each chunk over; the thread writes
//! the frames. Reading the next chunk then overlaps with writing the last one into the page
//! cache, which is most of the cost of recording a run's output. Every event goes through
//! the same queue, so the log keeps their order.
//!
//! The thread is started only once the sandbox exists (`start`): the sandbox is cloned from
//! the supervisor, and a copy made while another thread holds the allocator's lock would
//! deadlock in its first allocation.

use super::eventlog::LogWriter;
use serde_json::{Map, Value};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Chunks in flight at most (each up to the supervisor's read size).
const QUEUE: usize = 8;

enum Frame {
    Event(String, Option<u32>, Map<String, Value>),
    Stream(&'static str, Vec<u8>),
}

pub struct Recorder {
    state: State,
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
        let thread = std::thread::spawn(move || {
            for frame in frames {
                match frame {
                    Frame::Event(kind, spid, data) => {
                        let _ = log.append(&kind, spid, data);
                    }
                    Frame::Stream(name, bytes) => {
                        let _ = log.append_stream(name, 1, &bytes);
                        let _ = give_back.try_send(bytes);
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
