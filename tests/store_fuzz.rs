//! Damaged sled files and a seeded random-mutation fuzzer over two small
//! stores (uncompressed, and zstd-compressed). Whatever is flipped, cut or deleted, every reading command (and
//! a read through the mount) ends in time with status 0 or 1, never panics
//! or dies by a signal, and an export or read that succeeds gives the true
//! bytes.
//!
//! CI runs 40 rounds per store; the long run (per store):
//! `SNAPFS_FUZZ_ROUNDS=1000 SNAPFS_REQUIRE_FUSE=1 cargo test --release --test store_fuzz`
//! (`SNAPFS_FUZZ_SEED=N` picks another run, default 20261128; each round
//! prints what it did).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::damage::{survey_cli, survey_mount, SharedChunks, Truth, CHUNK};
use common::{need_fuse, ok, snapfs, Rng};

/// Rounds per fuzz test in CI: about 15 s each.
const CI_ROUNDS: u64 = 40;
/// Every this many rounds, also read through a mount.
const MOUNT_EVERY: u64 = 8;

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
    let truths = fx.truths();
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

/// Rounds from `SNAPFS_FUZZ_ROUNDS` (CI: `CI_ROUNDS`), seed from
/// `SNAPFS_FUZZ_SEED` (a fixed default, so CI runs the same rounds).
fn rounds_and_seed() -> (u64, u64) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let rounds = env("SNAPFS_FUZZ_ROUNDS").unwrap_or(CI_ROUNDS);
    let seed = env("SNAPFS_FUZZ_SEED").unwrap_or(20261128);
    eprintln!("SNAPFS_FUZZ_ROUNDS={rounds} SNAPFS_FUZZ_SEED={seed}");
    (rounds, seed)
}

/// Mutates copies of the store at `pristine` `rounds` times and surveys
/// each copy.
fn fuzz(pristine: &Path, work: &Path, truths: &[Truth], rounds: u64, rng: &mut Rng) {
    let (mut exported, mut read) = (0, 0);
    for round in 0..rounds {
        let dir = work.join("round");
        copy_dir(pristine, &dir);
        let files = store_files(&dir);
        let mut did = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let file = &files[rng.below(files.len() as u64) as usize];
            if file.exists() {
                did.push(mutate(file, rng));
            }
        }
        eprintln!("round {round}: {}", did.join("; "));
        exported += survey_cli(&dir, truths);
        if round % MOUNT_EVERY == 0 {
            read += survey_mount(&dir, truths);
        }
        fs::remove_dir_all(&dir).expect("remove round");
    }
    eprintln!(
        "{rounds} rounds: {exported} exports and {read} mount reads succeeded with the true bytes"
    );
}

#[test]
fn random_mutations_never_panic_hang_or_return_wrong_bytes() {
    if !need_fuse("random_mutations_never_panic_hang_or_return_wrong_bytes") {
        return;
    }
    let (rounds, seed) = rounds_and_seed();
    let fx = SharedChunks::new(seed);
    let pristine = fx.tmp.path().join("pristine");
    copy_dir(&fx.store, &pristine);
    fuzz(
        &pristine,
        fx.tmp.path(),
        &fx.truths(),
        rounds,
        &mut Rng::new(seed),
    );
}

/// A zstd store of compressible data, so that mutations hit compressed
/// records: disk `z` with snapshots `a` and `b` (two chunks changed).
fn compressed_store(dir: &Path, rng: &mut Rng) -> Vec<Truth> {
    let store = dir.join("store");
    let image = dir.join("z.img");
    let compressible = |rng: &mut Rng| rng.bytes(512).repeat(CHUNK as usize / 512);
    let mut data: Vec<u8> = (0..8).flat_map(|_| compressible(rng)).collect();
    data.extend_from_slice(&rng.bytes(777));
    fs::write(&image, &data).expect("write image");
    ok(snapfs(&store).args(["init", "--compression", "zstd"]));
    ok(snapfs(&store).args(["disk", "add", "z"]).arg(&image));
    ok(snapfs(&store).args(["snapshot", "create", "z", "a"]));
    fs::copy(&image, dir.join("a.copy")).expect("copy");
    for chunk in [2usize, 5] {
        let start = chunk * CHUNK as usize;
        data[start..start + CHUNK as usize].copy_from_slice(&compressible(rng));
    }
    fs::write(&image, &data).expect("write image");
    ok(snapfs(&store).args(["snapshot", "create", "z", "b"]));
    fs::copy(&image, dir.join("b.copy")).expect("copy");
    ["a", "b"]
        .into_iter()
        .map(|name| Truth {
            disk: "z".into(),
            snapshot: name.into(),
            bytes: dir.join(format!("{name}.copy")),
        })
        .collect()
}

#[test]
fn random_mutations_of_a_compressed_store_never_panic_hang_or_return_wrong_bytes() {
    if !need_fuse("random_mutations_of_a_compressed_store_never_panic_hang_or_return_wrong_bytes") {
        return;
    }
    let (rounds, seed) = rounds_and_seed();
    let mut rng = Rng::new(seed ^ 0x5a5a);
    let tmp = tempfile::tempdir().expect("tempdir");
    let truths = compressed_store(tmp.path(), &mut rng);
    let packs = common::damage::pack_records(&tmp.path().join("store"));
    assert!(
        packs.iter().all(|r| r.stored.len() < CHUNK as usize / 4),
        "the chunks are stored compressed"
    );
    let pristine = tmp.path().join("pristine");
    copy_dir(&tmp.path().join("store"), &pristine);
    fuzz(&pristine, tmp.path(), &truths, rounds, &mut rng);
}
