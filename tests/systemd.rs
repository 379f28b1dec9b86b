//! The mount under systemd: `snapfs mount` with `NOTIFY_SOCKET` set tells
//! the socket READY=1 (with its pid) at the moment it serves, and
//! STOPPING=1 when it begins to stop; the shipped unit passes
//! `systemd-analyze verify`.
//!
//! The test plays systemd: it binds the datagram socket itself and reads
//! what the mount sends. The mount tests need root and /dev/fuse: without
//! them they skip with a printed reason, unless SNAPFS_REQUIRE_FUSE=1 (CI)
//! makes them fail.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::{is_mounted, wait_pid_gone};
use common::{find_tool, need_fuse, ok, run_timeout, snapfs, write_random_file, Rng};
use tempfile::TempDir;

/// How long the mount may take to serve, and to stop.
const DEADLINE: Duration = Duration::from_secs(30);

const DISK: &str = "vm1/system";

// ------------------------------------------------------------- helpers

/// A store with one disk, a mountpoint, and the socket systemd would
/// listen on.
struct Fixture {
    tmp: TempDir,
    store: PathBuf,
    mnt: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("snapfs-systemd-test-")
            .tempdir()
            .expect("temp dir");
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        let store = root.join("store");
        let mnt = root.join("mnt");
        fs::create_dir(&mnt).expect("create mountpoint");
        let source = root.join("system.img");
        write_random_file(&source, 4 << 20, &mut Rng::new(9));
        ok(snapfs(&store).args(["disk", "add", DISK]).arg(&source));
        Fixture { tmp, store, mnt }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// What systemd would read on its notification socket.
struct NotifySocket {
    socket: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    env_value: String,
    /// Every message so far, for failure reports.
    received: Vec<String>,
}

impl NotifySocket {
    /// A socket bound to a path.
    fn at_path(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        NotifySocket::new(socket, path.to_string_lossy().into_owned())
    }

    /// A socket in the abstract namespace (`@name` in `NOTIFY_SOCKET`).
    fn abstract_name(name: &str) -> NotifySocket {
        let address = SocketAddr::from_abstract_name(name).expect("abstract address");
        let socket = UnixDatagram::bind_addr(&address).expect("bind the notify socket");
        NotifySocket::new(socket, format!("@{name}"))
    }

    fn new(socket: UnixDatagram, env_value: String) -> NotifySocket {
        NotifySocket {
            socket,
            env_value,
            received: Vec::new(),
        }
    }

    /// The first message from now on that has the line `line`, received
    /// within `DEADLINE`; panics with what came instead and the mount's log.
    fn expect(&mut self, line: &str, log: &Path) -> Message {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no message with {line:?} on {} within {DEADLINE:?}; received {:?}\nmount log:\n{}",
                    self.env_value,
                    self.received,
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("socket timeout");
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.received.push(text.clone());
            let message = Message(text);
            if message.lines().any(|l| l == line) {
                return message;
            }
        }
    }
}

/// One datagram: `KEY=VALUE` lines.
struct Message(String);

impl Message {
    fn lines(&self) -> impl Iterator<Item = &str> {
        self.0.lines()
    }

    fn field(&self, key: &str) -> Option<&str> {
        self.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }

    fn mainpid(&self) -> Option<u32> {
        self.field("MAINPID").and_then(|pid| pid.parse().ok())
    }
}

/// A mount process this test started (a child, or a daemon by pid). Drop
/// unmounts and ends it whatever happened, so that a failed check leaves
/// no mount and no process behind.
struct MountProcess {
    store: PathBuf,
    mnt: PathBuf,
    child: Option<Child>,
    daemon: Option<u32>,
}

