//! No torn snapshots of disks written while they are read: a real process
//! keeps writing an image while snapfs snapshots it. Without a way to a
//! point in time the snapshot fails and keeps nothing; hooks that stop the
//! writer, or a reflink clone on XFS, give one, and the snapshot then
//! equals the image as it was at that point. Hooks run in order, report
//! their failures, have a time limit, and the post-hook runs whatever
//! happens.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::faults::{status, write_create};
use common::mount::Mount;
use common::{fails, ok, run, snapfs, MountGuard, Rng};

const IMAGE_MB: u64 = 40;

/// A shell loop that keeps overwriting random 64 KiB blocks of an image,
/// in a process group of its own (so that hooks can stop it whole). Killed
/// by its guard.
struct Writer {
    child: Child,
}

impl Writer {
    fn start(image: &Path) -> Writer {
        let script = format!(
            "while :; do dd if=/dev/urandom of='{}' bs=64k count=1 seek=$((RANDOM % {})) \
             conv=notrunc status=none; sleep 0.01; done",
            image.display(),
            IMAGE_MB * 16
        );
        let child = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the writer");
        Writer { child }
    }

    fn group(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        unsafe {
            libc::kill(group, libc::SIGCONT);
            libc::kill(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A store and a registered disk `d` of random data, in `dir`.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: PathBuf,
}

impl Fixture {
    fn new(image_dir: Option<&Path>) -> (Fixture, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let image = image_dir.unwrap_or(&dir).join("disk.img");
        std::fs::write(&image, Rng::new(5).bytes((IMAGE_MB << 20) as usize)).expect("image");
        let store = dir.join("store");
        ok(snapfs(&store).args(["disk", "add", "d"]).arg(&image));
        let fx = Fixture {
            _tmp: tmp,
            dir,
            store,
        };
        (fx, image)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn listed(&self) -> Vec<String> {
        let out = ok(snapfs(&self.store).args(["snapshot", "list", "d", "--json"]));
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list JSON");
        rows.iter()
            .map(|row| row["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn export(&self, name: &str) -> Vec<u8> {
        let out = self.path(&format!("{name}.raw"));
        ok(snapfs(&self.store)
            .args(["export", "d", name, "-o"])
            .arg(&out));
        std::fs::read(&out).expect("read export")
    }

    fn method(&self, name: &str) -> String {
        let out = ok(snapfs(&self.store).args(["snapshot", "list", "d", "--json"]));
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list JSON");
        rows.iter()
            .find(|row| row["name"] == name)
            .map(|row| row["method"].as_str().unwrap_or("none").to_string())
            .unwrap_or_else(|| panic!("no snapshot {name}: {out}"))
    }
}

/// The lines a hook log holds.
fn hook_log(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_snapshot_of_an_image_written_meanwhile_fails_as_torn_and_keeps_nothing() {
    let (fx, image) = Fixture::new(None);
    let log = fx.path("hooks.log");
    let writer = Writer::start(&image);
    let err = fails(snapfs(&fx.store).args([
        "snapshot",
        "create",
        "d",
        "t1",
        "--max-rate",
        "20M",
        "--post-hook",
        &format!("echo post >> {}", log.display()),
    ]));
    assert!(err.contains("changed while the snapshot read it"), "{err}");
    assert!(err.contains("would have been torn"), "{err}");
    assert!(
        err.contains("--pre-hook"),
        "the line names the fixes: {err}"
    );
    assert_eq!(
        hook_log(&log),
        ["post"],
        "the post-hook ran after the failure"
    );
    assert!(fx.listed().is_empty());
    common::assert_no_pack_leftovers(&fx.store);

    // Once nobody writes, the same disk snapshots fine, checked.
    drop(writer);
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "t2"]));
    assert_eq!(fx.method("t2"), "checked");
    assert_eq!(fx.export("t2"), std::fs::read(&image).expect("image"));
}

#[test]
fn hooks_that_stop_the_writer_give_the_image_as_it_was_while_stopped() {
    let (fx, image) = Fixture::new(None);
    let writer = Writer::start(&image);
    let (log, frozen) = (fx.path("hooks.log"), fx.path("frozen.img"));
    let pre = format!(
        "kill -STOP -{group} && sleep 0.1 && cp '{img}' '{frozen}' && echo \"pre $(date +%s%N)\" >> '{log}'",
        group = writer.group(),
        img = image.display(),
        frozen = frozen.display(),
        log = log.display()
    );
    let post = format!(
        "echo \"post $(date +%s%N)\" >> '{log}'; kill -CONT -{}",
        writer.group(),
        log = log.display()
    );
    ok(snapfs(&fx.store).args([
        "snapshot",
        "create",
        "d",
        "frozen",
        "--max-rate",
        "20M",
        "--pre-hook",
        &pre,
        "--post-hook",
        &post,
    ]));
    assert_eq!(fx.method("frozen"), "hook");
    assert_eq!(
        fx.export("frozen"),
        std::fs::read(&frozen).expect("frozen copy")
    );
    // pre, then post once the whole read (2 s at 20 MB/s) was done.
    let lines = hook_log(&log);
    let at = |i: usize, what: &str| -> u128 {
        let (word, ns) = lines[i].split_once(' ').expect("hook line");
        assert_eq!(word, what, "{lines:?}");
        ns.parse().expect("time")
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let held = at(1, "post") - at(0, "pre");
    assert!(
        held >= 1_500_000_000,
        "the guest was held {held} ns, less than the read"
    );
    drop(writer);
}

#[test]
fn a_failing_pre_hook_fails_the_snapshot_with_its_status_and_first_line() {
    let (fx, _image) = Fixture::new(None);
    let log = fx.path("hooks.log");
    let err = fails(snapfs(&fx.store).args([
        "snapshot",
        "create",
        "d",
        "s",
        "--pre-hook",
        "echo; echo 'domain vm1 is not running' >&2; exit 3",
        "--post-hook",
        &format!("echo post >> {}", log.display()),
    ]));
    assert!(err.contains("pre-hook"), "{err}");
    assert!(
        err.contains("exit status 3: domain vm1 is not running"),
        "{err}"
    );
    assert_eq!(
        hook_log(&log),
        ["post"],
        "the post-hook ran after the failure"
    );
    assert!(fx.listed().is_empty());
    common::assert_no_pack_leftovers(&fx.store);
}

#[test]
fn a_hook_past_its_time_limit_is_killed_and_fails_the_snapshot() {
    let (fx, _image) = Fixture::new(None);
    let started = Instant::now();
    let err = fails(snapfs(&fx.store).args([
        "snapshot",
        "create",
        "d",
        "s",
        "--hook-timeout",
        "1",
        "--pre-hook",
        "sleep 30",
    ]));
    assert!(err.contains("did not finish within 1 s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(fx.listed().is_empty());
}

#[test]
fn a_failing_post_hook_fails_the_snapshot_it_followed() {
    let (fx, _image) = Fixture::new(None);
    let err = fails(snapfs(&fx.store).args([
        "snapshot",
        "create",
        "d",
        "s",
        "--post-hook",
        "echo 'thaw failed' >&2; exit 1",
    ]));
    assert!(err.contains("post-hook"), "{err}");
    assert!(err.contains("exit status 1: thaw failed"), "{err}");
    assert!(fx.listed().is_empty());
}

#[test]
fn the_post_hook_runs_when_a_signal_stops_the_snapshot() {
    let (fx, _image) = Fixture::new(None);
    let log = fx.path("hooks.log");
    let child = snapfs(&fx.store)
        .args([
            "snapshot",
            "create",
            "d",
            "s",
            "--max-rate",
            "4M",
            "--post-hook",
            &format!("echo post >> {}", log.display()),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start snapshot create");
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(1500));
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cancelled: a signal stopped it"),
        "{stderr}"
    );
    assert_eq!(hook_log(&log), ["post"]);
    assert!(fx.listed().is_empty());
    common::assert_no_pack_leftovers(&fx.store);
}

#[test]
fn create_in_the_mount_fails_with_eagain_while_the_image_is_written() {
    if !common::need_fuse("create_in_the_mount_fails_with_eagain_while_the_image_is_written") {
        return;
    }
    let (fx, image) = Fixture::new(None);
    let mount = Mount::start_with(&fx.store, &["--max-rate", "20M"]);
    let writer = Writer::start(&image);
    let disk = mount.disk("d");
    assert_eq!(write_create(&disk, "t1"), Err(libc::EAGAIN));
    let status = status(&disk);
    assert!(
        status.contains("failed t1") && status.contains("torn"),
        "{status}"
    );
    assert!(!disk.join("t1").exists());
    drop(writer);
    assert_eq!(write_create(&disk, "t2"), Ok(()));
    let shown = std::fs::read(disk.join("t2")).expect("read t2");
    assert!(shown == std::fs::read(&image).expect("image"));
    let method = xattr(&disk.join("t2"), "user.snapfs.method");
    assert_eq!(method, "checked");
    assert!(status_line_has(&disk, "t2", "method checked"));
    mount.unmount();
}

fn xattr(path: &Path, name: &str) -> String {
    let ran = run(Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path));
    assert_eq!(ran.code, Some(0), "getfattr {name}: {}", ran.stderr);
    ran.stdout
}

fn status_line_has(disk: &Path, name: &str, text: &str) -> bool {
    status(disk)
        .lines()
        .any(|line| line.contains(&format!("accomplished {name}:")) && line.contains(text))
}

/// A loop-mounted XFS filesystem (reflinks on) of 512 MiB.
fn xfs() -> (tempfile::TempDir, MountGuard) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("xfs.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(512 << 20))
        .expect("xfs image");
    let mkfs = common::find_tool("mkfs.xfs").expect("mkfs.xfs (xfsprogs)");
    let out = Command::new(mkfs)
        .args(["-q", "-m", "reflink=1"])
        .arg(&image)
        .output()
        .expect("run mkfs.xfs");
    assert!(
        out.status.success(),
        "mkfs.xfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mounted = MountGuard::loop_mount(&image);
    (tmp, mounted)
}

fn clones_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".snapfs-clone-"))
        .collect()
}

fn need_xfs(test: &str) -> bool {
    if !common::need_root(test) {
        return false;
    }
    if common::find_tool("mkfs.xfs").is_none() {
        return common::skip(test, "mkfs.xfs not found (package xfsprogs)");
    }
    true
}

#[test]
fn an_image_on_xfs_is_read_from_a_reflink_clone_made_at_one_instant() {
    if !need_xfs("an_image_on_xfs_is_read_from_a_reflink_clone_made_at_one_instant") {
        return;
    }
    let (_xfs_tmp, xfs) = xfs();
    let (fx, image) = Fixture::new(Some(xfs.path()));
    let writer = Writer::start(&image);
    // The hooks hold the writer only while the clone is made; the read of
    // the clone (2 s) runs while the writer goes on.
    let frozen = fx.path("frozen.img");
    let pre = format!(
        "kill -STOP -{} && sleep 0.1 && cp '{}' '{}'",
        writer.group(),
        image.display(),
        frozen.display()
    );
    let post = format!("kill -CONT -{}", writer.group());
    ok(snapfs(&fx.store).args([
        "snapshot",
        "create",
        "d",
        "cloned",
        "--max-rate",
        "20M",
        "--pre-hook",
        &pre,
        "--post-hook",
        &post,
    ]));
    assert_eq!(fx.method("cloned"), "reflink");
    assert_eq!(fx.export("cloned"), std::fs::read(&frozen).expect("frozen"));
    // Without hooks too: the writer never stops, the clone is one instant.
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "running", "--max-rate", "20M"]));
    assert_eq!(fx.method("running"), "reflink");
    assert!(clones_in(xfs.path()).is_empty(), "no clone left behind");
    drop(writer);
    drop(fx);
    xfs.unmount();
}

#[test]
fn a_clone_left_by_a_killed_snapshot_is_removed_at_the_next_open() {
    if !need_xfs("a_clone_left_by_a_killed_snapshot_is_removed_at_the_next_open") {
        return;
    }
    let (_xfs_tmp, xfs) = xfs();
    let (fx, _image) = Fixture::new(Some(xfs.path()));
    let mut child = snapfs(&fx.store)
        .args(["snapshot", "create", "d", "s", "--max-rate", "4M"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start snapshot create");
    let deadline = Instant::now() + Duration::from_secs(20);
    while clones_in(xfs.path()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        clones_in(xfs.path()).len(),
        1,
        "the killed snapshot's clone is there"
    );
    ok(snapfs(&fx.store).args(["snapshot", "list"]));
    assert!(clones_in(xfs.path()).is_empty(), "the next open removed it");
    drop(fx);
    xfs.unmount();
}

#[test]
fn a_running_guest_is_refused_as_torn_and_held_by_hooks_gives_a_consistent_disk() {
    use common::vm::{check_image, need_vm, Disk, Guest};
    if !need_vm("a_running_guest_is_refused_as_torn_and_held_by_hooks_gives_a_consistent_disk") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("guest.img");
    common::Ext4Image::create(&image, 256 << 20);
    let store = tmp.path().join("store");
    ok(snapfs(&store).args(["disk", "add", "vm1"]).arg(&image));
    let mut guest = Guest::boot(&[Disk::new(&image)]);
    guest.run("mount -t ext4 /dev/vda /mnt");
    guest.start_workload("/mnt");
    guest.wait_workload(20, Duration::from_secs(120));

    // The guest writes with fsync all the time: a plain read is torn.
    let err = fails(snapfs(&store).args(["snapshot", "create", "vm1", "t1", "--max-rate", "16M"]));
    assert!(err.contains("would have been torn"), "{err}");

    // Hooks that stop the whole VM (as a guest agent's freeze would hold
    // its filesystems) give the disk as it was while held.
    let pid = guest.pid().expect("qemu pid");
    let frozen = tmp.path().join("frozen.img");
    let pre = format!(
        "kill -STOP {pid} && cp --sparse=always '{}' '{}'",
        image.display(),
        frozen.display()
    );
    ok(snapfs(&store).args([
        "snapshot",
        "create",
        "vm1",
        "held",
        "--max-rate",
        "16M",
        "--pre-hook",
        &pre,
        "--post-hook",
        &format!("kill -CONT {pid}"),
    ]));
    let exported = tmp.path().join("held.raw");
    ok(snapfs(&store)
        .args(["export", "vm1", "held", "-o"])
        .arg(&exported));
    assert!(
        std::fs::read(&exported).expect("export") == std::fs::read(&frozen).expect("frozen"),
        "the snapshot is the disk as it was while the guest was held"
    );
    // The guest went on after the post-hook, and the snapshot is a
    // crash-consistent disk: every file the guest logged as fsynced is there.
    let progress = guest.workload_progress();
    guest.wait_workload(progress + 5, Duration::from_secs(120));
    let files = check_image(&exported).expect("the snapshot is crash-consistent");
    assert!(files >= 20, "only {files} files in the snapshot");
    guest.kill();
}

#[test]
fn torn_automatic_snapshots_fill_status_but_not_the_log() {
    if !common::need_fuse("torn_automatic_snapshots_fill_status_but_not_the_log") {
        return;
    }
    let (fx, image) = Fixture::new(None);
    let mount = Mount::start_with(&fx.store, &["--max-rate", "40M"]);
    let writer = Writer::start(&image);
    ok(snapfs(&fx.store).args(["policy", "set", "d", "--every", "1s"]));
    let disk = mount.disk("d");
    let torn_lines = || {
        status(&disk)
            .lines()
            .filter(|l| l.contains("failed auto-") && l.contains("torn"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while torn_lines() < 3 {
        assert!(Instant::now() < deadline, "{}", status(&disk));
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(snapfs(&fx.store).args(["policy", "rm", "d"]));
    drop(writer);
    let log = mount.unmount();
    let logged = log.lines().filter(|l| l.contains("torn")).count();
    assert_eq!(logged, 1, "one log line for a run of torn snapshots: {log}");
}

#[test]
fn a_block_device_written_meanwhile_fails_as_torn() {
    if !common::need_root("a_block_device_written_meanwhile_fails_as_torn") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("disk.img");
    std::fs::write(&image, Rng::new(6).bytes((IMAGE_MB << 20) as usize)).expect("image");
    let device = common::LoopDevice::attach_read_write(&image);
    let store = tmp.path().join("store");
    ok(snapfs(&store)
        .args(["disk", "add", "dev"])
        .arg(&device.device));
    // Buffered writes through the device node: seen through its times and,
    // once flushed, the device's write counters.
    let writer = Writer::start(&device.device);
    let err = fails(snapfs(&store).args(["snapshot", "create", "dev", "t1", "--max-rate", "20M"]));
    assert!(err.contains("would have been torn"), "{err}");
    drop(writer);
    ok(snapfs(&store).args(["snapshot", "create", "dev", "t2"]));
    let out = tmp.path().join("t2.raw");
    ok(snapfs(&store).args(["export", "dev", "t2", "-o"]).arg(&out));
    assert!(std::fs::read(&out).expect("export") == std::fs::read(&image).expect("image"));
    drop(device);
}

#[test]
fn a_live_disk_runs_its_post_hook_after_a_failing_pre_hook_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    ok(snapfs(&store).args(["disk", "create", "vm", "--size", "4M"]));
    let log = tmp.path().join("hooks.log");
    let err = fails(snapfs(&store).args([
        "snapshot",
        "create",
        "vm",
        "s",
        "--pre-hook",
        "echo 'no guest agent' >&2; exit 4",
        "--post-hook",
        &format!("echo post >> {}", log.display()),
    ]));
    assert!(err.contains("exit status 4: no guest agent"), "{err}");
    assert_eq!(
        hook_log(&log),
        ["post"],
        "the post-hook ran after the failure"
    );
    ok(snapfs(&store).args(["snapshot", "create", "vm", "t"]));
}
