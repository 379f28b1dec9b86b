//! The concurrency soak: for a bounded time, everything a user and the
//! policy runner do to one mount, all at once. Three disks whose sources
//! change between snapshots; per disk a thread that changes its source and
//! snapshots it through `.create`; a thread racing extra snapshots; readers
//! comparing old snapshots with what their source held; `rm` and `mv` of
//! snapshot files; `snapfs gc` and `snapfs prune` through the mount; and a
//! policy taking and expiring automatic snapshots of one disk.
//!
//! Allowed errors, and only where they are: EBUSY from `.create` (another
//! snapshot of that disk runs), ENOENT opening a snapshot file another
//! thread has just removed or renamed (the shared model says so). Anything
//! else, and any wrong byte, fails the test. At the end every snapshot
//! still listed reads back right and `verify` passes, through the mount and
//! after unmount.
//!
//! `SNAPFS_SOAK_SECS` sets the duration (default 30), `SNAPFS_SOAK_SEED`
//! the data.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::faults::write_create;
use common::mount::Mount;
use common::{need_fuse, ok, run_timeout, seed_from_env, snapfs, Rng};

const DISKS: [&str; 3] = ["d0", "d1", "g/d2"];
/// The disk with a policy: its automatic snapshots come and go.
const POLICY_DISK: usize = 2;
const DISK_SIZE: usize = 4 << 20;
const REGION: usize = 64 << 10;
/// Longest one command may take before the soak calls it a hang.
const STEP: Duration = Duration::from_secs(300);

