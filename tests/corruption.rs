//! Damaged packs: a flipped byte in chunk data, in a record header, in a
//! map page; a deleted pack; a truncated pack. `verify` must exit 1 and
//! name every snapshot and image offset that reaches the damage; `export`
//! must fail rather than write wrong bytes; nothing may panic; undamaged
//! snapshots stay readable.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::damage::{
    assert_no_panic, damage_lines, flip_byte, pack_records, PackRecord, CHUNK, RECORD_HEADER,
};
use common::{
    assert_bytes_equal_file, assert_same_file, fails, ok, overwrite_random, run, run_expect,
    snapfs, write_random_file, Ran, Rng,
};
use tempfile::TempDir;

/// The chunk of disk `d` the tests damage.
const VICTIM: u64 = 5;

/// A store (no compression, so that records hold the plain bytes) with:
/// disk `d` and its snapshots `one` and `two` (which share chunk VICTIM),
/// and disk `e`, whose snapshot `clean` shares nothing with `d`.
struct Damaged {
    tmp: TempDir,
    store: PathBuf,
    /// Copies of what each snapshot holds.
    one: PathBuf,
    two: PathBuf,
    clean: PathBuf,
}

impl Damaged {
    fn new() -> Damaged {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let d = tmp.path().join("d.img");
        let e = tmp.path().join("e.img");
        let mut rng = Rng::new(11);
        write_random_file(&d, 16 * CHUNK + 1234, &mut rng);
        write_random_file(&e, 3 * CHUNK, &mut rng);
        ok(snapfs(&store).args(["init", "--chunk-size", "64K", "--compression", "none"]));
        ok(snapfs(&store).args(["disk", "add", "d"]).arg(&d));
        ok(snapfs(&store).args(["disk", "add", "e"]).arg(&e));
        ok(snapfs(&store).args(["snapshot", "create", "d", "one"]));
        let one = tmp.path().join("one.copy");
        fs::copy(&d, &one).expect("copy");
        overwrite_random(&d, 9 * CHUNK, 100, &mut rng);
        ok(snapfs(&store).args(["snapshot", "create", "d", "two"]));
        let two = tmp.path().join("two.copy");
        fs::copy(&d, &two).expect("copy");
        ok(snapfs(&store).args(["snapshot", "create", "e", "clean"]));
        let clean = tmp.path().join("clean.copy");
        fs::copy(&e, &clean).expect("copy");
        Damaged {
            tmp,
            store,
            one,
            two,
            clean,
        }
    }

    /// The record holding chunk VICTIM of disk `d`.
    fn victim(&self) -> PackRecord {
        let data = fs::read(&self.one).expect("read copy");
        let start = (VICTIM * CHUNK) as usize;
        let chunk = &data[start..start + CHUNK as usize];
        pack_records(&self.store)
            .into_iter()
            .find(|r| r.stored == chunk)
            .expect("the record of the victim chunk")
    }

    fn verify(&self, args: &[&str]) -> Ran {
        let ran = run(snapfs(&self.store).arg("verify").args(args));
        assert_no_panic(&ran);
        ran
    }

    /// `export` to a file fails (exit 1, one line), and `export -o -`
    /// fails having written at most a correct prefix of the image.
    fn export_fails(&self, snapshot: &str, expected: &Path) {
        let out = self.tmp.path().join(format!("{snapshot}.export"));
        let ran = run_expect(
            snapfs(&self.store)
                .args(["export", "d", snapshot, "-o"])
                .arg(&out),
            1,
        );
        let line = failure_line(&ran);
        assert!(line.contains(snapshot), "{line}");
        let ran = run_expect(
            snapfs(&self.store).args(["export", "d", snapshot, "-o", "-"]),
            1,
        );
        assert_no_panic(&ran);
        let truth = fs::read(expected).expect("read copy");
        assert!(
            ran.stdout_bytes.len() < truth.len(),
            "a failed export wrote the whole image"
        );
        assert!(
            truth.starts_with(&ran.stdout_bytes),
            "export of {snapshot} wrote wrong bytes before failing"
        );
        let _ = fs::remove_file(out);
    }

