//! Hostile and damaged metadata: map pages pointing to chunks the store
//! does not have, pages with a wrong entry count, catalog records with
//! absurd sizes, index entries with absurd lengths, and damaged sled files.
//! Every command must report an error (or succeed with the true bytes):
//! never a panic, a hang, a huge allocation or wrong bytes.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;

use common::damage::{
    damage_lines, edit_snapshot_record, expected_damage, open_db, run_checked, survey_cli,
    survey_mount, SharedChunks, CHUNK, COMMAND_TIMEOUT,
};
use common::{need_fuse, ok, run_timeout, snapfs};
use snapfs::hash::ChunkHash;
use snapfs::map::encode_page;
use snapfs::store::{Ingest, OpenOptions};
use snapfs::Repository;

/// Replaces the (single, leaf) map page of `d/one` with a page of
/// `entries`, stored as a proper chunk so that only its meaning is wrong.
fn replace_map_of_one(store_dir: &Path, edit: impl Fn(Vec<ChunkHash>) -> Vec<ChunkHash>) {
    let store = Repository::open(
        store_dir,
        &OpenOptions {
            create: None,
            ..OpenOptions::default()
        },
    )
    .expect("open store");
    let record = store.catalog().snapshot("d", "one").expect("snapshot one");
    assert_eq!(record.map.height, 1, "one leaf page");
    let page = store.store().get(&record.map.root).expect("map page");
    let entries: Vec<ChunkHash> = page[12..]
        .chunks(32)
        .map(|e| ChunkHash::from_slice(e).expect("hash"))
        .collect();
    let mut ingest = Ingest::new(store.store(), &store);
    let root = ingest
        .put_plain(&encode_page(0, &edit(entries)))
        .expect("store page");
    let mut edited = record.clone();
    edited.map.root = root;
    let mut key = b"d\0".to_vec();
    key.extend_from_slice(&record.id.to_be_bytes());
    let json = serde_json::to_vec(&edited).expect("JSON");
    // The catalog never writes a wrong record: the test writes its tree.
    let snapshots = store.store().open_tree("snapshots").expect("tree");
    ingest
        .commit(&[&snapshots], &|trees| {
            trees.extra[0].insert(key.as_slice(), json.as_slice())?;
            Ok(())
        })
        .expect("commit");
}

#[test]
fn map_page_pointing_to_missing_chunks_is_reported_at_each_offset() {
    let fx = SharedChunks::new(31);
    replace_map_of_one(&fx.store, |mut entries| {
        entries[3] = ChunkHash::of(b"not in the store");
        entries[11] = ChunkHash::of(b"neither is this");
        entries
    });
    let ran = run_checked(&fx.store, &["verify", "d"]);
    assert_eq!(ran.code, Some(1));
    assert_eq!(
        damage_lines(&ran),
        expected_damage(&[("d", "one", 3 * CHUNK), ("d", "one", 11 * CHUNK)]),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("missing"), "{}", ran.stdout);
    // `one` fails to export; `two` and `clean` are untouched.
    assert_eq!(survey_cli(&fx.store, &fx.truths()), 2);
}

#[test]
fn map_page_with_too_few_entries_is_reported() {
    let fx = SharedChunks::new(32);
    // A well-formed page of 5 entries for a map of 17 chunks.
    replace_map_of_one(&fx.store, |entries| entries[..5].to_vec());
    let ran = run_checked(&fx.store, &["verify", "d", "one"]);
    assert_eq!(
        ran.code,
        Some(1),
        "verify passed a short map: {}",
        ran.stdout
    );
    assert!(!damage_lines(&ran).is_empty(), "{}", ran.stdout);
    assert_eq!(survey_cli(&fx.store, &fx.truths()), 2);
}

type RecordEdit = fn(&mut serde_json::Value);

