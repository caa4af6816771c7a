//! `contree serve`: the local engine exposed as the ConTree /v1 API (axum on tokio).
//!
//! Every request is authenticated by a bearer token that names a namespace; operations,
//! uploaded files and tags of one namespace are invisible to another (404), public base
//! images (those no operation made: `host`, imports) are shared. The engine does the work:
//! handlers only translate between HTTP and the `Backend` calls, on blocking threads since
//! the engine and its SQLite store are synchronous. This module must never log a token.

mod auth;
mod error;
mod owners;
mod routes;
mod sse;

use crate::engine::LocalEngine;
use crate::paths::Paths;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use auth::{parse_tokens, Tokens};
pub use error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Engine(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What `contree serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: String,
    /// `TOKEN NAMESPACE` per line; `None` means `<data>/serve.tokens`, created with one
    /// random token for namespace `default` when missing.
    pub tokens: Option<PathBuf>,
    pub paths: Paths,
    /// Largest accepted JSON request body.
    pub max_body: usize,
    /// Largest accepted file upload (`POST /files`).
    pub max_upload: u64,
    /// Operations running at once; spawns beyond wait in PENDING (see `max_pending`).
    pub max_running: usize,
    /// Operations waiting for a slot; `POST /instances` beyond gets 429 with `Retry-After`.
    pub max_pending: usize,
    /// Event logs of finished operations are cut to their `completion` past this age...
    pub events_max_age: Duration,
    /// ...or, oldest first, while together they take more than this.
    pub events_max_bytes: u64,
}

/// Shared by every handler.
pub(crate) struct State {
    /// What serve was asked to do (`max_running` at least 1).
    pub opts: ServeOptions,
    /// The engine, shared by every handler and event stream at once: it is `Sync`, and
    /// serialises only what must be (its store connection, its bookkeeping of children).
    pub engine: LocalEngine,
    pub owners: Mutex<owners::Owners>,
    pub tokens: Tokens,
    /// Write ends of the stdin pipes of operations spawned with `stdin.close = false`.
    pub stdin: Mutex<HashMap<String, std::fs::File>>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// What a client's `resources_limits` may ask for, at most (config.toml's
    /// `[serve.limits]`; see `engine::limits::clamp`).
    pub limits: crate::engine::limits::Config,
    /// Spawns waiting for a slot, oldest first (see `dispatch`).
    pub queue: Mutex<std::collections::VecDeque<Queued>>,
}

/// A spawn that waits in PENDING for a running operation to end.
pub(crate) struct Queued {
    pub op: String,
    pub request: crate::wire::SpawnRequest,
    /// The read end of its stdin pipe, when more stdin follows (`stdin.close = false`).
    pub stdin: Option<std::os::fd::OwnedFd>,
}

pub(crate) type Shared = Arc<State>;

/// Runs the server until SIGTERM or SIGINT. Operations are owned by their supervisors, not
/// by the server: on shutdown new requests are refused, open event streams are closed
/// (clients resume with `Last-Event-Id` after a restart), and running operations go on to
/// completion, recorded in the store, so a restarted server sees every one of them.
pub fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    opts.paths.make_private().map_err(|e| {
        ServeError::Config(format!(
            "cannot make the data dir {} private: {e}",
            opts.paths.data.display()
        ))
    })?;
    // `--tokens FILE`, else `[[serve.tokens]]` in config.toml, else the data dir's file.
    let config = crate::config::file(&opts.paths.config);
    let from_config = match &opts.tokens {
        Some(_) => None,
        None => auth::config_tokens(&config)
            .map_err(|e| ServeError::Config(format!("{}: {e}", config.display())))?,
    };
    let mut secrets = Vec::new();
    let tokens = match from_config {
        Some(tokens) => tokens,
        None => {
            let tokens_path = match &opts.tokens {
                Some(p) => p.clone(),
                None => auth::default_tokens_file(&opts.paths.data)?,
            };
            let text = std::fs::read_to_string(&tokens_path)
                .map_err(|e| ServeError::Config(format!("{}: {e}", tokens_path.display())))?;
            secrets.push(std::path::absolute(&tokens_path).unwrap_or(tokens_path.clone()));
            parse_tokens(&text)
                .map_err(|e| ServeError::Config(format!("{}: {e}", tokens_path.display())))?
        }
    };
    let mut engine =
        LocalEngine::open(&opts.paths).map_err(|e| ServeError::Engine(e.to_string()))?;
    // Tenants run on the `host` image and read it through `/inspect`: the tokens file and
    // the server's home (with the config and data dirs, which the engine hides anyway) must
    // not be in it. A service account's home is often outside /home (/var/lib/NAME).
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        if home.is_absolute() && home.parent().is_some() {
            secrets.push(home);
        }
    }
    engine
        .hide_from_host(secrets)
        .map_err(|e| ServeError::Engine(e.to_string()))?;
    // A CLI's run on this store must not collect what our clients use (see `upkeep`).
    let _serving = engine
        .serving()
        .map_err(|e| ServeError::Engine(e.to_string()))?;
    let limits = engine
        .limits_config()
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let owners = owners::Owners::open(&opts.paths.data.join("serve.db"))
        .map_err(|e| ServeError::Engine(format!("serve.db: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: opts.listen.clone(),
                source,
            })?;
        let local: SocketAddr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let state: Shared = Arc::new(State {
            opts: ServeOptions {
                max_running: opts.max_running.max(1),
                ..opts
            },
            engine,
            owners: Mutex::new(owners),
            tokens,
            stdin: Mutex::new(HashMap::new()),
            shutdown: stop_rx.clone(),
            limits,
            queue: Mutex::new(std::collections::VecDeque::new()),
        });
        tokio::spawn(housekeeping(state.clone()));
        tokio::spawn(dispatch(state.clone()));
        let app = routes::router(state.clone());
        // Tests and scripts read the bound address from this line (`--listen 127.0.0.1:0`).
        eprintln!("contree serve: listening on http://{local}");
        let mut stop_wait = stop_rx.clone();
        // Answers go out at once: with Nagle's algorithm a response's last small segment
        // waits for the client's delayed ACK (about 40 ms a request on loopback).
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop_wait.wait_for(|s| *s).await;
        });
        let signals = async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("contree serve: shutting down");
            let _ = stop_tx.send(true);
            Ok::<_, std::io::Error>(())
        };
        tokio::spawn(signals);
        let mut stopped = stop_rx;
        tokio::select! {
            r = server => r?,
            // In-flight requests get a few seconds after the signal, then we exit anyway.
            _ = async move {
                let _ = stopped.wait_for(|s| *s).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            } => {}
        }
        // Whatever `dispatch` has not done yet: nothing may stay waiting in a dead queue.
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || cancel_waiting(&st)).await;
        Ok::<_, ServeError>(())
    })?;
    // Blocking event-stream threads may still be waiting on a long operation.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Starts waiting spawns as running operations end. Polled: an operation's end is only
/// visible in the store, and a slot is a few milliseconds of latency away at worst.
async fn dispatch(state: Shared) {
    let mut stop = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        let stopping = *state.shutdown.borrow();
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let engine = &st.engine;
            let Ok(mut queue) = st.queue.lock() else {
                return;
            };
            if stopping {
                drop(queue);
                cancel_waiting(&st);
                return;
            }
            while !queue.is_empty() && running(engine, &queue) < st.opts.max_running {
                let Some(q) = queue.pop_front() else { break };
                let pending = engine
                    .store()
                    .op(&q.op)
                    .ok()
                    .flatten()
                    .is_some_and(|row| row.status == crate::wire::Status::Pending);
                if !pending {
                    // Cancelled while it waited.
                    continue;
                }
                let stdin = q.stdin.as_ref().map(std::os::fd::AsFd::as_fd);
                let _ = engine.start_queued(&q.op, &q.request, stdin);
            }
        })
        .await;
        if stopping {
            return;
        }
    }
}

/// The documented rule at shutdown: operations still waiting for a slot are cancelled.
fn cancel_waiting(st: &State) {
    let Ok(mut queue) = st.queue.lock() else {
        return;
    };
    for q in queue.drain(..) {
        st.engine.end_queued(
            &q.op,
            crate::wire::Status::Cancelled,
            "the server shut down",
        );
    }
}

/// Operations running now: the active ones that are not waiting in `queue`.
pub(crate) fn running(engine: &LocalEngine, queue: &std::collections::VecDeque<Queued>) -> usize {
    use crate::backend::Backend;
    let active = engine
        .operations(&crate::backend::OpFilter {
            statuses: vec![
                crate::wire::Status::Pending,
                crate::wire::Status::Assigned,
                crate::wire::Status::Executing,
            ],
            ..crate::backend::OpFilter::default()
        })
        .unwrap_or_default();
    active
        .iter()
        .filter(|o| !queue.iter().any(|q| q.op == o.uuid))
        // Rows whose supervisor died are recovered (made terminal) on the way.
        .filter(|o| {
            engine
                .operation(&o.uuid)
                .is_ok_and(|o| !o.status.is_terminal())
        })
        .count()
}

/// Reaps finished supervisors, bounds event logs (`prune_event_logs`) and drops the stdin
/// pipes of finished operations.
async fn housekeeping(state: Shared) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let engine = &st.engine;
            engine.reap();
            if let Ok((cut, freed)) = engine.prune_event_logs(st.opts.events_max_age, st.opts.events_max_bytes) {
                if cut > 0 {
                    eprintln!("contree serve: cut {cut} event log(s) to their completion, {freed} bytes freed");
                }
            }
            let Ok(mut pipes) = st.stdin.lock() else {
                return;
            };
            pipes.retain(|op, _| {
                engine
                    .store()
                    .op(op)
                    .ok()
                    .flatten()
                    .is_some_and(|row| !row.status.is_terminal())
            });
        })
        .await;
    }
}