impl MountProcess {
    fn foreground(fixture: &Fixture, notify: &NotifySocket, args: &[&str], log: &Path) -> Self {
        let out = File::create(log).expect("mount log");
        let err = out.try_clone().expect("mount log");
        let mut cmd = snapfs(&fixture.store);
        cmd.arg("mount")
            .arg(&fixture.mnt)
            .args(args)
            .env("NOTIFY_SOCKET", &notify.env_value)
            .env("RUST_LOG", "info")
            .current_dir(fixture.tmp.path())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // If the test process dies without unwinding, the mount stops too.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start snapfs mount");
        MountProcess {
            store: fixture.store.clone(),
            mnt: fixture.mnt.clone(),
            child: Some(child),
            daemon: None,
        }
    }

    /// `snapfs umount`, which must succeed; the process must then end
    /// cleanly.
    fn unmount(&mut self, log: &Path) {
        let ran = run_timeout(snapfs(&self.store).arg("umount").arg(&self.mnt), DEADLINE);
        assert_eq!(
            ran.code,
            Some(0),
            "snapfs umount failed: {}{}\nmount log:\n{}",
            ran.stdout,
            ran.stderr,
            fs::read_to_string(log).unwrap_or_default()
        );
        if let Some(mut child) = self.child.take() {
            let status = wait_child(&mut child, DEADLINE);
            assert!(
                status.is_some_and(|s| s.success()),
                "snapfs mount ended with {status:?}; log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Some(pid) = self.daemon.take() {
            assert!(
                wait_pid_gone(pid, DEADLINE),
                "the mount daemon (pid {pid}) still runs after snapfs umount"
            );
        }
        assert!(!is_mounted(&self.mnt), "still mounted after snapfs umount");
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new(env!("CARGO_BIN_EXE_snapfs"))
                .arg("--store")
                .arg(&self.store)
                .arg("umount")
                .arg(&self.mnt)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
                .and_then(|mut c| wait_child(&mut c, DEADLINE));
        }
        if let Some(mut child) = self.child.take() {
            if wait_child(&mut child, DEADLINE).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(pid) = self.daemon.take() {
            if !wait_pid_gone(pid, DEADLINE) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                wait_pid_gone(pid, DEADLINE);
            }
        }
        if is_mounted(&self.mnt) {
            let umount = find_tool("umount").unwrap_or_else(|| PathBuf::from("umount"));
            let _ = Command::new(umount).arg("-l").arg(&self.mnt).status();
        }
    }
}

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

/// The names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("folder entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// At the moment READY=1 arrives, the mount must already serve the disk.
fn assert_serves(fixture: &Fixture, ready: &Message) {
    assert!(
        is_mounted(&fixture.mnt),
        "READY=1 came before {} was mounted",
        fixture.mnt.display()
    );
    assert!(
        names(&fixture.mnt).contains(&"vm1".to_string()),
        "the mount lists {:?} at READY=1",
        names(&fixture.mnt)
    );
    assert_eq!(names(&fixture.mnt.join("vm1")), ["system"]);
    let status = ready.field("STATUS").unwrap_or_default();
    assert_eq!(
        status,
        format!(
            "serving {} on {}",
            fixture.store.display(),
            fixture.mnt.display()
        ),
        "STATUS of {:?}",
        ready.0
    );
}

// --------------------------------------------------------------- tests

