//! The embedded local engine: the `Backend` that runs operations on this machine with
//! namespaces and overlayfs, daemonless. Each operation is owned by its own supervisor
//! process (`supervisor`), so the CLI can come and go.
//!
//! `LocalEngine`'s own work is spread over a module per concept: `launch` (starting a
//! supervisor), `tail` (following an event log), `recovery` (operations whose owner died),
//! `queue` (the server's queued operations), `prune`, `validate`, `isolation` and `exec`
//! (asking a running operation's supervisor). This file keeps the struct, its `Backend`
//! impl and the module list: about 650 lines, one short method per `Backend` call, which
//! read best next to each other.

mod addfiles;
pub mod archive;
pub mod attachlayer;
pub mod cgroup;
pub mod claim;
pub mod doctor;
pub mod eventlog;
pub mod exec;
mod fdpass;
pub mod gc;
pub mod grep;
pub mod harden;
pub mod hostview;
pub mod idmap;
pub mod import;
pub mod inspect;
mod isolation;
mod launch;
pub mod layerlimit;
pub mod layers;
pub mod limits;
mod mountid;
pub mod network;
pub mod oci;
pub mod overlay;
mod prune;
pub use prune::Retention;
mod upkeep;
pub use upkeep::{Budget, Keeper};
mod usage;
pub use usage::Usage;
mod queue;
pub mod recorder;
mod recovery;
pub mod registry;
pub mod sandbox;
pub mod store;
pub mod supervisor;
mod tail;
mod validate;

use crate::backend::{
    Archive, Backend, BackendError, Cause, EventStream, ImageFilter, OpFilter, Spawn, StdinSource,
};
use crate::paths::Paths;
use crate::progress::Show;
use crate::wire::{DirectoryList, GrepRequest, GrepResult, Image, Operation, SpawnRequest, Status};
use exec::{ExecReply, ExecRequest};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use store::Store;
use tail::Tail;

use launch::Live;

pub struct LocalEngine {
    store: Store,
    data_dir: PathBuf,
    /// Host paths the `host` image must never show: the data and config dirs, and what
    /// `hide_from_host` adds (`serve`'s tokens file and home).
    private: Vec<PathBuf>,
    /// Where config.toml is, for the runs' default limits (see `limits`).
    config_dir: PathBuf,
    /// Read on the first run that needs it.
    limits: OnceLock<limits::Config>,
    /// Supervisors we started (operation → pid), so we can reap them instead of leaving
    /// zombies, and signal them without asking the database.
    children: Mutex<Vec<(String, Pid)>>,
    /// How the supervisors we reaped ended, to say why an operation has no ending.
    exited: Mutex<HashMap<String, nix::sys::wait::WaitStatus>>,
    /// Fork supervisors instead of executing `contree __supervise` (see `fork_supervisor`).
    fork: bool,
    /// `recover` was skipped at open; a forked supervisor runs it when its job is done.
    recover_later: bool,
    /// Read ends of the pipes our supervisors poke after each event (see `Tail`).
    notify: Mutex<HashMap<String, OwnedFd>>,
    /// Read ends of the pipes that carry a followed run's stdout and stderr (see `Tail`).
    live: Mutex<HashMap<String, Live>>,
    /// The locked event logs of operations this process owns and has not handed to a
    /// supervisor (queued, or run here): see `LogWriter::own`.
    owned: Mutex<HashMap<String, std::fs::File>>,
    /// A shared lock on `store/gc.lock` while a CLI's run is between its upload and its
    /// start (see `hold_gc_off`).
    starting: Mutex<Option<std::fs::File>>,
    /// The CLI's sessions and caches, for a run's upkeep (see `upkeep`).
    keeper: Option<std::sync::Arc<dyn Keeper>>,
}

// One engine serves every thread of `contree serve` at once (see `server::State`).
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<LocalEngine>();
};