#[test]
fn catalog_records_with_absurd_sizes_are_reported() {
    let edits: [(&str, RecordEdit); 7] = [
        ("size 2^63", |r| r["size"] = (1u64 << 63).into()),
        ("size 0", |r| r["size"] = 0.into()),
        ("2^60 chunks", |r| r["map"]["chunks"] = (1u64 << 60).into()),
        ("height 0", |r| r["map"]["height"] = 0.into()),
        ("height 200", |r| r["map"]["height"] = 200.into()),
        ("chunk size 0", |r| r["chunk_size"] = 0.into()),
        ("chunk size 3", |r| r["chunk_size"] = 3.into()),
    ];
    for (what, edit) in edits {
        eprintln!("catalog record of d/one with {what}");
        let fx = SharedChunks::new(33);
        edit_snapshot_record(&fx.store, "one", edit);
        let ran = run_checked(&fx.store, &["verify", "d", "one"]);
        assert_eq!(ran.code, Some(1), "{what}: verify passed: {}", ran.stdout);
        let exported = survey_cli(&fx.store, &fx.truths());
        assert!(exported <= 2, "{what}: the damaged snapshot exported");
    }
}

#[test]
fn index_entry_with_absurd_length_fails_without_a_huge_allocation() {
    let fx = SharedChunks::new(34);
    let victim = ChunkHash::of(&common::damage::chunk_of(&fx.one, 5));
    {
        let db = open_db(&fx.store);
        let index = db.open_tree("index").expect("index");
        let mut entry = index.get(victim.0).expect("get").expect("indexed").to_vec();
        entry[16..20].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
        entry[20..24].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
        index.insert(victim.0, entry).expect("insert");
        db.flush().expect("flush");
    }
    // 1 GiB of address space is plenty for a small store and far below
    // what the entry claims.
    let limited = |args: &[&str]| {
        let mut cmd = snapfs(&fx.store);
        cmd.args(args);
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 1 << 30,
                    rlim_max: 1 << 30,
                };
                libc::setrlimit(libc::RLIMIT_AS, &limit);
                Ok(())
            });
        }
        let ran = run_timeout(&mut cmd, COMMAND_TIMEOUT);
        common::damage::assert_no_panic(&ran);
        ran
    };
    let ran = limited(&["verify"]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(
        damage_lines(&ran),
        expected_damage(&[("d", "one", 5 * CHUNK), ("d", "two", 5 * CHUNK)]),
        "{}",
        ran.stdout
    );
    let ran = limited(&["export", "d", "one", "-o", "-"]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(survey_cli(&fx.store, &fx.truths()), 1);
}

#[test]
fn hostile_map_is_an_error_through_the_mount() {
    if !need_fuse("hostile_map_is_an_error_through_the_mount") {
        return;
    }
    let fx = SharedChunks::new(35);
    replace_map_of_one(&fx.store, |mut entries| {
        entries[2] = ChunkHash::of(b"absent");
        entries
    });
    // `one` fails to read (EIO), `two` and `clean` read right.
    assert_eq!(survey_mount(&fx.store, &fx.truths()), 2);
    ok(snapfs(&fx.store).args(["verify", "f"]));
}

#[test]
fn snapshot_with_a_damaged_record_can_still_be_removed() {
    let fx = SharedChunks::new(36);
    edit_snapshot_record(&fx.store, "one", |r| r["map"]["chunks"] = 3.into());
    let line = common::fails(snapfs(&fx.store).args(["snapshot", "list"]));
    assert!(line.contains("snapshot record one of disk d"), "{line}");
    ok(snapfs(&fx.store).args(["snapshot", "rm", "d", "one"]));
    ok(snapfs(&fx.store).arg("verify"));
    assert_eq!(survey_cli(&fx.store, &fx.truths()), 2);
}

/// sled files damaged all over: commands say in one line that the
/// database is damaged, not sled's internal offsets and backtrace.
#[test]
fn damaged_database_is_named_in_plain_words() {
    let fx = SharedChunks::new(47);
    let db = fx.store.join("db").join("db");
    let mut bytes = fs::read(&db).expect("read sled's db file");
    for at in (100..bytes.len()).step_by(97) {
        bytes[at] ^= 0x5a;
    }
    fs::write(&db, bytes).expect("damage sled's db file");
    let ran = run_checked(&fx.store, &["snapshot", "list"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert!(
        lines.len() == 1
            && lines[0].contains("database files are damaged")
            && !lines[0].contains("backtrace"),
        "{}",
        ran.stderr
    );
}
