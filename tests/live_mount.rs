//! Live disks served by a real mount: `MNT/DISK/live` is the disk itself,
//! read-write, and every snapshot taken through `.create` is the disk at
//! that moment, reading only what changed since the last one. Then a real
//! VM (QEMU under TCG) runs from the live file, and snapshots taken while
//! it writes are crash-consistent, also after kill -9 of the mount.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::mount::Mount;
use common::vm::{check_image, need_vm, Cache, Disk, Guest};
use common::{need_fuse, ok, snapfs, Ext4Image, Rng};
use tempfile::TempDir;

const CHUNK: u64 = 64 << 10;

struct Fixture {
    tmp: TempDir,
    store: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("snapfs-live-mount-")
            .tempdir()
            .expect("temp dir");
        let store = tmp.path().join("store");
        ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
        Fixture { tmp, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A new live disk `name` of `size` bytes.
    fn create_disk(&self, name: &str, size: u64) {
        let size = size.to_string();
        ok(snapfs(&self.store).args(["disk", "create", name, "--size", &size]));
    }
}

/// Takes snapshot `name` through `.create`; Err holds the errno.
fn try_create(disk: &Path, name: &str) -> Result<(), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    let mut file = OpenOptions::new()
        .write(true)
        .open(disk.join(".create"))
        .map_err(errno)?;
    file.write_all(format!("{name}\n").as_bytes())
        .map_err(errno)
}

/// Takes snapshot `name` through `.create`, which returns at the freeze
/// for a live disk; then waits until the mount has stored it.
fn create(disk: &Path, name: &str) {
    create_frozen(disk, name);
    wait_stored(disk, name);
}

/// Waits until the mount has stored snapshot `name` of the disk folder.
fn wait_stored(disk: &Path, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while getxattr(&disk.join(name), "user.snapfs.state").as_deref() != Some("accomplished") {
        let status = fs::read_to_string(disk.join(".status")).unwrap_or_default();
        assert!(
            Instant::now() < deadline && !status.contains(&format!("failed {name}")),
            "snapshot {name} was not stored; .status:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Takes snapshot `name` through `.create` and returns at once (a live
/// disk's snapshot is then frozen, and perhaps still being stored).
fn create_frozen(disk: &Path, name: &str) {
    if let Err(errno) = try_create(disk, name) {
        panic!(
            "snapshot {name} failed with errno {errno}; .status:\n{}",
            fs::read_to_string(disk.join(".status")).unwrap_or_default()
        );
    }
}

fn getxattr(path: &Path, name: &str) -> Option<String> {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn fallocate(file: &File, mode: i32, offset: u64, len: u64) {
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    assert_eq!(
        rc,
        0,
        "fallocate mode {mode:#x} at {offset} of {len}: {}",
        std::io::Error::last_os_error()
    );
}

fn assert_bytes(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "size of {what}");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what} differs from the model at byte {at} (chunk {})",
            at as u64 / CHUNK
        );
    }
}

/// One random change through the live file, applied to `model` too: a
/// write, a discard or write-zeroes, a growth by truncate, or a write past
/// the end.
fn random_op(live: &File, model: &mut Vec<u8>, rng: &mut Rng) {
    let size = model.len() as u64;
    match rng.below(10) {
        0..=5 => {
            let at = rng.below(size);
            let len = 1 + rng.below((size - at).min(300_000));
            let data = rng.bytes(len as usize);
            live.write_all_at(&data, at).expect("pwrite");
            model[at as usize..(at + len) as usize].copy_from_slice(&data);
        }
        6 | 7 => {
            let at = rng.below(size);
            let len = 1 + rng.below((size - at).min(500_000));
            let mode = if rng.below(2) == 0 {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE
            };
            fallocate(live, mode, at, len);
            model[at as usize..(at + len) as usize].fill(0);
        }
        8 => {
            let to = size + rng.below(400_000);
            live.set_len(to).expect("grow");
            model.resize(to as usize, 0);
        }
        _ => {
            // A write past the end grows the disk.
            let at = size + rng.below(100_000);
            let len = 1 + rng.below(70_000) as usize;
            let data = rng.bytes(len);
            live.write_all_at(&data, at).expect("pwrite past the end");
            model.resize(at as usize + data.len(), 0);
            model[at as usize..].copy_from_slice(&data);
        }
    }
}

