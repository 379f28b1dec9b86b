//! Real disks: an ext4 filesystem image with real files, snapshotted
//! through the CLI, changed the way a running system changes it, and
//! snapshotted again; then cloned as a second disk. Every export must equal
//! its source as it was, byte for byte; the store must grow by about what
//! changed, the clone must cost only metadata, and dedup must show in
//! `stats`. Needs root (loop mounts): skips otherwise, fails under
//! SNAPFS_REQUIRE_FUSE=1.

mod common;

use std::path::Path;

use common::{
    assert_bytes_equal_file, assert_same_file, change_files, copy_real_files, copy_sparse,
    find_tool, need_root, ok, run_expect, snapfs, snapshot_added_bytes, stats_json, Ext4Image,
    LoopDevice,
};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 64 << 10;

/// Exports DISK/SNAP to a file and compares it with `expected`; also
/// checks the filesystem in the export when e2fsck is present.
fn export_matches(store: &Path, disk: &str, snap: &str, expected: &Path, out: &Path) {
    ok(snapfs(store).args(["export", disk, snap, "-o"]).arg(out));
    assert_same_file(out, expected);
    if let Some(fsck) = find_tool("e2fsck") {
        let status = std::process::Command::new(fsck)
            .args(["-f", "-n"])
            .arg(out)
            .output()
            .expect("run e2fsck");
        assert!(
            status.status.success(),
            "e2fsck of the export of {disk}/{snap}: {}",
            String::from_utf8_lossy(&status.stdout)
        );
    }
    std::fs::remove_file(out).expect("remove export");
}

