//! What `contree doctor` says about limits on this host.

use crate::engine::limits::human;
use crate::engine::{cgroup, layerlimit, LocalEngine};
use std::path::PathBuf;

/// `contree doctor`'s lines about limits: the cgroup version and where each controller is,
/// the defaults in effect, how the writable layer's size is held, and cgroups that crashed
/// runs left behind (removed with `--repair`).
pub fn doctor(engine: &LocalEngine, repair: bool) -> Vec<crate::backend::Finding> {
    use crate::backend::Finding;
    let host = cgroup::Host::usable();
    let mut out = Vec::new();
    if crate::rootless::active() {
        out.push(Finding {
            check: "cgroups",
            detail: rootless_detail(&host),
            ..Default::default()
        });
        if host.version() == "none" {
            out.extend(doctor_layer());
            return out;
        }
    }
    let places = host.summary();
    let mut at = Vec::new();
    let mut missing = Vec::new();
    for (controller, place) in &places {
        match place {
            Some(place) => at.push(format!("{controller} {place}")),
            None => missing.push(*controller),
        }
    }
    let mut detail = if at.is_empty() {
        format!("{}; no controller for limits", host.version())
    } else {
        format!("{}; limits through {}", host.version(), at.join(", "))
    };
    if let (Some(v2), "hybrid") = (host.v2_mount(), host.version()) {
        detail.push_str(&format!(
            "; the v2 tree {} places each sandbox and counts its CPU time",
            v2.display()
        ));
    }
    if !missing.is_empty() {
        detail.push_str(&format!(
            "; no {} controller: that limit is not enforced here",
            missing.join(", ")
        ));
    }
    if !crate::rootless::active() {
        out.push(Finding {
            check: "cgroups",
            detail,
            ..Default::default()
        });
    }
    let mut f = Finding {
        check: "limits",
        ..Default::default()
    };
    match engine.limits_config() {
        Ok(c) => {
            let d = &c.defaults;
            let or_none = |v: Option<String>| v.unwrap_or_else(|| "no limit".into());
            f.detail = format!(
                "each run: memory {}, processes {}, CPUs {}, writable layer {} (config.toml [limits])",
                or_none(d.memory.map(human)),
                or_none(d.pids.map(|p| p.to_string())),
                or_none(d.cpus.map(|c| c.to_string())),
                or_none(d.layer.map(human)),
            );
        }
        Err(e) => {
            f.detail = "config.toml's limits cannot be read".into();
            f.problems.push(e.to_string());
        }
    }
    out.push(f);
    out.extend(doctor_layer());
    // Only this store's: another store's runs are its own doctor's business. A dead run's
    // cgroups go when its operation is recovered (the "operations" line above).
    let stale: Vec<(PathBuf, bool)> = host
        .reap(false)
        .into_iter()
        .filter_map(|dir| {
            let name = dir.file_name()?.to_string_lossy().into_owned();
            let op = name.split('.').next()?.to_string();
            let row = engine.store().op(&op).ok()??;
            Some((dir, row.status.is_terminal()))
        })
        .collect();
    let mut f = Finding {
        check: "cgroups left",
        detail: "no cgroup of a dead run is left".into(),
        problems: stale
            .iter()
            .filter(|(_, ended)| *ended)
            .map(|(d, _)| format!("{} belongs to a run that is over", d.display()))
            .collect(),
        ..Default::default()
    };
    if stale.iter().any(|(_, ended)| !ended) {
        f.detail = format!(
            "{} cgroup(s) of dead runs, removed when their operations are recovered",
            stale.len()
        );
    }
    if repair {
        cgroup::remove_stale(stale.iter().map(|(d, _)| d.as_path()));
    }
    if !f.problems.is_empty() {
        f.repairable = true;
        f.repaired = repair;
        f.detail = if repair {
            "removed (as recovery does)".into()
        } else {
            "--repair removes them, as recovery does".into()
        };
    }
    out.push(f);
    out
}

/// Rootless: which cgroups were delegated to the user and the limits they carry, or that
/// there are none (and so no limits).
fn rootless_detail(host: &cgroup::Host) -> String {
    let places = host.summary();
    let at: Vec<String> = places
        .iter()
        .filter_map(|(c, place)| Some(format!("{c} {}", place.as_ref()?)))
        .collect();
    let missing: Vec<&str> = places
        .iter()
        .filter(|(_, place)| place.is_none())
        .map(|(c, _)| *c)
        .collect();
    if at.is_empty() {
        return "rootless: no cgroup delegated to this user carries a memory, pids or cpu controller, so those limits are unavailable: runs have none, and `run --memory/--pids/--cpus` fails (exit 78)".into();
    }
    let mut detail = format!(
        "rootless: delegated cgroups, limits through {}",
        at.join(", ")
    );
    if !missing.is_empty() {
        let flags: Vec<String> = missing
            .iter()
            .map(|c| {
                if *c == "cpu" {
                    "--cpus".to_string()
                } else {
                    format!("--{c}")
                }
            })
            .collect();
        detail.push_str(&format!(
            "; no delegated {} controller: `run {}` fails (exit 78)",
            missing.join(", "),
            flags.join("/")
        ));
    }
    detail
}

/// The line about the writable layer's limit, which works the same rootless.
fn doctor_layer() -> Option<crate::backend::Finding> {
    let exact = match layerlimit::exact_available() {
        Ok(()) => "a limit a run names (--max-layer-bytes, the API's max_layer_bytes) gets a loop-mounted ext4 of that size: writes past it fail with ENOSPC".to_string(),
        Err(e) => format!("a limit a run names cannot get a filesystem of its own here ({e})"),
    };
    Some(crate::backend::Finding {
        check: "layer limit",
        detail: format!(
            "{exact}; otherwise a guard stops the run once its layer is past the limit"
        ),
        ..Default::default()
    })
}
