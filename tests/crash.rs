//! Crash safety, kill -9 style: `snapfs snapshot create` (and `gc`) are
//! killed at random moments. After every kill the store must open, `verify`
//! must pass, no half snapshot may be listed, every accomplished snapshot
//! must export to exactly the copy of its source saved when it was taken,
//! and the next snapshot must succeed.
//!
//! SNAPFS_CRASH_SEED=<n> replays a run; SNAPFS_CRASH_ROUNDS=<n> changes the
//! number of rounds (default 24).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::kill::{run_killed_after, Ended};
use common::{
    assert_same_reader, list_snapshots, ok, overwrite_random, run, seed_from_env, snapfs,
    write_random_file, Rng,
};

const SIZE: u64 = 64 << 20;
/// Snapshots kept; older ones are removed, which gives gc work.
const KEEP: usize = 3;

struct Crash {
    tmp: tempfile::TempDir,
    store: PathBuf,
    source: PathBuf,
    rng: Rng,
    /// Live snapshots, oldest first, with the copy of what each holds.
    live: Vec<(String, PathBuf)>,
    interrupted: u32,
    completed: u32,
}

impl Crash {
    fn copy_path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.copy"))
    }

    /// Changes a few ranges of the source, as a running VM would.
    fn change_source(&mut self) {
        for _ in 0..1 + self.rng.below(3) {
            let len = 4096 + self.rng.below(4 << 20);
            let at = self.rng.below(SIZE - len);
            overwrite_random(&self.source, at, len, &mut self.rng);
        }
    }

    /// Spawns `snapfs ARGS` and kills it with SIGKILL after `delay`
    /// (unless it finished first). Returns whether it was killed; a run
    /// that fails on its own fails the test, with its output.
    fn kill_after(&mut self, args: &[&str], delay: Duration) -> bool {
        let ended = run_killed_after(
            snapfs(&self.store).args(args),
            &format!("snapfs {}", args.join(" ")),
            self.tmp.path(),
            delay,
        );
        if ended == Ended::Killed {
            self.interrupted += 1;
            true
        } else {
            self.completed += 1;
            false
        }
    }

    /// Everything the store must still promise after a kill. `maybe` is the
    /// snapshot that was being taken (listed only if it completed).
    fn check(&mut self, maybe: Option<&str>, what: &str) {
        self.check_exports(maybe, what, false);
    }

    /// Like `check`; with `newest_only`, exports only the newest snapshot
    /// (the others were checked a moment ago).
    fn check_exports(&mut self, maybe: Option<&str>, what: &str, newest_only: bool) {
        let listed: Vec<String> = list_snapshots(&self.store)
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        let mut expected: Vec<String> = self.live.iter().map(|(n, _)| n.clone()).collect();
        if let Some(name) = maybe {
            if listed.iter().any(|n| n == name) {
                let copy = self.copy_path(name);
                self.live.push((name.to_string(), copy));
                expected.push(name.to_string());
            }
        }
        assert_eq!(listed, expected, "{what}: the listed snapshots");
        let verified = run(snapfs(&self.store).arg("verify"));
        assert_eq!(
            verified.code,
            Some(0),
            "{what}: verify failed\n{}{}",
            verified.stdout,
            verified.stderr
        );
        let skip = if newest_only {
            self.live.len().saturating_sub(1)
        } else {
            0
        };
        for (name, copy) in self.live.iter().skip(skip) {
            export_equals(&self.store, name, copy, what);
        }
    }

    fn take_snapshot(&mut self, name: &str) {
        fs::copy(&self.source, self.copy_path(name)).expect("save copy");
        ok(snapfs(&self.store).args(["snapshot", "create", "d", name]));
        self.live.push((name.to_string(), self.copy_path(name)));
    }

    fn trim(&mut self) {
        while self.live.len() > KEEP {
            let (name, copy) = self.live.remove(0);
            ok(snapfs(&self.store).args(["snapshot", "rm", "d", &name]));
            fs::remove_file(copy).expect("remove copy");
        }
    }
}

