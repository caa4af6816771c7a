//! The remote backend: the same `Backend` calls against a ConTree /v1 API over HTTP (the
//! hosted service or a `contree serve`), with reqwest's blocking client.
//!
//! Requests are retried (boundedly, with backoff, honouring `Retry-After`) on connection
//! errors, 429 and 5xx; `POST /instances` is only replayed after 425/429, when the server
//! cannot have acted. Live output comes from the SSE event stream (`events`).

pub mod events;
pub mod network;
pub mod profile;
mod remote;
mod retry;
#[cfg(test)]
mod tests;

use crate::backend::{
    Archive, Backend, BackendError, EventStream, ImageFilter, OpFilter, StdinSource,
};
use crate::wire::{
    DirectoryList, GrepRequest, GrepResult, Image, Operation, SpawnRequest, StdinRepr,
};
use reqwest::blocking::{Client, RequestBuilder, Response};
use std::path::Path;
use std::time::Duration;

pub use profile::Profile;
pub use remote::RemoteBackend;
use retry::{retry_after_secs, Next, Retries, Tried};

#[derive(Clone)]
pub struct Api {
    client: Client,
    /// `<url>/v1`
    base: String,
    token: String,
    project: Option<String>,
    /// How long a JSON read (`get_json`, a tag lookup) may wait for its whole answer.
    answer_timeout: Duration,
}

/// Seconds a JSON read waits for its answer unless `$CONTREE_API_TIMEOUT` says otherwise:
/// a URL that points at something that accepts connections but never answers (a wrong
/// port) must end with an error, not hang. Streams, uploads and downloads are not bounded.
const ANSWER_TIMEOUT_SECS: u64 = 30;

/// `[api]` of config.toml under `CONTREE_*` (see `config::KEYS`); an unreadable file is
/// no setting here (the commands that need the file say why it cannot be read).
fn api_setting(key: &crate::config::Key) -> Option<crate::config::Layered> {
    let file = crate::config::file(&crate::paths::Paths::from_env().config);
    crate::config::Config::load(&file)
        .unwrap_or_default()
        .layered(key)
}

fn answer_timeout() -> Result<Duration, BackendError> {
    match api_setting(&crate::config::API_TIMEOUT) {
        None => Ok(Duration::from_secs(ANSWER_TIMEOUT_SECS)),
        Some(set) => match set.text.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
            _ => Err(BackendError::Invalid(
                format!(
                    "{}='{}' is not a whole number of seconds above 0",
                    set.origin, set.text
                )
                .into(),
            )),
        },
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Api({})", self.base)
    }
}

