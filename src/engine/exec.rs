//! Reaching a running operation's supervisor to start a subprocess in its sandbox or to
//! signal one: a Unix socket the supervisor listens on while its command runs, named after
//! the operation in the abstract namespace (no path in the store: an operation's socket
//! goes away with its supervisor, even a killed one). Only a peer with the supervisor's own
//! uid is served; the sandboxes, in network namespaces of their own, cannot reach it.
//!
//! One connection carries one request (a JSON line) and its reply (a JSON line).

use crate::wire::ExecSpec;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

/// What a client asks of the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecRequest {
    /// Start a subprocess; the reply carries its spid once it runs.
    Exec(ExecSpec),
    /// Send `signal` to subprocess `spid` (2 or more) and its process group.
    Signal { spid: u32, signal: i32 },
}

/// The supervisor's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecReply {
    /// The subprocess started with this spid (its events carry it).
    Started { spid: u32 },
    /// The signal was sent.
    Signalled,
    /// The request is wrong, in words for the user.
    Invalid(String),
    /// No live subprocess with that spid.
    NoSuchSubprocess(u32),
    /// The operation's command has ended: nothing more starts in its sandbox.
    Ending,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Nobody listens: the operation is not running (not started yet, or over).
    #[error("operation {0} is not running")]
    NotRunning(String),
    #[error("talking to the supervisor of {op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

/// How long a reply may take: the init forks and execs at once.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn address(op: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("contree/exec/{}", op.to_ascii_lowercase()))
}

/// The supervisor's listener for `op`, non-blocking, for its poll loop.
pub(crate) fn listen(op: &str) -> std::io::Result<UnixListener> {
    let listener = UnixListener::bind_addr(&address(op)?)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Whether `stream`'s peer runs with our uid (root's supervisors serve only root).
pub(crate) fn peer_is_us(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    getsockopt(stream, PeerCredentials).is_ok_and(|c| c.uid() == nix::unistd::geteuid().as_raw())
}

/// Why an accepted connection gave no request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("reading the request: {0}")]
    Read(#[from] std::io::Error),
    #[error("not a request: {0}")]
    Parse(#[from] serde_json::Error),
}

/// Reads one request from an accepted connection.
pub(crate) fn read_request(stream: &UnixStream) -> Result<ExecRequest, RequestError> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let line = read_line(stream)?;
    Ok(serde_json::from_str(&line)?)
}

/// Answers a connection (a client gone meanwhile is no error of ours).
pub(crate) fn reply(mut stream: &UnixStream, reply: &ExecReply) {
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(&line);
}

/// Sends `request` to the supervisor of `op` and returns its reply.
pub fn request(op: &str, request: &ExecRequest) -> Result<ExecReply, ExecError> {
    let io = |source| ExecError::Io {
        op: op.to_string(),
        source,
    };
    let mut stream = match address(op).and_then(|a| UnixStream::connect_addr(&a)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ExecError::NotRunning(op.to_string()))
        }
        Err(e) => return Err(io(e)),
    };
    let mut line = serde_json::to_vec(request).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    let answer = read_line(&stream).map_err(io)?;
    if answer.is_empty() {
        // Closed without a word: the command ended while we asked.
        return Ok(ExecReply::Ending);
    }
    serde_json::from_str(&answer).map_err(|e| io(std::io::Error::other(e)))
}

impl super::LocalEngine {
    /// Asks the supervisor of `op` (see `exec`); an operation without one listening is not
    /// running, or is not ours.
    pub(super) fn ask_supervisor(
        &self,
        op: &str,
        asked: &ExecRequest,
    ) -> Result<ExecReply, crate::backend::BackendError> {
        match request(op, asked) {
            Ok(reply) => Ok(reply),
            Err(ExecError::NotRunning(_)) => {
                let row = self.store.op(op)?;
                let Some(row) = row else {
                    return Err(crate::backend::BackendError::NotFound(
                        format!("operation {op} not found").into(),
                    ));
                };
                let state = if row.status.is_terminal() {
                    "has ended"
                } else {
                    "has not started its command yet"
                };
                Err(crate::backend::BackendError::NotRunning(format!(
                    "operation {op} {state}"
                )))
            }
            Err(e @ ExecError::Io { .. }) => {
                Err(crate::backend::BackendError::Store(e.to_string()))
            }
        }
    }
}

/// One line from `stream`, at most 1 MiB of it.
fn read_line(stream: &UnixStream) -> std::io::Result<String> {
    use std::io::Read;
    let mut line = String::new();
    BufReader::new(stream).take(1 << 20).read_line(&mut line)?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_answered_over_the_operation_s_socket() {
        let op = uuid::Uuid::new_v4().to_string();
        assert!(matches!(
            request(&op, &ExecRequest::Signal { spid: 2, signal: 9 }),
            Err(ExecError::NotRunning(_))
        ));
        let listener = listen(&op).unwrap();
        let server = std::thread::spawn(move || loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    assert!(peer_is_us(&stream));
                    let asked = read_request(&stream).unwrap();
                    assert_eq!(asked, ExecRequest::Signal { spid: 2, signal: 9 });
                    reply(&stream, &ExecReply::NoSuchSubprocess(2));
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        });
        let got = request(&op, &ExecRequest::Signal { spid: 2, signal: 9 }).unwrap();
        assert_eq!(got, ExecReply::NoSuchSubprocess(2));
        server.join().unwrap();
    }
}
