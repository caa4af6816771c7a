//! The init's status pipe: one line per fact, written by the sandbox's init (and by the
//! command's process when a hardening step fails before its exec), read by the supervisor.
//! Both sides go through this module, so the two can never disagree on a line.
//!
//! Each line is one write(2) of under `PIPE_BUF` bytes, so lines from the init and the
//! command's process never interleave; the reader may still get them in pieces (`Lines`).

use std::fmt::Display;

/// One fact from the init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InitStatus<M> {
    /// `pid N`: the command's process exists (its pid inside the sandbox).
    Started { pid: i32 },
    /// `execfail ERRNO`: its exec failed with this errno.
    ExecFailed { errno: i32 },
    /// `setupfail MESSAGE`: the sandbox could not be set up; the message runs to the end of
    /// the line.
    SetupFailed(M),
    /// `exit CODE SIGNAL CORE`: the command ended (code or -1, signal or -1, core 0 or 1).
    Exited { code: i32, signal: i32, core: bool },
    /// `spawned SPID PID`: subprocess `spid` (see `control`) was started and exec'd.
    SubStarted { spid: i32, pid: i32 },
    /// `subfail SPID ERRNO`: its exec failed (or, with errno 0, it could not be forked).
    SubFailed { spid: i32, errno: i32 },
    /// `subexit SPID CODE SIGNAL CORE`: subprocess `spid` ended, as `exit` says.
    SubExited {
        spid: i32,
        code: i32,
        signal: i32,
        core: bool,
    },
}

/// What the init writes: an error goes into its line as it is, with no copy made first.
pub(crate) type Report<'a> = InitStatus<&'a dyn Display>;

impl<M: Display> InitStatus<M> {
    /// The line, newline included, ready for one write(2).
    pub(crate) fn line(&self) -> String {
        // One format string per kind: the init writes `pid` on every run's path.
        match self {
            InitStatus::Started { pid } => format!("pid {pid}\n"),
            InitStatus::ExecFailed { errno } => format!("execfail {errno}\n"),
            InitStatus::SetupFailed(message) => format!("setupfail {message}\n"),
            InitStatus::Exited { code, signal, core } => {
                format!("exit {code} {signal} {}\n", *core as u8)
            }
            InitStatus::SubStarted { spid, pid } => format!("spawned {spid} {pid}\n"),
            InitStatus::SubFailed { spid, errno } => format!("subfail {spid} {errno}\n"),
            InitStatus::SubExited {
                spid,
                code,
                signal,
                core,
            } => format!("subexit {spid} {code} {signal} {}\n", *core as u8),
        }
    }
}

impl<'a> InitStatus<&'a str> {
    /// A line as `line` writes it (the newline may be there or not); `None` for anything
    /// else, which the reader skips.
    pub(crate) fn parse(line: &'a str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let keyword = words.next()?;
        let mut int = || words.next()?.parse::<i32>().ok();
        let status = match keyword {
            "pid" => InitStatus::Started { pid: int()? },
            "execfail" => InitStatus::ExecFailed { errno: int()? },
            "setupfail" => {
                let at = line.find(keyword)? + keyword.len();
                return Some(InitStatus::SetupFailed(line[at..].trim()));
            }
            "exit" => InitStatus::Exited {
                code: int()?,
                signal: int()?,
                core: int()? != 0,
            },
            "spawned" => InitStatus::SubStarted {
                spid: int()?,
                pid: int()?,
            },
            "subfail" => InitStatus::SubFailed {
                spid: int()?,
                errno: int()?,
            },
            "subexit" => InitStatus::SubExited {
                spid: int()?,
                code: int()?,
                signal: int()?,
                core: int()? != 0,
            },
            _ => return None,
        };
        // A number too many is no line of ours either.
        words.next().is_none().then_some(status)
    }
}

/// What has come through the pipe so far, handed out a whole line at a time.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    pending: String,
}

