//! Damaging a store on purpose: finding chunk records in pack files,
//! flipping and cutting bytes, editing sled trees of a closed store, and
//! reading what `verify` reported. Used by the corruption, healing and
//! hostile-store tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{run_timeout, snapfs, Ran};

pub const RECORD_HEADER: usize = 48;
pub const PACK_HEADER: usize = 16;
/// How long any one command on a small damaged store may take: far more
/// than it needs, so only a hang reaches it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// One chunk record of a pack file.
#[derive(Debug, Clone)]
pub struct PackRecord {
    pub pack: PathBuf,
    /// Offset of the record header in the pack.
    pub offset: usize,
    pub hash: [u8; 32],
    pub stored: Vec<u8>,
}

/// Every record of every pack of `store`, in pack and offset order.
pub fn pack_records(store: &Path) -> Vec<PackRecord> {
    let mut packs: Vec<PathBuf> = fs::read_dir(store.join("packs"))
        .expect("packs dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    packs.sort();
    let mut out = Vec::new();
    for pack in packs {
        let bytes = fs::read(&pack).expect("read pack");
        let mut at = PACK_HEADER;
        while at + RECORD_HEADER <= bytes.len() && &bytes[at..at + 4] == b"CHNK" {
            let stored_len =
                u32::from_le_bytes(bytes[at + 36..at + 40].try_into().expect("4 bytes")) as usize;
            let start = at + RECORD_HEADER;
            let Some(stored) = bytes.get(start..start + stored_len) else {
                break;
            };
            out.push(PackRecord {
                pack: pack.clone(),
                offset: at,
                hash: bytes[at + 4..at + 36].try_into().expect("32 bytes"),
                stored: stored.to_vec(),
            });
            at = start + stored_len;
        }
    }
    out
}

/// The record whose stored bytes are `plain` (stores made with
/// `--compression none` keep chunks as they are).
pub fn record_holding(store: &Path, plain: &[u8]) -> PackRecord {
    pack_records(store)
        .into_iter()
        .find(|r| r.stored == plain)
        .expect("a record holding these bytes")
}

/// Flips one byte of the file at `path`.
pub fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).expect("read file to damage");
    bytes[offset] ^= 0x5a;
    fs::write(path, bytes).expect("write damaged file");
}

/// Flips a byte in the middle of the stored bytes of `record`.
pub fn damage_record(record: &PackRecord) {
    flip_byte(
        &record.pack,
        record.offset + RECORD_HEADER + record.stored.len() / 2,
    );
}

pub fn assert_no_panic(ran: &Ran) {
    assert!(
        !ran.stderr.contains("panicked") && ran.code.is_some() && ran.code != Some(101),
        "snapfs panicked or died by a signal (status {:?}): {}",
        ran.code,
        ran.stderr
    );
}

/// Runs `snapfs --store STORE ARGS` under `COMMAND_TIMEOUT`, asserting
/// that it neither panics nor dies by a signal.
pub fn run_checked(store: &Path, args: &[&str]) -> Ran {
    let ran = run_timeout(snapfs(store).args(args), COMMAND_TIMEOUT);
    assert_no_panic(&ran);
    ran
}

/// The damage `verify` printed, as sorted (disk, snapshot, offset).
pub fn damage_lines(ran: &Ran) -> Vec<(String, String, u64)> {
    let mut lines: Vec<(String, String, u64)> = ran
        .stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("DAMAGED ")?;
            let mut words = rest.split_whitespace();
            let disk = words.next()?.to_string();
            let snapshot = words.next()?.to_string();
            (words.next()? == "offset").then_some(())?;
            let offset = words.next()?.trim_end_matches(':').parse().ok()?;
            Some((disk, snapshot, offset))
        })
        .collect();
    lines.sort();
    lines
}

/// (disk, snapshot, offset) triples, sorted, for comparing with
/// `damage_lines`.
pub fn expected_damage(items: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    let mut out: Vec<(String, String, u64)> = items
        .iter()
        .map(|(d, s, o)| (d.to_string(), s.to_string(), *o))
        .collect();
    out.sort();
    out
}

/// Opens the sled database of a store that no process holds.
pub fn open_db(store: &Path) -> sled::Db {
    sled::open(store.join("db")).expect("open the store's sled database")
}

/// Rewrites the JSON catalog record of snapshot `name` with `edit`.
pub fn edit_snapshot_record(store: &Path, name: &str, edit: impl Fn(&mut serde_json::Value)) {
    let db = open_db(store);
    let tree = db.open_tree("snapshots").expect("snapshots tree");
    for item in tree.iter() {
        let (key, value) = item.expect("snapshot record");
        let mut record: serde_json::Value = serde_json::from_slice(&value).expect("JSON record");
        if record["name"] == name {
            edit(&mut record);
            tree.insert(key, serde_json::to_vec(&record).expect("JSON"))
                .expect("write record");
            db.flush().expect("flush");
            return;
        }
    }
    panic!("no snapshot record named {name}");
}

pub const CHUNK: u64 = 64 << 10;

/// A store (64 KiB chunks, no compression, so records hold plain bytes)
/// with disk `d` and its snapshots `one` and `two` (which differ only in
/// chunk 9 and share every other chunk), disk `f` with snapshot `clean`
/// (sharing nothing with `d`), and disk `e` with no snapshot yet, whose
/// source holds chunks 5 and 7 of `d` (as its chunks 0 and 1) among fresh
/// data: a snapshot of `e` brings healthy copies of those two chunks.
pub struct SharedChunks {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    /// Copies of what each snapshot holds.
    pub one: PathBuf,
    pub two: PathBuf,
    pub clean: PathBuf,
}

