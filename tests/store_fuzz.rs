//! Damaged sled files and a seeded random-mutation fuzzer over a small
//! store. Whatever is flipped, cut or deleted, every reading command (and
//! a read through the mount) ends in time with status 0 or 1, never panics
//! or dies by a signal, and an export or read that succeeds gives the true
//! bytes.
//!
//! CI runs a few rounds; the long run:
//! `SNAPFS_FUZZ_ROUNDS=1000 SNAPFS_REQUIRE_FUSE=1 cargo test --release --test store_fuzz`
//! (`SNAPFS_FUZZ_SEED=N` picks another run, default 20261128; each round
//! prints what it did).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::damage::{survey_cli, survey_mount, SharedChunks, Truth};
use common::{need_fuse, Rng};

/// Rounds in CI: about 15 s.
const CI_ROUNDS: u64 = 50;
/// Every this many rounds, also read through a mount.
const MOUNT_EVERY: u64 = 8;

fn truths(fx: &SharedChunks) -> Vec<Truth> {
    [
        ("d", "one", &fx.one),
        ("d", "two", &fx.two),
        ("f", "clean", &fx.clean),
    ]
    .into_iter()
    .map(|(disk, snapshot, bytes)| Truth {
        disk: disk.into(),
        snapshot: snapshot.into(),
        bytes: bytes.clone(),
    })
    .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy");
    for entry in fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Every file of the store but the lock file (sorted, so a seed replays).
fn store_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("list").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(store_files(&path));
        } else if entry.file_name() != "lock" {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// One random mutation of one file; returns what it did.
fn mutate(file: &Path, rng: &mut Rng) -> String {
    let mut bytes = fs::read(file).expect("read file to mutate");
    let len = bytes.len() as u64;
    let what = match rng.below(5) {
        0 if len > 0 => {
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                let at = rng.below(len) as usize;
                bytes[at] ^= 1 + rng.below(255) as u8;
            }
            format!("flip {flips} bytes")
        }
        1 => {
            let keep = rng.below(len + 1);
            bytes.truncate(keep as usize);
            format!("truncate to {keep} of {len}")
        }
        2 => {
            fs::remove_file(file).expect("delete");
            return format!("delete {}", file.display());
        }
        3 if len > 0 => {
            let at = rng.below(len) as usize;
            let end = (at + 1 + rng.below(4096) as usize).min(bytes.len());
            bytes[at..end].fill(0);
            format!("zero {at}..{end}")
        }
        _ => {
            let extra_len = 1 + rng.below(1024) as usize;
            let extra = rng.bytes(extra_len);
            bytes.extend_from_slice(&extra);
            format!("append {} bytes", extra.len())
        }
    };
    fs::write(file, bytes).expect("write mutated file");
    format!("{what} in {}", file.display())
}

#[test]
fn damaged_sled_files_are_reported_or_survived() {
    if !need_fuse("damaged_sled_files_are_reported_or_survived") {
        return;
    }
    let fx = SharedChunks::new(41);
    let truths = truths(&fx);
    let pristine = fx.tmp.path().join("pristine");
    copy_dir(&fx.store, &pristine);
    let db_files: Vec<PathBuf> = store_files(&pristine.join("db"));
    assert!(db_files.len() >= 2, "sled files: {db_files:?}");
    let mut rng = Rng::new(41);
    let mut cases = 0;
    for file in &db_files {
        let relative = file.strip_prefix(&pristine).expect("inside");
        for damage in ["flip", "truncate", "delete"] {
            let round = fx.tmp.path().join(format!("case-{cases}"));
            copy_dir(&pristine, &round);
            let target = round.join(relative);
            let len = fs::metadata(&target).expect("stat").len();
            match damage {
                "flip" => {
                    let mut bytes = fs::read(&target).expect("read");
                    for _ in 0..16 {
                        let at = rng.below(len) as usize;
                        bytes[at] ^= 0xff;
                    }
                    fs::write(&target, bytes).expect("write");
                }
                "truncate" => fs::OpenOptions::new()
                    .write(true)
                    .open(&target)
                    .and_then(|f| f.set_len(len / 2))
                    .expect("truncate"),
                _ => fs::remove_file(&target).expect("delete"),
            }
            eprintln!("case {cases}: {damage} {}", relative.display());
            survey_cli(&round, &truths);
            if damage != "flip" {
                survey_mount(&round, &truths);
            }
            fs::remove_dir_all(&round).expect("remove case");
            cases += 1;
        }
    }
}

#[test]
fn random_mutations_never_panic_hang_or_return_wrong_bytes() {
    if !need_fuse("random_mutations_never_panic_hang_or_return_wrong_bytes") {
        return;
    }
    let rounds: u64 = std::env::var("SNAPFS_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_ROUNDS);
    // A fixed seed by default: CI runs the same rounds every time.
    let seed = std::env::var("SNAPFS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261128);
    eprintln!("seed: SNAPFS_FUZZ_SEED={seed}");
    let mut rng = Rng::new(seed);
    let fx = SharedChunks::new(seed);
    let truths = truths(&fx);
    let pristine = fx.tmp.path().join("pristine");
    copy_dir(&fx.store, &pristine);
    let (mut exported, mut read) = (0, 0);
    for round in 0..rounds {
        let dir = fx.tmp.path().join("round");
        copy_dir(&pristine, &dir);
        let files = store_files(&dir);
        let mut did = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let file = &files[rng.below(files.len() as u64) as usize];
            if file.exists() {
                did.push(mutate(file, &mut rng));
            }
        }
        eprintln!("round {round}: {}", did.join("; "));
        exported += survey_cli(&dir, &truths);
        if round % MOUNT_EVERY == 0 {
            read += survey_mount(&dir, &truths);
        }
        fs::remove_dir_all(&dir).expect("remove round");
    }
    eprintln!(
        "{rounds} rounds: {exported} exports and {read} mount reads succeeded with the true bytes"
    );
}