impl Lines {
    /// Adds what one read(2) returned (it may end in the middle of a line).
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.pending.push_str(&String::from_utf8_lossy(bytes));
    }

    /// The next whole line, with its newline.
    pub(crate) fn next_line(&mut self) -> Option<String> {
        let end = self.pending.find('\n')?;
        Some(self.pending.drain(..=end).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<InitStatus<&'static str>> {
        vec![
            InitStatus::Started { pid: 2 },
            InitStatus::Started { pid: i32::MAX },
            InitStatus::ExecFailed {
                errno: libc::ENOENT,
            },
            InitStatus::SetupFailed("cannot mount the overlay root (3 layers): EINVAL"),
            InitStatus::SetupFailed(""),
            InitStatus::Exited {
                code: 0,
                signal: -1,
                core: false,
            },
            InitStatus::Exited {
                code: -1,
                signal: libc::SIGSEGV,
                core: true,
            },
            InitStatus::SubStarted { spid: 2, pid: 40 },
            InitStatus::SubFailed {
                spid: 3,
                errno: libc::ENOENT,
            },
            InitStatus::SubExited {
                spid: 2,
                code: -1,
                signal: libc::SIGKILL,
                core: false,
            },
        ]
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        for status in every_kind() {
            let line = status.line();
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            assert_eq!(InitStatus::parse(&line), Some(status), "{line:?}");
            assert_eq!(InitStatus::parse(line.trim_end()), Some(status), "{line:?}");
        }
    }

    #[test]
    fn the_writer_side_formats_errors_in_place() {
        let e = std::io::Error::from_raw_os_error(libc::EPERM);
        let line = Report::SetupFailed(&e).line();
        assert_eq!(line, format!("setupfail {e}\n"));
        assert_eq!(
            InitStatus::parse(&line),
            Some(InitStatus::SetupFailed(e.to_string().as_str()))
        );
        assert_eq!(Report::Started { pid: 7 }.line(), "pid 7\n");
        assert_eq!(Report::ExecFailed { errno: 2 }.line(), "execfail 2\n");
        let exit = Report::Exited {
            code: 3,
            signal: -1,
            core: false,
        };
        assert_eq!(exit.line(), "exit 3 -1 0\n");
    }

    #[test]
    fn a_message_is_trimmed_and_any_nonzero_core_means_a_dump() {
        assert_eq!(
            InitStatus::parse("setupfail   spaced  message \n"),
            Some(InitStatus::SetupFailed("spaced  message"))
        );
        assert_eq!(
            InitStatus::parse("exit 1 -1 7\n"),
            Some(InitStatus::Exited {
                code: 1,
                signal: -1,
                core: true
            })
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in [
            "",
            "\n",
            "   \n",
            "pid\n",
            "pid x\n",
            "pid 5 6\n",
            "pid 99999999999\n",
            "execfail\n",
            "execfail ENOENT\n",
            "exit\n",
            "exit 0 -1\n",
            "exit 0 -1 0 1\n",
            "exit 0 x 0\n",
            "PID 5\n",
            "pidd 5\n",
            "setupfailure of sorts\n",
            "started 5\n",
            "spawned 2\n",
            "subexit 2 0 -1\n",
            "subfail 2 2 2\n",
        ] {
            assert_eq!(InitStatus::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_line_split_across_reads_comes_out_whole() {
        let mut lines = Lines::default();
        lines.push(b"pi");
        assert_eq!(lines.next_line(), None);
        lines.push(b"d 5\nexit 0 -1");
        assert_eq!(lines.next_line().as_deref(), Some("pid 5\n"));
        assert_eq!(lines.next_line(), None);
        lines.push(b" 0\nsetupfail a\nsetupfail b\n");
        assert_eq!(lines.next_line().as_deref(), Some("exit 0 -1 0\n"));
        assert_eq!(lines.next_line().as_deref(), Some("setupfail a\n"));
        assert_eq!(lines.next_line().as_deref(), Some("setupfail b\n"));
        assert_eq!(lines.next_line(), None);
    }

    #[test]
    fn a_partial_last_line_is_never_handed_out() {
        let mut lines = Lines::default();
        lines.push(b"exit 0 -1 0");
        assert_eq!(lines.next_line(), None);
        // A line cut inside a character still ends up as one line.
        let mut lines = Lines::default();
        lines.push(b"setupfail \xc3");
        lines.push(b"\xa9\n");
        let line = lines.next_line().unwrap();
        assert!(matches!(
            InitStatus::parse(&line),
            Some(InitStatus::SetupFailed(_))
        ));
    }
}
