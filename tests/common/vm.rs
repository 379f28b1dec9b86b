//! A real VM for the tests: QEMU (TCG only: KVM did not boot a guest on the
//! machines this runs on) boots the host's Debian kernel from /boot with an
//! initramfs built here (busybox-static, the virtio-blk and ext4 modules
//! with their dependencies, and the scripts in tests/guest/). The guest has
//! no network device at all. Disks are files given by path (a raw image, or
//! a file inside a snapfs mount) on virtio-blk.
//!
//! The host talks to the guest over the second serial port (the first is
//! the kernel console, kept in a log whose tail every failure prints):
//! `run` sends a shell script and returns its output and status, with a
//! deadline, so that no test can hang on a guest.
//!
//! The crash-consistency workload (tests/guest/workload.sh) writes files in
//! fsync order; `check_image` checks its invariant on a copy of a disk image
//! after any crash or snapshot.
//!
//! ```ignore
//! let mut guest = Guest::boot(&[Disk::new(&image)]);
//! guest.run("mount -t ext4 /dev/vda /mnt");
//! guest.start_workload("/mnt");
//! guest.wait_workload(10, Duration::from_secs(60));
//! guest.kill(); // or guest.stop_workload(); guest.poweroff();
//! let files = check_image(&image).unwrap_or_else(|why| panic!("{why}"));
//! ```
//!
//! Qemu is killed by pid and reaped in `Drop`, also when a test panics, and
//! gets SIGKILL if the test thread dies without unwinding.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{copy_sparse, find_tool, need_root, skip, tool, MountGuard};

/// Longest a boot may take to the agent's ready line (TCG on 2 shared
/// cores; a boot takes a few seconds when the machine is idle).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Default deadline of one `run`.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest qemu may take to exit after `poweroff -f`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Folder of the workload, under the filesystem given to `start_workload`.
pub const WORKLOAD_DIR: &str = "d";

const INIT: &str = include_str!("../guest/init.sh");
const AGENT: &str = include_str!("../guest/agent.sh");
const WORKLOAD: &str = include_str!("../guest/workload.sh");

/// Modules the guest loads (with their dependencies, unless built in):
/// the virtio PCI transport, virtio-blk, ext4, and the crc32c that ext4's
/// checksums ask the crypto API for (no modprobe in the guest to load it on
/// demand).
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

/// QEMU's `cache=` mode of a drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// O_DIRECT, guest flushes are fdatasync (what the issue's users run).
    None,
    Writeback,
    Writethrough,
    DirectSync,
    Unsafe,
}

impl Cache {
    fn name(self) -> &'static str {
        match self {
            Cache::None => "none",
            Cache::Writeback => "writeback",
            Cache::Writethrough => "writethrough",
            Cache::DirectSync => "directsync",
            Cache::Unsafe => "unsafe",
        }
    }

    fn direct(self) -> bool {
        matches!(self, Cache::None | Cache::DirectSync)
    }
}

/// QEMU's `aio=` mode of a drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aio {
    Threads,
    /// Linux AIO; QEMU needs O_DIRECT (cache none or directsync) for it.
    Native,
    IoUring,
}

impl Aio {
    fn name(self) -> &'static str {
        match self {
            Aio::Threads => "threads",
            Aio::Native => "native",
            Aio::IoUring => "io_uring",
        }
    }
}

/// A disk of the guest: `/dev/vda` for the first, `/dev/vdb` next, ...
#[derive(Clone, Debug)]
pub struct Disk {
    pub path: PathBuf,
    pub cache: Cache,
    pub aio: Aio,
    pub read_only: bool,
    /// When the file refuses O_DIRECT (tmpfs, some FUSE mounts), use
    /// `cache=writeback` instead of failing. Set by `new`, cleared by
    /// `cache`.
    pub fallback: bool,
    /// QEMU's image locking (fcntl OFD locks on the file); off for a file
    /// system that does not support them.
    pub locking: bool,
}

impl Disk {
    /// `cache=none,aio=threads`, falling back to `cache=writeback` where
    /// the file cannot be opened with O_DIRECT.
    pub fn new(path: &Path) -> Disk {
        Disk {
            path: path.to_path_buf(),
            cache: Cache::None,
            aio: Aio::Threads,
            read_only: false,
            fallback: true,
            locking: true,
        }
    }

