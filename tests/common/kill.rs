//! Kill -9 helpers: a process the test started and kills by pid (also when
//! the test fails), content hashes to compare snapshots with, and the
//! cleaning of a mount whose server was killed.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::mount::is_mounted;
use super::{snapfs, tool};

/// How long a process may take to end once it has been killed, or once
/// the mount it talks to has gone.
pub const END_TIMEOUT: Duration = Duration::from_secs(60);

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Exit status 0: what it did is done.
    Succeeded,
    /// Killed by our SIGKILL.
    Killed,
    /// Any other end: exit code (None for another signal) and its output.
    Failed {
        code: Option<i32>,
        stdout: String,
        stderr: String,
    },
}

/// A child process whose output goes to files (kept for the failure
/// message). Dropping it kills and reaps it: no test leaves one behind.
pub struct Proc {
    child: Option<Child>,
    what: String,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Proc {
    /// Starts `cmd`; `what` names it in messages, its output goes to
    /// files in `dir`.
    pub fn spawn(cmd: &mut Command, what: &str, dir: &Path) -> Proc {
        let stdout = dir.join("proc.stdout");
        let stderr = dir.join("proc.stderr");
        let out = File::create(&stdout).expect("create stdout file");
        let err = File::create(&stderr).expect("create stderr file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child: Some(child),
            what: what.to_string(),
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the process ends or `until` passes; returns how it
    /// ended, or None if it still runs.
    pub fn wait_until(&mut self, until: Instant) -> Option<Ended> {
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait for child") {
                self.child = None;
                return Some(self.ended(status));
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Waits for the end, failing the test if the process hangs.
    pub fn wait(&mut self, timeout: Duration, why: &str) -> Ended {
        match self.wait_until(Instant::now() + timeout) {
            Some(ended) => ended,
            None => {
                self.kill9();
                panic!("{} still ran {timeout:?} after {why}", self.what);
            }
        }
    }

    /// Sends SIGKILL (by pid) and reaps; returns how it ended (it may have
    /// finished just before).
    pub fn kill9(&mut self) -> Option<Ended> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
        }
        let status = child.wait().expect("reap a killed child");
        Some(self.ended(status))
    }

    fn ended(&self, status: ExitStatus) -> Ended {
        if status.success() {
            Ended::Succeeded
        } else if status.signal() == Some(libc::SIGKILL) {
            Ended::Killed
        } else {
            Ended::Failed {
                code: status.code(),
                stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
                stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
            }
        }
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// What the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `cmd` and kills it with SIGKILL after `delay` unless it ended
/// first. A run that fails on its own fails the test, with its output.
pub fn run_killed_after(cmd: &mut Command, what: &str, dir: &Path, delay: Duration) -> Ended {
    let mut proc = Proc::spawn(cmd, what, dir);
    let ended = proc
        .wait_until(Instant::now() + delay)
        .or_else(|| proc.kill9())
        .expect("the process ended");
    if let Ended::Failed {
        code,
        stdout,
        stderr,
    } = &ended
    {
        panic!("{what} failed on its own with {code:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    }
    ended
}

/// The blake3 hash of everything `reader` yields.
pub fn hash_reader(reader: &mut dyn Read) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return hasher.finalize(),
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

pub fn hash_file(path: &Path) -> blake3::Hash {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    hash_reader(&mut file)
}

/// The hash of `snapfs export DISK NAME -o -`, streamed.
pub fn export_hash(store: &Path, disk: &str, name: &str) -> blake3::Hash {
    let mut child = snapfs(store)
        .args(["export", disk, name, "-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn export");
    let mut out = child.stdout.take().expect("stdout");
    let hash = hash_reader(&mut out);
    let output = child.wait_with_output().expect("wait for export");
    assert!(
        output.status.success(),
        "export of {disk}/{name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    hash
}

/// Unmounts a mount whose server was killed ("transport endpoint is not
/// connected"), as an administrator would after a crash.
pub fn clear_dead_mount(mnt: &Path) {
    let deadline = Instant::now() + END_TIMEOUT;
    while is_mounted(mnt) {
        let _ = Command::new(tool("umount"))
            .arg("-l")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
        if !is_mounted(mnt) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cannot unmount the dead mount {}",
            mnt.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that every 4 KiB block of `actual` equals the same block of
/// `old` or of `new` (all three the same size): what a write of `new` over
/// `old`, interrupted at any point, leaves.
pub fn assert_blocks_old_or_new(actual: &Path, old: &Path, new: &Path, what: &str) {
    const BLOCK: usize = 4096;
    let read = |p: &Path| fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    let (a, o, n) = (read(actual), read(old), read(new));
    assert_eq!(a.len(), n.len(), "{what}: size of {}", actual.display());
    assert_eq!(o.len(), n.len(), "{what}: old and new sizes differ");
    for (i, block) in a.chunks(BLOCK).enumerate() {
        let range = i * BLOCK..(i * BLOCK + block.len());
        assert!(
            block == &o[range.clone()] || block == &n[range],
            "{what}: block at offset {} of {} is neither the old nor the new content",
            i * BLOCK,
            actual.display()
        );
    }
}