fn soak_secs() -> u64 {
    std::env::var("SNAPFS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// Version `version` of a disk's bytes: a random base, then per version two
/// 64 KiB regions rewritten (every fifth version zeroes one: a hole-like
/// run that is never stored).
struct Contents {
    seed: u64,
    cache: Mutex<ContentCache>,
}

/// (disk, version) -> bytes.
type ContentCache = HashMap<(usize, u64), Arc<Vec<u8>>>;

impl Contents {
    fn base(&self, disk: usize) -> Vec<u8> {
        Rng::new(self.seed ^ ((disk as u64 + 1) * 0x1000_0001)).bytes(DISK_SIZE)
    }

    fn apply(&self, bytes: &mut [u8], disk: usize, version: u64) {
        let mut rng = Rng::new(self.seed ^ ((disk as u64) << 40) ^ version.wrapping_mul(31));
        for i in 0..2 {
            let at = rng.below((DISK_SIZE / REGION) as u64) as usize * REGION;
            let region = &mut bytes[at..at + REGION];
            if version.is_multiple_of(5) && i == 0 {
                region.fill(0);
            } else {
                rng.fill(region);
            }
        }
    }

    fn get(&self, disk: usize, version: u64) -> Arc<Vec<u8>> {
        if let Some(hit) = self.lock().get(&(disk, version)) {
            return hit.clone();
        }
        let mut bytes = self.base(disk);
        for v in 1..=version {
            self.apply(&mut bytes, disk, v);
        }
        let bytes = Arc::new(bytes);
        let mut cache = self.lock();
        if cache.len() >= 24 {
            cache.clear();
        }
        cache.insert((disk, version), bytes.clone());
        bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ContentCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Counts {
    snapshots: AtomicU64,
    busy: AtomicU64,
    reads: AtomicU64,
    bytes_read: AtomicU64,
    vanished: AtomicU64,
    removed: AtomicU64,
    renamed: AtomicU64,
    gc_runs: AtomicU64,
    prune_runs: AtomicU64,
    source_changes: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the threads share.
struct Soak<'a> {
    mount: &'a Mount,
    store: &'a Path,
    sources: Vec<std::path::PathBuf>,
    contents: Contents,
    /// Manual snapshots that exist: (disk, name) -> source version.
    model: Mutex<BTreeMap<(usize, String), u64>>,
    /// Per disk: held to change the source, shared while snapshotting it.
    source_locks: Vec<RwLock<u64>>,
    names: AtomicU64,
    counts: Counts,
    /// Names of automatic snapshots seen in the policy disk's folder.
    autos_seen: Mutex<std::collections::BTreeSet<String>>,
    errors: Mutex<Vec<String>>,
    deadline: Instant,
}

impl Soak<'_> {
    fn running(&self) -> bool {
        Instant::now() < self.deadline && self.errors().is_empty()
    }

    fn errors(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.errors.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, what: String) {
        eprintln!("soak error: {what}");
        self.errors().push(what);
    }

    fn model(&self) -> std::sync::MutexGuard<'_, BTreeMap<(usize, String), u64>> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_name(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.names.fetch_add(1, Ordering::Relaxed))
    }

    fn folder(&self, disk: usize) -> std::path::PathBuf {
        self.mount.disk(DISKS[disk])
    }

    /// Snapshots `disk` (its source held still) as `name`; EBUSY is fine.
    fn snapshot(&self, disk: usize, name: &str) {
        let version = self.source_locks[disk]
            .read()
            .unwrap_or_else(|e| e.into_inner());
        match write_create(&self.folder(disk), name) {
            Ok(()) => {
                bump(&self.counts.snapshots);
                self.model().insert((disk, name.to_string()), *version);
            }
            Err(libc::EBUSY) => bump(&self.counts.busy),
            Err(errno) => self.fail(format!(
                "snapshot {}/{name} failed with errno {errno}; .status:\n{}",
                DISKS[disk],
                common::faults::status(&self.folder(disk))
            )),
        }
    }

    /// Per disk: change the source, snapshot it, again and again.
    fn change_and_snapshot(&self, disk: usize) {
        let mut bytes = self.contents.get(disk, 0).to_vec();
        while self.running() {
            {
                let mut version = self.source_locks[disk]
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                *version += 1;
                self.contents.apply(&mut bytes, disk, *version);
                let file = OpenOptions::new()
                    .write(true)
                    .open(&self.sources[disk])
                    .expect("open source");
                file.write_all_at(&bytes, 0)
                    .and_then(|_| file.sync_data())
                    .expect("write source");
                bump(&self.counts.source_changes);
            }
            let name = self.new_name(&format!("s{disk}-"));
            self.snapshot(disk, &name);
        }
    }

    /// Extra snapshots of random disks, to race the per-disk threads.
    fn race_snapshots(&self, seed: u64) {
        let mut rng = Rng::new(seed);
        while self.running() {
            let disk = rng.below(DISKS.len() as u64) as usize;
            let name = self.new_name("r");
            self.snapshot(disk, &name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pick(&self, rng: &mut Rng) -> Option<((usize, String), u64)> {
        let model = self.model();
        let n = model.len() as u64;
        if n == 0 {
            return None;
        }
        model
            .iter()
            .nth(rng.below(n) as usize)
            .map(|(k, v)| (k.clone(), *v))
    }

    /// Reads old snapshots whole and compares them with their source's
    /// bytes at snapshot time; sometimes holds the file open a while, so
    /// rm, mv and gc happen under it.
    fn read_old_snapshots(&self, seed: u64) {
        let mut rng = Rng::new(seed);
        while self.running() {
            let Some(((disk, name), version)) = self.pick(&mut rng) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let path = self.folder(disk).join(&name);
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    // Only if the model already says it is gone.
                    if self.model().contains_key(&(disk, name.clone())) {
                        self.fail(format!("{}: ENOENT, but it exists", path.display()));
                    } else {
                        bump(&self.counts.vanished);
                    }
                    continue;
                }
                Err(e) => {
                    self.fail(format!("open {}: {e}", path.display()));
                    continue;
                }
            };
            if rng.below(4) == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut bytes = Vec::with_capacity(DISK_SIZE);
            if let Err(e) = file.read_to_end(&mut bytes) {
                self.fail(format!("read {}: {e}", path.display()));
                continue;
            }
            let expected = self.contents.get(disk, version);
            if bytes[..] != expected[..] {
                let at = bytes
                    .iter()
                    .zip(expected.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(bytes.len().min(expected.len()));
                self.fail(format!(
                    "{} (source version {version}): wrong bytes at offset {at} (read {} of {})",
                    path.display(),
                    bytes.len(),
                    expected.len()
                ));
            }
            bump(&self.counts.reads);
            self.counts
                .bytes_read
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }

    /// `rm` and `mv` of manual snapshots. The model drops a name before it
    /// goes and learns a new one only once it exists, so a reader's ENOENT
    /// can be checked against it.
    fn remove_and_rename(&self, seed: u64) {
        let mut rng = Rng::new(seed);
        while self.running() {
            let kept = self.model().len();
            // Keep the number of snapshots bounded on long runs.
            if kept < 48 {
                std::thread::sleep(Duration::from_millis(60));
            }
            if kept < 4 {
                continue;
            }
            let Some(((disk, name), version)) = self.pick(&mut rng) else {
                continue;
            };
            self.model().remove(&(disk, name.clone()));
            let path = self.folder(disk).join(&name);
            if rng.below(2) == 0 {
                match fs::remove_file(&path) {
                    Ok(()) => bump(&self.counts.removed),
                    Err(e) => self.fail(format!("rm {}: {e}", path.display())),
                }
            } else {
                let new = self.new_name("m");
                let to = self.folder(disk).join(&new);
                match fs::rename(&path, &to) {
                    Ok(()) => {
                        bump(&self.counts.renamed);
                        self.model().insert((disk, new), version);
                    }
                    Err(e) => self.fail(format!("mv {} {new}: {e}", path.display())),
                }
            }
        }
    }

    /// Notes the automatic snapshots the policy takes (and prune expires).
    fn watch_automatic_snapshots(&self) {
        let folder = self.folder(POLICY_DISK);
        while self.running() {
            let autos = common::faults::snapshot_files(&folder)
                .into_iter()
                .filter(|n| n.starts_with("auto"));
            self.autos_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(autos);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `snapfs ARGS` through the mount over and over; it must succeed.
    fn repeat_command(&self, args: &[&str], pause: Duration, counter: &AtomicU64) {
        while self.running() {
            let ran = run_timeout(snapfs(self.store).args(args), STEP);
            if ran.code == Some(0) {
                bump(counter);
            } else {
                self.fail(format!(
                    "snapfs {} exited with {:?}: {}{}",
                    args.join(" "),
                    ran.code,
                    ran.stdout,
                    ran.stderr
                ));
            }
            std::thread::sleep(pause);
        }
    }
}

fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Manual snapshot names in a disk folder, sorted.
fn manual_snapshots(folder: &Path) -> Vec<String> {
    common::faults::snapshot_files(folder)
        .into_iter()
        .filter(|n| !n.starts_with("auto"))
        .collect()
}

#[test]
fn snapshots_reads_rm_mv_gc_and_prune_at_once_keep_every_byte() {
    if !need_fuse("snapshots_reads_rm_mv_gc_and_prune_at_once_keep_every_byte") {
        return;
    }
    let seed = seed_from_env("SNAPFS_SOAK_SEED");
    let secs = soak_secs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let contents = Contents {
        seed,
        cache: Mutex::new(HashMap::new()),
    };
    ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
    let mut sources = Vec::new();
    for (i, disk) in DISKS.iter().enumerate() {
        let path = tmp.path().join(format!("disk{i}.img"));
        fs::write(&path, &contents.get(i, 0)[..]).expect("write source");
        ok(snapfs(&store).args(["disk", "add", disk]).arg(&path));
        sources.push(path);
    }
    let mount = Mount::start(&store);
    write_file(
        &mount.disk(DISKS[POLICY_DISK]).join(".policy"),
        "every=1s keep-last=2\n",
    )
    .expect("set the policy");

    let soak = Soak {
        mount: &mount,
        store: &store,
        sources,
        contents,
        model: Mutex::new(BTreeMap::new()),
        source_locks: DISKS.iter().map(|_| RwLock::new(0)).collect(),
        names: AtomicU64::new(0),
        counts: Counts::default(),
        autos_seen: Mutex::new(Default::default()),
        errors: Mutex::new(Vec::new()),
        deadline: Instant::now() + Duration::from_secs(secs),
    };
    eprintln!("soak: {secs} s");
    std::thread::scope(|scope| {
        let soak = &soak;
        for disk in 0..DISKS.len() {
            scope.spawn(move || soak.change_and_snapshot(disk));
        }
        scope.spawn(move || soak.race_snapshots(seed ^ 1));
        scope.spawn(move || soak.read_old_snapshots(seed ^ 2));
        scope.spawn(move || soak.read_old_snapshots(seed ^ 3));
        scope.spawn(move || soak.remove_and_rename(seed ^ 4));
        scope.spawn(move || {
            soak.repeat_command(&["gc"], Duration::from_millis(200), &soak.counts.gc_runs)
        });
        scope.spawn(move || {
            soak.repeat_command(
                &["prune"],
                Duration::from_millis(500),
                &soak.counts.prune_runs,
            )
        });
        scope.spawn(move || soak.watch_automatic_snapshots());
    });
    write_file(&mount.disk(DISKS[POLICY_DISK]).join(".policy"), "none\n")
        .expect("clear the policy");
    let errors = soak.errors().clone();
    let c = &soak.counts;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "soak counts: {} snapshots, {} EBUSY, {} source changes, {} reads ({} MiB), \
         {} reads of just-removed files, {} rm, {} mv, {} gc, {} prune, \
         {} automatic snapshots seen",
        load(&c.snapshots),
        load(&c.busy),
        load(&c.source_changes),
        load(&c.reads),
        load(&c.bytes_read) >> 20,
        load(&c.vanished),
        load(&c.removed),
        load(&c.renamed),
        load(&c.gc_runs),
        load(&c.prune_runs),
        soak.autos_seen.lock().map(|a| a.len()).unwrap_or(0)
    );
    assert!(errors.is_empty(), "soak errors:\n{}", errors.join("\n"));
    assert!(
        load(&c.snapshots) > 0 && load(&c.reads) > 0 && load(&c.gc_runs) > 0,
        "the soak did no work"
    );

    // Every manual snapshot the model holds is listed, and nothing else;
    // each reads back as its source was.
    let model = soak.model().clone();
    for (disk, name) in DISKS.iter().enumerate() {
        let expected: Vec<String> = model
            .keys()
            .filter(|(d, _)| *d == disk)
            .map(|(_, n)| n.clone())
            .collect();
        assert_eq!(
            manual_snapshots(&mount.disk(name)),
            expected,
            "snapshots of {name}"
        );
    }
    for ((disk, name), version) in &model {
        let path = mount.disk(DISKS[*disk]).join(name);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(
            bytes[..] == soak.contents.get(*disk, *version)[..],
            "{} differs from its source at snapshot time",
            path.display()
        );
    }
    let ran = run_timeout(snapfs(&store).arg("verify"), STEP);
    assert_eq!(
        ran.code,
        Some(0),
        "verify through the mount: {}{}",
        ran.stdout,
        ran.stderr
    );
    mount.unmount();
    let ran = run_timeout(snapfs(&store).arg("verify"), STEP);
    assert_eq!(
        ran.code,
        Some(0),
        "verify after unmount: {}{}",
        ran.stdout,
        ran.stderr
    );
    let listed: Vec<(String, String)> = common::list_snapshots(&store)
        .into_iter()
        .filter(|(_, name)| !name.starts_with("auto"))
        .collect();
    let mut expected: Vec<(String, String)> = model
        .keys()
        .map(|(d, n)| (DISKS[*d].to_string(), n.clone()))
        .collect();
    let mut listed_sorted = listed;
    listed_sorted.sort();
    expected.sort();
    assert_eq!(listed_sorted, expected, "snapshots after unmount");
}
