//! A real `snapfs mount` for the tests, and read-only loop mounts of the
//! images it serves.
//!
//! `Mount` starts `snapfs --store STORE mount MNT` as a foreground child (or
//! as a daemon), waits until `MNT/.control` exists, and on Drop always
//! unmounts: `snapfs umount`, then `umount -l` if that failed, then waits
//! for (or kills) the mount process. A test that panics leaves no mount
//! and no process behind.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{detach_loops, snapfs, tool, MountGuard};

/// How long a mount may take to serve.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an unmount and the end of the mount process may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `snapfs mount` on a fresh temporary folder.
pub struct Mount {
    store: PathBuf,
    /// Holds the mountpoint `mnt/` and the log `mount.log`; the mount
    /// process runs with this as its working folder.
    dir: Option<TempDir>,
    mnt: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    /// The foreground mount process.
    child: Option<Child>,
    /// The pid of a daemon mount (not our child).
    daemon: Option<u32>,
    /// Environment of the mount process beyond the test's (a bucket's).
    envs: Vec<(String, String)>,
}

impl Mount {
    /// Mounts `store` and waits until the mount serves.
    pub fn start(store: &Path) -> Mount {
        Mount::start_with(store, &[])
    }

    /// Like `start`, with extra arguments for `snapfs mount`.
    pub fn start_with(store: &Path, args: &[&str]) -> Mount {
        Mount::try_start_with(store, args).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Like `start_with`, with `envs` set for the mount process (the AWS
    /// variables of a store in a bucket).
    pub fn start_env(store: &Path, args: &[&str], envs: &[(String, String)]) -> Mount {
        let mut mount = Mount::new(store, args);
        mount.envs = envs.to_vec();
        mount.spawn().unwrap_or_else(|why| panic!("{why}"));
        mount
    }

    /// Like `start_with`; Err says why the mount ended before serving
    /// (with its log).
    pub fn try_start_with(store: &Path, args: &[&str]) -> Result<Mount, String> {
        let mut mount = Mount::new(store, args);
        mount.spawn()?;
        Ok(mount)
    }

    /// Runs `snapfs mount --daemon`, which must return only once the mount
    /// serves; returns the guard and what the command printed.
    pub fn daemon(store: &Path) -> (Mount, super::Ran) {
        let mut mount = Mount::new(store, &[]);
        let ran = super::run_timeout(
            snapfs(store)
                .arg("mount")
                .arg(&mount.mnt)
                .arg("--daemon")
                .current_dir(mount.dir()),
            READY_TIMEOUT,
        );
        mount.daemon = ran
            .stdout
            .split_whitespace()
            .last()
            .and_then(|pid| pid.parse().ok());
        // The daemon logs to the store once it serves.
        mount.log = store.join("snapfs.log");
        (mount, ran)
    }

    fn new(store: &Path, args: &[&str]) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("snapfs-mount-")
            .tempdir()
            .expect("temporary folder for a mount");
        let root = dir.path().canonicalize().expect("canonical temp folder");
        let mnt = root.join("mnt");
        fs::create_dir(&mnt).expect("create mountpoint");
        Mount {
            store: store.to_path_buf(),
            log: root.join("mount.log"),
            dir: Some(dir),
            mnt,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            daemon: None,
            envs: Vec::new(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.mnt.parent().unwrap_or(Path::new("/")).to_path_buf()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = File::create(&self.log).expect("create mount log");
        let log_out = log.try_clone().expect("clone mount log");
        let mut cmd = snapfs(&self.store);
        cmd.arg("mount")
            .arg(&self.mnt)
            .args(&self.args)
            .current_dir(self.dir())
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log_out))
            .stderr(Stdio::from(log));
        // If the test process dies without unwinding, the mount unmounts
        // itself on SIGTERM instead of staying behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("start snapfs mount"));
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if fs::symlink_metadata(self.mnt.join(".control")).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "snapfs mount {} exited with {status} before serving; log:\n{}",
                        self.mnt.display(),
                        self.log_text()
                    ));
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "snapfs mount {} did not serve within {READY_TIMEOUT:?}; log:\n{}",
                    self.mnt.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// The folder of `disk` (`name` or `group/name`) in the mount.
    pub fn disk(&self, disk: &str) -> PathBuf {
        self.mnt.join(disk)
    }

