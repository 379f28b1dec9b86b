//! Automatic snapshots on a real mount: policies written into `.policy` or
//! set with the CLI take snapshots at their interval, retention deletes only
//! automatic, unprotected ones, and space comes back without a manual gc.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mount::Mount;
use common::{fails, need_fuse, ok, snapfs, write_random_file, Rng};

fn names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

fn autos(folder: &Path) -> Vec<String> {
    names(folder)
        .into_iter()
        .filter(|n| n.starts_with("auto-"))
        .collect()
}

fn write_once(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).truncate(true).open(path)?;
    file.write_all(text.as_bytes())
}

fn pack_bytes(store: &Path) -> u64 {
    fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Waits until `check` holds, or panics with `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn interval_policy_takes_and_expires_only_automatic_snapshots() {
    if !need_fuse("interval_policy_takes_and_expires_only_automatic_snapshots") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let source = dir.path().join("disk.img");
    let mut rng = Rng::new(7);
    write_random_file(&source, 2 << 20, &mut rng);
    ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
    ok(snapfs(&store).args(["disk", "add", "vm/d"]).arg(&source));
    let mount = Mount::start(&store);
    let folder = mount.disk("vm/d");

    // A manual snapshot, then a policy through .policy.
    write_once(&folder.join(".create"), "manual\n").unwrap();
    write_once(&folder.join(".policy"), "every=1s keep-last=2\n").unwrap();
    assert_eq!(
        fs::read_to_string(folder.join(".policy")).unwrap(),
        "every=1s retain-days=forever keep-last=2\n"
    );

    // Let automatic snapshots come, with the disk changing between them so
    // each adds data of its own, and protect the first one.
    wait_for(
        Duration::from_secs(20),
        "a first automatic snapshot",
        || !autos(&folder).is_empty(),
    );
    let first = autos(&folder)[0].clone();
    ok(snapfs(&store).args(["snapshot", "protect", "vm/d", &first]));
    // Retention keeps at most the manual, the protected and two more, so
    // seeing seven automatic snapshots proves some were taken and expired.
    // On a loaded machine a 1 s schedule may fall behind: wait by count,
    // with a generous deadline, not for a fixed time.
    const WANTED: usize = 7;
    let mut seen = std::collections::BTreeSet::new();
    let started = Instant::now();
    while seen.len() < WANTED {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} automatic snapshots in 60 s: {seen:?}",
            seen.len()
        );
        write_random_file(&source, 2 << 20, &mut rng);
        seen.extend(autos(&folder));
        std::thread::sleep(Duration::from_millis(300));
    }

    // Retention: at most two unprotected automatic snapshots remain, the
    // protected one and the manual one stay.
    ok(snapfs(&store).args(["policy", "set", "vm/d", "--every", "none"]));
    wait_for(Duration::from_secs(10), "retention to catch up", || {
        autos(&folder).iter().filter(|n| **n != first).count() <= 2
    });
    let left = names(&folder);
    assert!(left.contains(&"manual".to_string()), "{left:?}");
    assert!(
        left.contains(&first),
        "protected {first} was deleted: {left:?}"
    );
    let status = fs::read_to_string(folder.join(".status")).unwrap();
    assert!(status.contains("pruned "), "{status}");
    assert!(status.contains("accomplished auto-"), "{status}");

    // rm of the protected snapshot is refused, in the mount and the CLI.
    let err = fs::remove_file(folder.join(&first)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let message = fails(snapfs(&store).args(["snapshot", "rm", "vm/d", &first]));
    assert!(message.contains("protected"), "{message}");

    // Space came back without a manual gc: far less is stored than the
    // snapshots ever taken added.
    let kept = names(&folder).len() as u64;
    wait_for(Duration::from_secs(15), "background gc", || {
        pack_bytes(&store) <= (kept + 2) * (2 << 20) + (1 << 20)
    });
    assert!(
        seen.len() as u64 > kept + 2,
        "{} snapshots seen, {kept} kept",
        seen.len()
    );
    ok(snapfs(&store).arg("verify"));
}

#[test]
fn policy_file_refuses_what_it_cannot_parse() {
    if !need_fuse("policy_file_refuses_what_it_cannot_parse") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let source = dir.path().join("disk.img");
    write_random_file(&source, 1 << 20, &mut Rng::new(1));
    ok(snapfs(&store).args(["disk", "add", "d"]).arg(&source));
    let mount = Mount::start(&store);
    let policy = mount.disk("d").join(".policy");
    assert_eq!(fs::read_to_string(&policy).unwrap(), "none\n");
    write_once(&policy, "at=2,14 days=mon,fri retain-days=7").unwrap();
    let good = "at=2,14 days=mon,fri retain-days=7\n";
    assert_eq!(fs::read_to_string(&policy).unwrap(), good);
    for bad in [
        "at=24",
        "every=soon",
        "retain-days=0",
        "keep-last=-1",
        "colour=blue",
        "at=1 every=1h",
        "days=mon",
        "at",
        "\u{0}",
        "   ",
    ] {
        let err = write_once(&policy, bad).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        assert_eq!(fs::read_to_string(&policy).unwrap(), good, "after {bad:?}");
    }
    let status = fs::read_to_string(mount.disk("d").join(".status")).unwrap();
    assert!(status.contains("refused policy \"at=24\""), "{status}");
    // The CLI sees the same policy, and `none` removes it.
    let shown = ok(snapfs(&store).args(["policy", "show", "d"]));
    assert_eq!(shown, format!("d: {good}"));
    write_once(&policy, "none\n").unwrap();
    assert_eq!(fs::read_to_string(&policy).unwrap(), "none\n");
}

#[test]
fn prune_from_the_cli_keeps_manual_and_protected_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let source = dir.path().join("disk.img");
    write_random_file(&source, 256 << 10, &mut Rng::new(3));
    ok(snapfs(&store).args(["disk", "add", "d"]).arg(&source));
    // Automatic names cannot be chosen by hand...
    let message = fails(snapfs(&store).args(["snapshot", "create", "d", "auto-1"]));
    assert!(message.contains("reserved"), "{message}");
    // ...so take manual ones and rename nothing: prune must leave them.
    for name in ["m1", "m2", "m3"] {
        ok(snapfs(&store).args(["snapshot", "create", "d", name]));
    }
    ok(snapfs(&store).args(["policy", "set", "d", "--keep-last", "1"]));
    let dry = ok(snapfs(&store).args(["prune", "--dry-run"]));
    assert!(dry.contains("0 snapshot(s) would delete"), "{dry}");
    ok(snapfs(&store).args(["prune"]));
    let listed = ok(snapfs(&store).args(["snapshot", "list", "d"]));
    for name in ["m1", "m2", "m3"] {
        assert!(listed.contains(name), "{listed}");
    }
    ok(snapfs(&store).args(["snapshot", "protect", "d", "m1"]));
    fails(snapfs(&store).args(["snapshot", "rm", "d", "m1"]));
    fails(snapfs(&store).args(["disk", "rm", "d", "--with-snapshots"]));
    ok(snapfs(&store).args(["snapshot", "unprotect", "d", "m1"]));
    ok(snapfs(&store).args(["snapshot", "rm", "d", "m1"]));
    let shown = ok(snapfs(&store).args(["policy", "show"]));
    assert_eq!(shown, "d: retain-days=forever keep-last=1\n");
    ok(snapfs(&store).args(["policy", "rm", "d"]));
    assert_eq!(ok(snapfs(&store).args(["policy", "show"])), "no policy\n");
}

#[test]
fn policy_hooks_and_mount_default_hooks_run_around_each_snapshot() {
    if !need_fuse("policy_hooks_and_mount_default_hooks_run_around_each_snapshot") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let source = dir.path().join("disk.img");
    write_random_file(&source, 1 << 20, &mut Rng::new(9));
    ok(snapfs(&store).args(["disk", "add", "d"]).arg(&source));
    let (policy_log, mount_log) = (dir.path().join("policy.log"), dir.path().join("mount.log"));
    let mount_pre = format!("echo \"pre $SNAPFS_SNAPSHOT\" >> '{}'", mount_log.display());
    let mount_post = format!(
        "echo \"post $SNAPFS_SNAPSHOT\" >> '{}'",
        mount_log.display()
    );
    let mount = Mount::start_with(
        &store,
        &["--pre-hook", &mount_pre, "--post-hook", &mount_post],
    );
    let folder = mount.disk("d");

    // `.create` runs the mount's default hooks.
    write_once(&folder.join(".create"), "manual\n").unwrap();
    assert_eq!(
        fs::read_to_string(&mount_log).unwrap(),
        "pre manual\npost manual\n"
    );

    // A policy's own hooks, quoted in `.policy`, replace them.
    let text = format!(
        "every=1h pre-hook='echo \"pre $SNAPFS_SNAPSHOT\" >> {log}' post-hook='echo \"post $SNAPFS_SNAPSHOT\" >> {log}'\n",
        log = policy_log.display()
    );
    write_once(&folder.join(".policy"), &text).unwrap();
    let shown = fs::read_to_string(folder.join(".policy")).unwrap();
    assert!(shown.contains("pre-hook='echo"), "{shown}");
    wait_for(Duration::from_secs(30), "an automatic snapshot", || {
        !autos(&folder).is_empty()
    });
    let auto = autos(&folder)[0].clone();
    assert_eq!(
        fs::read_to_string(&policy_log).unwrap(),
        format!("pre {auto}\npost {auto}\n")
    );
    assert_eq!(
        fs::read_to_string(&mount_log).unwrap(),
        "pre manual\npost manual\n",
        "the mount's hooks did not run for the policy's snapshot"
    );
    mount.unmount();
}
