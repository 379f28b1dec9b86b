//! Hooks around a snapshot's read: a command run before it (to freeze the
//! guest's filesystems, e.g. `virsh domfsfreeze DOMAIN`) and one run after
//! it whatever happened (to thaw them). Both run through `sh -c` with a time
//! limit, in a process group of their own so that a hook that hangs is
//! killed whole.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The time a hook may take unless told otherwise.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// Characters of a hook's output that an error repeats.
const SHOWN_OUTPUT: usize = 200;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    pub pre: Option<String>,
    pub post: Option<String>,
    /// None: [`DEFAULT_HOOK_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// What a hook is told about the snapshot, as environment variables.
pub struct HookContext<'a> {
    pub disk: &'a str,
    pub snapshot: &'a str,
    pub source: &'a std::path::Path,
}

impl Hooks {
    pub fn any(&self) -> bool {
        self.pre.is_some() || self.post.is_some()
    }

    fn limit(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT)
    }

    /// Runs the pre-hook, if any; its failure fails the snapshot.
    pub fn run_pre(&self, context: &HookContext) -> Result<()> {
        match &self.pre {
            Some(command) => run_hook("pre-hook", command, context, self.limit()),
            None => Ok(()),
        }
    }

    /// Runs the post-hook, if any.
    pub fn run_post(&self, context: &HookContext) -> Result<()> {
        match &self.post {
            Some(command) => run_hook("post-hook", command, context, self.limit()),
            None => Ok(()),
        }
    }
}

/// Runs `command` with `sh -c` and waits up to `limit`; fails with its exit
/// status and the first line of what it printed.
pub fn run_hook(what: &str, command: &str, context: &HookContext, limit: Duration) -> Result<()> {
    let failed = |why: String| Error::Hook {
        what: what.to_string(),
        command: crate::units::shortened(command, SHOWN_OUTPUT),
        why,
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("SNAPFS_DISK", context.disk)
        .env("SNAPFS_SNAPSHOT", context.snapshot)
        .env("SNAPFS_SOURCE", context.source)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| failed(format!("cannot start sh: {e}")))?;
    // Read both streams on threads: a hook that fills a pipe must not stall.
    let out = child.stdout.take().map(collect_output);
    let err = child.stderr.take().map(collect_output);
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= limit => break Err(()),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(failed(format!("cannot wait for it: {e}"))),
        }
    };
    let Ok(status) = status else {
        // The whole group: sh and whatever it started.
        unsafe {
            libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = child.wait();
        return Err(failed(format!(
            "did not finish within {} s and was killed",
            limit.as_secs_f64()
        )));
    };
    let output = [err, out]
        .into_iter()
        .flatten()
        .filter_map(|t| t.join().ok())
        .collect::<Vec<String>>();
    if status.success() {
        return Ok(());
    }
    let first_line = output
        .iter()
        .flat_map(|text| text.lines())
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(|line| format!(": {}", crate::units::shortened(line, SHOWN_OUTPUT)))
        .unwrap_or_default();
    let how = match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "was killed by a signal".to_string(),
    };
    Err(failed(format!("{how}{first_line}")))
}

/// Reads a hook's output stream to its end (at most 64 KiB are kept).
fn collect_output(mut stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            if kept.len() < 64 << 10 {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> HookContext<'static> {
        HookContext {
            disk: "vm1/system",
            snapshot: "nightly",
            source: std::path::Path::new("/images/vm1.img"),
        }
    }

    #[test]
    fn a_hook_sees_the_snapshot_in_its_environment() {
        let hook = "test \"$SNAPFS_DISK $SNAPFS_SNAPSHOT $SNAPFS_SOURCE\" = 'vm1/system nightly /images/vm1.img'";
        run_hook("pre-hook", hook, &context(), Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn a_failing_hook_says_its_status_and_first_line() {
        let err = run_hook(
            "pre-hook",
            "echo; echo 'domain vm1 not running' >&2; exit 3",
            &context(),
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("exit status 3: domain vm1 not running"),
            "{err}"
        );
        assert!(err.contains("pre-hook"), "{err}");
    }

    #[test]
    fn a_hook_past_its_time_limit_is_killed_with_its_children() {
        let started = Instant::now();
        let err = run_hook(
            "post-hook",
            "sleep 30 & sleep 30",
            &context(),
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("did not finish within 0.3 s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
