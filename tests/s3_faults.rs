//! Faults between snapfs and its bucket, through a fault-injecting proxy
//! in front of a real SeaweedFS: 503 SlowDown answers are retried, a
//! server that dies mid-upload fails the snapshot cleanly, a mount's
//! reads while the server is unreachable fail with EIO and work again
//! once it is back, damaged objects are EIO and named by verify, and a
//! deleted cache folder is filled again.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::mount::Mount;
use common::s3_proxy::{Behaviour, Proxy};
use common::seaweed::{need_weed, Seaweed, ACCESS_KEY, SECRET_KEY};
use common::{ok, run, snapfs, write_random_file, Rng};
use tempfile::TempDir;

const BUCKET: &str = "faults";

struct Fixture {
    weed: Seaweed,
    proxy: Proxy,
    dir: TempDir,
    store: PathBuf,
}

impl Fixture {
    /// A server, a proxy in front of it, and a store in the bucket that
    /// talks through the proxy.
    fn new() -> Fixture {
        let weed = Seaweed::start();
        weed.create_bucket(BUCKET);
        let proxy = Proxy::start(weed.s3_port());
        let dir = tempfile::tempdir().expect("temporary folder");
        let store = dir.path().join("store");
        let fx = Fixture {
            weed,
            proxy,
            dir,
            store,
        };
        ok(fx.snapfs().args([
            "init",
            "--packs",
            &format!("s3://{BUCKET}/s"),
            "--cache-size",
            "64M",
        ]));
        fx
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn snapfs(&self) -> Command {
        let mut cmd = snapfs(&self.store);
        self.weed.env(&mut cmd, Some(&self.proxy.endpoint()));
        cmd
    }

    fn envs(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.proxy.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    }

    /// A disk `name` of `len` random bytes, added to the store.
    fn disk(&self, name: &str, len: u64, rng: &mut Rng) -> PathBuf {
        let path = self.path(&format!("{name}.img"));
        write_random_file(&path, len, rng);
        ok(self.snapfs().args(["disk", "add", name]).arg(&path));
        path
    }

    fn export(&self, disk: &str, name: &str) -> PathBuf {
        let out = self.path(&format!("{disk}-{name}.export"));
        ok(self.snapfs().args(["export", disk, name, "-o"]).arg(&out));
        out
    }

    fn snapshots(&self) -> String {
        ok(self.snapfs().args(["snapshot", "list"]))
    }
}

/// The errno of a failed read of `len` bytes at `offset` of `path`.
fn read_errno(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
    let file = std::fs::File::open(path).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| e.raw_os_error().unwrap_or(0))?;
    Ok(buf)
}

fn bytes_of(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut file = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; len];
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)).expect("seek");
    file.read_exact(&mut buf).expect("read");
    buf
}

#[test]
fn slowdown_answers_are_retried_with_backoff() {
    if !need_weed("slowdown_answers_are_retried_with_backoff") {
        return;
    }
    let fx = Fixture::new();
    let mut rng = Rng::new(21);
    let disk = fx.disk("vm", 3 << 20, &mut rng);
    fx.proxy.set(Behaviour::SlowDown(3));
    ok(fx.snapfs().args(["snapshot", "create", "vm", "one"]));
    assert_eq!(fx.proxy.slowdowns(), 3, "the proxy's 503s were met");
    fx.proxy.set(Behaviour::SlowDown(2));
    common::assert_same_file(&fx.export("vm", "one"), &disk);
    assert_eq!(fx.proxy.slowdowns(), 5);
}

#[test]
fn server_dying_mid_upload_fails_the_snapshot_and_the_next_one_works() {
    if !need_weed("server_dying_mid_upload_fails_the_snapshot_and_the_next_one_works") {
        return;
    }
    let fx = Fixture::new();
    let mut rng = Rng::new(22);
    // Incompressible and over 16 MiB: one pack uploaded in parts.
    let disk = fx.disk("vm", 20 << 20, &mut rng);
    fx.proxy.set(Behaviour::DieMidUpload(0));
    let ran = run(fx.snapfs().args(["snapshot", "create", "vm", "lost"]));
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let lines: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|l| l.starts_with("snapfs: "))
        .collect();
    assert_eq!(lines.len(), 1, "{}", ran.stderr);
    assert!(
        fx.proxy.dropped() > 1,
        "the upload was retried, then given up"
    );
    fx.proxy.set(Behaviour::Forward);
    // Nothing half made is listed, here or in the bucket.
    assert!(!fx.snapshots().contains("lost"));
    let bucket = fx.weed.client(BUCKET);
    assert!(
        bucket.keys_ending("s", ".pack").is_empty(),
        "no pack object appeared"
    );
    assert_eq!(
        bucket.keys_ending("s", ".json").len(),
        1,
        "only the store object"
    );
    assert!(common::hostile::names_in(&fx.store.join("staging")).is_empty());
    // The server is back: the next snapshot works.
    ok(fx.snapfs().args(["snapshot", "create", "vm", "next"]));
    common::assert_same_file(&fx.export("vm", "next"), &disk);
    ok(fx.snapfs().arg("verify"));
}