    /// Exactly this cache mode, no fallback.
    pub fn cache(mut self, cache: Cache) -> Disk {
        self.cache = cache;
        self.fallback = false;
        self
    }

    pub fn aio(mut self, aio: Aio) -> Disk {
        self.aio = aio;
        self
    }

    pub fn locking(mut self, on: bool) -> Disk {
        self.locking = on;
        self
    }

    pub fn read_only(mut self) -> Disk {
        self.read_only = true;
        self
    }

    /// The `-drive` argument, after the O_DIRECT fallback.
    fn drive_arg(&self) -> Result<String, String> {
        let mut cache = self.cache;
        let mut aio = self.aio;
        if cache.direct() {
            if let Err(e) = open_direct(&self.path, self.read_only) {
                if !self.fallback {
                    return Err(format!(
                        "disk {} cannot be opened with O_DIRECT for cache={}: {e}",
                        self.path.display(),
                        cache.name()
                    ));
                }
                eprintln!(
                    "vm: {} refuses O_DIRECT ({e}); using cache=writeback",
                    self.path.display()
                );
                cache = Cache::Writeback;
                if aio == Aio::Native {
                    aio = Aio::Threads;
                }
            }
        }
        // QEMU's option syntax escapes a comma by doubling it.
        let file = self.path.to_string_lossy().replace(',', ",,");
        let mut arg = format!(
            "file={file},format=raw,if=virtio,cache={},aio={}",
            cache.name(),
            aio.name()
        );
        if self.read_only {
            arg.push_str(",readonly=on");
        }
        if !self.locking {
            arg.push_str(",file.locking=off");
        }
        Ok(arg)
    }
}

fn open_direct(path: &Path, read_only: bool) -> std::io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// How to boot a guest; `Guest::boot` takes the defaults.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    pub disks: Vec<Disk>,
    pub memory_mib: u32,
    pub boot_timeout: Duration,
    /// Extra kernel command line words.
    pub cmdline: String,
}

impl GuestOptions {
    pub fn new(disks: &[Disk]) -> GuestOptions {
        GuestOptions {
            disks: disks.to_vec(),
            memory_mib: 256,
            boot_timeout: BOOT_TIMEOUT,
            cmdline: String::new(),
        }
    }
}

/// The guest kernel: a /boot/vmlinuz-VERSION with /lib/modules/VERSION
/// (the newest such), or `SNAPFS_GUEST_KERNEL=/path/vmlinuz-VERSION`.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub image: PathBuf,
    pub modules: PathBuf,
}

impl Kernel {
    pub fn find() -> Result<Kernel, String> {
        let candidates: Vec<PathBuf> = match std::env::var_os("SNAPFS_GUEST_KERNEL") {
            Some(path) => vec![PathBuf::from(path)],
            None => {
                let mut found: Vec<PathBuf> = fs::read_dir("/boot")
                    .map_err(|e| format!("cannot list /boot: {e}"))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                    })
                    .collect();
                found.sort();
                found.reverse();
                found
            }
        };
        for image in candidates {
            let name = image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(version) = name.strip_prefix("vmlinuz-") else {
                continue;
            };
            let modules = Path::new("/lib/modules").join(version);
            if modules.join("modules.dep").is_file() && File::open(&image).is_ok() {
                return Ok(Kernel { image, modules });
            }
        }
        Err(
            "no readable /boot/vmlinuz-VERSION with /lib/modules/VERSION/modules.dep \
             (package linux-image-amd64)"
                .to_string(),
        )
    }
}