    /// The undamaged disk still verifies and exports.
    fn clean_disk_still_good(&self) {
        ok(snapfs(&self.store).args(["verify", "e"]));
        let out = self.tmp.path().join("clean.export");
        ok(snapfs(&self.store)
            .args(["export", "e", "clean", "-o"])
            .arg(&out));
        assert_same_file(&out, &self.clean);
        let streamed = run_expect(
            snapfs(&self.store).args(["export", "e", "clean", "-o", "-"]),
            0,
        );
        assert_bytes_equal_file(
            &streamed.stdout_bytes,
            &self.clean,
            "stream export of clean",
        );
    }
}

/// The `snapfs: ...` line of a failed command. Warnings the store logs
/// while opening a damaged store may precede it; nothing else may.
fn failure_line(ran: &Ran) -> String {
    assert_no_panic(ran);
    let lines: Vec<&str> = ran.stderr.lines().collect();
    let Some((last, before)) = lines.split_last() else {
        panic!("a failure without a message");
    };
    assert!(last.starts_with("snapfs: "), "{}", ran.stderr);
    for line in before {
        assert!(line.contains("WARN"), "unexpected stderr line {line:?}");
    }
    last.to_string()
}

fn assert_verify_names_victim(fx: &Damaged) {
    let ran = fx.verify(&[]);
    assert_eq!(ran.code, Some(1), "verify must fail: {ran:?}");
    let stderr: Vec<&str> = ran.stderr.lines().collect();
    assert!(
        stderr.len() == 1 && stderr[0].starts_with("snapfs: "),
        "one line on stderr: {:?}",
        ran.stderr
    );
    assert_no_repeated_cause(stderr[0]);
    let mut damage = damage_lines(&ran);
    damage.sort();
    let offset = VICTIM * CHUNK;
    assert_eq!(
        damage,
        [
            ("d".to_string(), "one".to_string(), offset),
            ("d".to_string(), "two".to_string(), offset)
        ],
        "verify output:\n{}",
        ran.stdout
    );
    // Narrowed to one snapshot, it still fails and names it.
    let ran = fx.verify(&["d", "two"]);
    assert_eq!(ran.code, Some(1));
    assert_eq!(
        damage_lines(&ran),
        [("d".to_string(), "two".to_string(), offset)]
    );
}

#[test]
fn flipped_chunk_byte_is_named_by_verify_and_fails_export() {
    let fx = Damaged::new();
    ok(snapfs(&fx.store).arg("verify"));
    let victim = fx.victim();
    flip_byte(&victim.pack, victim.offset + RECORD_HEADER + 1000);
    assert_verify_names_victim(&fx);
    let ran = fx.verify(&["d", "one"]);
    assert!(
        ran.stdout.contains("does not match its hash"),
        "{}",
        ran.stdout
    );
    fx.export_fails("one", &fx.one);
    fx.export_fails("two", &fx.two);
    fx.clean_disk_still_good();

    // gc neither panics nor drops the damaged chunk's only copy, and the
    // damage stays reported.
    ok(snapfs(&fx.store).args(["snapshot", "rm", "d", "one"]));
    let ran = run(snapfs(&fx.store).args(["gc", "--min-dead", "0"]));
    assert_no_panic(&ran);
    let ran = fx.verify(&["d"]);
    assert_eq!(ran.code, Some(1));
    assert_eq!(
        damage_lines(&ran),
        [("d".to_string(), "two".to_string(), VICTIM * CHUNK)]
    );
    fx.clean_disk_still_good();
}