#[test]
fn snapshot_of_several_packs_survives_a_server_dying_in_its_second_upload() {
    let test = "snapshot_of_several_packs_survives_a_server_dying_in_its_second_upload";
    if !need_weed(test) {
        return;
    }
    let fx = Fixture::new();
    let mut rng = Rng::new(27);
    // Incompressible, over two packs of 128 MiB: the first is uploaded
    // while the second fills, and committed before the snapshot ends.
    let disk = fx.disk("vm", 300 << 20, &mut rng);
    // 8 MiB parts: 16 make the first pack; die in the second.
    fx.proxy.set(Behaviour::DieMidUpload(20));
    let ran = run(fx.snapfs().args(["snapshot", "create", "vm", "lost"]));
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(fx.proxy.forwarded() > 16, "the first pack went up");
    fx.proxy.set(Behaviour::Forward);
    assert!(!fx.snapshots().contains("lost"));
    ok(fx.snapfs().args(["snapshot", "create", "vm", "next"]));
    common::assert_same_file(&fx.export("vm", "next"), &disk);
    let bucket = fx.weed.client(BUCKET);
    // What the failed snapshot left in the bucket is dead: gc removes it.
    ok(fx.snapfs().args(["gc", "--min-dead", "0"]));
    assert_eq!(
        bucket.keys_ending("s", ".pack").len(),
        3,
        "the packs of next only"
    );
    assert_eq!(bucket.keys_ending("s", ".index").len(), 3);
    ok(fx.snapfs().arg("verify"));
    // And the bucket alone has it all.
    let again = fx.path("again");
    let mut rebuild = snapfs(&again);
    fx.weed.env(&mut rebuild, Some(&fx.proxy.endpoint()));
    ok(rebuild.args(["init", "--from", &format!("s3://{BUCKET}/s")]));
    let mut export = snapfs(&again);
    fx.weed.env(&mut export, Some(&fx.proxy.endpoint()));
    let out = fx.path("again.export");
    ok(export.args(["export", "vm", "next", "-o"]).arg(&out));
    common::assert_same_file(&out, &disk);
}