/// True when a VM test can run: root (the checks loop-mount images),
/// qemu-system-x86_64, a guest kernel, /bin/busybox (static) and e2fsck.
/// Otherwise skips (or panics under `SNAPFS_REQUIRE_FUSE=1`).
pub fn need_vm(test: &str) -> bool {
    if !need_root(test) {
        return false;
    }
    for name in ["qemu-system-x86_64", "e2fsck"] {
        if find_tool(name).is_none() {
            return skip(test, &format!("{name} not found"));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        return skip(test, "/bin/busybox not found (package busybox-static)");
    }
    if let Err(why) = Kernel::find() {
        return skip(test, &why);
    }
    true
}

/// What qemu's stdout (the guest's ttyS1) has sent so far.
struct Channel {
    state: Mutex<ChannelState>,
    changed: Condvar,
}

struct ChannelState {
    buf: Vec<u8>,
    eof: bool,
}

/// A running guest. Dropping it kills qemu (SIGKILL by pid) and reaps it.
pub struct Guest {
    child: Option<Child>,
    pid: u32,
    stdin: Option<ChildStdin>,
    channel: Arc<Channel>,
    reader: Option<JoinHandle<()>>,
    /// Channel bytes already matched by earlier commands.
    consumed: usize,
    next_id: u64,
    dir: TempDir,
    /// From spawning qemu to the agent's ready line.
    pub boot_time: Duration,
    workload: Option<String>,
}

impl Guest {
    /// Boots a guest with `disks` (default options); panics with the
    /// console's tail if it does not come up.
    pub fn boot(disks: &[Disk]) -> Guest {
        Guest::boot_with(GuestOptions::new(disks)).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Boots a guest and waits for its agent.
    pub fn boot_with(options: GuestOptions) -> Result<Guest, String> {
        let qemu = find_tool("qemu-system-x86_64")
            .ok_or("qemu-system-x86_64 not found (package qemu-system-x86)")?;
        let kernel = Kernel::find()?;
        let dir = tempfile::Builder::new()
            .prefix("snapfs-vm-")
            .tempdir()
            .map_err(|e| format!("temporary folder for a guest: {e}"))?;
        let initrd = dir.path().join("initrd.cpio");
        build_initramfs(&kernel, options.disks.len(), &initrd)?;
        let console = dir.path().join("console.log");
        let stderr_path = dir.path().join("qemu.stderr");
        let stderr = File::create(&stderr_path)
            .map_err(|e| format!("create {}: {e}", stderr_path.display()))?;

        let mut cmd = Command::new(qemu);
        cmd.args([
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
        ])
        .args(["-monitor", "none", "-nic", "none", "-no-reboot"])
        .args(["-m", &options.memory_mib.to_string(), "-smp", "1"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&initrd)
        // panic=-1 with -no-reboot: a guest panic ends qemu at once.
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 mitigations=off {}",
            options.cmdline
        ))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        // ttyS1: the command channel, on qemu's stdin and stdout.
        .args(["-serial", "stdio"]);
        for disk in &options.disks {
            cmd.arg("-drive").arg(disk.drive_arg()?);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        // If the test thread dies without unwinding, qemu goes with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().ok_or("qemu's stdout is not a pipe")?;
        let channel = Arc::new(Channel {
            state: Mutex::new(ChannelState {
                buf: Vec::new(),
                eof: false,
            }),
            changed: Condvar::new(),
        });
        let feed = Arc::clone(&channel);
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                let n = match stdout.read(&mut chunk) {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let mut state = feed.state.lock().unwrap_or_else(|e| e.into_inner());
                if n == 0 {
                    state.eof = true;
                } else {
                    state.buf.extend_from_slice(&chunk[..n]);
                }
                feed.changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        let mut guest = Guest {
            child: Some(child),
            pid,
            stdin,
            channel,
            reader: Some(reader),
            consumed: 0,
            next_id: 1,
            dir,
            boot_time: Duration::ZERO,
            workload: None,
        };
        let deadline = started + options.boot_timeout;
        let (_, ready_end) = guest
            .wait_for(b"\n@@READY ", 0, deadline)
            .map_err(|why| guest.failure(&format!("guest did not boot: {why}")))?;
        let (line_end, _) = guest
            .wait_for(b"\n", ready_end, deadline)
            .map_err(|why| guest.failure(&format!("guest did not boot: {why}")))?;
        guest.boot_time = started.elapsed();
        let disks = guest.channel_text(ready_end, line_end);
        let seen = disks.split_whitespace().filter(|d| *d != "vd*").count();
        guest.consumed = line_end;
        if seen != options.disks.len() {
            return Err(guest.failure(&format!(
                "guest sees disks {disks:?}, expected {}",
                options.disks.len()
            )));
        }
        Ok(guest)
    }

    /// The qemu process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|_| self.pid)
    }

    /// Runs `script` (busybox sh) in the guest; panics unless it exits 0
    /// within `RUN_TIMEOUT`. Returns its output (stdout and stderr).
    pub fn run(&mut self, script: &str) -> String {
        match self.try_run(script, RUN_TIMEOUT) {
            Ok((0, out)) => out,
            Ok((status, out)) => panic!(
                "{}",
                self.failure(&format!(
                    "guest command exited with {status}: {script}\noutput:\n{out}"
                ))
            ),
            Err(why) => panic!("{why}"),
        }
    }

    /// Runs `script` in the guest and returns (exit status, output), or
    /// Err (with the console's tail) when no answer came by `timeout`.
    pub fn try_run(&mut self, script: &str, timeout: Duration) -> Result<(i32, String), String> {
        let deadline = Instant::now() + timeout;
        let id = self.send(script)?;
        let start = format!("\n@@S {id}\n");
        let (_, out_start) = self
            .wait_for(start.as_bytes(), self.consumed, deadline)
            .map_err(|why| self.failure(&format!("no answer to {script:?}: {why}")))?;
        let end = format!("\n@@E {id} ");
        let (out_end, status_start) = self
            .wait_for(end.as_bytes(), out_start, deadline)
            .map_err(|why| self.failure(&format!("{script:?} did not finish: {why}")))?;
        let (line_end, after) = self
            .wait_for(b"\n", status_start, deadline)
            .map_err(|why| self.failure(&format!("{script:?} did not finish: {why}")))?;
        let output = self.channel_text(out_start, out_end);
        let status_text = self.channel_text(status_start, line_end);
        self.consumed = after;
        let status = status_text
            .trim()
            .parse()
            .map_err(|_| self.failure(&format!("bad status line {status_text:?}")))?;
        Ok((status, output))
    }

    /// Sends a script without waiting for it; returns its id.
    fn send(&mut self, script: &str) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!("{id} {}\n", base64(script.as_bytes()));
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| "the guest's channel is closed".to_string())?;
        stdin
            .write_all(line.as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| self.failure(&format!("cannot write to qemu's stdin: {e}")))?;
        Ok(id)
    }

    /// Waits until `pattern` appears in the channel at or after `from`;
    /// returns where it starts and ends.
    fn wait_for(
        &self,
        pattern: &[u8],
        from: usize,
        deadline: Instant,
    ) -> Result<(usize, usize), String> {
        let mut state = self.channel.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(at) = find(&state.buf, pattern, from) {
                return Ok((at, at + pattern.len()));
            }
            if state.eof {
                return Err("qemu exited (its output ended)".to_string());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err("deadline passed".to_string());
            }
            state = self
                .channel
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn channel_text(&self, from: usize, to: usize) -> String {
        let state = self.channel.state.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&state.buf[from.min(to)..to.min(state.buf.len())]).into_owned()
    }

    /// The last `lines` lines of the kernel console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("console.log"), lines)
    }

    /// `what`, with the console's tail, qemu's stderr and the channel's tail.
    pub fn failure(&self, what: &str) -> String {
        let channel = {
            let state = self.channel.state.lock().unwrap_or_else(|e| e.into_inner());
            let from = state.buf.len().saturating_sub(2000);
            String::from_utf8_lossy(&state.buf[from..]).into_owned()
        };
        format!(
            "{what}\n--- guest console (last lines) ---\n{}\n--- qemu stderr ---\n{}\n\
             --- command channel (last bytes) ---\n{channel}",
            self.console_tail(40),
            tail(&self.dir.path().join("qemu.stderr"), 20)
        )
    }

    /// Syncs, unmounts every mounted virtio disk and powers off (`poweroff
    /// -f`); waits for qemu to exit. Err (with the console's tail) if a
    /// step fails; qemu is killed then.
    pub fn poweroff(&mut self) -> Result<(), String> {
        let unmount = "sync\n\
            for m in $(awk '$1 ~ /^\\/dev\\/vd/ { print $2 }' /proc/mounts); do\n\
                umount \"$m\" || exit 1\n\
            done\n\
            sync";
        let result = match self.try_run(unmount, RUN_TIMEOUT) {
            Ok((0, _)) => self
                .send("poweroff -f")
                .and_then(|_| self.wait_exit(EXIT_TIMEOUT)),
            Ok((status, out)) => Err(self.failure(&format!(
                "unmount before poweroff exited with {status}:\n{out}"
            ))),
            Err(why) => Err(why),
        };
        if result.is_err() {
            self.kill();
        }
        result
    }

    /// Waits for qemu to exit by itself and reaps it.
    fn wait_exit(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.child.as_mut() else {
                return Ok(());
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    self.finish_reader();
                    return if status.success() {
                        Ok(())
                    } else {
                        Err(self.failure(&format!("qemu ended with {status}")))
                    };
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    return Err(self.failure(&format!("qemu did not exit within {timeout:?}")))
                }
                Err(e) => return Err(format!("cannot wait for qemu (pid {}): {e}", self.pid)),
            }
        }
    }

    /// Kills qemu with SIGKILL (the guest gets no chance to flush) and
    /// reaps it. The disk images hold what the guest's disks got.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
        self.finish_reader();
    }

    fn finish_reader(&mut self) {
        self.stdin = None;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    // ------------------------------------------------------------ workload

    /// Starts the crash-consistency workload in the background on the
    /// filesystem mounted at `fs_dir` in the guest (its files go to
    /// `fs_dir/d`); returns once it runs.
    pub fn start_workload(&mut self, fs_dir: &str) {
        self.start_workload_paced(fs_dir, 0.0);
    }

    /// Like `start_workload`, sleeping `pause` seconds after each file.
    pub fn start_workload_paced(&mut self, fs_dir: &str, pause: f64) {
        assert!(self.workload.is_none(), "a workload already runs");
        let dir = format!("{}/{WORKLOAD_DIR}", fs_dir.trim_end_matches('/'));
        self.run(&format!(
            "rm -f /tmp/wl.pid\n\
             setsid sh /workload.sh '{dir}' {pause} </dev/null >/tmp/wl.out 2>&1 &\n\
             i=0\n\
             while [ ! -e /tmp/wl.pid ] && [ ! -e /tmp/wl.done ] && [ $i -lt 300 ]; do\n\
                 sleep 0.1; i=$((i + 1))\n\
             done\n\
             [ -e /tmp/wl.pid ] || {{ cat /tmp/wl.err /tmp/wl.out; exit 1; }}"
        ));
        self.workload = Some(dir);
    }

    /// The last n the workload logged (as the guest sees it: that n may not
    /// be fsynced yet, n - 1 is). Panics if the workload failed.
    pub fn workload_progress(&mut self) -> u64 {
        let dir = self.workload.clone().expect("no workload was started");
        let out = self.run(&format!(
            "if [ -e /tmp/wl.err ]; then echo \"error: $(cat /tmp/wl.err)\"; fi\n\
             tail -n 1 '{dir}/log'"
        ));
        parse_progress(&out).unwrap_or_else(|why| panic!("{}", self.failure(&why)))
    }

    /// Waits until the workload logged at least `n`; panics after `timeout`.
    pub fn wait_workload(&mut self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.workload_progress();
            if got >= n {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}",
                    self.failure(&format!(
                        "workload reached {got}, not {n}, within {timeout:?}"
                    ))
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the workload cleanly (after the file it writes); returns the
    /// last n it completed, which is the log's last line. Panics if it
    /// failed or does not stop within a minute.
    pub fn stop_workload(&mut self) -> u64 {
        let dir = self.workload.take().expect("no workload was started");
        let out = self.run(
            "touch /tmp/wl.stop\n\
             i=0\n\
             while [ ! -e /tmp/wl.done ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done\n\
             if [ -e /tmp/wl.err ]; then echo \"error: $(cat /tmp/wl.err)\"; exit 0; fi\n\
             cat /tmp/wl.done",
        );
        let done = parse_progress(&out)
            .unwrap_or_else(|why| panic!("{}", self.failure(&format!("stop workload: {why}"))));
        let logged = self.run(&format!("tail -n 1 '{dir}/log'"));
        assert_eq!(
            parse_progress(&logged).ok(),
            Some(done),
            "workload stopped at {done} but its log ends with {logged:?}"
        );
        done
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parses a workload answer: a number, nothing (0), or "error: ...".
fn parse_progress(out: &str) -> Result<u64, String> {
    let text = out.trim();
    if let Some(why) = text.strip_prefix("error: ") {
        return Err(format!("the guest workload failed: {why}"));
    }
    if text.is_empty() {
        return Ok(0);
    }
    text.parse()
        .map_err(|_| format!("unexpected workload answer {text:?}"))
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from >= haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| from + i)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let v = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ------------------------------------------------------------ initramfs

/// Writes the guest's initramfs (an uncompressed newc cpio) to `out`.
fn build_initramfs(kernel: &Kernel, disks: usize, out: &Path) -> Result<(), String> {
    let mut cpio = Cpio::default();
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "mnt",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.char_dev("dev/console", 5, 1);
    let busybox =
        fs::read("/bin/busybox").map_err(|e| format!("read /bin/busybox (busybox-static): {e}"))?;
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("agent.sh", 0o644, AGENT.as_bytes());
    cpio.file("workload.sh", 0o644, WORKLOAD.as_bytes());
    cpio.file("disks.count", 0o644, format!("{disks}\n").as_bytes());
    let mut order = String::new();
    for module in module_load_order(&kernel.modules, MODULES)? {
        let name = module_name(&module);
        let data = read_module(&kernel.modules.join(&module))?;
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &data);
        order.push_str(&format!("{name}.ko\n"));
    }
    cpio.file("modules.order", 0o644, order.as_bytes());
    let bytes = cpio.finish();
    fs::write(out, bytes).map_err(|e| format!("write {}: {e}", out.display()))
}

/// `kernel/fs/ext4/ext4.ko.xz` -> `ext4`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split(".ko").next().unwrap_or(base).to_string()
}

/// Module files (paths relative to the modules folder) to insmod, each
/// after its dependencies, per modules.dep; built-in modules are left out.
fn module_load_order(modules: &Path, wanted: &[&str]) -> Result<Vec<String>, String> {
    let dep_file = modules.join("modules.dep");
    let deps_text =
        fs::read_to_string(&dep_file).map_err(|e| format!("read {}: {e}", dep_file.display()))?;
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut by_name: HashMap<String, String> = HashMap::new();
    for line in deps_text.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        by_name.insert(module_name(module).replace('-', "_"), module.to_string());
        deps.insert(
            module.to_string(),
            rest.split_whitespace().map(str::to_string).collect(),
        );
    }
    let builtin: Vec<String> = fs::read_to_string(modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(|l| module_name(l).replace('-', "_"))
        .collect();
    let mut order = Vec::new();
    for name in wanted {
        let key = name.replace('-', "_");
        if builtin.contains(&key) {
            continue;
        }
        let module = by_name.get(&key).ok_or_else(|| {
            format!(
                "module {name} is neither in {} nor built in",
                dep_file.display()
            )
        })?;
        add_with_deps(module, &deps, &mut order, 0)?;
    }
    Ok(order)
}

fn add_with_deps(
    module: &str,
    deps: &HashMap<String, Vec<String>>,
    order: &mut Vec<String>,
    depth: usize,
) -> Result<(), String> {
    if depth > 32 {
        return Err(format!("module dependencies of {module} loop"));
    }
    if order.iter().any(|m| m == module) {
        return Ok(());
    }
    // modules.dep lists every dependency, the one to load first last.
    for dep in deps.get(module).into_iter().flatten().rev() {
        add_with_deps(dep, deps, order, depth + 1)?;
    }
    order.push(module.to_string());
    Ok(())
}

/// A module's bytes, decompressed (busybox insmod takes plain .ko files).
fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    let data = fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        Ok(data)
    } else if name.ends_with(".ko.zst") {
        zstd::decode_all(&data[..]).map_err(|e| format!("unzstd {name}: {e}"))
    } else if name.ends_with(".ko.xz") || name.ends_with(".ko.gz") {
        let tool_name = if name.ends_with(".xz") { "xz" } else { "gzip" };
        let out = Command::new(tool(tool_name))
            .arg("-dc")
            .arg(path)
            .output()
            .map_err(|e| format!("run {tool_name} -dc {name}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{tool_name} -dc {name} failed"));
        }
        Ok(out.stdout)
    } else {
        Err(format!("unknown module format: {name}"))
    }
}