impl LocalEngine {
    pub fn open(paths: &Paths) -> Result<LocalEngine, BackendError> {
        let engine = Self::open_unrecovered(paths)?;
        engine.recover();
        Ok(engine)
    }

    /// Opens the store without recovering anything first: `doctor` reports what recovery
    /// would have repaired silently.
    pub fn open_as_is(paths: &Paths) -> Result<LocalEngine, BackendError> {
        Self::open_unrecovered(paths)
    }

    /// Opens the store for one `run` from the CLI: forking supervisors (see `forking`),
    /// and with the clean-up after crashed runs left to the supervisor, which does it
    /// once its own run has completed, off the run's path.
    pub fn open_for_run(paths: &Paths) -> Result<LocalEngine, BackendError> {
        let mut engine = Self::open_unrecovered(paths)?.forking();
        engine.recover_later = true;
        Ok(engine)
    }

    fn open_unrecovered(paths: &Paths) -> Result<LocalEngine, BackendError> {
        let store = Store::open(&paths.store())?;
        crate::log::trace("store open");
        Ok(Self::with_store(store, &paths.data, &paths.config))
    }

    fn with_store(store: Store, data: &Path, config: &Path) -> LocalEngine {
        LocalEngine {
            store,
            data_dir: data.to_path_buf(),
            private: vec![data.to_path_buf(), config.to_path_buf()],
            config_dir: config.to_path_buf(),
            limits: OnceLock::new(),
            children: Mutex::new(Vec::new()),
            exited: Mutex::new(HashMap::new()),
            notify: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            owned: Mutex::new(HashMap::new()),
            starting: Mutex::new(None),
            fork: false,
            recover_later: false,
            keeper: None,
        }
    }

    /// Start supervisors by forking this process rather than executing a new one, which
    /// takes the exec and the start-up of a fresh binary off every run's path. Only for a
    /// single-threaded caller (the CLI): a forked copy of a multi-threaded process (the
    /// server) could inherit a lock some other thread held.
    pub fn forking(mut self) -> Self {
        self.fork = true;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `spawn`, the process reading `stdin` after the request's bytes (when the request
    /// says `close: false`): `contree serve` forwards `POST .../subprocesses/1/stdin`
    /// through a pipe this way. The descriptor is duplicated; the caller keeps it.
    pub fn spawn_piped(
        &self,
        req: &SpawnRequest,
        stdin: std::os::fd::BorrowedFd<'_>,
    ) -> Result<String, BackendError> {
        self.start(req, launch::Stdin::Fd(stdin), false, false, &mut |_| Ok(()))
    }

    /// The layered view of an image, for inspection without a sandbox.
    pub fn view(&self, image: &str) -> Result<inspect::View, BackendError> {
        let row = self
            .store
            .image(image)?
            .ok_or_else(|| BackendError::NotFound(format!("image {image} not found").into()))?;
        self.ensure_host_mask(&row)?;
        Ok(inspect::View::new(self.store.layout(), &row.layers))
    }

    /// Adds host paths that the `host` image must never show (in runs and inspection), and
    /// hides them in its mask now.
    pub fn hide_from_host(
        &mut self,
        paths: impl IntoIterator<Item = PathBuf>,
    ) -> Result<(), BackendError> {
        self.private.extend(paths);
        layers::ensure_host_mask(&self.store.layer_dir(store::HOST_LAYER), &self.private)
            .map_err(mask_err)
    }

    /// For an image on the `host` base: its mask exists and hides `private`.
    fn ensure_host_mask(&self, image: &store::ImageRow) -> Result<(), BackendError> {
        if !image.layers.iter().any(|l| l == store::HOST_LAYER) {
            return Ok(());
        }
        layers::ensure_host_mask(&self.store.layer_dir(store::HOST_LAYER), &self.private)
            .map_err(mask_err)
    }

    /// config.toml's `[limits]` and `[serve.limits]`, read once.
    pub fn limits_config(&self) -> Result<limits::Config, BackendError> {
        if let Some(config) = self.limits.get() {
            return Ok(config.clone());
        }
        let config =
            limits::Config::load(&self.config_dir).map_err(|e| BackendError::Invalid(e.into()))?;
        Ok(self.limits.get_or_init(|| config).clone())
    }

    /// The row of an operation that has not finished; an error saying why otherwise.
    fn unfinished_op(&self, op: &str) -> Result<store::OpRow, BackendError> {
        let row = self
            .store
            .op(op)?
            .ok_or_else(|| BackendError::NotFound(format!("operation {op} not found").into()))?;
        let row = self.caught_up(row)?;
        if row.status.is_terminal() {
            return Err(BackendError::Invalid(
                format!("operation {op} has already finished ({})", row.status).into(),
            ));
        }
        Ok(row)
    }

    /// `row` once it says what the event log says. The supervisor writes `completion` first
    /// (the run's end, which a follower is waiting for), then what the run consumed and the
    /// row's ending: whoever saw the completion and asks at once (to read it, or to cancel
    /// it) gets the row once it caught up, at most 2 s later while the supervisor lives.
    fn caught_up(&self, mut row: store::OpRow) -> Result<store::OpRow, BackendError> {
        let until = std::time::Instant::now() + Duration::from_secs(2);
        let ended_in_log = !row.status.is_terminal() && self.log_has_completion(&row.uuid);
        while (ended_in_log && !row.status.is_terminal()
            || row.status.is_terminal() && row.kind == "instance" && row.resources.is_none())
            && std::time::Instant::now() < until
            && self.supervisor_alive(&row)
        {
            std::thread::sleep(Duration::from_millis(2));
            match self.store.op(&row.uuid)? {
                Some(r) => row = r,
                None => break,
            }
        }
        Ok(row)
    }
}

/// The engine's own bookkeeping behind a mutex: no panic holding one leaves it wrong
/// for the next user, so a poisoned one is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

fn mask_err(e: std::io::Error) -> BackendError {
    BackendError::Unavailable(Cause::io("cannot build the host image mask", e))
}

impl Backend for LocalEngine {
    fn name(&self) -> &'static str {
        "local"
    }

