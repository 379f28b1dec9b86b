//! Environment faults: a store whose filesystem fills up, a source whose
//! reads fail part-way, and a mount taken away under its users. Each fault
//! must end in one clear error (or a clean exit of the mount), never a
//! hang, a panic or wrong bytes, and must leave the store as it was.
//!
//! `SNAPFS_FAULT_ROUNDS=N` repeats the ENOSPC and failing-source cases N
//! times (default 1).

mod common;

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use common::faults::{
    fill_up, fill_up_leaving, snapshot_files, status, within, write_create, FaultySource, SmallFs,
};
use common::mount::{is_mounted, Mount};
use common::{
    assert_same_file, fails, need_fuse, need_root, ok, run_timeout, snapfs, store_state,
    write_random_file, Rng,
};

const MIB: u64 = 1 << 20;
/// Longest any single step may take before the test calls it a hang.
const STEP: Duration = Duration::from_secs(120);

fn rounds() -> u64 {
    std::env::var("SNAPFS_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Runs a `snapfs` command under the step timeout and asserts success.
fn ok_within(cmd: &mut std::process::Command) -> String {
    let ran = run_timeout(cmd, STEP);
    assert_eq!(
        ran.code,
        Some(0),
        "command failed:\n{}{}",
        ran.stdout,
        ran.stderr
    );
    ran.stdout
}

/// Every snapshot (disk, name) the store lists.
fn listed(store: &Path) -> Vec<(String, String)> {
    let mut rows = common::list_snapshots(store);
    rows.sort();
    rows
}

fn pair(disk: &str, name: &str) -> (String, String) {
    (disk.to_string(), name.to_string())
}

/// Writes `name` into `disk`'s `.create` under the STEP timeout: the errno
/// it failed with, if any. `what` names the step if it hangs.
fn create_within(what: &str, disk: &Path, name: &'static str) -> Result<(), i32> {
    let disk = disk.to_path_buf();
    within(STEP, what, move || write_create(&disk, name))
}

/// Exports `disk/name` and compares it with `expected`.
fn assert_export(store: &Path, disk: &str, name: &str, expected: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("export.img");
    ok_within(snapfs(store).args(["export", disk, name, "-o"]).arg(&out));
    assert_same_file(&out, expected);
}

// ------------------------------------------------------------------ ENOSPC

/// Sizes for the full-store cases: the store's filesystem holds the old
/// snapshot and part of the new one, but not both; the new one is larger
/// than a pack, so its first pack is committed before the space runs out.
const FS_SIZE: u64 = 256 * MIB;
const OLD_SIZE: u64 = 64 * MIB;
const NEW_SIZE: u64 = 200 * MIB;

struct FullStoreSetup {
    _tmp: tempfile::TempDir,
    fs: SmallFs,
    store: std::path::PathBuf,
    old: std::path::PathBuf,
    new: std::path::PathBuf,
}

fn full_store_setup(seed: u64) -> FullStoreSetup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = SmallFs::new(FS_SIZE);
    let store = fs.path().join("store");
    let old = tmp.path().join("old.img");
    let new = tmp.path().join("new.img");
    // Random bytes: zstd cannot shrink them, so the new snapshot cannot fit.
    write_random_file(&old, OLD_SIZE, &mut Rng::new(seed));
    write_random_file(&new, NEW_SIZE, &mut Rng::new(seed + 1));
    ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
    ok(snapfs(&store).args(["disk", "add", "old"]).arg(&old));
    ok(snapfs(&store).args(["disk", "add", "new"]).arg(&new));
    FullStoreSetup {
        _tmp: tmp,
        fs,
        store,
        old,
        new,
    }
}

/// Through the CLI: the snapshot that does not fit fails with one line
/// naming the lack of space and leaves the store exactly as it was (its
/// committed first pack too); the old snapshot exports byte-identical;
/// sled hitting ENOSPC leaves a store that opens; deleting the old
/// snapshot and gc on the full filesystem make room for the new one.
#[test]
fn full_store_fails_the_snapshot_keeps_old_ones_and_recovers_after_gc() {
    if !need_root("full_store_fails_the_snapshot_keeps_old_ones_and_recovers_after_gc") {
        return;
    }
    for round in 0..rounds() {
        eprintln!("round {round}");
        let setup = full_store_setup(100 + round);
        let store = &setup.store;
        ok_within(snapfs(store).args(["snapshot", "create", "old", "o1"]));
        let before = store_state(store);

        let line = fails(snapfs(store).args(["snapshot", "create", "new", "n1"]));
        // The packs stop while the database still has room.
        assert!(
            line.contains("No space left on device") && line.contains("free for the database"),
            "{line}"
        );
        assert_eq!(
            store_state(store),
            before,
            "the failed snapshot left something behind"
        );
        ok_within(snapfs(store).arg("verify"));
        assert_export(store, "old", "o1", &setup.old);

        // sled's own writes hit ENOSPC: the command fails with one line (or
        // sled still had room), and the store opens afterwards.
        let filler = fill_up(setup.fs.path());
        let ran = run_timeout(
            snapfs(store).args(["snapshot", "rename", "old", "o1", "o1-renamed"]),
            STEP,
        );
        let renamed = ran.code == Some(0);
        if !renamed {
            let lines: Vec<&str> = ran.stderr.lines().collect();
            assert!(
                ran.code == Some(1)
                    && lines.len() == 1
                    && lines[0].starts_with("snapfs: ")
                    && lines[0].contains("No space left on device"),
                "rename on a full filesystem: exit {:?}, stderr:\n{}",
                ran.code,
                ran.stderr
            );
        }
        fs::remove_file(&filler).expect("remove filler");
        let old_name = if renamed { "o1-renamed" } else { "o1" };
        assert_eq!(listed(store), [pair("old", old_name)]);
        ok_within(snapfs(store).arg("verify"));

        // Free space the way a user does, on a filesystem as full as the
        // store's own packs may make it (they keep a reserve of 1/32 of
        // it, 8 MiB here, for the database): delete, then gc.
        let line = fails(snapfs(store).args(["snapshot", "create", "new", "n1"]));
        assert!(line.contains("No space left on device"), "{line}");
        let filler = fill_up_leaving(setup.fs.path(), 4 * MIB);
        ok_within(snapfs(store).args(["snapshot", "rm", "old", old_name]));
        ok_within(snapfs(store).arg("gc"));
        fs::remove_file(&filler).expect("remove filler");
        ok_within(snapfs(store).args(["snapshot", "create", "new", "n1"]));
        assert_eq!(listed(store), [pair("new", "n1")]);
        assert_export(store, "new", "n1", &setup.new);
        ok_within(snapfs(store).arg("verify"));
    }
}

/// Through the mount: `.create` fails with ENOSPC, `.status` says why, no
/// snapshot file appears, old snapshots read back byte-identical, and
/// after `rm` of the old one and `snapfs gc` the new snapshot succeeds.
#[test]
fn full_store_fails_create_with_enospc_in_the_mount_and_recovers() {
    if !need_fuse("full_store_fails_create_with_enospc_in_the_mount_and_recovers") {
        return;
    }
    for round in 0..rounds() {
        eprintln!("round {round}");
        let setup = full_store_setup(200 + round);
        let store = &setup.store;
        let mount = Mount::start(store);
        let (old_dir, new_dir) = (mount.disk("old"), mount.disk("new"));
        create_within("snapshot o1", &old_dir, "o1")
            .unwrap_or_else(|errno| panic!("snapshot o1 failed with errno {errno}"));
        let before = store_state(store);

        let result = create_within("snapshot n1", &new_dir, "n1");
        assert_eq!(result, Err(libc::ENOSPC), ".status:\n{}", status(&new_dir));
        let text = status(&new_dir);
        assert!(
            text.lines()
                .any(|l| l.contains("failed n1") && l.contains("No space left on device")),
            ".status does not say why n1 failed:\n{text}"
        );
        assert!(snapshot_files(&new_dir).is_empty());
        assert_eq!(
            store_state(store),
            before,
            "the failed snapshot left something behind"
        );
        assert_same_file(&old_dir.join("o1"), &setup.old);

        fs::remove_file(old_dir.join("o1")).expect("rm o1 in the mount");
        ok_within(snapfs(store).arg("gc"));
        create_within("snapshot n1 after gc", &new_dir, "n1").unwrap_or_else(|errno| {
            panic!(
                "snapshot n1 after gc failed with errno {errno}:\n{}",
                status(&new_dir)
            )
        });
        assert_same_file(&new_dir.join("n1"), &setup.new);
        mount.unmount();
        assert_eq!(listed(store), [pair("new", "n1")]);
        ok_within(snapfs(store).arg("verify"));
    }
}

/// The store's filesystem fills up just as a snapshot's first full pack
/// is committed: the database must not be the one that hits ENOSPC (sled
/// keeps such an error for the rest of the process), so once space is
/// freed the same mount takes the snapshot.
#[test]
fn mount_takes_snapshots_again_once_a_full_store_has_room() {
    if !need_fuse("mount_takes_snapshots_again_once_a_full_store_has_room") {
        return;
    }
    for round in 0..rounds() {
        eprintln!("round {round}");
        let setup = full_store_setup(250 + round);
        let mount = Mount::start(&setup.store);
        let new_dir = mount.disk("new");
        // Room for one pack (128 MiB) and hardly more.
        let filler = fill_up_leaving(setup.fs.path(), 128 * MIB + 256 * 1024);
        let result = create_within("snapshot n1 on a full store", &new_dir, "n1");
        assert_eq!(result, Err(libc::ENOSPC), ".status:\n{}", status(&new_dir));
        let text = status(&new_dir);
        assert!(
            text.lines()
                .any(|l| l.contains("failed n1") && l.contains("free for the database")),
            "the packs, not the database, must be the ones to run out of room:\n{text}"
        );
        fs::remove_file(&filler).expect("remove filler");
        create_within("snapshot n1 once there is room", &new_dir, "n1").unwrap_or_else(|errno| {
            panic!(
                "snapshot n1 after freeing space failed with errno {errno}:\n{}",
                status(&new_dir)
            )
        });
        assert_same_file(&new_dir.join("n1"), &setup.new);
        mount.unmount();
        ok_within(snapfs(&setup.store).arg("verify"));
    }
}

// ---------------------------------------------------------- failing source

/// A source larger than a pack whose reads fail past its first pack: the
/// failed snapshot must not keep the committed pack.
const SOURCE_SIZE: u64 = 192 * MIB;
const BAD_AT: u64 = 160 * MIB;

struct FailingSourceSetup {
    _tmp: tempfile::TempDir,
    store: std::path::PathBuf,
    backing: std::path::PathBuf,
    source: FaultySource,
}

fn failing_source_setup(seed: u64) -> FailingSourceSetup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let backing = tmp.path().join("backing.img");
    let good = tmp.path().join("good.img");
    write_random_file(&backing, SOURCE_SIZE, &mut Rng::new(seed));
    write_random_file(&good, 8 * MIB, &mut Rng::new(seed + 1));
    let source = FaultySource::mount(&backing, BAD_AT..BAD_AT + 4096);
    ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
    ok(snapfs(&store).args(["disk", "add", "good"]).arg(&good));
    ok(snapfs(&store)
        .args(["disk", "add", "flaky"])
        .arg(source.path()));
    ok(snapfs(&store).args(["snapshot", "create", "good", "g1"]));
    FailingSourceSetup {
        _tmp: tmp,
        store,
        backing,
        source,
    }
}