impl Api {
    pub fn new(profile: &Profile) -> Result<Api, BackendError> {
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(network::CONNECT_TIMEOUT_SECS))
            .timeout(None::<Duration>)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("contree/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                BackendError::Unreachable(format!("cannot set up the HTTP client: {e}"))
            })?;
        Ok(Api {
            client,
            base: format!("{}/v1", profile.url.trim_end_matches('/')),
            token: profile.token.clone(),
            project: profile.project.clone(),
            answer_timeout: answer_timeout()?,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let mut rb = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(p) = &self.project {
            rb = rb.header("Project", p);
        }
        rb
    }

    /// A GET whose answer is small and must come within `answer_timeout`.
    fn get_bounded(&self, path: &str) -> RequestBuilder {
        self.request(reqwest::Method::GET, path)
            .timeout(self.answer_timeout)
    }

    /// Sends with bounded retries (see `Retries`). `replayable` is false for requests the
    /// server may have acted on (spawn): those are only retried on 425/429.
    fn send(
        &self,
        build: impl Fn() -> RequestBuilder,
        replayable: bool,
    ) -> Result<Response, BackendError> {
        let mut retries = Retries::new(replayable);
        let mut last_warned: Option<String> = None;
        loop {
            let result = build().send();
            let tried = match &result {
                Ok(r) => Tried::Answered {
                    status: r.status(),
                    retry_after: r
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(retry_after_secs),
                },
                Err(e) if e.is_timeout() && !e.is_connect() => Tried::TimedOut,
                Err(e) if e.is_connect() => Tried::NoConnection,
                Err(_) => Tried::Broken,
            };
            match retries.next(tried) {
                Next::Return => {
                    return result.map_err(|e| BackendError::Unreachable(network::describe(&e)))
                }
                Next::GiveUp => {
                    return Err(match result {
                        Ok(r) => status_error(r),
                        // Waiting as long again would not help a server that never answers.
                        Err(e) if tried == Tried::TimedOut => BackendError::Unreachable(format!(
                            "{} (waited {} s; $CONTREE_API_TIMEOUT sets how long)",
                            network::describe(&e),
                            self.answer_timeout.as_secs()
                        )),
                        Err(e) => BackendError::Unreachable(network::describe(&e)),
                    });
                }
                Next::WaitBusy { secs, first } => {
                    if first {
                        crate::log::emit(
                            crate::log::Level::Info,
                            "the server is busy (429); waiting for a free slot...",
                        );
                    }
                    std::thread::sleep(Duration::from_secs_f64(secs));
                }
                Next::Retry { secs, left } => {
                    let what = match &result {
                        Ok(r) => format!("server answered {}", r.status().as_u16()),
                        Err(e) => network::describe(e),
                    };
                    // Once per cause: the same line five times over says nothing new.
                    if last_warned.as_ref() != Some(&what) {
                        crate::log::emit(
                            crate::log::Level::Warning,
                            &format!("{what}; retrying (at most {left} more times)..."),
                        );
                        last_warned = Some(what);
                    }
                    std::thread::sleep(Duration::from_secs_f64(secs));
                }
            }
        }
    }

    /// `send`, then a non-2xx status becomes an error.
    fn call(
        &self,
        build: impl Fn() -> RequestBuilder,
        replayable: bool,
    ) -> Result<Response, BackendError> {
        let r = self.send(build, replayable)?;
        if r.status().is_success() || r.status().is_redirection() {
            Ok(r)
        } else {
            Err(status_error(r))
        }
    }

    /// POSTs `body` as JSON and returns the uuid of what it made. Never replayed: the server
    /// may have acted (it would import or spawn twice).
    fn post_once(&self, path: &str, body: &impl serde::Serialize) -> Result<String, BackendError> {
        let r = self.call(
            || self.request(reqwest::Method::POST, path).json(body),
            false,
        )?;
        answer_uuid(r, &format!("POST {path}"))
    }

    /// `POST /operations/{op}/subprocesses` (never replayed: it may have started).
    fn exec(&self, op: &str, spec: &crate::wire::ExecSpec) -> Result<u32, BackendError> {
        let path = format!("/operations/{op}/subprocesses");
        let r = self.call(
            || self.request(reqwest::Method::POST, &path).json(spec),
            false,
        )?;
        let answer: serde_json::Value = r
            .json()
            .map_err(|e| BackendError::Store(format!("POST {path}: bad response: {e}")))?;
        answer["spid"]
            .as_u64()
            .map(|n| n as u32)
            .ok_or_else(|| BackendError::Store(format!("POST {path}: no spid in {answer}")))
    }

    pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, BackendError> {
        let r = self.call(|| self.get_bounded(path), true)?;
        r.json()
            .map_err(|e| BackendError::Store(format!("GET {path}: bad response: {e}")))
    }

    /// `GET /whoami`: checks the token (used by `contree auth`).
    pub fn whoami(&self) -> Result<serde_json::Value, BackendError> {
        self.get_json("/whoami")
    }

    /// Posts one chunk of the main process's stdin (never retried).
    pub fn send_stdin(&self, op: &str, repr: &StdinRepr) -> Result<(), BackendError> {
        let r = self
            .request(
                reqwest::Method::POST,
                &format!("/operations/{op}/subprocesses/1/stdin"),
            )
            .json(repr)
            .send()
            .map_err(|e| BackendError::Unreachable(network::describe(&e)))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(status_error(r))
        }
    }
}

/// An error status and the server's `{"error": ...}` text.
fn status_error(r: Response) -> BackendError {
    let status = r.status();
    let body = r.text().unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| match v.get("error") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
            None => None,
        })
        .unwrap_or(body);
    let message = format!("HTTP {}: {message}", status.as_u16());
    match status.as_u16() {
        404 => BackendError::NotFound(message.into()),
        409 => BackendError::NotRunning(message),
        401 | 403 => BackendError::Denied(format!(
            "{message} (check the profile's token: `contree auth`)"
        )),
        // What the retries are for: the server failing or busy, which may pass.
        425 | 429 | 410 | 500..=599 => BackendError::Unreachable(message),
        _ => BackendError::Invalid(message.into()),
    }
}

/// The `uuid` of what a POST made (an upload, an operation); `what` names the request.
fn answer_uuid(r: Response, what: &str) -> Result<String, BackendError> {
    let answer: serde_json::Value = r
        .json()
        .map_err(|e| BackendError::Store(format!("{what}: bad response: {e}")))?;
    answer["uuid"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BackendError::Store(format!("{what}: no uuid in the answer")))
}