#[test]
fn snapshots_through_the_live_file_equal_the_disk_at_their_create() {
    if !need_fuse("snapshots_through_the_live_file_equal_the_disk_at_their_create") {
        return;
    }
    let fx = Fixture::new();
    fx.create_disk("vm/data", 4 << 20);
    let mount = Mount::start(&fx.store);
    let folder = mount.disk("vm/data");
    let live_path = folder.join("live");
    let meta = fs::metadata(&live_path).expect("stat live");
    assert_eq!(meta.len(), 4 << 20, "live has the backing's size");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // `live` is no snapshot name.
    assert_eq!(try_create(&folder, "live"), Err(libc::EINVAL));

    let live = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&live_path)
        .expect("open live");
    let mut model = vec![0u8; 4 << 20];
    let mut rng = Rng::new(common::seed_from_env("SNAPFS_SEED"));
    for round in 0..6 {
        for _ in 0..8 {
            random_op(&live, &mut model, &mut rng);
        }
        live.sync_all().expect("fsync live");
        let name = format!("s{round}");
        create(&folder, &name);
        assert_bytes(
            &format!("snapshot {name}"),
            &fs::read(folder.join(&name)).expect("read snapshot"),
            &model,
        );
        assert_bytes(
            "the live file",
            &fs::read(&live_path).expect("read live"),
            &model,
        );
    }

    // Cost follows change: one chunk rewritten, one chunk stored.
    let data = rng.bytes(CHUNK as usize);
    live.write_all_at(&data, 3 * CHUNK).expect("pwrite");
    model[3 * CHUNK as usize..4 * CHUNK as usize].copy_from_slice(&data);
    live.sync_data().expect("fdatasync");
    assert_eq!(
        getxattr(&folder, "user.snapfs.changed_bytes").as_deref(),
        Some(CHUNK.to_string().as_str()),
        ".status: {}",
        fs::read_to_string(folder.join(".status")).unwrap_or_default()
    );
    assert_eq!(
        getxattr(&folder, "user.snapfs.record_trusted").as_deref(),
        Some("1")
    );
    let status = fs::read_to_string(folder.join(".status")).expect(".status");
    assert!(
        status.contains("changed since the last snapshot"),
        "{status}"
    );
    create(&folder, "small");
    let added: u64 = getxattr(&folder.join("small"), "user.snapfs.added_bytes")
        .expect("added_bytes")
        .parse()
        .expect("a number");
    assert!(
        added <= CHUNK + 16 * 1024,
        "one changed chunk added {added} bytes"
    );
    assert_eq!(
        getxattr(&folder.join("small"), "user.snapfs.method").as_deref(),
        Some("freeze")
    );
    assert_bytes(
        "snapshot small",
        &fs::read(folder.join("small")).expect("read"),
        &model,
    );
    assert_eq!(
        getxattr(&folder, "user.snapfs.changed_bytes").as_deref(),
        Some("0")
    );

    // Snapshot files stay read-only; SEEK_DATA works on the live file.
    let err = OpenOptions::new()
        .write(true)
        .open(folder.join("small"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let data_at = unsafe { libc::lseek(live.as_raw_fd(), 0, libc::SEEK_DATA) };
    let first = model
        .iter()
        .position(|b| *b != 0)
        .map(|p| p as u64 / 4096 * 4096);
    assert!(
        data_at >= 0 && Some(data_at as u64) <= first,
        "SEEK_DATA {data_at}, data at {first:?}"
    );
    drop(live);
    mount.unmount();
    // Walk away: the backing is the disk, byte for byte.
    let backing = fx.store.join("disks/vm/data.img");
    assert_bytes(
        "the backing",
        &fs::read(backing).expect("read backing"),
        &model,
    );
}

/// Random changes through the live file interleaved with snapshots, some
/// still being stored while the changes go on, and kill -9 of the mount
/// between steps (sometimes after the change record stamped the backing,
/// sometimes at once): every snapshot equals the model at its freeze.
#[test]
fn live_snapshots_equal_the_model_at_their_freeze_across_kill9() {
    if !need_fuse("live_snapshots_equal_the_model_at_their_freeze_across_kill9") {
        return;
    }
    let fx = Fixture::new();
    let backing = fx.path("prop.img");
    fs::write(&backing, vec![0u8; 2 << 20]).expect("backing");
    ok(snapfs(&fx.store)
        .args(["disk", "add", "prop"])
        .arg(&backing)
        .arg("--live"));
    let record = fx.store.join("live").join("prop.changes");
    let seed = common::seed_from_env("SNAPFS_SEED");
    eprintln!("seed {seed} (SNAPFS_SEED reruns it)");
    let mut rng = Rng::new(seed);
    let mut model = vec![0u8; 2 << 20];
    let mut taken: Vec<(String, Vec<u8>)> = Vec::new();
    let mut mount = Mount::start_with(&fx.store, &["--max-rate", "4M"]);
    let open_live = |mount: &Mount| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(mount.disk("prop").join("live"))
            .expect("open live")
    };
    let mut live = open_live(&mount);
    for step in 0..12 {
        for _ in 0..1 + rng.below(6) {
            random_op(&live, &mut model, &mut rng);
        }
        match rng.below(5) {
            4 => {
                // kill -9 while a snapshot is being stored: it is stored
                // whole (and exact) or not at all.
                let name = format!("k{step}");
                create_frozen(&mount.disk("prop"), &name);
                drop(live);
                mount.kill9();
                mount.remount();
                live = open_live(&mount);
                let image = mount.disk("prop").join(&name);
                let kept = image.exists();
                eprintln!("step {step}: kill -9 while {name} was stored; kept: {kept}");
                if kept {
                    taken.push((name, model.clone()));
                }
            }
            0 => {
                // kill -9, now or once the record has stamped the backing.
                live.sync_all().expect("fsync live");
                let stamped = rng.below(2) == 0;
                if stamped {
                    wait_stamped(&record, &backing);
                }
                let trusted_before = getxattr(&mount.disk("prop"), "user.snapfs.record_trusted");
                drop(live);
                mount.kill9();
                mount.remount();
                live = open_live(&mount);
                let trusted = getxattr(&mount.disk("prop"), "user.snapfs.record_trusted");
                eprintln!("step {step}: kill -9 (stamped first: {stamped}), trusted {trusted:?}");
                if stamped {
                    assert_eq!(trusted, trusted_before, "a stamped record after kill -9");
                }
            }
            1 => {
                // Frozen, then changed while it is stored.
                let name = format!("p{step}");
                create_frozen(&mount.disk("prop"), &name);
                taken.push((name.clone(), model.clone()));
                for _ in 0..1 + rng.below(4) {
                    random_op(&live, &mut model, &mut rng);
                }
                let (_, at_freeze) = taken.last().expect("just taken");
                assert_bytes(
                    &format!("snapshot {name} while stored"),
                    &fs::read(mount.disk("prop").join(&name)).expect("read"),
                    at_freeze,
                );
                wait_stored(&mount.disk("prop"), &name);
                create(&mount.disk("prop"), &format!("{name}-after"));
                taken.push((format!("{name}-after"), model.clone()));
            }
            _ => {
                let name = format!("s{step}");
                create(&mount.disk("prop"), &name);
                taken.push((name, model.clone()));
            }
        }
    }
    // Every snapshot still holds its freeze point, across the kills.
    let folder = mount.disk("prop");
    for (name, at_freeze) in &taken {
        wait_stored(&folder, name);
        assert_bytes(
            &format!("snapshot {name}"),
            &fs::read(folder.join(name)).expect("read snapshot"),
            at_freeze,
        );
    }
    assert!(!taken.is_empty());
    drop(live);
    mount.unmount();
    assert_bytes(
        "the backing after unmount",
        &fs::read(&backing).expect("read backing"),
        &model,
    );
}

