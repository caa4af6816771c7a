//! The supervisor's requests to a running sandbox's init, over a socket pair made when the
//! sandbox starts: start one more process inside it (an `exec`, with its own stdio), or
//! signal one. The init answers on its status pipe (`status`), as it does for the main
//! command, so the supervisor reads every fact about the sandbox's processes in one place.
//!
//! A process started this way is the init's child: it has the sandbox's namespaces, root,
//! cgroup and limits because it is forked from inside them, and goes through the same
//! hardening before its exec as the main command (see `sandbox::exec_process`). Nothing
//! enters the sandbox from outside.
//!
//! One request is one datagram (SOCK_SEQPACKET): a JSON body and, for a spawn, the three
//! descriptors of its stdin, stdout and stderr.

use crate::engine::fdpass;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{OwnedFd, RawFd};

/// The largest request; an exec's argv and environment must fit.
pub(crate) const MAX_REQUEST: usize = 256 << 10;

/// What the supervisor asks of the init.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Start `Process` (its stdin, stdout and stderr come with the request).
    Spawn(Process),
    /// Send `signal` to the process group of subprocess `spid`.
    Signal { spid: u32, signal: i32 },
}

/// A process to start inside the sandbox: what the main command's `Spec` says, per process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Process {
    pub spid: u32,
    pub command: String,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    /// `PATH` to find a bare command name with.
    pub search_path: String,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

/// The two ends: the supervisor's and the init's. Both close on exec.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends `request` with `fds` (a spawn's stdin, stdout and stderr).
pub(crate) fn send(sock: &OwnedFd, request: &Request, fds: &[RawFd]) -> io::Result<()> {
    let body = serde_json::to_vec(request).map_err(io::Error::other)?;
    if body.len() > MAX_REQUEST {
        return Err(io::Error::other(format!(
            "the command and its environment take {} bytes, more than {MAX_REQUEST}",
            body.len()
        )));
    }
    fdpass::send(sock, &body, fds)
}

/// The next request and its descriptors; `None` once the supervisor's end is closed.
pub(crate) fn recv(sock: RawFd, buf: &mut [u8]) -> io::Result<Option<(Request, Vec<OwnedFd>)>> {
    let (len, fds) = fdpass::recv(sock, buf, 3)?;
    if len == 0 {
        return Ok(None);
    }
    let request = serde_json::from_slice(&buf[..len]).map_err(io::Error::other)?;
    Ok(Some((request, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_request_crosses_with_its_descriptors() {
        let (ours, theirs) = pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let request = Request::Spawn(Process {
            spid: 2,
            command: "/bin/sh".into(),
            argv: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            search_path: "/bin".into(),
            cwd: "/".into(),
            uid: 0,
            gid: 0,
        });
        send(
            &ours,
            &request,
            &[r.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()],
        )
        .unwrap();
        let mut buf = vec![0u8; MAX_REQUEST];
        let (got, fds) = recv(theirs.as_raw_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(got, request);
        assert_eq!(fds.len(), 3);
        let signal = Request::Signal {
            spid: 3,
            signal: 15,
        };
        send(&ours, &signal, &[]).unwrap();
        let (got, fds) = recv(theirs.as_raw_fd(), &mut buf).unwrap().unwrap();
        assert_eq!((got, fds.len()), (signal, 0));
        drop(ours);
        assert!(recv(theirs.as_raw_fd(), &mut buf).unwrap().is_none());
    }
}
