//! SIGKILL at random points (issue 5, first fault class). One round picks
//! an operation and a kill delay from a seeded RNG, runs the operation,
//! kills it with SIGKILL, and checks the store:
//! - it opens and `snapfs verify` passes;
//! - `snapshot list --json` shows one of the states the operation may
//!   leave, every row accomplished: a killed create lists the snapshot or
//!   not; rm the old or the new state; rename the old or the new name; prune
//!   a prefix of its deletions (oldest first); disk rm the disk with all its
//!   snapshots or neither; gc and rollback change no listing. An operation
//!   that reported success before the kill must be listed as done;
//! - every listed snapshot exports byte-identical (blake3) to its source as
//!   it was when the snapshot was taken;
//! - a killed rollback leaves every 4 KiB block of its target old or new
//!   (the man page: "neither the snapshot nor its former content until a
//!   rollback completes"), and rolling back again makes it the snapshot.
//!
//! `cli_killed_...` kills the CLI process; `mount_killed_...` kills the
//! `snapfs mount` process while it starts, while a `.create` write, an rm
//! or mv of an image file, or a CLI command routed through the mount runs,
//! or after a `snapshot create` client of it was killed first (the mount
//! must keep answering), with the policy runner taking and expiring
//! automatic snapshots of disk `p` beside. A client cut off says in one
//! line that the mount ended; `snapfs umount` clears the dead mount and the
//! next round mounts again. Every fifth round runs gc over what the killed
//! rounds left, and the end checks that gc leaves no dead byte in packs.
//! Two more tests pin down single kill points: a leftover of sled's
//! snapshot writer, and a snapshot killed after its first full pack commit.
//!
//! SNAPFS_KILL_ROUNDS=<n> rounds per test (default 20, the CI size);
//! SNAPFS_KILL_SEED=<n> replays a run's operations (both tests take it):
//! `SNAPFS_KILL_SEED=<n> cargo test --release --test kill <test> --
//! --nocapture` prints each round's operation and kill delay. Delays are
//! drawn below the measured duration of each operation, so where a kill
//! lands still follows the machine's speed.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::kill::{
    assert_blocks_old_or_new, clear_dead_mount, export_hash, hash_file, run_killed_after, Ended,
    Proc, END_TIMEOUT,
};
use common::mount::Mount;
use common::{need_fuse, ok, overwrite_random, seed_from_env, snapfs, write_random_file, Rng};

/// The disk most operations act on.
const D: &str = "d";
/// The disk with a policy: the mount's policy runner snapshots it.
const P: &str = "p";
const D_SIZE: u64 = 16 << 20;
const P_SIZE: u64 = 4 << 20;
/// Snapshots of `d` kept; older ones are removed before a round.
const KEEP: usize = 4;
/// How many automatic snapshots a prune round wants to choose from.
const AUTOS_FOR_PRUNE: usize = 3;

/// (disk, snapshot name).
type Key = (String, String);
type Listing = BTreeSet<Key>;

fn key(disk: &str, name: &str) -> Key {
    (disk.to_string(), name.to_string())
}

