//! Who may see and change what. A store holds the contents of people's
//! disks: its folders are 0700 and its files 0600 whatever the umask,
//! including files made later (new packs, gc rewrites, sled's own files,
//! the daemon's log). Outputs made for the user follow the user's umask.
//! A mount is for its owner; with `-o allow_other` others may read
//! snapshots, never take, delete, rename them or run commands.
//!
//! The mount tests need root and /dev/fuse: without them they skip with a
//! printed reason, unless SNAPFS_REQUIRE_FUSE=1 (CI) makes them fail.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::hostile::{as_user, modes_under, names_in, with_umask, Fixture, NOBODY};
use common::mount::Mount;
use common::{need_fuse, ok, overwrite_random, run, snapfs, Rng};

const MIB: u64 = 1 << 20;

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn assert_store_private(store: &Path, when: &str) {
    let modes = modes_under(store);
    assert!(
        modes.iter().any(|(p, _, _)| p.starts_with("packs")) && modes.len() > 5,
        "{when}: the store holds too little to check: {modes:?}"
    );
    for (path, mode, is_dir) in modes {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(
            mode,
            want,
            "{when}: {} in the store has mode {mode:o}, expected {want:o}",
            store.join(&path).display()
        );
    }
}

/// Under umask 0, every command that writes the store (init, disk add,
/// snapshots, a daemon mount with its log, gc rewriting a pack) leaves
/// only 0700 folders and 0600 files.
#[test]
fn store_folders_are_0700_and_files_0600_even_under_umask_0() {
    if !need_fuse("store_folders_are_0700_and_files_0600_even_under_umask_0") {
        return;
    }
    // Every command below, and the mount, inherits it.
    unsafe { libc::umask(0) };
    let fx = Fixture::new(3 * MIB, 1);
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "s1"]));
    assert_store_private(&fx.store, "after the first snapshot");

    // A daemon mount (it makes the log file) takes a snapshot and sets a policy.
    let (mount, ran) = Mount::daemon(&fx.store);
    assert_eq!(ran.code, Some(0), "mount --daemon: {ran:?}");
    overwrite_random(&fx.source, MIB, MIB, &mut Rng::new(2));
    fs::write(mount.disk("d").join(".create"), "s2\n").expect("snapshot through .create");
    fs::write(mount.disk("d").join(".policy"), "every=1h keep-last=2\n").expect("policy");
    mount.unmount();
    assert!(
        fx.store.join("snapfs.log").exists(),
        "the daemon wrote no log"
    );
    assert_store_private(&fx.store, "after a daemon mount");

    // gc rewrites the pack of s1 (a third of it is dead once s1 goes).
    ok(snapfs(&fx.store).args(["snapshot", "rm", "d", "s1"]));
    let packs_before = names_in(&fx.store.join("packs"));
    let report: serde_json::Value = serde_json::from_str(&ok(snapfs(&fx.store).args([
        "gc",
        "--min-dead",
        "0",
        "--json",
    ])))
    .expect("gc JSON");
    assert!(
        report["packs_rewritten"].as_u64() >= Some(1),
        "gc rewrote no pack: {report}"
    );
    assert_ne!(names_in(&fx.store.join("packs")), packs_before);
    assert_store_private(&fx.store, "after gc rewrote a pack");
    ok(snapfs(&fx.store).arg("verify"));
}

/// Export and rollback outputs are the user's files: a new one gets 0666
/// minus the umask (not the store's 0600); an existing one keeps its mode.
#[test]
fn outputs_made_for_the_user_follow_the_users_umask() {
    if !need_fuse("outputs_made_for_the_user_follow_the_users_umask") {
        return;
    }
    let fx = Fixture::new(MIB, 3);
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "s"]));
    for (mask, want) in [
        (0o022, 0o644),
        (0o000, 0o666),
        (0o077, 0o600),
        (0o027, 0o640),
    ] {
        let out = fx.path(&format!("export-{mask:o}.img"));
        ok(with_umask(
            snapfs(&fx.store).args(["export", "d", "s", "-o"]).arg(&out),
            mask,
        ));
        assert_eq!(mode_of(&out), want, "export under umask {mask:o}");
        let out = fx.path(&format!("rollback-{mask:o}.img"));
        ok(with_umask(
            snapfs(&fx.store)
                .args(["rollback", "d", "s", "--yes", "--to"])
                .arg(&out),
            mask,
        ));
        assert_eq!(mode_of(&out), want, "rollback --to under umask {mask:o}");
        assert_eq!(
            fs::read(&out).expect("read"),
            fs::read(&fx.source).expect("read")
        );
    }
    // A store's missing parent folders are the user's: 0777 minus the umask.
    let nested = fx.path("a/b/store");
    ok(with_umask(snapfs(&nested).arg("init"), 0o022));
    assert_eq!(mode_of(&fx.path("a")), 0o755);
    assert_eq!(mode_of(&fx.path("a/b")), 0o755);
    assert_eq!(mode_of(&nested), 0o700);

    // An existing output keeps the mode its owner gave it.
    let existing = fx.path("existing.img");
    fs::write(&existing, b"old").expect("write");
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o640)).expect("chmod");
    ok(with_umask(
        snapfs(&fx.store)
            .args(["export", "d", "s", "-o"])
            .arg(&existing),
        0,
    ));
    assert_eq!(mode_of(&existing), 0o640);
    assert_eq!(
        fs::read(&existing).expect("read"),
        fs::read(&fx.source).expect("read")
    );

    // Through a mount the client writes the output: the same modes.
    let mount = Mount::start(&fx.store);
    let out = fx.path("through-mount.img");
    ok(with_umask(
        snapfs(&fx.store).args(["export", "d", "s", "-o"]).arg(&out),
        0o022,
    ));
    assert_eq!(mode_of(&out), 0o644, "export through the mount");
    assert_eq!(
        fs::read(&out).expect("read"),
        fs::read(&fx.source).expect("read")
    );
    mount.unmount();
}