/// A newc ("070701") cpio archive, the format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, libc::S_IFDIR | 0o755, 2, (0, 0), b"");
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, libc::S_IFREG | mode, 1, (0, 0), data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, libc::S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, libc::S_IFCHR | 0o600, 1, (major, minor), b"");
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), b"");
        self.out
    }
}

// ------------------------------------------------------- host-side checks

/// The exact content of workload file `n` (as tests/guest/workload.sh
/// writes it): the line "snapfs workload file N" repeated, cut at a size
/// between 4 and 64 KiB derived from n, then "end n=N size=SIZE".
pub fn workload_file(n: u64) -> Vec<u8> {
    let size = (4096 + (n * 7919) % 61440) as usize;
    let line = format!("snapfs workload file {n}\n");
    let mut data: Vec<u8> = line.bytes().cycle().take(size).collect();
    data.extend_from_slice(format!("end n={n} size={size}\n").as_bytes());
    data
}

/// Checks the workload's invariant on a mounted copy of a disk (journal
/// replayed): the log is "1\n2\n...N\n" and every file 1..=N holds exactly
/// its content. Files after N may be in any state. Returns N.
pub fn check_workload(mounted: &Path) -> Result<u64, String> {
    let dir = mounted.join(WORKLOAD_DIR);
    let log_path = dir.join("log");
    let log = fs::read(&log_path).map_err(|e| format!("read {}: {e}", log_path.display()))?;
    let text = String::from_utf8_lossy(&log);
    if !log.is_empty() && !text.ends_with('\n') {
        return Err(format!(
            "{} does not end with a newline: torn append? last bytes {:?}",
            log_path.display(),
            &text[text.len().saturating_sub(40)..]
        ));
    }
    let mut n = 0u64;
    for line in text.lines() {
        let expected = n + 1;
        if line != expected.to_string() {
            return Err(format!(
                "{}: line {expected} is {line:?}, expected \"{expected}\"",
                log_path.display()
            ));
        }
        let file = dir.join(format!("f{expected}"));
        let data = fs::read(&file)
            .map_err(|e| format!("{expected} is logged (fsynced) but {}: {e}", file.display()))?;
        let want = workload_file(expected);
        if data != want {
            let at = data
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(data.len().min(want.len()));
            return Err(format!(
                "{expected} is logged but {} differs from what was written: {} bytes, \
                 expected {}, first difference at byte {at}",
                file.display(),
                data.len(),
                want.len()
            ));
        }
        n = expected;
    }
    Ok(n)
}