#[test]
fn flipped_record_header_is_named_by_verify_and_fails_export() {
    for header_byte in [1usize, 10, 37, 41] {
        let fx = Damaged::new();
        let victim = fx.victim();
        flip_byte(&victim.pack, victim.offset + header_byte);
        assert_verify_names_victim(&fx);
        let ran = fx.verify(&["d", "one"]);
        assert!(
            ran.stdout.contains("record header"),
            "header byte {header_byte}: {}",
            ran.stdout
        );
        fx.export_fails("one", &fx.one);
        fx.clean_disk_still_good();
    }
}

#[test]
fn flipped_map_page_fails_verify_and_export() {
    let fx = Damaged::new();
    // Map pages start with their magic; `one` and `two` each have their
    // own single leaf page, `clean` has another.
    let pages: Vec<PackRecord> = pack_records(&fx.store)
        .into_iter()
        .filter(|r| r.stored.starts_with(b"SFMP"))
        .collect();
    assert_eq!(pages.len(), 3, "one map page per snapshot");
    // The first page written is the map of `one`.
    let page = &pages[0];
    flip_byte(&page.pack, page.offset + RECORD_HEADER + 12 + 40);
    let ran = fx.verify(&["d"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert_eq!(
        damage_lines(&ran),
        [("d".to_string(), "one".to_string(), 0)],
        "{}",
        ran.stdout
    );
    fx.export_fails("one", &fx.one);
    ok(snapfs(&fx.store).args(["verify", "d", "two"]));
    fx.clean_disk_still_good();
}

#[test]
fn deleted_pack_fails_verify_and_export_without_panic() {
    let fx = Damaged::new();
    let victim = fx.victim();
    fs::remove_file(&victim.pack).expect("delete pack");
    let ran = fx.verify(&[]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    failure_line(&ran);
    let damaged: Vec<String> = damage_lines(&ran).into_iter().map(|(_, s, _)| s).collect();
    assert!(damaged.contains(&"one".to_string()) && damaged.contains(&"two".to_string()));
    assert!(!damaged.contains(&"clean".to_string()));
    fx.export_fails("one", &fx.one);
    fx.clean_disk_still_good();
    // The error names what is missing, once.
    let line = fails(snapfs(&fx.store).args(["export", "d", "one", "-o", "-"]));
    assert_no_repeated_cause(&line);
}

#[test]
fn truncated_pack_fails_verify_and_export_without_panic() {
    let fx = Damaged::new();
    let victim = fx.victim();
    let len = fs::metadata(&victim.pack).expect("stat").len();
    // Cut inside the victim's record.
    let cut = victim.offset as u64 + RECORD_HEADER as u64 + 10;
    assert!(cut < len);
    fs::OpenOptions::new()
        .write(true)
        .open(&victim.pack)
        .and_then(|f| f.set_len(cut))
        .expect("truncate pack");
    let ran = fx.verify(&[]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    failure_line(&ran);
    // The cut also takes the map page of `one` (written after its chunks):
    // verify names that snapshot (at offset 0), and `two` at the cut chunk.
    let damage = damage_lines(&ran);
    assert!(
        damage.contains(&("d".to_string(), "two".to_string(), VICTIM * CHUNK)),
        "{}",
        ran.stdout
    );
    assert!(
        damage.iter().any(|(d, s, _)| d == "d" && s == "one"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("shorter"), "{}", ran.stdout);
    fx.export_fails("one", &fx.one);
    fx.clean_disk_still_good();
    // Opening the store never "repairs" a short pack by growing or cutting it.
    assert_eq!(fs::metadata(&victim.pack).expect("stat").len(), cut);
}

/// A failure line must not say the same cause twice
/// ("...: No such file (os error 2): No such file (os error 2)").
fn assert_no_repeated_cause(line: &str) {
    let parts: Vec<&str> = line.split(": ").collect();
    for pair in parts.windows(2) {
        assert_ne!(pair[0], pair[1], "repeated cause in {line:?}");
    }
}
