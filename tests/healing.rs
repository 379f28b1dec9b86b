//! Damaged chunks: `verify` names every snapshot and offset that reaches
//! one; reads of a damaged chunk fail (EIO through the mount) while the
//! rest of the image and other snapshots read fine; and once a read or
//! `verify` has found the damage, the next snapshot whose healthy data
//! holds the chunk stores it again, so the old snapshots read correctly
//! and verify passes.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use common::damage::{
    chunk_of, damage_lines, expected_damage, pack_records, run_checked, SharedChunks, CHUNK,
};
use common::mount::Mount;
use common::{assert_bytes_equal_file, assert_same_file, need_fuse, ok, snapfs};

fn export_equals(fx: &SharedChunks, disk: &str, snapshot: &str, truth: &std::path::Path) {
    let out = fx.tmp.path().join(format!("{snapshot}.export"));
    let ran = run_checked(
        &fx.store,
        &[
            "export",
            disk,
            snapshot,
            "-o",
            out.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(ran.code, Some(0), "export {snapshot}: {}", ran.stderr);
    assert_same_file(&out, truth);
    fs::remove_file(out).expect("remove export");
}

fn export_fails(fx: &SharedChunks, disk: &str, snapshot: &str) {
    let ran = run_checked(&fx.store, &["export", disk, snapshot, "-o", "-"]);
    assert_eq!(ran.code, Some(1), "export of damaged {snapshot} must fail");
}

#[test]
fn verify_names_every_snapshot_and_offset_of_every_damaged_chunk() {
    let fx = SharedChunks::new(21);
    ok(snapfs(&fx.store).arg("verify"));
    // Chunks 5 and 7 are shared by `one` and `two`; chunk 9 is `two`'s own.
    fx.damage_chunk(&fx.one, 5);
    fx.damage_chunk(&fx.one, 7);
    fx.damage_chunk(&fx.two, 9);
    let ran = run_checked(&fx.store, &["verify"]);
    assert_eq!(ran.code, Some(1), "verify must fail: {}", ran.stdout);
    assert_eq!(
        damage_lines(&ran),
        expected_damage(&[
            ("d", "one", 5 * CHUNK),
            ("d", "one", 7 * CHUNK),
            ("d", "two", 5 * CHUNK),
            ("d", "two", 7 * CHUNK),
            ("d", "two", 9 * CHUNK),
        ]),
        "{}",
        ran.stdout
    );
    let ran = run_checked(&fx.store, &["verify", "d", "one"]);
    assert_eq!(ran.code, Some(1));
    assert_eq!(
        damage_lines(&ran),
        expected_damage(&[("d", "one", 5 * CHUNK), ("d", "one", 7 * CHUNK)])
    );
    ok(snapfs(&fx.store).args(["verify", "f"]));
}

#[test]
fn snapshot_of_healthy_data_heals_chunks_verify_found_damaged() {
    let fx = SharedChunks::new(22);
    let bad5 = fx.damage_chunk(&fx.one, 5);
    fx.damage_chunk(&fx.one, 7);
    let ran = run_checked(&fx.store, &["verify"]);
    assert_eq!(ran.code, Some(1));
    assert_eq!(damage_lines(&ran).len(), 4, "{}", ran.stdout);

    // Disk `e` holds healthy copies of both chunks.
    ok(snapfs(&fx.store).args(["snapshot", "create", "e", "healer"]));
    ok(snapfs(&fx.store).arg("verify"));
    export_equals(&fx, "d", "one", &fx.one);
    export_equals(&fx, "d", "two", &fx.two);

    // The bad copy is dead space: gc reclaims it, and everything still reads.
    let bad_copy_kept = || {
        pack_records(&fx.store)
            .iter()
            .any(|r| r.hash == bad5.hash && r.stored != bad5.stored)
    };
    assert!(bad_copy_kept(), "the bad record stays until gc");
    ok(snapfs(&fx.store).args(["gc", "--min-dead", "0"]));
    assert!(!bad_copy_kept(), "gc kept the bad copy");
    ok(snapfs(&fx.store).arg("verify"));
    export_equals(&fx, "d", "one", &fx.one);
    export_equals(&fx, "f", "clean", &fx.clean);
}

#[test]
fn damage_found_by_a_failed_read_is_healed_by_the_next_snapshot() {
    let fx = SharedChunks::new(23);
    fx.damage_chunk(&fx.one, 7);
    // No verify: the failed export alone records the damage.
    export_fails(&fx, "d", "two");
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "three"]));
    ok(snapfs(&fx.store).arg("verify"));
    export_equals(&fx, "d", "one", &fx.one);
    export_equals(&fx, "d", "two", &fx.two);
    export_equals(&fx, "d", "three", &fx.two);
}