    /// What the mount process logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of the mount process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id()).or(self.daemon)
    }

    /// Kills the mount process with SIGKILL and reaps it. The dead mount
    /// stays in place ("transport endpoint is not connected") until
    /// someone unmounts it, as after a real crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.daemon.take() {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            wait_pid_gone(pid, STOP_TIMEOUT);
        }
    }

    /// Sends `signal` to the mount process.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// Waits up to `timeout` for the foreground mount process to end; None
    /// if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = wait_child(self.child.as_mut()?, timeout)?;
        self.child = None;
        Some(status)
    }

    /// Starts the mount again on the same mountpoint (after `kill9`),
    /// clearing a dead mount left there first.
    pub fn remount(&mut self) {
        assert!(self.pid().is_none(), "remount while the mount still runs");
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
        if let Err(why) = self.spawn() {
            panic!("{why}");
        }
    }

    /// Unmounts with `snapfs umount`, asserting that it and the mount
    /// process end cleanly; returns the mount's log.
    pub fn unmount(mut self) -> String {
        let ran = super::run_timeout(
            snapfs(&self.store).arg("umount").arg(&self.mnt),
            STOP_TIMEOUT,
        );
        assert_eq!(
            ran.code,
            Some(0),
            "snapfs umount {} failed: {}{}\nmount log:\n{}",
            self.mnt.display(),
            ran.stdout,
            ran.stderr,
            self.log_text()
        );
        if let Some(mut child) = self.child.take() {
            let status = wait_child(&mut child, STOP_TIMEOUT);
            assert!(
                status.is_some_and(|s| s.success()),
                "snapfs mount ended with {status:?}; log:\n{}",
                self.log_text()
            );
        }
        if let Some(pid) = self.daemon.take() {
            assert!(
                wait_pid_gone(pid, STOP_TIMEOUT),
                "the mount daemon (pid {pid}) still runs after snapfs umount"
            );
        }
        assert!(!is_mounted(&self.mnt), "still mounted after snapfs umount");
        self.log_text()
    }

    /// Best effort, never panics: unmount, stop the process, clear a dead
    /// mount, and keep the folder if something is still mounted on it.
    fn release(&mut self) {
        let running = self.pid().is_some();
        if running || is_mounted(&self.mnt) {
            let unmounted = Command::new(env!("CARGO_BIN_EXE_snapfs"))
                .arg("--store")
                .arg(&self.store)
                .arg("umount")
                .arg(&self.mnt)
                .env_remove("SNAPFS_STORE")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
                .and_then(|mut c| wait_child(&mut c, STOP_TIMEOUT))
                .is_some_and(|s| s.success());
            if !unmounted && is_mounted(&self.mnt) {
                eprintln!(
                    "snapfs umount {} failed; unmounting lazily",
                    self.mnt.display()
                );
                lazy_unmount(&self.mnt);
            }
        }
        if let Some(mut child) = self.child.take() {
            if wait_child(&mut child, STOP_TIMEOUT).is_none() {
                eprintln!("snapfs mount (pid {}) did not end; killing it", child.id());
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(pid) = self.daemon.take() {
            if !wait_pid_gone(pid, STOP_TIMEOUT) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                wait_pid_gone(pid, STOP_TIMEOUT);
            }
        }
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
        if let Some(dir) = self.dir.take() {
            if is_mounted(&self.mnt) {
                // Never delete through a live mount: that would remove
                // snapshots.
                eprintln!("{} is still mounted; leaving it", self.mnt.display());
                let _ = dir.keep();
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.release();
    }
}

/// Loop-mounts an image read-only (`mount -o loop,ro`) on a fresh folder;
/// the guard unmounts and detaches the loop device.
pub fn loop_mount_ro(image: &Path) -> MountGuard {
    let dir = tempfile::Builder::new()
        .prefix("snapfs-ro-")
        .tempdir()
        .expect("mountpoint");
    let out = Command::new(tool("mount"))
        .args(["-o", "loop,ro"])
        .arg(image)
        .arg(dir.path())
        .output()
        .expect("run mount");
    if !out.status.success() {
        detach_loops(image);
        panic!(
            "mount -o loop,ro {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    MountGuard {
        image: image.to_path_buf(),
        dir: Some(dir),
    }
}

/// Whether something is mounted exactly at `path` (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mountpoint| mountpoint == wanted)
}

fn lazy_unmount(path: &Path) {
    let _ = Command::new(tool("umount"))
        .arg("-l")
        .arg(path)
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for a child; None if it still runs.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => return None,
        }
    }
}

/// Waits up to `timeout` until process `pid` is gone (or a zombie);
/// returns whether it is.
pub fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        // The state follows the command name, which is in parentheses.
        let alive = state
            .as_deref()
            .and_then(|s| s.rsplit_once(") "))
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'));
        if !alive {
            return true;
        }
        if started.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