#[test]
fn foreground_mount_notifies_ready_when_it_serves_and_stopping_on_umount() {
    if !need_fuse("foreground_mount_notifies_ready_when_it_serves_and_stopping_on_umount") {
        return;
    }
    let fixture = Fixture::new();
    let mut notify = NotifySocket::at_path(&fixture.path("notify.sock"));
    let log = fixture.path("mount.log");
    // The hook records its environment: NOTIFY_SOCKET must not reach it.
    let hook_env = fixture.path("hook.env");
    let hook = format!("env > '{}'", hook_env.display());
    let mut mount = MountProcess::foreground(&fixture, &notify, &["--pre-hook", &hook], &log);
    let pid = mount.child.as_ref().map(Child::id);

    let ready = notify.expect("READY=1", &log);
    assert_serves(&fixture, &ready);
    assert_eq!(ready.mainpid(), pid, "MAINPID of {:?}", ready.0);

    fs::write(fixture.mnt.join(DISK).join(".create"), "first\n").expect("snapshot via .create");
    let env = fs::read_to_string(&hook_env).expect("the pre-hook ran");
    assert!(env.contains("SNAPFS_DISK=vm1/system"), "hook env:\n{env}");
    assert!(
        !env.contains("NOTIFY_SOCKET"),
        "the hook inherited NOTIFY_SOCKET:\n{env}"
    );

    mount.unmount(&log);
    let stopping = notify.expect("STOPPING=1", &log);
    assert!(
        stopping.field("STATUS").is_some(),
        "STOPPING=1 without STATUS: {:?}",
        stopping.0
    );
    assert_eq!(
        notify
            .received
            .iter()
            .filter(|m| m.lines().any(|l| l == "READY=1"))
            .count(),
        1,
        "READY=1 more than once: {:?}",
        notify.received
    );
}

#[test]
fn daemon_mount_notifies_ready_from_the_daemon_with_its_pid() {
    if !need_fuse("daemon_mount_notifies_ready_from_the_daemon_with_its_pid") {
        return;
    }
    let fixture = Fixture::new();
    // The abstract namespace, as systemd may use; unique per run.
    let name = format!("snapfs-test-notify-{}", std::process::id());
    let mut notify = NotifySocket::abstract_name(&name);
    let log = fixture.store.join("snapfs.log");
    let mut mount = MountProcess {
        store: fixture.store.clone(),
        mnt: fixture.mnt.clone(),
        child: None,
        daemon: None,
    };
    let ran = run_timeout(
        snapfs(&fixture.store)
            .arg("mount")
            .arg(&fixture.mnt)
            .arg("--daemon")
            .env("NOTIFY_SOCKET", &notify.env_value)
            .current_dir(fixture.tmp.path()),
        DEADLINE,
    );
    mount.daemon = ran
        .stdout
        .split_whitespace()
        .last()
        .and_then(|pid| pid.parse().ok());
    assert_eq!(
        ran.code,
        Some(0),
        "snapfs mount --daemon failed: {}{}",
        ran.stdout,
        ran.stderr
    );
    let daemon = mount
        .daemon
        .expect("mount --daemon prints the daemon's pid");

    let ready = notify.expect("READY=1", &log);
    assert_serves(&fixture, &ready);
    assert_eq!(
        ready.mainpid(),
        Some(daemon),
        "MAINPID of {:?} (the daemon is pid {daemon})",
        ready.0
    );

    mount.unmount(&log);
    notify.expect("STOPPING=1", &log);
    assert_eq!(
        notify.received.len(),
        2,
        "one READY=1 (from the daemon, not also from the command that started it) and one STOPPING=1: {:?}",
        notify.received
    );
}

#[test]
fn shipped_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = find_tool("systemd-analyze") else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP shipped_unit_passes_systemd_analyze_verify: systemd-analyze not found"
        );
        return;
    };
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/snapfs.service");
    let text = fs::read_to_string(&unit).expect("read the unit");
    assert!(text.contains("\nType=notify\n"), "the unit is Type=notify");
    assert!(
        text.contains("\nExecStart=/usr/local/bin/snapfs mount /mnt/snap\n"),
        "the unit starts /usr/local/bin/snapfs mount /mnt/snap"
    );
    // verify checks that the commands exist: point them at the binary under
    // test, in a copy with the same name.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("snapfs.service");
    fs::write(
        &copy,
        text.replace("/usr/local/bin/snapfs", env!("CARGO_BIN_EXE_snapfs")),
    )
    .expect("write the unit's copy");
    // --man=no: the man page need not be installed where the tests run.
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("snapfs.service"),
        "systemd-analyze verify {}: {}\n{stderr}",
        unit.display(),
        out.status
    );
}