/// Through the CLI: the snapshot fails with one line naming the source,
/// the offset and the I/O error; nothing is listed and nothing stored; once
/// the source reads again, the snapshot succeeds and exports its bytes.
#[test]
fn unreadable_source_fails_the_snapshot_and_stores_nothing() {
    if !need_fuse("unreadable_source_fails_the_snapshot_and_stores_nothing") {
        return;
    }
    for round in 0..rounds() {
        eprintln!("round {round}");
        let setup = failing_source_setup(300 + round);
        let store = &setup.store;
        let before = store_state(store);
        let line = fails(snapfs(store).args(["snapshot", "create", "flaky", "f1"]));
        let path = setup.source.path().display().to_string();
        assert!(
            line.contains(&path) && line.contains("offset") && line.contains("Input/output error"),
            "{line}"
        );
        assert!(setup.source.failed_reads() > 0);
        assert_eq!(
            store_state(store),
            before,
            "the failed snapshot left something behind"
        );
        ok_within(snapfs(store).arg("verify"));

        setup.source.set_failing(false);
        ok_within(snapfs(store).args(["snapshot", "create", "flaky", "f1"]));
        assert_export(store, "flaky", "f1", &setup.backing);
        assert_eq!(listed(store), [pair("flaky", "f1"), pair("good", "g1")]);
    }
}

