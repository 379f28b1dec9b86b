//! `snapfs mount --daemon`: starts this same command detached in a new
//! session and returns once it serves; the daemon says so through a pipe
//! whose fd it finds in its environment. systemd's `NOTIFY_SOCKET` goes on
//! to the daemon, which is the process that serves and reports readiness.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::notify::{Notifier, NOTIFY_SOCKET_ENV};

/// Set in the daemon's environment: the fd to report readiness on.
const READY_FD_ENV: &str = "SNAPFS_READY_FD";

/// In the daemon: the fd to report readiness on.
pub fn ready_fd() -> Option<i32> {
    std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
}

/// In the daemon: tell the waiting parent we serve, then send our stderr
/// (the logs) to the store's log file, since the terminal may go away.
pub fn report_ready(fd: i32, store_root: &Path) {
    let mut ready = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = std::io::Write::write_all(&mut ready, b"ready\n");
    drop(ready);
    let log_path = store_root.join("snapfs.log");
    if let Ok(log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(snapfs::modes::PRIVATE_FILE)
        .open(&log_path)
    {
        use std::os::unix::io::AsRawFd;
        unsafe {
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

/// Starts this same command detached and returns once it serves.
pub fn start_daemon(notifier: Option<&Notifier>) -> Result<()> {
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    let exe = std::env::current_exe().context("finding the snapfs binary")?;
    let mut command = std::process::Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env(READY_FD_ENV, write_fd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if let Some(notifier) = notifier {
        command.env(NOTIFY_SOCKET_ENV, notifier.env_value());
    }
    // The daemon starts with the user's umask, as this command did.
    let user_umask = snapfs::modes::user_umask();
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            libc::close(read_fd);
            if let Some(mask) = user_umask {
                libc::umask(mask as libc::mode_t);
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("starting the mount daemon")?;
    unsafe { libc::close(write_fd) };
    let mut reader = unsafe { std::fs::File::from_raw_fd(read_fd) };
    let mut answer = String::new();
    let _ = reader.read_to_string(&mut answer);
    if answer.starts_with("ready") {
        println!("snapfs mount running as pid {}", child.id());
        return Ok(());
    }
    let status = child.wait()?;
    bail!("the mount daemon failed to start ({status})")
}
