//! Why a request to the API got no answer, said so a user can act on it: what failed
//! (connection refused, name not resolved, TLS, timeout) and where (`scheme://host:port`).
//!
//! reqwest's own text is `error sending request for url (…)`; the cause is further down its
//! source chain (hyper's and the socket's errors), which is walked here.

use std::error::Error as StdError;
use std::io;
use std::net::ToSocketAddrs;

/// Seconds a connection may take before it counts as failed (the client's connect timeout).
pub const CONNECT_TIMEOUT_SECS: u64 = 10;

/// `cannot reach http://127.0.0.1:9: connection refused (nothing listens on that port)`.
pub fn describe(e: &reqwest::Error) -> String {
    let place = e.url().map(origin).unwrap_or_else(|| "the API".to_string());
    if e.is_connect() || e.is_timeout() {
        format!("cannot reach {place}: {}", cause(e))
    } else {
        format!("the request to {place} failed: {}", cause(e))
    }
}

/// `scheme://host:port` of a URL: where the client tried to connect.
fn origin(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

fn cause(e: &reqwest::Error) -> String {
    let url = e.url();
    let host = url.and_then(|u| u.host_str()).unwrap_or("?").to_string();
    let port = url.and_then(|u| u.port_or_known_default()).unwrap_or(0);
    let https = url.is_some_and(|u| u.scheme() == "https");
    if e.is_timeout() {
        return if e.is_connect() {
            format!("the connection timed out after {CONNECT_TIMEOUT_SECS} s")
        } else {
            "no answer in time".to_string()
        };
    }
    if e.is_connect() {
        // A name is resolved again to tell "no such host" apart (the resolver's text is the
        // only place that says so); an IP literal never needs it.
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok();
        if !literal {
            if let Err(why) = (host.as_str(), port).to_socket_addrs() {
                return format!("the host name '{host}' cannot be resolved ({why})");
            }
        }
    }
    let ios = || chain(e).filter_map(|s| s.downcast_ref::<io::Error>());
    // rustls reports a failed handshake as invalid data, its own error inside.
    if https && ios().any(|io| io.kind() == io::ErrorKind::InvalidData) {
        return format!("the TLS handshake failed: {}", innermost(e));
    }
    if let Some(io) = ios().last() {
        match io.kind() {
            io::ErrorKind::ConnectionRefused => {
                return "connection refused (nothing listens on that port)".to_string()
            }
            io::ErrorKind::TimedOut => return "the connection timed out".to_string(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                return format!("the connection was closed ({io})")
            }
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                return format!("no route to it ({io})")
            }
            _ => {}
        }
    }
    innermost(e)
}

/// The error and its sources, outermost first. An `io::Error` is looked into: its
/// `source()` skips the error it wraps (where rustls puts its own).
fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&e| next(e))
}

fn next<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    match e.downcast_ref::<io::Error>() {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
        None => e.source(),
    }
}

/// The deepest message of the chain: the actual cause, not its wrappers.
fn innermost(e: &(dyn StdError + 'static)) -> String {
    chain(e).last().map(|e| e.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(url: &str) -> reqwest::Error {
        reqwest::blocking::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(CONNECT_TIMEOUT_SECS))
            .build()
            .unwrap()
            .get(url)
            .send()
            .unwrap_err()
    }

    /// A loopback port nothing listens on.
    fn dead_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[test]
    fn a_refused_connection_says_so_and_where() {
        let port = dead_port();
        assert_eq!(
            describe(&get(&format!("http://127.0.0.1:{port}/v1/whoami"))),
            format!("cannot reach http://127.0.0.1:{port}: connection refused (nothing listens on that port)")
        );
    }

    #[test]
    fn an_unknown_host_name_says_it_does_not_resolve() {
        // `.invalid` never resolves (RFC 2606), without any network traffic.
        let text = describe(&get("http://contree-test.invalid/v1"));
        assert!(
            text.starts_with("cannot reach http://contree-test.invalid:80: the host name 'contree-test.invalid' cannot be resolved ("),
            "{text}"
        );
    }

    #[test]
    fn https_to_a_plain_http_server_is_a_tls_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::Write;
            if let Some(Ok(mut c)) = listener.incoming().next() {
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        });
        let text = describe(&get(&format!("https://127.0.0.1:{port}/v1")));
        assert!(
            text.starts_with(&format!(
                "cannot reach https://127.0.0.1:{port}: the TLS handshake failed: "
            )),
            "{text}"
        );
    }
}