/// Through the mount: `.create` fails with EIO, `.status` names the source
/// and the error, no file appears and nothing is stored.
#[test]
fn unreadable_source_fails_create_with_eio_in_the_mount() {
    if !need_fuse("unreadable_source_fails_create_with_eio_in_the_mount") {
        return;
    }
    for round in 0..rounds() {
        eprintln!("round {round}");
        let setup = failing_source_setup(400 + round);
        let store = &setup.store;
        let mount = Mount::start(store);
        let disk = mount.disk("flaky");
        let before = store_state(store);
        let result = create_within("snapshot f1", &disk, "f1");
        assert_eq!(result, Err(libc::EIO), ".status:\n{}", status(&disk));
        let text = status(&disk);
        let path = setup.source.path().display().to_string();
        assert!(
            text.lines().any(|l| l.contains("failed f1")
                && l.contains(&path)
                && l.contains("Input/output error")),
            ".status does not say why f1 failed:\n{text}"
        );
        assert!(snapshot_files(&disk).is_empty());
        assert_eq!(
            store_state(store),
            before,
            "the failed snapshot left something behind"
        );

        setup.source.set_failing(false);
        create_within("snapshot f1 again", &disk, "f1")
            .unwrap_or_else(|errno| panic!("snapshot f1 failed with errno {errno}"));
        assert_same_file(&disk.join("f1"), &setup.backing);
        mount.unmount();
        ok_within(snapfs(store).arg("verify"));
    }
}