/// Streams `export d NAME -o -` and compares it with `copy`.
fn export_equals(store: &Path, name: &str, copy: &Path, what: &str) {
    let mut child = snapfs(store)
        .args(["export", "d", name, "-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn export");
    let mut out = child.stdout.take().expect("stdout");
    let mut expected = fs::File::open(copy).expect("open copy");
    assert_same_reader(
        &mut out,
        &mut expected,
        &format!("{what}: export of {name}"),
    );
    let output = child.wait_with_output().expect("wait export");
    assert!(
        output.status.success(),
        "{what}: export of {name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn millis(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

#[test]
fn killed_snapshots_and_gc_leave_a_consistent_store() {
    let seed = seed_from_env("SNAPFS_CRASH_SEED");
    let rounds: u32 = std::env::var("SNAPFS_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let source = tmp.path().join("disk.img");
    let mut rng = Rng::new(seed);
    write_random_file(&source, SIZE, &mut rng);
    ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
    ok(snapfs(&store).args(["disk", "add", "d"]).arg(&source));
    let mut crash = Crash {
        tmp,
        store,
        source,
        rng,
        live: Vec::new(),
        interrupted: 0,
        completed: 0,
    };
    let started = Instant::now();

    // Time incremental snapshots and a gc pass, to aim the kills: the
    // fastest of three, as one slow run (a busy machine) would aim most
    // kills past the end of the runs.
    crash.take_snapshot("s0");
    let mut snapshot_time = u64::MAX;
    for name in ["s1", "s2", "s3"] {
        crash.change_source();
        let t = Instant::now();
        crash.take_snapshot(name);
        snapshot_time = snapshot_time.min(millis(t.elapsed()));
    }
    crash.trim();
    let t = Instant::now();
    ok(snapfs(&crash.store).args(["gc", "--min-dead", "0"]));
    let gc_time = millis(t.elapsed());
    crash.check(None, "after the first gc");
    eprintln!("incremental snapshot {snapshot_time} ms, gc {gc_time} ms");

    let mut gc_kills = 0;
    for round in 4..4 + rounds {
        let name = format!("s{round}");
        crash.change_source();
        fs::copy(&crash.source, crash.copy_path(&name)).expect("save copy");
        let delay = Duration::from_millis(crash.rng.below(snapshot_time + 1));
        let killed = crash.kill_after(&["snapshot", "create", "d", &name], delay);
        let what = format!("round {round} (killed {killed} after {delay:?}, seed {seed})");
        crash.check(Some(&name), &what);
        if !crash.live.iter().any(|(n, _)| *n == name) {
            // The next snapshot succeeds, under the same name.
            ok(snapfs(&crash.store).args(["snapshot", "create", "d", &name]));
            crash.live.push((name.clone(), crash.copy_path(&name)));
            crash.check_exports(None, &format!("{what}, taken again"), true);
        }
        crash.trim();
        if round % 4 == 0 {
            let delay = Duration::from_millis(crash.rng.below(gc_time + 1));
            let killed = crash.kill_after(&["gc", "--min-dead", "0"], delay);
            gc_kills += killed as u32;
            crash.check(
                None,
                &format!("gc in round {round} (killed {killed} after {delay:?}, seed {seed})"),
            );
        }
    }
    // After all that, a full gc and a last check.
    ok(snapfs(&crash.store).args(["gc", "--min-dead", "0"]));
    crash.check(None, "final gc");
    common::assert_no_pack_leftovers(&crash.store);
    eprintln!(
        "{} runs killed ({gc_kills} of them gc), {} finished first, in {:?}",
        crash.interrupted,
        crash.completed,
        started.elapsed()
    );
    assert!(
        crash.interrupted >= rounds / 3,
        "only {} of the runs were really interrupted",
        crash.interrupted
    );
}