fn rounds() -> u32 {
    std::env::var("SNAPFS_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// A store, its two disks, and what the store must hold.
struct World {
    tmp: tempfile::TempDir,
    store: PathBuf,
    d_source: PathBuf,
    p_source: PathBuf,
    rng: Rng,
    seed: u64,
    /// The test, named in failure messages with the seed.
    test: &'static str,
    /// What `snapshot list` showed at the last check.
    present: Listing,
    /// The content of every snapshot that may be listed.
    content: HashMap<Key, blake3::Hash>,
    /// The content of `p` now: what a new automatic snapshot holds.
    p_hash: blake3::Hash,
    /// A mount's policy runner may add and expire automatic snapshots of `p`.
    autos_free: bool,
    /// Durations of runs that were not killed, per operation: kill delays
    /// are drawn below their median.
    durations: HashMap<&'static str, Vec<Duration>>,
    /// Per operation: (killed mid-way, finished first).
    counts: std::collections::BTreeMap<&'static str, (u32, u32)>,
}

impl World {
    fn new(test: &'static str, seed: u64) -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let d_source = tmp.path().join("d.img");
        let p_source = tmp.path().join("p.img");
        let mut rng = Rng::new(seed);
        write_random_file(&d_source, D_SIZE, &mut rng);
        write_random_file(&p_source, P_SIZE, &mut rng);
        ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
        ok(snapfs(&store).args(["disk", "add", D]).arg(&d_source));
        ok(snapfs(&store).args(["disk", "add", P]).arg(&p_source));
        let p_hash = hash_file(&p_source);
        World {
            tmp,
            store,
            d_source,
            p_source,
            rng,
            seed,
            test,
            present: Listing::new(),
            content: HashMap::new(),
            p_hash,
            autos_free: false,
            durations: HashMap::new(),
            counts: Default::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn snapfs(&self) -> Command {
        snapfs(&self.store)
    }

    /// Changes a few ranges of a source, as a running VM would.
    fn change(&mut self, source: &Path, size: u64) {
        for _ in 0..1 + self.rng.below(3) {
            let len = 4096 + self.rng.below(1 << 20);
            let at = self.rng.below(size - len);
            overwrite_random(source, at, len, &mut self.rng);
        }
    }

    fn change_d(&mut self) {
        let source = self.d_source.clone();
        self.change(&source, D_SIZE);
    }

    fn change_p(&mut self) {
        let source = self.p_source.clone();
        self.change(&source, P_SIZE);
        self.p_hash = hash_file(&self.p_source);
    }

    /// Snapshots of `disk` listed now, in name order.
    fn names_of(&self, disk: &str) -> Vec<String> {
        self.present
            .iter()
            .filter(|(d, _)| d == disk)
            .map(|(_, n)| n.clone())
            .collect()
    }

    fn autos(&self) -> Vec<String> {
        // auto-YYYYmmdd-HHMMSS: name order is age order.
        self.names_of(P)
            .into_iter()
            .filter(|n| n.starts_with("auto"))
            .collect()
    }

    fn pick<'a>(&mut self, items: &'a [String]) -> &'a str {
        &items[self.rng.below(items.len() as u64) as usize]
    }

    /// A kill delay below the median duration of `op`, or None (run to the
    /// end) while `op` has not been timed yet.
    fn delay_for(&mut self, op: &'static str) -> Option<Duration> {
        let times = self.durations.get(op)?;
        let mut sorted = times.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2].as_micros() as u64;
        Some(Duration::from_micros(self.rng.below(median + 1)))
    }

    fn record(&mut self, op: &'static str, interrupted: bool, took: Option<Duration>) {
        let entry = self.counts.entry(op).or_default();
        if interrupted {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        if let Some(took) = took {
            self.durations.entry(op).or_default().push(took);
        }
    }

    /// First guesses, so that the first run of each operation can be cut
    /// too: a snapshot's time for those that read a disk, a store open's
    /// for the rest.
    fn guess_durations(&mut self, ops: &[&'static str]) {
        let t = Instant::now();
        let source = self.d_source.clone();
        self.take(D, "first", &source);
        let snapshot = t.elapsed();
        let t = Instant::now();
        self.listing("timing a store open");
        let open = t.elapsed();
        for &op in ops {
            let guess = match op {
                "create" | "create-file" | "create-cli" | "client-kill" | "rollback" => snapshot,
                _ => open,
            };
            self.durations.insert(op, vec![guess]);
        }
    }

    fn interrupted(&self) -> u32 {
        self.counts.values().map(|c| c.0).sum()
    }

    /// Takes a snapshot of `disk` and waits for it.
    fn take(&mut self, disk: &str, name: &str, source: &Path) {
        self.content.insert(key(disk, name), hash_file(source));
        ok(self.snapfs().args(["snapshot", "create", disk, name]));
        self.present.insert(key(disk, name));
    }

    fn remove(&mut self, disk: &str, name: &str) {
        ok(self.snapfs().args(["snapshot", "rm", disk, name]));
        self.present.remove(&key(disk, name));
    }

    /// Keeps at most KEEP snapshots of `d` (removing the first in name
    /// order), and at least one.
    fn trim(&mut self, round: u32) {
        let names = self.names_of(D);
        for name in names.iter().take(names.len().saturating_sub(KEEP)) {
            self.remove(D, name);
        }
        if self.names_of(D).is_empty() {
            let source = self.d_source.clone();
            self.take(D, &format!("base{round:04}"), &source);
        }
    }

    /// What `snapshot list --json` shows; every row must be accomplished.
    fn listing(&self, what: &str) -> Listing {
        let out = ok(self.snapfs().args(["snapshot", "list", "--json"]));
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{what}: bad list JSON {e}: {out}"));
        rows.iter()
            .map(|row| {
                assert_eq!(
                    row["state"], "accomplished",
                    "{what}: a half-made snapshot is listed: {row}"
                );
                key(
                    row["disk"].as_str().unwrap_or_default(),
                    row["name"].as_str().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Leaves out what the policy runner may change by itself.
    fn fixed_part(&self, listing: &Listing) -> Listing {
        listing
            .iter()
            .filter(|(d, n)| !(self.autos_free && d == P && n.starts_with("auto")))
            .cloned()
            .collect()
    }

    /// The checks after a round: the listing is one of `allowed`, verify
    /// passes, and every listed snapshot exports to its recorded content.
    fn settle(&mut self, allowed: &[Listing], what: &str) {
        let what = format!(
            "{what} [replay: SNAPFS_KILL_SEED={} cargo test --release --test kill {}]",
            self.seed, self.test
        );
        let listed = self.listing(&what);
        let fixed = self.fixed_part(&listed);
        assert!(
            allowed.iter().any(|a| self.fixed_part(a) == fixed),
            "{what}: listed {fixed:?}, expected one of {allowed:?}"
        );
        for k in &listed {
            if !self.content.contains_key(k) && self.autos_free && k.0 == P {
                // Taken by the policy runner during the round.
                self.content.insert(k.clone(), self.p_hash);
            }
        }
        let verified = common::run(self.snapfs().arg("verify"));
        assert_eq!(
            verified.code,
            Some(0),
            "{what}: verify failed\n{}{}",
            verified.stdout,
            verified.stderr
        );
        for k in &listed {
            let expected = self
                .content
                .get(k)
                .unwrap_or_else(|| panic!("{what}: {k:?} is listed but was never taken"));
            let actual = export_hash(&self.store, &k.0, &k.1);
            assert_eq!(
                &actual, expected,
                "{what}: export of {k:?} differs from its source"
            );
        }
        self.present = listed;
    }

    /// The listing with `add` added and `gone` removed.
    fn with(&self, add: &[Key], gone: &[Key]) -> Listing {
        let mut listing = self.present.clone();
        for k in gone {
            listing.remove(k);
        }
        listing.extend(add.iter().cloned());
        listing
    }

    /// Runs gc to the end and checks nothing changed.
    fn full_gc(&mut self, what: &str) {
        ok(self.snapfs().args(["gc", "--min-dead", "0"]));
        let unchanged = [self.present.clone()];
        self.settle(&unchanged, &format!("{what}, then a full gc"));
    }

    /// After a last full gc, no byte of an interrupted run is left in the
    /// packs: every pack byte is a header or a live record.
    fn assert_no_leftovers(&mut self) {
        self.full_gc("the end");
        common::assert_no_pack_leftovers(&self.store);
    }

    fn summary(&self, test: &str, rounds: u32, started: Instant) {
        eprintln!(
            "{test}: {rounds} rounds in {:?}; per operation (killed mid-way, finished first): {:?}",
            started.elapsed(),
            self.counts
        );
        // The kill delays follow measured durations, so most runs are cut.
        assert!(
            self.interrupted() >= rounds / 5,
            "only {} of {rounds} rounds interrupted anything",
            self.interrupted()
        );
    }
}

/// Prepares a rollback of `d/name` to a fresh target holding the disk's
/// current content; returns (target, former content, snapshot image).
fn rollback_files(world: &mut World, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let target = world.path("rollback-target.img");
    let old = world.path("rollback-old.img");
    let image = world.path("rollback-snapshot.img");
    for path in [&target, &old, &image] {
        let _ = fs::remove_file(path);
    }
    fs::copy(&world.d_source, &old).expect("copy the former content");
    fs::copy(&world.d_source, &target).expect("copy the target");
    ok(world.snapfs().args(["export", D, name, "-o"]).arg(&image));
    (target, old, image)
}

/// After a rollback that may have been killed: each block of the target
/// is old or new, and a rollback run to the end makes it the snapshot.
fn check_rollback(world: &World, name: &str, files: &(PathBuf, PathBuf, PathBuf), what: &str) {
    let (target, old, image) = files;
    assert_blocks_old_or_new(target, old, image, what);
    ok(world
        .snapfs()
        .args(["rollback", D, name, "--yes", "--to"])
        .arg(target));
    assert_eq!(
        hash_file(target),
        world.content[&key(D, name)],
        "{what}: the target after a complete rollback"
    );
    for path in [target, old, image] {
        let _ = fs::remove_file(path);
    }
}

/// A process killed while sled writes its snapshot file leaves a partial
/// `db/snap.*.generating` behind (sled writes there, fsyncs, then renames).
/// The store must still open, with everything committed before.
#[test]
fn store_opens_after_a_kill_mid_sled_snapshot_write() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let source = tmp.path().join("d.img");
    write_random_file(&source, 1 << 20, &mut Rng::new(5));
    ok(snapfs(&store).args(["disk", "add", D]).arg(&source));
    ok(snapfs(&store).args(["snapshot", "create", D, "before"]));
    let db = store.join("db");
    let newest = fs::read_dir(&db)
        .expect("list db")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap."))
        .max()
        .unwrap_or_else(|| "snap.0000000000000000".into());
    // What a kill after the first bytes leaves: sorted after the complete one.
    fs::write(db.join(format!("{newest}.generating")), b"partial").expect("plant");

    let listed = ok(snapfs(&store).args(["snapshot", "list", "--json"]));
    assert!(listed.contains("\"before\""), "snapshot lost: {listed}");
    ok(snapfs(&store).arg("verify"));
    assert_eq!(export_hash(&store, D, "before"), hash_file(&source));
    ok(snapfs(&store).args(["snapshot", "create", D, "after"]));
}

/// A snapshot larger than a pack commits the index entries of each full
/// pack before its catalog commit. Killed after such a commit, it leaves
/// chunks no snapshot reaches: no snapshot is listed, verify passes, gc
/// reclaims every byte, and the snapshot can be taken again.
#[test]
fn snapshot_killed_after_committing_a_full_pack() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let source = tmp.path().join("big.img");
    // Random data does not compress: the packs fill at 128 MiB each.
    write_random_file(&source, 300 << 20, &mut Rng::new(11));
    ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
    ok(snapfs(&store).args(["disk", "add", D]).arg(&source));

    let mut create = snapfs(&store);
    create.args(["snapshot", "create", D, "big"]);
    let mut proc = Proc::spawn(&mut create, "snapfs snapshot create", tmp.path());
    // A full pack is synced while the next fills, and committed when that
    // one is full too: a third pack file appears only after the first one
    // was committed.
    let packs = |store: &Path| {
        fs::read_dir(store.join("packs"))
            .map(|d| d.filter_map(|e| e.ok()).count())
            .unwrap_or(0)
    };
    let limit = Duration::from_secs(600);
    let deadline = Instant::now() + limit;
    while packs(&store) < 3 {
        if let Some(ended) = proc.wait_until(Instant::now() + Duration::from_millis(1)) {
            panic!("the snapshot ended before its third pack: {ended:?}");
        }
        assert!(Instant::now() < deadline, "no third pack within {limit:?}");
    }
    assert_eq!(proc.kill9(), Some(Ended::Killed), "killed mid-way");

    assert_eq!(
        ok(snapfs(&store).args(["snapshot", "list"]))
            .lines()
            .count(),
        1,
        "only the header: no snapshot listed"
    );
    ok(snapfs(&store).arg("verify"));
    let stats = common::stats_json(&store);
    assert!(
        stats["record_bytes"].as_u64() >= Some(128 << 20),
        "the full pack was committed: {stats}"
    );
    ok(snapfs(&store).args(["gc", "--min-dead", "0"]));
    let stats = common::stats_json(&store);
    assert_eq!(
        stats["stored_bytes"].as_u64(),
        Some(0),
        "gc left bytes: {stats}"
    );

    ok(snapfs(&store).args(["snapshot", "create", D, "big"]));
    ok(snapfs(&store).arg("verify"));
    assert_eq!(export_hash(&store, D, "big"), hash_file(&source));
}

/// An export through a mount whose process is killed mid-way fails with
/// one line saying the mount ended and the output is incomplete, and what
/// it wrote before is the snapshot's own bytes.
#[test]
fn export_through_a_killed_mount_says_so() {
    if !need_fuse("export_through_a_killed_mount_says_so") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let source = tmp.path().join("d.img");
    write_random_file(&source, 64 << 20, &mut Rng::new(12));
    ok(snapfs(&store).args(["disk", "add", D]).arg(&source));
    ok(snapfs(&store).args(["snapshot", "create", D, "s"]));
    let expected = fs::read(&source).expect("read source");

    let mut mount = Mount::start(&store);
    // The export blocks on its full pipe until we read: kill the mount
    // while it is certainly half-way.
    let mut export = snapfs(&store)
        .args(["export", D, "s", "-o", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start export");
    let mut stdout = export.stdout.take().expect("stdout");
    let mut head = vec![0u8; 4 << 20];
    std::io::Read::read_exact(&mut stdout, &mut head).expect("first 4 MiB of the export");
    mount.kill9();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut rest).expect("rest of the export");
    let out = export.wait_with_output().expect("wait for export");
    clear_dead_mount(mount.path());

    head.extend_from_slice(&rest);
    assert!(
        head.len() < expected.len() && expected.starts_with(&head),
        "the export wrote {} bytes that are not a prefix of the snapshot",
        head.len()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.lines().count() == 1
            && stderr.contains("ended before it answered")
            && stderr.contains("export to - is incomplete"),
        "the export must say in one line that the mount ended: {stderr}"
    );
}

// ------------------------------------------------------------- CLI kills

const CLI_OPS: [&str; 7] = [
    "create", "rm", "rename", "gc", "prune", "rollback", "disk-rm",
];

/// Lets a mount's policy runner take automatic snapshots of `p` until
/// there are `want`, so that prune has something to delete.
fn refill_autos(world: &mut World, want: usize) {
    ok(world
        .snapfs()
        .args(["policy", "set", P, "--every", "1s", "--keep-last", "1000"]));
    let mount = Mount::start(&world.store);
    let folder = mount.disk(P);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let autos = fs::read_dir(&folder)
            .expect("list the disk folder")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("auto"))
            .count();
        if autos >= want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no {want} automatic snapshots after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    mount.unmount();
    world.autos_free = true;
    let unchanged = world.fixed_part(&world.present);
    world.settle(&[unchanged], "after taking automatic snapshots");
    world.autos_free = false;
}

/// One CLI round: returns a line saying what it did.
fn cli_round(world: &mut World, round: u32) -> String {
    let op = CLI_OPS[world.rng.below(CLI_OPS.len() as u64) as usize];
    world.trim(round);
    world.change_d();
    let delay = world.delay_for(op);
    let names = world.names_of(D);
    let dir = world.tmp.path().to_path_buf();
    let mut rollback = None;
    let mut extra_disk = None;
    // (arguments, the state if the run is cut, the state once done)
    let (args, before, after): (Vec<String>, Listing, Listing) = match op {
        "create" => {
            let name = format!("r{round:04}");
            world
                .content
                .insert(key(D, &name), hash_file(&world.d_source));
            let after = world.with(&[key(D, &name)], &[]);
            (
                strings(&["snapshot", "create", D, &name]),
                world.present.clone(),
                after,
            )
        }
        "rm" => {
            let name = world.pick(&names).to_string();
            let after = world.with(&[], &[key(D, &name)]);
            (
                strings(&["snapshot", "rm", D, &name]),
                world.present.clone(),
                after,
            )
        }
        "rename" => {
            let old = world.pick(&names).to_string();
            let new = format!("n{round:04}");
            let hash = world.content[&key(D, &old)];
            world.content.insert(key(D, &new), hash);
            let after = world.with(&[key(D, &new)], &[key(D, &old)]);
            (
                strings(&["snapshot", "rename", D, &old, &new]),
                world.present.clone(),
                after,
            )
        }
        "gc" => (
            strings(&["gc", "--min-dead", "0"]),
            world.present.clone(),
            world.present.clone(),
        ),
        "prune" => {
            if world.autos().len() < 2 {
                refill_autos(world, AUTOS_FOR_PRUNE);
            }
            let autos = world.autos();
            let keep = 1 + world.rng.below(autos.len() as u64 - 1) as usize;
            ok(world
                .snapfs()
                .args(["policy", "set", P, "--keep-last", &keep.to_string()]));
            let doomed: Vec<Key> = autos[..autos.len() - keep]
                .iter()
                .map(|n| key(P, n))
                .collect();
            let after = world.with(&[], &doomed);
            (strings(&["prune", P]), world.present.clone(), after)
        }
        "rollback" => {
            let name = world.pick(&names).to_string();
            let files = rollback_files(world, &name);
            let mut args = strings(&["rollback", D, &name, "--yes", "--to"]);
            args.push(files.0.to_string_lossy().into_owned());
            rollback = Some((name, files));
            (args, world.present.clone(), world.present.clone())
        }
        "disk-rm" => {
            let disk = format!("t{round:04}");
            ok(world
                .snapfs()
                .args(["disk", "add", &disk])
                .arg(&world.p_source));
            let source = world.p_source.clone();
            world.take(&disk, "base", &source);
            let after = world.with(&[], &[key(&disk, "base")]);
            extra_disk = Some(disk.clone());
            (
                strings(&["disk", "rm", &disk, "--with-snapshots"]),
                world.present.clone(),
                after,
            )
        }
        _ => unreachable!("unknown operation {op}"),
    };
    let what = format!("round {round}: {op} {args:?}, kill after {delay:?}");
    eprintln!("{what}");
    let started = Instant::now();
    let ended = run_killed_after(
        world.snapfs().args(&args),
        &format!("snapfs {}", args.join(" ")),
        &dir,
        delay.unwrap_or(END_TIMEOUT),
    );
    let took = started.elapsed();
    let cut = ended == Ended::Killed;
    world.record(op, cut, (!cut).then_some(took));
    let allowed = match (cut, op) {
        (false, _) => vec![after],
        (true, "prune") => prune_prefixes(&before, &after),
        (true, _) => vec![before, after],
    };
    let what = format!("{what}: {ended:?}");
    world.settle(&allowed, &what);
    if let Some((name, files)) = rollback {
        check_rollback(world, &name, &files, &what);
    }
    if let Some(disk) = extra_disk {
        check_disk_rm(world, &disk, &what);
    }
    what
}

/// States a cut prune may leave: its deletions go oldest first, so some
/// prefix of them is done.
fn prune_prefixes(before: &Listing, after: &Listing) -> Vec<Listing> {
    let doomed: Vec<&Key> = before.difference(after).collect();
    (0..=doomed.len())
        .map(|done| {
            let mut state = before.clone();
            for k in &doomed[..done] {
                state.remove(*k);
            }
            state
        })
        .collect()
}

/// The disk is registered exactly when its snapshot is listed (disk rm
/// drops both in one transaction); a disk left over is removed now.
fn check_disk_rm(world: &mut World, disk: &str, what: &str) {
    let out = ok(world.snapfs().args(["disk", "list", "--json"]));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("disk list JSON");
    let registered = rows.iter().any(|r| r["name"] == disk);
    let listed = world.present.contains(&key(disk, "base"));
    assert_eq!(
        registered, listed,
        "{what}: disk {disk} registered {registered}, its snapshot listed {listed}"
    );
    if registered {
        ok(world
            .snapfs()
            .args(["disk", "rm", disk, "--with-snapshots"]));
        world.present.remove(&key(disk, "base"));
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn cli_killed_at_random_points_leaves_a_consistent_store() {
    if !need_fuse("cli_killed_at_random_points_leaves_a_consistent_store") {
        return;
    }
    let seed = seed_from_env("SNAPFS_KILL_SEED");
    let rounds = rounds();
    let started = Instant::now();
    let mut world = World::new(
        "cli_killed_at_random_points_leaves_a_consistent_store",
        seed,
    );
    world.guess_durations(&CLI_OPS);
    refill_autos(&mut world, AUTOS_FOR_PRUNE);
    for round in 0..rounds {
        let what = cli_round(&mut world, round);
        if round % 5 == 4 {
            world.full_gc(&what);
        }
    }
    world.assert_no_leftovers();
    world.summary("CLI kills", rounds, started);
}

// ----------------------------------------------------------- mount kills

const MOUNT_OPS: [&str; 11] = [
    "mount-start",
    "create-file",
    "create-cli",
    "client-kill",
    "rm-file",
    "mv-file",
    "gc",
    "rename",
    "prune",
    "rollback",
    "policy-runner",
];

/// The snapshot files a mount shows in the folder of `disk`.
fn files_in(mount: &Mount, disk: &str) -> Listing {
    fs::read_dir(mount.disk(disk))
        .expect("list a disk folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .map(|n| key(disk, &n))
        .collect()
}

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    cmd
}

/// Kills `snapfs mount` while it starts: opening the store (sled
/// recovery, pack tails), mounting, starting the policy runner.
fn mount_start_round(world: &mut World, round: u32, delay: Option<Duration>) -> String {
    let what = format!("round {round}: mount-start, kill the mount after {delay:?}");
    eprintln!("{what}");
    let mnt = tempfile::Builder::new()
        .prefix("snapfs-kill-mnt-")
        .tempdir()
        .expect("mountpoint");
    let dir = world.tmp.path().to_path_buf();
    let mut cmd = world.snapfs();
    cmd.arg("mount").arg(mnt.path());
    let mut proc = Proc::spawn(&mut cmd, "snapfs mount", &dir);
    let until = Instant::now() + delay.unwrap_or(Duration::ZERO);
    if let Some(ended) = proc.wait_until(until) {
        panic!("{what}: the mount ended by itself: {ended:?}");
    }
    proc.kill9();
    clear_dead_mount(mnt.path());
    world.record("mount-start", true, None);
    let unchanged = [world.present.clone()];
    world.settle(&unchanged, &what);
    what
}

/// A snapfs client whose mount was killed prints one line saying so (and,
/// for a rollback, that the target may be half rolled back).
fn assert_says_mount_gone(stderr: &str, rollback: bool, what: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1
            && lines[0].starts_with("snapfs: ")
            && lines[0].contains("ended before it answered")
            && (!rollback || lines[0].contains("may be half rolled back")),
        "{what}: the client must print one line saying that the mount ended, printed:\n{stderr}"
    );
}

/// One round that kills the mount: returns a line saying what it did.
fn mount_round(world: &mut World, round: u32) -> String {
    let op = MOUNT_OPS[world.rng.below(MOUNT_OPS.len() as u64) as usize];
    world.trim(round);
    world.change_d();
    world.change_p();
    let delay = match op {
        "policy-runner" => Some(Duration::from_millis(world.rng.below(3000))),
        _ => world.delay_for(op),
    };
    if op == "mount-start" {
        return mount_start_round(world, round, delay);
    }
    let names = world.names_of(D);
    let dir = world.tmp.path().to_path_buf();
    let mut rollback = None;

    let started = Instant::now();
    let mut mount = Mount::start(&world.store);
    world
        .durations
        .entry("mount-start")
        .or_default()
        .push(started.elapsed());
    // The mount shows exactly the accomplished snapshots of d.
    let shown = files_in(&mount, D);
    let expected: Listing = world
        .present
        .iter()
        .filter(|(d, _)| d == D)
        .cloned()
        .collect();
    assert_eq!(
        shown, expected,
        "round {round}: the mount shows other snapshots than the catalog [SNAPFS_KILL_SEED={} {}]",
        world.seed, world.test
    );
    let folder = mount.disk(D);
    let quoted = |p: &Path| format!("'{}'", p.display());
    // (client, the state if the run is cut, the state once done)
    let (client, before, after): (Option<Command>, Listing, Listing) = match op {
        "create-file" => {
            let name = format!("r{round:04}");
            world
                .content
                .insert(key(D, &name), hash_file(&world.d_source));
            let script = format!("echo {name} > {}", quoted(&folder.join(".create")));
            let after = world.with(&[key(D, &name)], &[]);
            (Some(sh(&script)), world.present.clone(), after)
        }
        "create-cli" | "client-kill" => {
            let name = format!("r{round:04}");
            world
                .content
                .insert(key(D, &name), hash_file(&world.d_source));
            let mut cmd = world.snapfs();
            cmd.args(["snapshot", "create", D, &name]);
            let after = world.with(&[key(D, &name)], &[]);
            (Some(cmd), world.present.clone(), after)
        }
        "rm-file" => {
            let name = world.pick(&names).to_string();
            let script = format!("rm {}", quoted(&folder.join(&name)));
            let after = world.with(&[], &[key(D, &name)]);
            (Some(sh(&script)), world.present.clone(), after)
        }
        "mv-file" | "rename" => {
            let old = world.pick(&names).to_string();
            let new = format!("n{round:04}");
            let hash = world.content[&key(D, &old)];
            world.content.insert(key(D, &new), hash);
            let client = if op == "mv-file" {
                sh(&format!(
                    "mv {} {}",
                    quoted(&folder.join(&old)),
                    quoted(&folder.join(&new))
                ))
            } else {
                let mut cmd = world.snapfs();
                cmd.args(["snapshot", "rename", D, &old, &new]);
                cmd
            };
            let after = world.with(&[key(D, &new)], &[key(D, &old)]);
            (Some(client), world.present.clone(), after)
        }
        "gc" => {
            let mut cmd = world.snapfs();
            cmd.args(["gc", "--min-dead", "0"]);
            (Some(cmd), world.present.clone(), world.present.clone())
        }
        "prune" => {
            let mut cmd = world.snapfs();
            cmd.args(["prune", P]);
            (Some(cmd), world.present.clone(), world.present.clone())
        }
        "rollback" => {
            let name = world.pick(&names).to_string();
            let files = rollback_files(world, &name);
            let mut cmd = world.snapfs();
            cmd.args(["rollback", D, &name, "--yes", "--to"])
                .arg(&files.0);
            rollback = Some((name, files));
            (Some(cmd), world.present.clone(), world.present.clone())
        }
        "policy-runner" => (None, world.present.clone(), world.present.clone()),
        _ => unreachable!("unknown operation {op}"),
    };
    let what = format!("round {round}: {op}, kill the mount after {delay:?}");
    eprintln!("{what}");

    let mut proc = client.map(|mut cmd| Proc::spawn(&mut cmd, op, &dir));
    let until = Instant::now() + delay.unwrap_or(END_TIMEOUT);
    let mut before_kill = None;
    match proc.as_mut() {
        Some(p) => {
            before_kill = p.wait_until(until);
            if let Some(Ended::Failed {
                code,
                stdout,
                stderr,
            }) = &before_kill
            {
                panic!("{what}: {op} failed with {code:?} while the mount ran\n{stdout}{stderr}");
            }
            if before_kill.is_some() {
                world.record(op, false, Some(p.elapsed()));
            }
        }
        None => std::thread::sleep(until.saturating_duration_since(Instant::now())),
    }
    let mut client_end = None;
    if op == "client-kill" && before_kill.is_none() {
        // The client goes first; the mount keeps serving, and the snapshot
        // it was asked for runs on or stops, until the mount is killed too.
        client_end = proc.as_mut().and_then(|p| p.kill9());
        let mut ls = Command::new("ls");
        ls.arg(&folder);
        let answered = Proc::spawn(&mut ls, "ls", &dir).wait(END_TIMEOUT, "its client was killed");
        assert_eq!(
            answered,
            Ended::Succeeded,
            "{what}: the mount stopped answering"
        );
        let more = world.delay_for("create-cli").unwrap_or_default();
        std::thread::sleep(more);
    }
    mount.kill9();
    let ended = match proc.as_mut() {
        Some(p) => before_kill
            .clone()
            .or(client_end)
            .unwrap_or_else(|| p.wait(END_TIMEOUT, "the mount was killed")),
        None => Ended::Killed,
    };
    if before_kill.is_none() {
        world.record(op, true, None);
        if let Ended::Failed { stderr, .. } = &ended {
            if matches!(op, "create-cli" | "gc" | "rename" | "prune" | "rollback") {
                assert_says_mount_gone(stderr, op == "rollback", &what);
            }
        }
    }
    if round.is_multiple_of(4) {
        // Mounting again over the dead mount says how to clear it.
        let ran = common::run_timeout(world.snapfs().arg("mount").arg(mount.path()), END_TIMEOUT);
        assert!(
            ran.code == Some(1)
                && ran.stderr.lines().count() == 1
                && ran.stderr.contains("dead mount")
                && ran.stderr.contains("snapfs umount"),
            "{what}: mounting over a dead mount: {ran:?}"
        );
    }
    // What the error lines tell a person to do clears the dead mount.
    ok(world.snapfs().arg("umount").arg(mount.path()));
    clear_dead_mount(mount.path());
    drop(mount);
    drop(proc);

    // A client that got its answer saw the operation done: it must last.
    let allowed = if ended == Ended::Succeeded {
        vec![after]
    } else {
        vec![before, after]
    };
    let what = format!("{what}: client {ended:?}");
    world.settle(&allowed, &what);
    if let Some((name, files)) = rollback {
        check_rollback(world, &name, &files, &what);
    }
    what
}

#[test]
fn mount_killed_at_random_points_leaves_a_consistent_store() {
    if !need_fuse("mount_killed_at_random_points_leaves_a_consistent_store") {
        return;
    }
    let seed = seed_from_env("SNAPFS_KILL_SEED");
    let rounds = rounds();
    let started = Instant::now();
    let mut world = World::new(
        "mount_killed_at_random_points_leaves_a_consistent_store",
        seed,
    );
    world.guess_durations(&MOUNT_OPS);
    ok(world
        .snapfs()
        .args(["policy", "set", P, "--every", "1s", "--keep-last", "3"]));
    world.autos_free = true;
    for round in 0..rounds {
        let what = mount_round(&mut world, round);
        if round % 5 == 4 {
            world.full_gc(&what);
        }
    }
    world.assert_no_leftovers();
    world.summary("mount kills", rounds, started);
}