#[test]
fn ext4_disk_snapshots_are_exact_incremental_and_deduplicated() {
    if !need_root("ext4_disk_snapshots_are_exact_incremental_and_deduplicated") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let image = Ext4Image::create(&tmp.path().join("vm1.img"), 256 * MIB);

    // ~40 MB of real files.
    let mnt = image.mount();
    let copied = copy_real_files(mnt.path(), 40 * MIB);
    assert!(copied >= 39 * MIB, "copied only {copied} bytes");
    mnt.unmount();
    let v1 = tmp.path().join("v1.copy");
    copy_sparse(&image.path, &v1);

    ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
    ok(snapfs(&store)
        .args(["disk", "add", "vm1/system"])
        .arg(&image.path));
    ok(snapfs(&store).args(["snapshot", "create", "vm1/system", "v1"]));
    let added_v1 = snapshot_added_bytes(&store, "vm1/system", "v1");
    // Holes are not stored: the first snapshot costs about the data.
    assert!(
        added_v1 < copied + 24 * MIB,
        "first snapshot added {added_v1} bytes for {copied} bytes of files"
    );

    // A running system changes a few files.
    let mnt = image.mount();
    let changed = change_files(mnt.path(), 42, 4 * MIB);
    mnt.unmount();
    let v2 = tmp.path().join("v2.copy");
    copy_sparse(&image.path, &v2);
    ok(snapfs(&store).args(["snapshot", "create", "vm1/system", "v2"]));
    let added_v2 = snapshot_added_bytes(&store, "vm1/system", "v2");
    // What changed, rounded out to whole chunks at each end of the few
    // changed ranges, plus the filesystem's own metadata writes (inode
    // tables, bitmaps, journal) and the new map pages.
    let bound = changed + 32 * CHUNK;
    eprintln!("changed {changed} bytes; v1 added {added_v1}, v2 added {added_v2} (bound {bound})");
    assert!(
        added_v2 <= bound,
        "v2 added {added_v2} bytes for {changed} changed bytes (bound {bound})"
    );
    assert!(added_v2 < added_v1 / 4, "v2 is not incremental");

    // A clone of the image as a second disk costs only its map.
    let clone = tmp.path().join("vm2.img");
    copy_sparse(&image.path, &clone);
    ok(snapfs(&store)
        .args(["disk", "add", "vm2/system"])
        .arg(&clone));
    ok(snapfs(&store).args(["snapshot", "create", "vm2/system", "base"]));
    let added_clone = snapshot_added_bytes(&store, "vm2/system", "base");
    assert!(
        added_clone <= 4 * (32 * 1024 + 64),
        "the clone added {added_clone} bytes"
    );

    // Every export equals its source as it was.
    let out = tmp.path().join("export.img");
    export_matches(&store, "vm1/system", "v1", &v1, &out);
    export_matches(&store, "vm1/system", "v2", &v2, &out);
    export_matches(&store, "vm2/system", "base", &v2, &out);
    let streamed = run_expect(
        snapfs(&store).args(["export", "vm1/system", "v1", "-o", "-"]),
        0,
    );
    assert_bytes_equal_file(&streamed.stdout_bytes, &v1, "stream export of v1");

    let verified = ok(snapfs(&store).arg("verify"));
    assert!(verified.contains("all good"), "{verified}");
    let stats = stats_json(&store);
    let dedup = stats["dedup_ratio"].as_f64().expect("dedup_ratio");
    assert!(dedup > 2.0, "dedup ratio {dedup}: {stats}");
    assert_eq!(stats["snapshots"], 3);
    assert_eq!(stats["disks"], 2);

    // The same disk as a block device: a third disk, its snapshot again
    // costs only metadata and exports to the image's bytes.
    {
        let device = LoopDevice::attach_read_only(&image.path);
        ok(snapfs(&store)
            .args(["disk", "add", "vm3/block"])
            .arg(&device.device));
        ok(snapfs(&store).args(["snapshot", "create", "vm3/block", "dev"]));
        let added_dev = snapshot_added_bytes(&store, "vm3/block", "dev");
        assert!(
            added_dev <= 4 * (32 * 1024 + 64),
            "the device added {added_dev} bytes"
        );
        export_matches(&store, "vm3/block", "dev", &v2, &out);
        ok(snapfs(&store).args(["disk", "rm", "vm3/block", "--with-snapshots"]));
    }

    // Removing v1 and collecting keeps v2 and the clone exact.
    ok(snapfs(&store).args(["snapshot", "rm", "vm1/system", "v1"]));
    ok(snapfs(&store).args(["gc", "--min-dead", "0"]));
    export_matches(&store, "vm1/system", "v2", &v2, &out);
    export_matches(&store, "vm2/system", "base", &v2, &out);
    ok(snapfs(&store).arg("verify"));
}

/// The mount helper's promise: a test that panics while an image is
/// mounted leaves no mount and no loop device behind.
#[test]
fn mount_guard_cleans_up_when_a_test_panics() {
    if !need_root("mount_guard_cleans_up_when_a_test_panics") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = Ext4Image::create(&tmp.path().join("p.img"), 32 * MIB);
    let mut mountpoint = std::path::PathBuf::new();
    // A file left open on the mount: the plain umount then fails with
    // EBUSY, and the guard must fall back to a lazy one.
    let mut busy: Option<std::fs::File> = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mnt = image.mount();
        mountpoint = mnt.path().to_path_buf();
        busy = Some(std::fs::File::create(mnt.path().join("busy")).expect("create"));
        panic!("test failure while mounted");
    }));
    assert!(result.is_err());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(mountpoint.to_str().expect("utf-8")),
        "{} is still mounted",
        mountpoint.display()
    );
    assert!(
        !mountpoint.exists(),
        "the mountpoint folder was left behind"
    );
    // Once the last file closes, the lazily detached filesystem and its
    // loop device go away.
    drop(busy);
    let mut attempts = 0;
    let loops = loop {
        let out = std::process::Command::new(find_tool("losetup").expect("losetup"))
            .arg("-j")
            .arg(&image.path)
            .output()
            .expect("losetup -j");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        attempts += 1;
        if text.is_empty() || attempts == 50 {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(loops.is_empty(), "loop device left: {loops}");
}