// ------------------------------------------------- the mount taken away

/// A store with one 24 MiB random disk `d` and its snapshot `s`, mounted.
struct MountedStore {
    tmp: tempfile::TempDir,
    store: std::path::PathBuf,
    source: std::path::PathBuf,
    mount: Mount,
}

fn mounted_store(seed: u64) -> MountedStore {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let source = tmp.path().join("d.img");
    write_random_file(&source, 24 * MIB, &mut Rng::new(seed));
    ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
    ok(snapfs(&store).args(["disk", "add", "d"]).arg(&source));
    let mount = Mount::start(&store);
    let disk = mount.disk("d");
    create_within("snapshot s", &disk, "s")
        .unwrap_or_else(|errno| panic!("snapshot s failed with errno {errno}"));
    MountedStore {
        tmp,
        store,
        source,
        mount,
    }
}

/// Reads the rest of `file` (from where it is) under the step timeout.
fn read_rest(mut file: File) -> std::io::Result<Vec<u8>> {
    within(STEP, "reading a snapshot file", move || {
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).map(|_| rest)
    })
}

/// Opens `path` and reads its first MiB.
fn open_and_start_reading(path: &Path) -> (File, Vec<u8>) {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut head = vec![0u8; MIB as usize];
    file.read_exact(&mut head).expect("read the first MiB");
    (file, head)
}

fn assert_is_source(bytes: &[u8], source: &Path, what: &str) {
    common::assert_bytes_equal_file(bytes, source, what);
}

/// `snapfs umount` while a reader holds a snapshot file open fails at once
/// with one line saying the mount is busy; the reader keeps reading the
/// right bytes, and once it closes, umount works.
#[test]
fn umount_with_an_open_snapshot_file_fails_busy_and_the_reader_goes_on() {
    if !need_fuse("umount_with_an_open_snapshot_file_fails_busy_and_the_reader_goes_on") {
        return;
    }
    let fx = mounted_store(500);
    let (reader, mut bytes) = open_and_start_reading(&fx.mount.disk("d").join("s"));
    let ran = run_timeout(snapfs(&fx.store).arg("umount").arg(fx.mount.path()), STEP);
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert!(
        ran.code == Some(1) && lines.len() == 1 && lines[0].contains("busy"),
        "umount of a busy mount: exit {:?}, stderr:\n{}",
        ran.code,
        ran.stderr
    );
    assert!(is_mounted(fx.mount.path()), "the busy mount went away");
    bytes.extend(read_rest(reader).expect("read after the refused umount"));
    assert_is_source(&bytes, &fx.source, "snapshot read across a refused umount");
    fx.mount.unmount();
    ok_within(snapfs(&fx.store).arg("verify"));
}