/// A guest running from a live disk, its ext4 made on the backing first.
/// Fields drop in order: the guest first (it holds the live file open),
/// then the mount, then the store's folder.
struct VmFixture {
    guest: Guest,
    mount: Mount,
    backing: PathBuf,
    /// Seconds the guest's workload sleeps after each file (0: none).
    pause: f64,
    fx: Fixture,
}

const VM_DISK: &str = "vm/sys";

impl VmFixture {
    fn boot(mount_args: &[&str]) -> VmFixture {
        VmFixture::boot_sized(mount_args, 64 << 20, 0.0)
    }

    /// A disk of `size` bytes; the workload pauses `pause` s per file.
    fn boot_sized(mount_args: &[&str], size: u64, pause: f64) -> VmFixture {
        let fx = Fixture::new();
        let backing = fx.path("vm.img");
        Ext4Image::create(&backing, size);
        ok(snapfs(&fx.store)
            .args(["disk", "add", VM_DISK])
            .arg(&backing)
            .arg("--live"));
        let mount = Mount::start_with(&fx.store, mount_args);
        let live = mount.disk(VM_DISK).join("live");
        let guest = boot_with_workload(&live, pause);
        VmFixture {
            guest,
            mount,
            backing,
            pause,
            fx,
        }
    }

    fn folder(&self) -> PathBuf {
        self.mount.disk(VM_DISK)
    }

