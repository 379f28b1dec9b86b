//! The signals that stop a mount (SIGINT, SIGTERM, SIGHUP), taken by
//! sigwait in the mount's main thread.

pub fn block_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for a signal (returned) or for the session to end by itself
/// (None: someone ran umount).
pub fn wait_for_end(signals: &libc::sigset_t, session: &fuser::BackgroundSession) -> Option<i32> {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    loop {
        let signal = unsafe { libc::sigtimedwait(signals, std::ptr::null_mut(), &timeout) };
        if signal > 0 {
            return Some(signal);
        }
        if session.guard.is_finished() {
            return None;
        }
    }
}