/// `umount -l` detaches the mount at once; an open reader still reads the
/// right bytes, and the mount process ends cleanly after it closes.
#[test]
fn lazy_umount_detaches_and_the_mount_ends_after_its_last_reader() {
    if !need_fuse("lazy_umount_detaches_and_the_mount_ends_after_its_last_reader") {
        return;
    }
    let mut fx = mounted_store(501);
    let (reader, mut bytes) = open_and_start_reading(&fx.mount.disk("d").join("s"));
    let mnt = fx.mount.path().to_path_buf();
    let status = within(STEP, "umount -l", move || {
        std::process::Command::new("umount")
            .arg("-l")
            .arg(&mnt)
            .status()
    })
    .expect("run umount -l");
    assert!(status.success(), "umount -l failed");
    assert!(
        !is_mounted(fx.mount.path()),
        "still mounted after umount -l"
    );
    bytes.extend(read_rest(reader).expect("read after umount -l"));
    assert_is_source(&bytes, &fx.source, "snapshot read across umount -l");
    let exit = fx.mount.wait_exit(STEP);
    assert!(
        exit.is_some_and(|s| s.success()),
        "the mount ended with {exit:?} after umount -l and its last close; log:\n{}",
        fx.mount.log_text()
    );
    ok_within(snapfs(&fx.store).arg("verify"));
    assert_eq!(listed(&fx.store), [pair("d", "s")]);
}

/// Reads a snapshot file whole; Ok only with the right bytes.
fn read_snapshot_or_error(path: &Path, source: &Path) -> Result<(), std::io::Error> {
    let path = path.to_path_buf();
    let bytes = within(STEP, "reading a snapshot file", move || fs::read(path))?;
    assert_is_source(&bytes, source, "snapshot read with the store folder gone");
    Ok(())
}

/// Ends the mount after its store folder went away: `snapfs umount`
/// answers, and the mount process exits by itself without a panic.
fn umount_after_store_loss(fx: &mut MountedStore) {
    let ran = run_timeout(snapfs(&fx.store).arg("umount").arg(fx.mount.path()), STEP);
    assert_eq!(ran.code, Some(0), "umount: {}{}", ran.stdout, ran.stderr);
    let exit = fx.mount.wait_exit(STEP);
    let log = fx.mount.log_text();
    assert!(
        exit.is_some_and(|s| s.code().is_some_and(|c| c == 0 || c == 1)),
        "the mount ended with {exit:?}; log:\n{log}"
    );
    assert!(!log.contains("panicked"), "the mount panicked:\n{log}");
}

fn assert_store_gone_in_status(disk: &Path) {
    let text = status(disk);
    assert!(
        text.lines()
            .any(|l| l.contains("failed s2") && l.contains("removed or moved")),
        ".status does not say why s2 failed:\n{text}"
    );
}

/// `rm -rf` of the store folder under a running mount: old snapshots read
/// right or fail, never wrong; a new snapshot fails with EIO and a `.status`
/// line naming the cause; umount works and the mount ends without a panic.
#[test]
fn store_folder_removed_under_the_mount_gives_errors_not_hangs() {
    if !need_fuse("store_folder_removed_under_the_mount_gives_errors_not_hangs") {
        return;
    }
    let mut fx = mounted_store(502);
    let disk = fx.mount.disk("d");
    fs::remove_dir_all(&fx.store).expect("rm -rf the store");
    let _ = read_snapshot_or_error(&disk.join("s"), &fx.source);
    let result = create_within("snapshot after rm -rf", &disk, "s2");
    assert_eq!(result, Err(libc::EIO), "a snapshot into a removed store");
    assert_store_gone_in_status(&disk);
    umount_after_store_loss(&mut fx);
}

/// The store folder renamed under a running mount: the same, and the store
/// under its new name holds exactly what it held and verifies.
#[test]
fn store_folder_renamed_under_the_mount_stays_consistent() {
    if !need_fuse("store_folder_renamed_under_the_mount_stays_consistent") {
        return;
    }
    let mut fx = mounted_store(503);
    let disk = fx.mount.disk("d");
    let moved = fx.tmp.path().join("moved");
    fs::rename(&fx.store, &moved).expect("rename the store");
    let _ = read_snapshot_or_error(&disk.join("s"), &fx.source);
    let result = create_within("snapshot after the rename", &disk, "s2");
    // Even a snapshot that needs no new chunk (the same bytes as s) fails:
    // its packs could not be written, and the store is not where the user
    // will look for it.
    assert_eq!(result, Err(libc::EIO), "a snapshot into a moved store");
    assert_store_gone_in_status(&disk);
    umount_after_store_loss(&mut fx);
    let expected = vec![pair("d", "s")];
    assert_eq!(listed(&moved), expected);
    ok_within(snapfs(&moved).arg("verify"));
    assert_export(&moved, "d", "s", &fx.source);
}