/// What user nobody gets from `cmd` run against the mount.
fn as_nobody(cmd: &mut Command) -> common::Ran {
    run(as_user(cmd, NOBODY))
}

fn assert_denied(ran: &common::Ran, what: &str) {
    assert_ne!(ran.code, Some(0), "nobody could {what}: {ran:?}");
    assert!(
        ran.stderr.contains("Permission denied"),
        "nobody trying to {what}: expected EACCES, got {ran:?}"
    );
}

/// Without `-o allow_other` another user cannot even stat the mount; with
/// it, they list and read snapshots but cannot take, delete or rename
/// one, change the policy or run commands through `.control`.
#[test]
fn a_mount_is_its_owners_unless_allow_other_and_then_read_only_to_others() {
    if !need_fuse("a_mount_is_its_owners_unless_allow_other_and_then_read_only_to_others") {
        return;
    }
    let fx = Fixture::new(MIB, 4);
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "s"]));
    // nobody may walk to the mountpoint: a refusal must come from the mount.
    let open_parent = |mount: &Mount| {
        let parent = mount.path().parent().expect("parent");
        fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).expect("chmod");
        let ran = as_nobody(Command::new("stat").arg(parent));
        assert_eq!(
            ran.code,
            Some(0),
            "nobody cannot reach the mount's folder: {ran:?}"
        );
    };

    let mount = Mount::start(&fx.store);
    open_parent(&mount);
    let snap = mount.disk("d").join("s");
    assert_denied(
        &as_nobody(Command::new("stat").arg(mount.path())),
        "stat the mount",
    );
    assert_denied(
        &as_nobody(Command::new("ls").arg(mount.disk("d"))),
        "list a disk",
    );
    assert_denied(
        &as_nobody(Command::new("cat").arg(&snap)),
        "read a snapshot",
    );
    mount.unmount();

    // allow_root: the kernel lets everyone in, snapfs answers only root
    // and the owner (here both are root).
    let mount = Mount::start_with(&fx.store, &["-o", "allow_root"]);
    open_parent(&mount);
    assert_denied(
        &as_nobody(Command::new("ls").arg(mount.disk("d"))),
        "list a disk (allow_root)",
    );
    assert_denied(
        &as_nobody(Command::new("cat").arg(mount.disk("d").join("s"))),
        "read a snapshot (allow_root)",
    );
    mount.unmount();

    let mount = Mount::start_with(&fx.store, &["-o", "allow_other"]);
    open_parent(&mount);
    let disk = mount.disk("d");
    let snap = disk.join("s");
    let listed = as_nobody(Command::new("ls").arg("-A").arg(&disk));
    assert_eq!(
        listed.code,
        Some(0),
        "nobody cannot list with allow_other: {listed:?}"
    );
    assert_eq!(listed.stdout, ".create\n.policy\n.status\ns\n");
    let read = as_nobody(Command::new("cat").arg(&snap));
    assert_eq!(
        read.code,
        Some(0),
        "nobody cannot read a snapshot: {read:?}"
    );
    assert!(
        read.stdout_bytes == fs::read(&fx.source).expect("read source"),
        "nobody read other bytes than the source's"
    );
    let status = as_nobody(Command::new("cat").arg(disk.join(".status")));
    assert_eq!(
        status.code,
        Some(0),
        "nobody cannot read .status: {status:?}"
    );

    let shell =
        |script: &str| as_nobody(Command::new("sh").arg("-c").arg(script).current_dir(&disk));
    assert_denied(&shell("echo mine > .create"), "take a snapshot");
    assert_denied(&shell("printf mine >> .create"), "take a snapshot (append)");
    assert_denied(&shell("echo every=1m > .policy"), "set a policy");
    assert_denied(&shell("echo none > .policy"), "remove the policy");
    assert_denied(
        &as_nobody(Command::new("rm").arg("-f").arg(&snap)),
        "delete a snapshot",
    );
    assert_denied(
        &as_nobody(Command::new("mv").arg(&snap).arg(disk.join("t"))),
        "rename a snapshot",
    );
    assert_denied(
        &as_nobody(Command::new("cat").arg(mount.path().join(".control"))),
        "read .control",
    );
    assert_denied(
        &as_nobody(
            Command::new("sh")
                .arg("-c")
                .arg("echo '[\"snapshot\",\"rm\",\"d\",\"s\"]' > .control")
                .current_dir(mount.path()),
        ),
        "run a command through .control",
    );
    assert_denied(
        &as_nobody(Command::new("touch").arg(disk.join("new"))),
        "create a file",
    );
    // Nothing changed.
    assert_eq!(names_in(&disk), [".create", ".policy", ".status", "s"]);
    assert_eq!(
        fs::read_to_string(disk.join(".policy")).expect("policy"),
        "none\n"
    );
    mount.unmount();
    assert_eq!(common::list_snapshots(&fx.store).len(), 1);
}
