//! The supervisor's side of resource limits: the run's cgroup (`cgroup`), its writable
//! layer's limit (`layerlimit`), what it consumed, and how hitting a limit ends a run.
//! Kept apart from the run's main path so that it reads as the few hooks it is.

use super::{diag, Mounted, Outcome, Run};
use crate::engine::cgroup::{Cgroup, Host, Placement, Usage};
use crate::engine::layerlimit::{self, Guard, LayerFs};
use crate::engine::limits::human;
use crate::wire::Status;
use nix::poll::PollTimeout;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use crate::error::exit::OOM_KILLED;

/// Why the run's writable layer could not be set up or kept.
#[derive(Debug, thiserror::Error)]
pub(super) enum ResourceError {
    #[error("mount point {}: {source}", path.display())]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The layer kept on its own filesystem could not be read.
    #[error(transparent)]
    ReadLayer(std::io::Error),
    #[error("copying the layer into the store: {0}")]
    CopyIntoStore(#[source] std::io::Error),
    #[error("the writable layer holds {}, past its limit of {} (max_layer_bytes)", human(*size), human(*limit))]
    OverLimit { size: u64, limit: u64 },
}

#[derive(Debug, Default)]
pub(super) struct State {
    cgroup: Option<Cgroup>,
    pub(super) layer: Option<LayerFs>,
    guard: Option<Guard>,
    usage: Option<Usage>,
    /// The exit event's `resources`, as last filled (cgroup figures where there are any).
    resources: Option<Value>,
    /// How the command ended: its pid, signal and core dump (see `ended`).
    process: Option<Value>,
    /// The OOM killer ended a process of the sandbox.
    pub oom: bool,
    /// The writable layer reached its limit (full filesystem, or the guard stopped the run).
    pub layer_hit: bool,
    /// The guard stopped the run, the layer holding this many bytes.
    layer_over: Option<u64>,
    /// Limits that could not be enforced here, in words.
    unenforced: Vec<String>,
}

impl Run {
    /// The upper and work dirs of the overlay root: on a filesystem of the layer's size
    /// when the request names it, else on the store's disk under a guard.
    pub(super) fn layer_dirs(
        &mut self,
        points: &Path,
        mounted: &mut Mounted,
    ) -> Result<(PathBuf, PathBuf), ResourceError> {
        let disk = (self.scratch.join("upper"), self.scratch.join("work"));
        let Some(limit) = self.job.limits.layer else {
            return Ok(disk);
        };
        if self.job.limits.layer_exact {
            let mount = points.join("layer");
            std::fs::create_dir(&mount).map_err(|source| ResourceError::MountPoint {
                path: mount.clone(),
                source,
            })?;
            match LayerFs::create(&self.scratch, &mount, limit) {
                Ok(fs) => {
                    // Unmounted after the overlay that sits on it (`Mounted` goes backwards).
                    mounted.mounts.push(mount);
                    let dirs = (fs.upper(), fs.work());
                    self.res.layer = Some(fs);
                    return Ok(dirs);
                }
                Err(e) => self.res.unenforced.push(format!(
                    "max_layer_bytes as ENOSPC ({e}; the run is stopped at the limit instead)"
                )),
            }
        }
        self.res.guard = Some(Guard::new(&self.layout.root, &disk.0, limit));
        Ok(disk)
    }

    /// Creates the run's cgroup; returns how the init gets into it. A host without the
    /// controllers runs the sandbox without those limits, and the exit event says so.
    pub(super) fn enter_cgroup(&mut self) -> Option<Placement> {
        // Rootless, only under a delegated cgroup; none, and no limit was asked
        // (`run_limits`): the run goes without one.
        let host = Host::usable();
        if crate::rootless::active() && host.version() == "none" {
            return None;
        }
        let made = host.create(&self.job.op, &self.job.limits);
        crate::log::trace("cgroup made");
        match made {
            Ok(mut cg) => {
                self.res
                    .unenforced
                    .extend(cg.unenforced.iter().map(|s| s.to_string()));
                let placement = cg.placement();
                self.res.cgroup = Some(cg);
                Some(placement)
            }
            Err(e) => {
                diag(
                    &self.layout.op_dir(&self.job.op).join("supervisor.log"),
                    &format!("cgroup: {e}"),
                );
                self.res
                    .unenforced
                    .push(format!("memory, pids and cpus (cgroup: {e})"));
                None
            }
        }
    }