    /// kill -9 of the mount under the running guest (whose disk then goes,
    /// so it is killed too), a remount, snapshot `name` of the dead guest's
    /// disk, which must equal the backing; then a new guest from the live
    /// file, its ext4 mounted (journal replay) and the workload carried on.
    fn kill9_and_boot_again(&mut self, name: &str) {
        self.mount.kill9();
        self.guest.kill();
        self.mount.remount();
        let folder = self.folder();
        // Trusted or not (the guest wrote up to the kill, so the last stamp
        // may be older than its last write): the snapshot must be right.
        let status = fs::read_to_string(folder.join(".status")).expect(".status");
        eprintln!("after kill -9: {status}");
        create(&folder, name);
        let (copy, files) = self.check_snapshot(name);
        assert_bytes(
            &format!("snapshot {name} after kill -9"),
            &fs::read(&copy).expect("read copy"),
            &fs::read(&self.backing).expect("read backing"),
        );
        let _ = fs::remove_file(copy);
        self.guest = boot_with_workload(&folder.join("live"), self.pause);
        eprintln!("{name}: {files} files; a new guest carries the workload on");
    }

    /// Copies snapshot `name` out of the mount and checks it as a crash
    /// image; returns the copy and the workload files it holds.
    fn check_snapshot(&self, name: &str) -> (PathBuf, u64) {
        let copy = self.fx.path(&format!("{name}.img"));
        common::copy_sparse(&self.folder().join(name), &copy);
        let files = check_image(&copy).unwrap_or_else(|why| panic!("snapshot {name}: {why}"));
        eprintln!("snapshot {name}: {files} workload files verified");
        (copy, files)
    }
}

/// Boots a guest from `live` (cache=none without fallback: O_DIRECT must
/// open), mounts its ext4 and starts the workload (carrying on after the
/// last file logged on the disk, if any).
fn boot_with_workload(live: &Path, pause: f64) -> Guest {
    let mut guest = Guest::boot(&[Disk::new(live).cache(Cache::None)]);
    eprintln!("guest booted in {:.1?}", guest.boot_time);
    guest.run("mount -t ext4 /dev/vda /mnt");
    if pause > 0.0 {
        guest.start_workload_paced("/mnt", pause);
    } else {
        guest.start_workload("/mnt");
    }
    guest
}

#[test]
fn snapshots_of_a_running_vm_are_crash_consistent() {
    if !need_vm("snapshots_of_a_running_vm_are_crash_consistent") {
        return;
    }
    let long = long_run_length();
    // The long run: a disk with room for an hour of a workload paced at
    // five files a second (~35 KB each).
    let mut vm = match long {
        None => VmFixture::boot(&["--max-rate", "8M"]),
        Some(_) => VmFixture::boot_sized(&["--max-rate", "8M"], 1 << 30, 0.2),
    };
    let folder = vm.folder();
    let mut progress = vm.guest.wait_workload(3, Duration::from_secs(60));
    // The first reads the whole disk under the mount's --max-rate 8M while
    // the guest writes; then one uncapped (through .control), one capped.
    let mut taken = Vec::new();
    for (name, uncapped) in [("first", false), ("uncapped", true), ("capped", false)] {
        let started = Instant::now();
        if uncapped {
            ok(snapfs(&vm.fx.store).args([
                "snapshot",
                "create",
                VM_DISK,
                name,
                "--max-rate",
                "100G",
            ]));
        } else {
            create(&folder, name);
        }
        let after = vm.guest.workload_progress();
        taken.push((name, progress, after));
        eprintln!(
            "{name} in {:.1?}; the guest wrote files {progress}..{after} meanwhile",
            started.elapsed()
        );
        progress = vm.guest.wait_workload(after + 3, Duration::from_secs(60));
    }
    vm.guest
        .wait_workload(progress + 2, Duration::from_secs(60));
    for (name, before, after) in taken {
        let (_, files) = vm.check_snapshot(name);
        assert_holds_workload(name, files, before, after);
    }
    if let Some(length) = long {
        long_run(&mut vm, length);
    }
    vm.guest.kill();
}

