//! Stopping a long local command cleanly: the first SIGINT, SIGTERM or
//! SIGHUP sets a flag the work looks at (a snapshot then fails, leaves
//! nothing and runs its post-hook); a second one ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};

static CANCELLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe work here: a store and a reset.
    CANCELLED.store(true, Ordering::SeqCst);
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// Installs the handlers and returns the flag they set.
pub fn cancel_on_signal() -> &'static AtomicBool {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
    &CANCELLED
}