/// `e2fsck -fn IMAGE`: Ok when it finds nothing, Err with its output.
pub fn e2fsck_clean(image: &Path) -> Result<(), String> {
    let out = Command::new(tool("e2fsck"))
        .arg("-fn")
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run e2fsck: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "e2fsck -fn {} exited with {}:\n{}{}",
            image.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The whole crash-consistency check of a disk image left by a guest (after
/// poweroff, kill or as a snapshot): on a sparse copy, a read-write loop
/// mount replays the journal, `check_workload` holds, and after unmounting
/// `e2fsck -fn` finds nothing. The image itself is not changed. Returns the
/// number of files verified.
pub fn check_image(image: &Path) -> Result<u64, String> {
    let dir = tempfile::Builder::new()
        .prefix("snapfs-vm-check-")
        .tempdir()
        .map_err(|e| format!("temporary folder: {e}"))?;
    let copy = dir.path().join("copy.img");
    copy_sparse(image, &copy);
    let mountpoint = tempfile::Builder::new()
        .prefix("snapfs-vm-mnt-")
        .tempdir()
        .map_err(|e| format!("mountpoint: {e}"))?;
    let out = Command::new(tool("mount"))
        .args(["-t", "ext4", "-o", "loop"])
        .arg(&copy)
        .arg(mountpoint.path())
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        super::detach_loops(&copy);
        return Err(format!(
            "a copy of {} does not mount (journal replay): {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let guard = MountGuard {
        image: copy.clone(),
        dir: Some(mountpoint),
    };
    let checked = check_workload(guard.path());
    guard.unmount();
    let files = checked.map_err(|why| format!("{}: {why}", image.display()))?;
    e2fsck_clean(&copy)
        .map_err(|why| format!("after journal replay of {}: {why}", image.display()))?;
    Ok(files)
}