/// Every file fsynced before the `.create` is in the snapshot (the workload
/// logs n once n - 1 is durable); none beyond what was written by its end.
fn assert_holds_workload(name: &str, files: u64, before: u64, after: u64) {
    assert!(
        files + 1 >= before && files <= after,
        "snapshot {name} holds {files} files; {before} were logged before it, {after} after"
    );
}

/// `SNAPFS_VM_LONG_SECS=N` lengthens
/// `snapshots_of_a_running_vm_are_crash_consistent` by a run of N seconds
/// (bench/vm-long.sh sets it); unset, the test takes its three snapshots.
const LONG_SECS_VAR: &str = "SNAPFS_VM_LONG_SECS";

fn long_run_length() -> Option<Duration> {
    let value = std::env::var(LONG_SECS_VAR).ok()?;
    let secs: u64 = value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{LONG_SECS_VAR}={value:?} is not a number of seconds"));
    Some(Duration::from_secs(secs))
}

/// The long mode: snapshots one after another for `length` while the guest
/// writes, by turns uncapped (the CLI with --max-rate 100G) and under the
/// mount's --max-rate, each checked as a crash image at once (journal
/// replay, the workload's invariant, e2fsck -fn). Half way, kill -9 of the
/// mount under the running guest: the snapshot after the remount equals the
/// backing, and a new guest booted from the live file carries the workload
/// on.
fn long_run(vm: &mut VmFixture, length: Duration) {
    let started = Instant::now();
    let mut killed = false;
    let mut checked = 0u64;
    let mut round = 0u64;
    let mut progress = vm.guest.workload_progress();
    eprintln!("long run: {length:?} of snapshots, a kill -9 of the mount half way");
    while started.elapsed() < length || !killed {
        round += 1;
        if !killed && started.elapsed() >= length / 2 {
            killed = true;
            vm.kill9_and_boot_again(&format!("long-{round}-after-kill9"));
            checked += 1;
            progress = vm
                .guest
                .wait_workload(progress + 3, Duration::from_secs(120));
            continue;
        }
        let uncapped = round.is_multiple_of(2);
        let name = format!(
            "long-{round}-{}",
            if uncapped { "uncapped" } else { "capped" }
        );
        let taken = Instant::now();
        if uncapped {
            ok(snapfs(&vm.fx.store).args([
                "snapshot",
                "create",
                VM_DISK,
                &name,
                "--max-rate",
                "100G",
            ]));
        } else {
            create(&vm.folder(), &name);
        }
        let took = taken.elapsed();
        let after = vm.guest.workload_progress();
        let (copy, files) = vm.check_snapshot(&name);
        let _ = fs::remove_file(copy);
        assert_holds_workload(&name, files, progress, after);
        checked += 1;
        eprintln!(
            "long run {:.0?}: {name} in {took:.1?}, the guest wrote files {progress}..{after} meanwhile",
            started.elapsed()
        );
        progress = vm.guest.wait_workload(after + 5, Duration::from_secs(120));
    }
    eprintln!(
        "long run done: {checked} snapshots checked in {:.0?}, one kill -9 of the mount; \
         the workload reached {progress}",
        started.elapsed()
    );
}