    /// The supervisor's poll timeout, shortened so the guard looks in time.
    pub(super) fn guard_wait(&self, wait: PollTimeout) -> PollTimeout {
        let Some(guard) = &self.res.guard else {
            return wait;
        };
        let due = PollTimeout::try_from(guard.due_in().as_millis() as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        // (Not `as_millis`: nix 0.29's panics on NONE.)
        if wait.is_some() && wait <= due {
            wait
        } else {
            due
        }
    }

    /// Whether the guard found the layer past its limit: the run is then stopped.
    pub(super) fn guard_tripped(&mut self) -> bool {
        let Some(size) = self.res.guard.as_mut().and_then(|g| g.check()) else {
            return false;
        };
        self.res.guard = None;
        self.res.layer_over = Some(size);
        self.res.layer_hit = true;
        true
    }

    /// Once the sandbox is gone: what it consumed, from its cgroup, into the exit event's
    /// `resources` (times in seconds, `max_rss` in KiB as getrusage gives it).
    pub(super) fn read_usage(&mut self, resources: &mut Value) {
        if let Some(cg) = &self.res.cgroup {
            let u = cg.usage();
            if let Some(r) = resources.as_object_mut() {
                let secs = |us: u64| json!(us as f64 / 1e6);
                if let Some(us) = u.user_usec {
                    r.insert("user_cpu_time".into(), secs(us));
                }
                if let Some(us) = u.system_usec {
                    r.insert("system_cpu_time".into(), secs(us));
                }
                if let Some(peak) = u.memory_peak {
                    r.insert("max_rss".into(), json!(peak / 1024));
                }
            }
            self.res.oom = u.oom_kills > 0;
            self.res.usage = Some(u);
        }
        if self.res.layer.as_ref().is_some_and(|l| l.full()) {
            self.res.layer_hit = true;
        }
        self.res.resources = Some(resources.clone());
    }

    /// The command's end, for the operation's row: the exit event's final `resources` and
    /// `process` (pid, signal, core dump), which the API's result shows.
    pub(super) fn ended(&mut self, resources: Value, process: Value) {
        self.res.resources = Some(resources);
        self.res.process = Some(process);
    }

    /// The limits the run had, for the exit event and the result.
    pub(super) fn limits_report(&self) -> Value {
        let mut report = self.job.limits.to_json();
        if let Some(r) = report.as_object_mut() {
            let layer = if self.res.layer.is_some() {
                Some("filesystem")
            } else if self.job.limits.layer.is_some() {
                Some("guard")
            } else {
                None
            };
            r.insert("layer_mechanism".into(), json!(layer));
            if let Some(u) = &self.res.usage {
                r.insert("oom_kills".into(), json!(u.oom_kills));
                r.insert("forks_refused".into(), json!(u.pids_refused));
            }
            r.insert("unenforced".into(), json!(self.res.unenforced));
        }
        report
    }

    /// How a run that hit a limit ends: stopped by the layer guard, or its main process
    /// ended by the OOM killer: killed by SIGKILL itself, or (a shell whose command was
    /// killed) exiting with 137. `code` and `signal` are how it ended.
    pub(super) fn limit_outcome(&self, code: i32, signal: i32) -> Option<Outcome> {
        if let Some(size) = self.res.layer_over {
            return Some(Outcome {
                status: Status::Failed,
                error: Some(format!(
                    "stopped: the writable layer grew past its limit of {} (max_layer_bytes; it held {})",
                    human(self.job.limits.layer.unwrap_or(0)),
                    human(size)
                )),
                exit_code: Some(-1),
                timed_out: false,
            });
        }
        if self.res.oom && (signal == libc::SIGKILL || code == OOM_KILLED) {
            let limit = match self.job.limits.memory {
                Some(m) => format!(" (limit {})", human(m)),
                None => String::new(),
            };
            return Some(Outcome {
                status: Status::Failed,
                error: Some(format!("killed: out of memory{limit}")),
                exit_code: Some(OOM_KILLED),
                timed_out: false,
            });
        }
        None
    }

    /// Records what the run consumed and its limits with the operation, before its commit
    /// and ending. (The guard's verdict on a layer the commit refuses is in the error.)
    pub(super) fn record_usage(&mut self) {
        let Some(resources) = self.res.resources.clone() else {
            return;
        };
        let num = |k: &str| resources.get(k).and_then(|v| v.as_f64());
        let cpu = match (num("user_cpu_time"), num("system_cpu_time")) {
            (Some(u), Some(s)) => Some(u + s),
            _ => None,
        };
        let cpu = self
            .res
            .usage
            .as_ref()
            .and_then(|u| u.cpu_usec)
            .map(|us| us as f64 / 1e6)
            .or(cpu);
        let memory = resources.get("max_rss").and_then(|v| v.as_u64());
        let extra = json!({
            "oom": self.res.oom,
            "layer_limit_hit": self.res.layer_hit,
            "limits": self.limits_report(),
            "rusage": resources,
            "process": self.res.process,
        });
        let op = self.job.op.clone();
        if let Some(store) = &self.store {
            let _ = store.set_op_resources(&op, cpu, memory, &extra);
        }
    }

    /// Before a commit: a layer kept on its own filesystem is copied into the store's disk
    /// at `upper` (the scratch dir's, which the commit then renames).
    pub(super) fn layer_into_store(&self, upper: &Path) -> Result<(), ResourceError> {
        let Some(fs) = &self.res.layer else {
            return Ok(());
        };
        let src = fs.upper();
        let empty = super::layers::is_empty_dir(&src).map_err(ResourceError::ReadLayer)?;
        if !empty {
            layerlimit::copy_tree(&src, upper).map_err(ResourceError::CopyIntoStore)?;
        }
        Ok(())
    }

    /// A layer that grew past the limit between two looks of the guard is not kept.
    pub(super) fn check_layer_size(&self, size: u64) -> Result<(), ResourceError> {
        match self.job.limits.layer {
            Some(limit) if size > limit && self.res.layer.is_none() => {
                Err(ResourceError::OverLimit { size, limit })
            }
            _ => Ok(()),
        }
    }

    /// After `completion`: the run's cgroup goes (its processes are gone).
    pub(super) fn leave_cgroup(&mut self) {
        if let Some(cg) = self.res.cgroup.take() {
            cg.remove();
        }
    }
}