#[test]
fn deleted_pack_is_healed_for_snapshots_whose_data_is_stored_again() {
    let fx = SharedChunks::new(24);
    let packs: Vec<_> = fs::read_dir(fx.store.join("packs"))
        .expect("packs")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(packs.len(), 3, "one pack per snapshot session");
    // The first pack holds every chunk and the map page of `one`.
    let first = packs.iter().min().expect("a pack");
    fs::remove_file(first).expect("delete pack");
    let ran = run_checked(&fx.store, &["verify"]);
    assert_eq!(ran.code, Some(1));
    // Taking `d` again (it holds what `two` holds) stores every chunk anew.
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "three"]));
    export_equals(&fx, "d", "two", &fx.two);
    export_equals(&fx, "d", "three", &fx.two);
    ok(snapfs(&fx.store).args(["verify", "d", "two"]));
    // `one`'s map page and its own chunk 9 were only in the lost pack.
    let ran = run_checked(&fx.store, &["verify", "d"]);
    assert_eq!(ran.code, Some(1));
    let damaged: Vec<String> = damage_lines(&ran).into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(damaged, ["one"], "{}", ran.stdout);
}

fn is_eio(result: std::io::Result<usize>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::EIO))
}

#[test]
fn damaged_chunk_reads_eio_through_the_mount_until_a_snapshot_heals_it() {
    if !need_fuse("damaged_chunk_reads_eio_through_the_mount_until_a_snapshot_heals_it") {
        return;
    }
    let fx = SharedChunks::new(25);
    fx.damage_chunk(&fx.one, 5);
    let mount = Mount::start(&fx.store);
    let one = File::open(mount.disk("d").join("one")).expect("open one");
    let mut buf = vec![0u8; CHUNK as usize];
    for _ in 0..2 {
        // Twice: a failed read must not leave anything cached.
        assert!(is_eio(one.read_at(&mut buf, 5 * CHUNK + 100)), "chunk 5");
    }
    for chunk in [0, 4, 6, 16] {
        let n = one
            .read_at(&mut buf, chunk * CHUNK)
            .expect("undamaged chunk");
        assert_eq!(buf[..n], chunk_of(&fx.one, chunk), "chunk {chunk} of one");
    }
    // A whole-file read fails rather than returning wrong bytes or hanging.
    let whole = fs::read(mount.disk("d").join("two"));
    assert_eq!(
        whole.map_err(|e| e.raw_os_error()).err(),
        Some(Some(libc::EIO))
    );
    let two = File::open(mount.disk("d").join("two")).expect("open two");
    let n = two.read_at(&mut buf, 4 * CHUNK).expect("chunk 4 of two");
    assert_eq!(buf[..n], chunk_of(&fx.two, 4));
    let clean = fs::read(mount.disk("f").join("clean")).expect("read clean");
    assert_bytes_equal_file(&clean, &fx.clean, "clean through the mount");

    // A snapshot of `e` through the mount brings a healthy copy.
    fs::write(mount.disk("e").join(".create"), "healer").expect("snapshot e");
    let n = one.read_at(&mut buf, 5 * CHUNK).expect("healed chunk 5");
    assert_eq!(buf[..n], chunk_of(&fx.one, 5));
    let whole = fs::read(mount.disk("d").join("two")).expect("read two");
    assert_bytes_equal_file(&whole, &fx.two, "two after healing");
    // The CLI goes through the mount.
    ok(snapfs(&fx.store).arg("verify"));
    drop(one);
    drop(two);
    mount.unmount();
}