impl SharedChunks {
    pub fn new(seed: u64) -> SharedChunks {
        use super::{ok, overwrite_random, write_random_file, Rng};
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let d = tmp.path().join("d.img");
        let e = tmp.path().join("e.img");
        let f = tmp.path().join("f.img");
        let mut rng = Rng::new(seed);
        write_random_file(&d, 16 * CHUNK + 1234, &mut rng);
        write_random_file(&f, 3 * CHUNK, &mut rng);
        ok(snapfs(&store).args(["init", "--chunk-size", "64K", "--compression", "none"]));
        for (name, path) in [("d", &d), ("f", &f)] {
            ok(snapfs(&store).args(["disk", "add", name]).arg(path));
        }
        ok(snapfs(&store).args(["snapshot", "create", "d", "one"]));
        let one = tmp.path().join("one.copy");
        fs::copy(&d, &one).expect("copy");
        overwrite_random(&d, 9 * CHUNK, 100, &mut rng);
        ok(snapfs(&store).args(["snapshot", "create", "d", "two"]));
        let two = tmp.path().join("two.copy");
        fs::copy(&d, &two).expect("copy");
        ok(snapfs(&store).args(["snapshot", "create", "f", "clean"]));
        let clean = tmp.path().join("clean.copy");
        fs::copy(&f, &clean).expect("copy");

        let mut e_bytes = Vec::new();
        e_bytes.extend_from_slice(&chunk_of(&one, 5));
        e_bytes.extend_from_slice(&chunk_of(&one, 7));
        e_bytes.extend_from_slice(&rng.bytes(2 * CHUNK as usize));
        fs::write(&e, e_bytes).expect("write e");
        ok(snapfs(&store).args(["disk", "add", "e"]).arg(&e));
        SharedChunks {
            tmp,
            store,
            one,
            two,
            clean,
        }
    }

    /// What each snapshot of the fixture must read back as.
    pub fn truths(&self) -> Vec<Truth> {
        [
            ("d", "one", &self.one),
            ("d", "two", &self.two),
            ("f", "clean", &self.clean),
        ]
        .into_iter()
        .map(|(disk, snapshot, bytes)| Truth {
            disk: disk.into(),
            snapshot: snapshot.into(),
            bytes: bytes.clone(),
        })
        .collect()
    }

    /// Flips a byte in the stored copy of chunk `chunk` of snapshot `one`
    /// (or of `two`, for the chunk they do not share); returns the damaged
    /// record as it was.
    pub fn damage_chunk(&self, copy: &Path, chunk: u64) -> PackRecord {
        let record = record_holding(&self.store, &chunk_of(copy, chunk));
        damage_record(&record);
        record
    }
}

/// Chunk `chunk` (64 KiB) of the file at `path`.
pub fn chunk_of(path: &Path, chunk: u64) -> Vec<u8> {
    let data = fs::read(path).expect("read copy");
    let start = (chunk * CHUNK) as usize;
    data[start..(start + CHUNK as usize).min(data.len())].to_vec()
}

/// What a snapshot must hold wherever it is read.
#[derive(Clone, Debug)]
pub struct Truth {
    pub disk: String,
    pub snapshot: String,
    pub bytes: PathBuf,
}

/// Runs every reading command on a (possibly damaged) store: each must end
/// within `COMMAND_TIMEOUT` with status 0 or 1 without panicking, a failure
/// must say why on its last line, and an export that succeeds must write
/// the true bytes. Returns how many exports succeeded.
pub fn survey_cli(store: &Path, truths: &[Truth]) -> usize {
    for args in [
        &["snapshot", "list"][..],
        &["disk", "list"],
        &["stats"],
        &["verify"],
    ] {
        check_status(&run_checked(store, args), args);
    }
    let mut exported = 0;
    for truth in truths {
        let args = ["export", &truth.disk, &truth.snapshot, "-o", "-"];
        let ran = run_checked(store, &args);
        check_status(&ran, &args);
        if ran.code == Some(0) {
            super::assert_bytes_equal_file(&ran.stdout_bytes, &truth.bytes, "successful export");
            exported += 1;
        }
    }
    exported
}

fn check_status(ran: &Ran, args: &[&str]) {
    match ran.code {
        Some(0) => {}
        Some(1) => {
            let last = ran.stderr.lines().last().unwrap_or_default();
            assert!(
                last.starts_with("snapfs: ") && last.len() > "snapfs: ".len(),
                "snapfs {args:?} failed without a clear last line: {}",
                ran.stderr
            );
        }
        other => panic!("snapfs {args:?} exited with {other:?}: {}", ran.stderr),
    }
}

/// Mounts the store if it can be mounted and reads every snapshot file
/// through the mount: each read ends within `COMMAND_TIMEOUT`, and fails
/// (EIO) or returns the true bytes. A mount that refuses to start must
/// say why without panicking. Returns how many whole reads succeeded.
pub fn survey_mount(store: &Path, truths: &[Truth]) -> usize {
    let mount = match super::mount::Mount::try_start_with(store, &[]) {
        Ok(mount) => mount,
        Err(why) => {
            assert!(!why.contains("panicked"), "the mount panicked: {why}");
            return 0;
        }
    };
    let mut read = 0;
    for truth in truths {
        let path = mount.disk(&truth.disk).join(&truth.snapshot);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(fs::read(path));
        });
        let result = rx.recv_timeout(COMMAND_TIMEOUT).unwrap_or_else(|_| {
            panic!(
                "reading {}/{} through the mount hung; log:\n{}",
                truth.disk,
                truth.snapshot,
                mount.log_text()
            )
        });
        if let Ok(bytes) = result {
            super::assert_bytes_equal_file(&bytes, &truth.bytes, "read through the mount");
            read += 1;
        }
    }
    let log = mount.unmount();
    assert!(!log.contains("panicked"), "the mount panicked: {log}");
    read
}
