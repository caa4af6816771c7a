//! Reading a log frame by frame while it may still grow: a frame not yet whole is left
//! for the next read, and big payloads are read straight into their own buffer.

use super::{is_stream, LogEvent};
use crate::wire::Event;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Reads frames from a log that may still be growing.
pub struct LogReader {
    file: File,
    /// Return stdout/stderr frames without their payload (a follower that gets the output
    /// another way): big payloads are then never read.
    skip_streams: bool,
    /// File offset of the first byte in `pending`.
    offset: u64,
    pending: Vec<u8>,
    start: usize,
}

pub(super) const READ_SIZE: usize = 1 << 20;

impl LogReader {
    pub fn open(path: &Path) -> io::Result<LogReader> {
        Ok(LogReader {
            file: File::open(path)?,
            skip_streams: false,
            offset: 0,
            pending: Vec::new(),
            start: 0,
        })
    }

    /// Return stream frames without their payloads from now on (see `skip_streams`).
    pub fn skip_stream_payloads(&mut self) {
        self.skip_streams = true;
    }

    /// The file offset just past the last frame returned.
    pub fn consumed(&self) -> u64 {
        self.offset + self.start as u64
    }

    /// The next complete frame, or `None` when none is complete yet.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> io::Result<Option<LogEvent>> {
        loop {
            if let Some(ev) = self.parse()? {
                return Ok(Some(ev));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    fn parse(&mut self) -> io::Result<Option<LogEvent>> {
        let avail = &self.pending[self.start..];
        if avail.len() < 8 {
            return Ok(None);
        }
        let hlen = u32::from_le_bytes(avail[0..4].try_into().unwrap_or_default()) as usize;
        let plen = u32::from_le_bytes(avail[4..8].try_into().unwrap_or_default()) as usize;
        if avail.len() < 8 + hlen + plen {
            if avail.len() >= 8 + hlen && (plen >= READ_SIZE / 4 || self.skip_streams) {
                return self.parse_large(hlen, plen);
            }
            return Ok(None);
        }
        let header: Event = serde_json::from_slice(&avail[8..8 + hlen])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let skip = self.skip_streams && is_stream(&header.kind);
        let payload = if skip {
            Vec::new()
        } else {
            avail[8 + hlen..8 + hlen + plen].to_vec()
        };
        self.start += 8 + hlen + plen;
        Ok(Some(LogEvent {
            header,
            payload,
            skipped: if skip { plen as u64 } else { 0 },
        }))
    }

    /// A frame with a large payload, not all read yet: the rest of the payload is read
    /// straight into its own buffer (buffering it here first would copy it twice more).
    fn parse_large(&mut self, hlen: usize, plen: usize) -> io::Result<Option<LogEvent>> {
        let frame_at = self.consumed();
        let have = self.pending.len() - self.start - 8 - hlen;
        let file_len = self.file.metadata()?.len();
        if file_len < frame_at + (8 + hlen + plen) as u64 {
            return Ok(None);
        }
        if self.skip_streams {
            let header: Event =
                serde_json::from_slice(&self.pending[self.start + 8..self.start + 8 + hlen])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if is_stream(&header.kind) {
                self.offset = frame_at + (8 + hlen + plen) as u64;
                self.pending.clear();
                self.start = 0;
                return Ok(Some(LogEvent {
                    header,
                    payload: Vec::new(),
                    skipped: plen as u64,
                }));
            }
        }
        let mut payload = Vec::with_capacity(plen);
        payload.extend_from_slice(&self.pending[self.start + 8 + hlen..]);
        let mut at = frame_at + (8 + hlen + have) as u64;
        while payload.len() < plen {
            let want = plen - payload.len();
            let spare = &mut payload.spare_capacity_mut()[..want];
            // SAFETY: pread writes at most `spare.len()` bytes into the spare capacity;
            // only the bytes it reports are then marked initialised.
            let rc = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    at as libc::off_t,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "event log shrank",
                ));
            }
            // SAFETY: pread just initialised `rc` more bytes.
            unsafe { payload.set_len(payload.len() + rc as usize) };
            at += rc as u64;
        }
        let header: Event =
            serde_json::from_slice(&self.pending[self.start + 8..self.start + 8 + hlen])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // Past this frame: the buffer starts afresh at the next one.
        self.offset = frame_at + (8 + hlen + plen) as u64;
        self.pending.clear();
        self.start = 0;
        Ok(Some(LogEvent {
            header,
            payload,
            skipped: 0,
        }))
    }

    /// Reads more bytes; false when the file has nothing new.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.offset += self.start as u64;
            self.pending.drain(..self.start);
            self.start = 0;
        }
        let have = self.pending.len();
        // Skipping payloads, a page finds the next header without reading the payload.
        let size = if self.skip_streams {
            4 << 10
        } else {
            READ_SIZE
        };
        self.pending.reserve(size);
        let spare = &mut self.pending.spare_capacity_mut()[..size];
        let n = loop {
            // SAFETY: pread writes at most `spare.len()` bytes into the vector's spare
            // capacity; only the `n` bytes it reports are then marked initialised. Reading
            // into spare capacity saves zero-filling a megabyte per read.
            let rc = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    (self.offset + have as u64) as libc::off_t,
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // SAFETY: the first `n` bytes of the spare capacity were just written by pread.
        unsafe { self.pending.set_len(have + n) };
        Ok(n > 0)
    }
}