#[test]
fn server_killed_during_a_snapshot_fails_it_and_after_a_restart_the_next_works() {
    let test = "server_killed_during_a_snapshot_fails_it_and_after_a_restart_the_next_works";
    if !need_weed(test) {
        return;
    }
    let mut fx = Fixture::new();
    let mut rng = Rng::new(29);
    let disk = fx.disk("vm", 300 << 20, &mut rng);
    let mut create = fx.snapfs();
    create
        .args(["snapshot", "create", "vm", "lost"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = create.spawn().expect("start snapshot create");
    // Once the first pack is in the bucket, the server is killed (SIGKILL)
    // while the next packs are written and uploaded.
    let bucket = fx.weed.client(BUCKET);
    let mut killed_mid_way = false;
    loop {
        if child.try_wait().expect("poll snapshot create").is_some() {
            break;
        }
        if !bucket.keys_ending("s", ".pack").is_empty() {
            fx.weed.kill();
            killed_mid_way = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("snapshot create ends");
    fx.weed.restart();
    if killed_mid_way {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("snapfs: ")).count(),
            1,
            "{stderr}"
        );
        assert!(!fx.snapshots().contains("lost"));
    } else {
        // The snapshot beat the poll; nothing was killed mid-way.
        let _ = writeln!(
            std::io::stderr(),
            "NOTE {test}: the snapshot ended before the kill"
        );
    }
    ok(fx.snapfs().args(["snapshot", "create", "vm", "next"]));
    common::assert_same_file(&fx.export("vm", "next"), &disk);
    ok(fx.snapfs().arg("verify"));
}

#[test]
fn gc_with_no_grace_beside_a_running_snapshot_keeps_its_packs() {
    let test = "gc_with_no_grace_beside_a_running_snapshot_keeps_its_packs";
    if !need_weed(test) || !common::need_fuse(test) {
        return;
    }
    let fx = Fixture::new();
    let mut rng = Rng::new(28);
    let disk = fx.disk("vm", 300 << 20, &mut rng);
    ok(fx.snapfs().args(["snapshot", "create", "vm", "old"]));
    write_random_file(&disk, 300 << 20, &mut rng);
    ok(fx.snapfs().args(["snapshot", "rm", "vm", "old"]));
    let mount = Mount::start_env(&fx.store, &[], &fx.envs());
    let create = mount.disk("vm").join(".create");
    let snapshot = std::thread::spawn(move || std::fs::write(create, "new\n"));
    // gc through the mount, again and again, while the snapshot uploads
    // and commits its packs: none of them is an orphan.
    let mut passes = 0;
    while !snapshot.is_finished() {
        ok(fx
            .snapfs()
            .args(["gc", "--min-dead", "0", "--orphan-grace", "0"]));
        passes += 1;
    }
    snapshot
        .join()
        .expect("the snapshot thread")
        .expect("the snapshot through .create");
    assert!(passes > 0);
    common::assert_same_file(&mount.disk("vm").join("new"), &disk);
    drop(mount);
    ok(fx.snapfs().arg("verify"));
    common::assert_same_file(&fx.export("vm", "new"), &disk);
}

#[test]
fn reads_while_the_server_is_unreachable_fail_with_eio_and_work_again_after() {
    let test = "reads_while_the_server_is_unreachable_fail_with_eio_and_work_again_after";
    if !need_weed(test) || !common::need_fuse(test) {
        return;
    }
    let fx = Fixture::new();
    let mut rng = Rng::new(23);
    let disk = fx.disk("vm", 4 << 20, &mut rng);
    ok(fx.snapfs().args(["snapshot", "create", "vm", "one"]));
    let mount = Mount::start_env(&fx.store, &["--cache-size", "1M"], &fx.envs());
    let image = mount.disk("vm").join("one");
    fx.proxy.set(Behaviour::Down);
    assert_eq!(read_errno(&image, 1 << 20, 4096), Err(libc::EIO));
    assert!(fx.proxy.dropped() > 0);
    fx.proxy.set(Behaviour::Forward);
    // Same mount, same file: the read works now.
    assert_eq!(
        read_errno(&image, 1 << 20, 4096).expect("read after the server came back"),
        bytes_of(&disk, 1 << 20, 4096)
    );
    common::assert_same_file(&image, &disk);
}

#[test]
fn damaged_objects_answer_eio_and_verify_names_them() {
    if !need_weed("damaged_objects_answer_eio_and_verify_names_them") {
        return;
    }
    let fx = Fixture::new();
    let mut rng = Rng::new(24);
    fx.disk("vm", 3 << 20, &mut rng);
    ok(fx.snapfs().args(["snapshot", "create", "vm", "one"]));
    let bucket = fx.weed.client(BUCKET);
    let packs = bucket.keys_ending("s", ".pack");
    assert_eq!(packs.len(), 1, "{packs:?}");
    let key = &packs[0];
    let mut bytes = bucket.get(key);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    bucket.put(key, bytes.clone());

    // Never wrong bytes: the export fails, naming the damage.
    let ran = run(fx
        .snapfs()
        .args(["export", "vm", "one", "-o"])
        .arg(fx.path("out")));
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("corrupt chunk"), "{}", ran.stderr);
    let ran = run(fx.snapfs().arg("verify"));
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(
        ran.stdout
            .contains(&format!("DAMAGED OBJECT s3://{BUCKET}/{key}")),
        "{}",
        ran.stdout
    );

    // Truncated: verify --quick sees the size without reading data.
    bytes.truncate(middle);
    bucket.put(key, bytes);
    let ran = run(fx.snapfs().args(["verify", "--quick"]));
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(
        ran.stdout.contains(key.as_str()) && ran.stdout.contains("committed"),
        "{}",
        ran.stdout
    );
    let ran = run(fx
        .snapfs()
        .args(["export", "vm", "one", "-o"])
        .arg(fx.path("out2")));
    assert_eq!(ran.code, Some(1), "{ran:?}");
}

#[test]
fn cache_folder_deleted_under_a_mount_is_filled_again() {
    let test = "cache_folder_deleted_under_a_mount_is_filled_again";
    if !need_weed(test) || !common::need_fuse(test) {
        return;
    }
    let fx = Fixture::new();
    let mut rng = Rng::new(25);
    let first = fx.disk("a", 3 << 20, &mut rng);
    let second = fx.disk("b", 3 << 20, &mut rng);
    ok(fx.snapfs().args(["snapshot", "create", "a", "one"]));
    ok(fx.snapfs().args(["snapshot", "create", "b", "one"]));
    let mount = Mount::start_env(&fx.store, &["--cache-size", "1M"], &fx.envs());
    common::assert_same_file(&mount.disk("a").join("one"), &first);
    let cache = fx.store.join("cache");
    assert!(
        !common::hostile::names_in(&cache).is_empty(),
        "reads filled the cache"
    );
    std::fs::remove_dir_all(&cache).expect("delete the cache folder");
    common::assert_same_file(&mount.disk("b").join("one"), &second);
    assert!(
        !common::hostile::names_in(&cache).is_empty(),
        "the cache was filled again"
    );
}

#[test]
fn gc_in_the_bucket_rewrites_sparse_packs_removes_dead_ones_and_orphans_after_their_grace() {
    let test =
        "gc_in_the_bucket_rewrites_sparse_packs_removes_dead_ones_and_orphans_after_their_grace";
    if !need_weed(test) {
        return;
    }
    let fx = Fixture::new();
    let mut rng = Rng::new(26);
    let disk = fx.disk("vm", 2 << 20, &mut rng);
    ok(fx.snapfs().args(["snapshot", "create", "vm", "old"]));
    let bucket = fx.weed.client(BUCKET);
    let old_packs = bucket.keys_ending("s", ".pack");
    assert_eq!(old_packs.len(), 1, "{old_packs:?}");
    common::overwrite_random(&disk, 0, 1 << 20, &mut rng);
    ok(fx.snapfs().args(["snapshot", "create", "vm", "mid"]));
    let mid = fx.path("mid.copy");
    std::fs::copy(&disk, &mid).expect("copy the disk");
    write_random_file(&disk, 2 << 20, &mut rng);
    ok(fx.snapfs().args(["snapshot", "create", "vm", "new"]));

    // Half of the old pack is dead: it is rewritten, its object goes.
    ok(fx.snapfs().args(["snapshot", "rm", "vm", "old"]));
    let said = ok(fx.snapfs().args(["gc", "--min-dead", "0"]));
    assert!(said.contains("1 packs rewritten"), "{said}");
    assert!(!bucket.keys_ending("s", ".pack").contains(&old_packs[0]));
    common::assert_same_file(&fx.export("vm", "mid"), &mid);

    // All of mid's packs are dead now: removed.
    ok(fx.snapfs().args(["snapshot", "rm", "vm", "mid"]));
    let before = bucket.keys_ending("s", ".pack").len();
    let said = ok(fx.snapfs().args(["gc", "--min-dead", "0"]));
    assert!(!said.contains(" 0 packs removed"), "{said}");
    assert!(bucket.keys_ending("s", ".pack").len() < before);

    // A pack a crashed writer uploaded and never committed (id ff...).
    let orphan = old_packs[0]
        .rsplit_once('/')
        .expect("a key in a folder")
        .0
        .to_string()
        + "/ff00000000000000.pack";
    bucket.put(&orphan, vec![7u8; 100]);
    ok(fx.snapfs().arg("gc"));
    assert!(
        bucket.keys_ending("s", ".pack").contains(&orphan),
        "a young orphan stays: a writer may still commit it"
    );
    let said = ok(fx.snapfs().args(["gc", "--orphan-grace", "0"]));
    assert!(said.contains("1 uncommitted pack(s) removed"), "{said}");
    assert!(!bucket.keys_ending("s", ".pack").contains(&orphan));
    assert_eq!(
        bucket.keys_ending("s", ".index").len(),
        bucket.keys_ending("s", ".pack").len()
    );
    common::assert_same_file(&fx.export("vm", "new"), &disk);
    ok(fx.snapfs().arg("verify"));
}