#[test]
fn snapshot_after_kill9_of_the_mount_under_a_running_vm_is_correct() {
    if !need_vm("snapshot_after_kill9_of_the_mount_under_a_running_vm_is_correct") {
        return;
    }
    let mut vm = VmFixture::boot(&[]);
    let folder = vm.folder();
    let progress = vm.guest.wait_workload(3, Duration::from_secs(60));
    create(&folder, "before");
    vm.guest
        .wait_workload(progress + 3, Duration::from_secs(60));
    vm.mount.kill9();
    // The guest's disk is gone with the mount: stop it.
    vm.guest.kill();
    vm.mount.remount();
    let folder = vm.folder();
    // Trusted or not (the guest wrote up to the kill, so the last stamp
    // may be older than its last write): the snapshot must be right.
    let status = fs::read_to_string(folder.join(".status")).expect(".status");
    eprintln!("after kill -9: {status}");
    create(&folder, "after");
    let (copy, _) = vm.check_snapshot("after");
    assert_bytes(
        "snapshot after kill -9",
        &fs::read(&copy).expect("read copy"),
        &fs::read(&vm.backing).expect("read backing"),
    );
    vm.check_snapshot("before");
}

/// Waits until the change record's header stamps the backing as it is
/// now (FORMAT.md: flags at 12, bit 8 "stamped"; mtime and ctime at 72
/// and 80): after that, a kill -9 leaves the record trusted.
fn wait_stamped(record: &Path, backing: &Path) {
    use std::os::unix::fs::MetadataExt;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let header = fs::read(record).expect("read change record");
        let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
        let flags = u32::from_le_bytes(header[12..16].try_into().unwrap());
        let meta = fs::metadata(backing).expect("stat backing");
        let mtime = (meta.mtime() * 1_000_000_000 + meta.mtime_nsec()) as u64;
        let ctime = (meta.ctime() * 1_000_000_000 + meta.ctime_nsec()) as u64;
        if flags & 8 != 0 && u64_at(72) == mtime && u64_at(80) == ctime {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the change record never stamped the backing's times"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn change_record_survives_kill9_unless_the_backing_is_written_after() {
    if !need_fuse("change_record_survives_kill9_unless_the_backing_is_written_after") {
        return;
    }
    let fx = Fixture::new();
    let backing = fx.path("data.img");
    let mut rng = Rng::new(common::seed_from_env("SNAPFS_SEED"));
    let mut model = rng.bytes(2 << 20);
    fs::write(&backing, &model).expect("write backing");
    ok(snapfs(&fx.store)
        .args(["disk", "add", "data"])
        .arg(&backing)
        .arg("--live"));
    let record = fx.store.join("live").join("data.changes");
    let mut mount = Mount::start(&fx.store);
    let folder = mount.disk("data");
    create(&folder, "base");
    let write_live = |offset: u64, bytes: &[u8]| {
        let live = OpenOptions::new()
            .write(true)
            .open(folder.join("live"))
            .expect("open live");
        live.write_all_at(bytes, offset).expect("write live");
        live.sync_data().expect("fsync live");
    };
    for chunk in [3u64, 17] {
        let bytes = rng.bytes(CHUNK as usize);
        write_live(chunk * CHUNK, &bytes);
        model[(chunk * CHUNK) as usize..((chunk + 1) * CHUNK) as usize].copy_from_slice(&bytes);
    }
    wait_stamped(&record, &backing);

    // Killed after the stamp: the record still vouches for both chunks.
    mount.kill9();
    mount.remount();
    let folder = mount.disk("data");
    assert_eq!(
        getxattr(&folder, "user.snapfs.record_trusted").as_deref(),
        Some("1"),
        ".status after kill -9: {}",
        fs::read_to_string(folder.join(".status")).unwrap_or_default()
    );
    assert_eq!(
        getxattr(&folder, "user.snapfs.changed_bytes").as_deref(),
        Some((2 * CHUNK).to_string().as_str()),
        "exactly the two written chunks are marked"
    );
    create(&folder, "after-kill");
    assert_bytes(
        "snapshot after kill -9",
        &fs::read(folder.join("after-kill")).expect("read snapshot"),
        &model,
    );

    // Killed, then written by another program: not trusted, read whole.
    let bytes = rng.bytes(CHUNK as usize);
    write_live(5 * CHUNK, &bytes);
    model[(5 * CHUNK) as usize..(6 * CHUNK) as usize].copy_from_slice(&bytes);
    wait_stamped(&record, &backing);
    mount.kill9();
    let outside = rng.bytes(100);
    let file = OpenOptions::new()
        .write(true)
        .open(&backing)
        .expect("open backing");
    file.write_all_at(&outside, 25 * CHUNK + 7)
        .expect("write backing");
    drop(file);
    model[(25 * CHUNK + 7) as usize..(25 * CHUNK + 107) as usize].copy_from_slice(&outside);
    mount.remount();
    let folder = mount.disk("data");
    let status = fs::read_to_string(folder.join(".status")).expect(".status");
    assert!(
        status.contains("not trusted") && status.contains("after its last write"),
        "after an outside write: {status}"
    );
    create(&folder, "after-outside-write");
    assert_bytes(
        "snapshot after an outside write",
        &fs::read(folder.join("after-outside-write")).expect("read snapshot"),
        &model,
    );
    mount.unmount();
}

#[test]
fn a_live_snapshot_reads_its_freeze_point_at_once_while_it_is_stored() {
    if !need_fuse("a_live_snapshot_reads_its_freeze_point_at_once_while_it_is_stored") {
        return;
    }
    let fx = Fixture::new();
    let chunks = 64u64;
    fx.create_disk("data", chunks * CHUNK);
    // Storing 2 MiB at 1 MiB/s takes seconds: long enough to read the
    // snapshot while it is stored.
    let mount = Mount::start_with(&fx.store, &["--max-rate", "1M"]);
    let folder = mount.disk("data");
    let live = OpenOptions::new()
        .read(true)
        .write(true)
        .open(folder.join("live"))
        .expect("open live");
    let mut rng = Rng::new(common::seed_from_env("SNAPFS_SEED"));
    let mut model = vec![0u8; (chunks * CHUNK) as usize];
    let write = |model: &mut Vec<u8>, chunk: u64, rng: &mut Rng| {
        let bytes = rng.bytes(CHUNK as usize);
        live.write_all_at(&bytes, chunk * CHUNK)
            .expect("write live");
        model[(chunk * CHUNK) as usize..((chunk + 1) * CHUNK) as usize].copy_from_slice(&bytes);
    };
    for chunk in 0..4 {
        write(&mut model, chunk * 16, &mut rng);
    }
    create(&folder, "base");
    // Half the disk changes; the snapshot stores those 32 chunks.
    for chunk in (0..chunks).step_by(2) {
        write(&mut model, chunk, &mut rng);
    }
    let at_freeze = model.clone();
    create_frozen(&folder, "frozen");
    let image = folder.join("frozen");
    assert_eq!(
        getxattr(&image, "user.snapfs.state").as_deref(),
        Some("progressing"),
        ".create of a live disk returns at the freeze, before the snapshot is stored"
    );
    let early = File::open(&image).expect("open the progressing snapshot");
    // The guest goes on: stored and not yet stored chunks are overwritten.
    for chunk in 0..chunks {
        write(&mut model, chunk, &mut rng);
    }
    let mut bytes = vec![0u8; at_freeze.len()];
    early
        .read_exact_at(&mut bytes, 0)
        .expect("read while storing");
    assert_bytes("the snapshot read while it is stored", &bytes, &at_freeze);
    // Wait for the outcome, then read again through the same handle.
    wait_stored(&folder, "frozen");
    early
        .read_exact_at(&mut bytes, 0)
        .expect("read after storing");
    assert_bytes("the same handle after storing", &bytes, &at_freeze);
    assert_bytes(
        "the stored snapshot",
        &fs::read(&image).expect("read stored"),
        &at_freeze,
    );
    drop(early);

    // The CLI through the mount: --no-wait returns at the freeze; without
    // it the command waits for the stored snapshot.
    let out = ok(snapfs(&fx.store).args(["snapshot", "create", "data", "quick", "--no-wait"]));
    assert!(out.contains("frozen"), "{out}");
    // One snapshot of a disk at a time: the next waits for this one.
    wait_stored(&folder, "quick");
    let out = ok(snapfs(&fx.store).args(["snapshot", "create", "data", "waited"]));
    assert!(
        out.contains("waited") && out.contains("accomplished"),
        "{out}"
    );
    assert_bytes(
        "a snapshot taken by the CLI",
        &fs::read(folder.join("waited")).expect("read"),
        &model,
    );
    let refused = common::fails(snapfs(&fx.store).args([
        "snapshot",
        "create",
        "data",
        "capped",
        "--no-wait",
        "--max-rate",
        "1M",
    ]));
    assert!(refused.contains("--no-wait"), "{refused}");
    drop(live);
    mount.unmount();
}

#[test]
fn rollback_of_a_live_disk_leaves_its_change_record_correct() {
    if !need_fuse("rollback_of_a_live_disk_leaves_its_change_record_correct") {
        return;
    }
    let fx = Fixture::new();
    let chunks = 32u64;
    fx.create_disk("data", chunks * CHUNK);
    let mut rng = Rng::new(7);
    let a = rng.bytes((chunks * CHUNK) as usize);
    // b: two chunks of a changed.
    let mut b = a.clone();
    for chunk in [4usize, 20] {
        b[chunk * CHUNK as usize..(chunk + 1) * CHUNK as usize]
            .copy_from_slice(&rng.bytes(CHUNK as usize));
    }
    let mount = Mount::start(&fx.store);
    let folder = mount.disk("data");
    let write_at = |bytes: &[u8], offset: u64| {
        let live = OpenOptions::new()
            .write(true)
            .open(folder.join("live"))
            .expect("open live");
        live.write_all_at(bytes, offset).expect("pwrite");
        live.sync_all().expect("fsync");
    };
    write_at(&a, 0);
    create(&folder, "a");
    write_at(&b, 0);
    create(&folder, "b");
    // One more chunk changed after b, not snapshotted.
    let mut now = b.clone();
    let extra = rng.bytes(CHUNK as usize);
    now[9 * CHUNK as usize..10 * CHUNK as usize].copy_from_slice(&extra);
    write_at(&extra, 9 * CHUNK);

    // Through the mount: the record and the maps name the 3 chunks that
    // can differ, and only those are compared; the record stays trusted.
    let report = ok(snapfs(&fx.store).args(["rollback", "data", "a", "--yes", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&report).expect("json report");
    assert_eq!(report["only_changed"], true, "{report}");
    assert_eq!(report["chunks_compared"], 3, "{report}");
    assert_eq!(report["chunks_written"], 3, "{report}");
    assert_bytes(
        "live after rollback",
        &fs::read(folder.join("live")).expect("read"),
        &a,
    );
    assert_eq!(
        getxattr(&folder, "user.snapfs.record_trusted").as_deref(),
        Some("1"),
        "{}",
        fs::read_to_string(folder.join(".status")).unwrap_or_default()
    );
    create(&folder, "after-a");
    assert_bytes(
        "snapshot after-a",
        &fs::read(folder.join("after-a")).expect("read"),
        &a,
    );
    mount.unmount();
    // Not mounted: the CLI opens the live disk itself, same rules.
    let out = ok(snapfs(&fx.store).args(["rollback", "data", "b", "--yes"]));
    assert!(out.contains("compared only the chunks"), "{out}");
    let mount = Mount::start(&fx.store);
    let folder = mount.disk("data");
    create(&folder, "after-b");
    assert_bytes(
        "snapshot after-b",
        &fs::read(folder.join("after-b")).expect("read"),
        &b,
    );
    // A record that cannot vouch: every chunk compared, then distrusted.
    mount.unmount();
    let backing = fx.store.join("disks/data.img");
    let file = OpenOptions::new()
        .write(true)
        .open(&backing)
        .expect("open backing");
    file.write_all_at(b"outside", 100).expect("write backing");
    drop(file);
    let report = ok(snapfs(&fx.store).args(["rollback", "data", "a", "--yes", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&report).expect("json report");
    assert_eq!(report["only_changed"], false, "{report}");
    assert_eq!(report["chunks_compared"], chunks, "{report}");
    let mount = Mount::start(&fx.store);
    let folder = mount.disk("data");
    let status = fs::read_to_string(folder.join(".status")).expect(".status");
    assert!(status.contains("not trusted"), "{status}");
    create(&folder, "after-outside");
    assert_bytes(
        "snapshot after-outside",
        &fs::read(folder.join("after-outside")).expect("read"),
        &a,
    );
    mount.unmount();
}