    fn resolve_image(&self, reference: &str) -> Result<String, BackendError> {
        if crate::backend::is_uuid(reference) {
            return match self.store.image(reference)? {
                Some(img) => Ok(img.uuid),
                None => Err(BackendError::NotFound(
                    format!("image {reference} not found").into(),
                )),
            };
        }
        let name = reference.strip_prefix("tag:").unwrap_or(reference);
        self.store
            .find_tag(name)?
            .ok_or_else(|| BackendError::NotFound(format!("no image tagged '{name}'").into()))
    }

    fn put_files(&self, files: &[(PathBuf, String)]) -> Result<Vec<(String, bool)>, BackendError> {
        // A content file comes before its row: `gc` waits. A CLI's upload is for the run it
        // starts next, so it holds `gc` off until then; a server's only for the upload.
        let _upload = self.hold_gc_off()?;
        // Look everything up in one read transaction; store only what is missing.
        let known = self.store.reading(|| {
            files
                .iter()
                .map(|(_, sha)| self.store.blob_uuid(sha))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let stored: Vec<Option<String>> = files
            .iter()
            .zip(known)
            .map(|((_, sha), uuid)| uuid.filter(|_| self.store.blob_path(sha).exists()))
            .collect();
        // Only what is copied counts towards a progress bar (and only it is measured).
        let copied = || files.iter().zip(&stored).filter(|(_, s)| s.is_none());
        let bytes: u64 = copied()
            .map(|((path, _), _)| std::fs::metadata(path).map_or(0, |m| m.len()))
            .sum();
        let bar = crate::progress::bar(Show::OnTerminal, bytes, || {
            format!("storing {} file(s)", copied().count())
        });
        files
            .iter()
            .zip(stored)
            .map(|((path, sha), uuid)| match uuid {
                Some(uuid) => Ok((uuid, true)),
                None => Ok((self.store.put_blob_counted(sha, path, bar.as_ref())?, false)),
            })
            .collect()
    }

    fn put_file(&self, path: &Path, sha256: &str) -> Result<(String, bool), BackendError> {
        let _upload = self.hold_gc_off()?;
        if let Some(uuid) = self.store.blob_uuid(sha256)? {
            if self.store.blob_path(sha256).exists() {
                return Ok((uuid, true));
            }
        }
        Ok((self.store.put_blob(sha256, path)?, false))
    }

    fn spawn(&self, req: &SpawnRequest, stdin: StdinSource) -> Result<String, BackendError> {
        self.start(req, stdin.into(), false, false, &mut |_| Ok(()))
            .map_err(|e| self.full_store(e))
    }

    fn spawn_registered(&self, spawn: Spawn<'_>) -> Result<String, BackendError> {
        self.start(
            spawn.req,
            spawn.stdin.into(),
            false,
            false,
            spawn.registered,
        )
        .map_err(|e| self.full_store(e))
    }

    fn spawn_followed(&self, spawn: Spawn<'_>, direct: bool) -> Result<String, BackendError> {
        self.start(
            spawn.req,
            spawn.stdin.into(),
            self.fork,
            direct,
            spawn.registered,
        )
        .map_err(|e| self.full_store(e))
    }

    fn operation(&self, op: &str) -> Result<Operation, BackendError> {
        let Some(row) = self.store.op(op)? else {
            return self.unrecorded(op);
        };
        if !row.status.is_terminal() && !self.supervisor_alive(&row) {
            self.recover_op(&row);
            return self.operation(op);
        }
        let row = self.caught_up(row)?;
        Ok(row.to_wire())
    }

    fn operations(&self, filter: &OpFilter) -> Result<Vec<Operation>, BackendError> {
        let mut rows = self.store.ops(&filter.statuses, filter.kind.as_deref())?;
        rows.retain(|r| filter.admits_time(Some(&r.created_at)));
        if let Some(limit) = filter.limit {
            rows.truncate(limit);
        }
        Ok(rows.iter().map(store::OpRow::summary).collect())
    }

    fn events(&self, op: &str, follow: bool) -> Result<Box<dyn EventStream + '_>, BackendError> {
        // An operation we just spawned exists; asking the database would reopen it (see
        // `fork_supervisor`) on the run's path. One without a row yet may be starting.
        if self.own_supervisor(op).is_none() && self.store.op(op)?.is_none() {
            self.unrecorded(op)?;
        }
        Ok(Box::new(Tail::open(self, op, follow)?))
    }

    fn cancel(&self, op: &str) -> Result<(), BackendError> {
        let signal = |pid: Pid| {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(|e| {
                BackendError::Io(Cause::sys(
                    format!("cannot signal the supervisor of {op}"),
                    e,
                ))
            })
        };
        // A `run` cancelling its own operation (Ctrl-C, a closed stdout): no need to ask
        // the database (which would reopen it, see `fork_supervisor`), and nobody to tell
        // if it has just finished.
        if self.fork {
            if let Some(pid) = self.own_supervisor(op) {
                return signal(pid);
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let row = self.unfinished_op(op)?;
            let alive = self.supervisor_alive(&row);
            if row.supervisor_pid == Some(std::process::id() as i32) {
                // Waiting in our own queue (see `enqueue`): it just never starts.
                self.end_queued(op, Status::Cancelled, "cancelled");
                return Ok(());
            }
            if let (Some(pid), true) = (row.supervisor_pid, alive) {
                return signal(Pid::from_raw(pid));
            }
            // Just spawned: its supervisor records its pid within milliseconds.
            if alive && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            self.recover_op(&row);
            return Ok(());
        }
    }

    fn signal(&self, op: &str, spid: u32, signal: i32) -> Result<(), BackendError> {
        if !(1..=64).contains(&signal) {
            return Err(BackendError::Invalid(
                format!("{signal} is not a signal").into(),
            ));
        }
        if spid != 1 {
            return match self.ask_supervisor(op, &ExecRequest::Signal { spid, signal })? {
                ExecReply::Signalled => Ok(()),
                _ => Err(BackendError::NotFound(
                    format!("operation {op} has no running subprocess {spid}").into(),
                )),
            };
        }
        let pid = match self.own_supervisor(op) {
            Some(pid) if self.fork => pid,
            _ => {
                let row = self.unfinished_op(op)?;
                let queued = row.supervisor_pid == Some(std::process::id() as i32);
                match (row.supervisor_pid, self.supervisor_alive(&row)) {
                    (Some(pid), true) if !queued => Pid::from_raw(pid),
                    _ => {
                        return Err(BackendError::Invalid(
                            format!("operation {op} has not started its command yet").into(),
                        ))
                    }
                }
            }
        };
        let value = libc::sigval {
            sival_ptr: signal as usize as *mut libc::c_void,
        };
        // SAFETY: sigqueue(3) to a supervisor of ours, with a plain integer as its value.
        let rc = unsafe { libc::sigqueue(pid.as_raw(), supervisor::control_signal(), value) };
        if rc != 0 {
            return Err(BackendError::Io(Cause::io(
                format!("cannot signal the supervisor of {op}"),
                std::io::Error::last_os_error(),
            )));
        }
        Ok(())
    }

    fn exec(&self, op: &str, spec: &crate::wire::ExecSpec) -> Result<u32, BackendError> {
        match self.ask_supervisor(op, &ExecRequest::Exec(spec.clone()))? {
            ExecReply::Started { spid } => Ok(spid),
            ExecReply::Invalid(why) => Err(BackendError::Invalid(why.into())),
            _ => Err(BackendError::NotRunning(format!(
                "operation {op} has ended: nothing more runs in its sandbox"
            ))),
        }
    }

    fn images(&self, filter: &ImageFilter) -> Result<Vec<Image>, BackendError> {
        let mut out = Vec::new();
        for img in self.store.images()? {
            if let Some(u) = &filter.uuid {
                if !img.uuid.eq_ignore_ascii_case(u) {
                    continue;
                }
            }
            let row = |tag: Option<String>| Image {
                uuid: img.uuid.clone(),
                tag,
                created_at: img.created_at.clone(),
                operation_uuid: img.operation.clone(),
            };
            if img.tags.is_empty() {
                if filter.all && filter.prefix.is_none() {
                    out.push(row(None));
                }
            } else {
                for tag in &img.tags {
                    if filter
                        .prefix
                        .as_ref()
                        .is_none_or(|p| tag.starts_with(p.as_str()))
                    {
                        out.push(row(Some(tag.clone())));
                    }
                }
            }
        }
        Ok(out)
    }

    fn tag(&self, image: &str, tag: &str) -> Result<(), BackendError> {
        if self.store.image(image)?.is_none() {
            return Err(BackendError::NotFound(
                format!("image {image} not found").into(),
            ));
        }
        if tag.is_empty() || tag.chars().any(|c| c.is_whitespace()) {
            return Err(BackendError::Invalid(
                format!("tag '{tag}' is not valid").into(),
            ));
        }
        Ok(self.store.set_tag(image, tag)?)
    }

    fn files(
        &self,
        filter: &crate::backend::FileFilter,
    ) -> Result<Vec<crate::wire::File>, BackendError> {
        let mut files: Vec<crate::wire::File> = self
            .store
            .blob_rows()?
            .into_iter()
            .map(|(sha256, uuid, size, created_at)| crate::wire::File {
                uuid,
                sha256,
                size: size as i64,
                // A blob here is stored once: uploading it again changes nothing.
                updated_at: created_at.clone(),
                created_at,
            })
            .filter(|f| filter.admits(f))
            .collect();
        if let Some(n) = filter.limit {
            files.truncate(n);
        }
        Ok(files)
    }

    fn list_dir(&self, image: &str, path: &str) -> Result<DirectoryList, BackendError> {
        let view = self.view(image)?;
        let entries = view.list(path)?;
        Ok(DirectoryList {
            path: path.to_string(),
            files: entries
                .iter()
                .map(|(n, f)| inspect::file_item(n, f))
                .collect(),
        })
    }

    fn read_file(
        &self,
        image: &str,
        path: &str,
    ) -> Result<(Box<dyn std::io::Read>, Option<u32>), BackendError> {
        let view = self.view(image)?;
        let (file, meta) = view.open(path)?;
        Ok((
            Box::new(file),
            Some(std::os::unix::fs::MetadataExt::mode(&meta) & 0o7777),
        ))
    }

    fn archive(
        &self,
        Archive { image, path, gzip }: Archive<'_>,
        out: &mut dyn std::io::Write,
    ) -> Result<(), BackendError> {
        let view = self.view(image)?;
        archive::check(&view, path).map_err(|e| match e {
            inspect::InspectError::NotAFile(_) => {
                BackendError::Invalid(format!("{e} nor a directory").into())
            }
            other => other.into(),
        })?;
        archive::write_maybe_gzip(&view, path, gzip, out)
            .map_err(|e| BackendError::Io(Cause::io(format!("archiving {path}"), e)))
    }

    fn grep(&self, image: &str, req: &GrepRequest) -> Result<GrepResult, BackendError> {
        let view = self.view(image)?;
        let deadline = std::time::Instant::now() + grep::DEADLINE;
        Ok(grep::search(&view, req, deadline)?)
    }

    fn add_files(
        &self,
        image: &str,
        entries: &[crate::backend::Placement],
    ) -> Result<String, BackendError> {
        self.place(image, entries)
    }

    fn import_local(&self, path: &Path, tag: Option<&str>) -> Result<String, BackendError> {
        Ok(import::import(&self.store, path, tag, Show::OnTerminal)?)
    }

    fn pull_image(&self, pull: &crate::backend::Pull<'_>) -> Result<String, BackendError> {
        let opts = registry::PullOptions {
            tag: pull.tag,
            reuse: &|_| true,
            deadline: pull
                .timeout
                .map(|t| std::time::Instant::now() + std::time::Duration::from_secs(t)),
            show: Show::OnTerminal,
        };
        Ok(registry::pull(&self.store, pull.reference, &pull.credentials, &opts)?.image)
    }

    fn gc(
        &self,
        refs: crate::backend::Refs<'_>,
        dry_run: bool,
    ) -> Result<crate::backend::GcReport, BackendError> {
        // Event logs first, by the policy runs apply (config.toml's `[store]`).
        let policy = Retention::load(&self.config_dir)
            .map_err(|e| BackendError::Invalid(Box::new(e).into()))?;
        upkeep::Budget::load(&self.config_dir)
            .map_err(|e| BackendError::Invalid(Box::new(e).into()))?;
        let logs = self.prune_for_gc(policy, dry_run)?;
        let mut report = gc::collect(self, refs, gc::Mode::All { dry_run })?;
        report.freed.extend(logs);
        Ok(report)
    }

    fn usage(&self) -> Result<Usage, BackendError> {
        Ok(LocalEngine::usage(self))
    }

    fn doctor(&self, repair: bool) -> Result<Vec<crate::backend::Finding>, BackendError> {
        doctor::check(self, repair)
    }

    fn remove_image(
        &self,
        image: &str,
        refs: crate::backend::Refs<'_>,
    ) -> Result<crate::backend::GcReport, BackendError> {
        let uuid = self.resolve_image(image)?;
        gc::collect(self, refs, gc::Mode::Image(&uuid))
    }

    fn untag(&self, image: &str, tag: &str) -> Result<(), BackendError> {
        if !self.store.remove_tag(image, tag)? {
            return Err(BackendError::NotFound(
                format!("image {image} has no tag '{tag}'").into(),
            ));
        }
        Ok(())
    }
}
