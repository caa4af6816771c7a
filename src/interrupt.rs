//! Ctrl-C (and SIGTERM/SIGHUP) while a command waits: a flag set by the signal handler.
//!
//! The handler is installed without SA_RESTART so a blocking `poll` returns EINTR at once;
//! whoever waits checks `take()` and decides what to cancel.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNT: AtomicUsize = AtomicUsize::new(0);
static SEEN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    COUNT.fetch_add(1, Ordering::SeqCst);
}

pub fn install() {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only touches an atomic.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// True once per signal received since the last call.
pub fn take() -> bool {
    let count = COUNT.load(Ordering::SeqCst);
    let seen = SEEN.swap(count, Ordering::SeqCst);
    count != seen
}

/// Back to the default actions (the process ends on the signal): for `contree shell`
/// while it waits for a line, when nothing is running that a signal should cancel instead.
pub fn restore_default() {
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the default action installs no handler of ours.
        let _ = unsafe { sigaction(sig, &action) };
    }
}
