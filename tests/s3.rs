//! Packs in an S3 bucket, against a real SeaweedFS: a store made with
//! `init --packs` works like a local one (snapshots, export, the mount),
//! `init --from` rebuilds it from the bucket alone, and a bucket that
//! refuses us is refused at init and at open with one clear line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::mount::Mount;
use common::seaweed::{aws_env, need_weed, Seaweed, ACCESS_KEY};
use common::{fails, ok, snapfs, write_random_file, Rng};
use tempfile::TempDir;

const BUCKET: &str = "snapfs-test";

/// A server with a bucket, a temporary folder, and the store in it.
struct Fixture {
    weed: Seaweed,
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let weed = Seaweed::start();
        weed.create_bucket(BUCKET);
        Fixture {
            weed,
            dir: tempfile::tempdir().expect("temporary folder"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `snapfs --store STORE` with the server's AWS environment.
    fn snapfs(&self, store: &Path) -> Command {
        let mut cmd = snapfs(store);
        self.weed.env(&mut cmd, None);
        cmd
    }

    fn envs(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.weed.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            (
                "AWS_SECRET_ACCESS_KEY",
                common::seaweed::SECRET_KEY.to_string(),
            ),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    }

    /// A store in the bucket under `prefix`.
    fn init(&self, store: &Path, prefix: &str) {
        let url = format!("s3://{BUCKET}/{prefix}");
        let said = ok(self
            .snapfs(store)
            .args(["init", "--packs", &url, "--cache-size", "64M"]));
        assert!(said.contains(&url), "{said}");
        // Bytes in a bucket cost transfer: zstd is its default.
        assert!(said.contains("compression zstd"), "{said}");
    }

    fn export(&self, store: &Path, disk: &str, name: &str) -> PathBuf {
        let out = self.path(&format!("{disk}-{name}.export"));
        ok(self
            .snapfs(store)
            .args(["export", disk, name, "-o"])
            .arg(&out));
        out
    }
}

/// A disk image of `len` random bytes, and a copy of it as it is now.
fn disk_with_copy(fx: &Fixture, name: &str, len: u64, rng: &mut Rng) -> (PathBuf, PathBuf) {
    let disk = fx.path(name);
    write_random_file(&disk, len, rng);
    let copy = fx.path(&format!("{name}.copy1"));
    std::fs::copy(&disk, &copy).expect("copy the disk");
    (disk, copy)
}

fn snapshot_names(fx: &Fixture, store: &Path) -> Vec<(String, String)> {
    let listed = ok(fx.snapfs(store).args(["snapshot", "list"]));
    listed
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

#[test]
fn store_in_a_bucket_takes_snapshots_and_exports_them_byte_for_byte() {
    if !need_weed("store_in_a_bucket_takes_snapshots_and_exports_them_byte_for_byte") {
        return;
    }
    let fx = Fixture::new();
    let store = fx.path("store");
    fx.init(&store, "hosts/a");
    let mut rng = Rng::new(11);
    let (disk, first) = disk_with_copy(&fx, "vm.img", 6 << 20, &mut rng);
    ok(fx.snapfs(&store).args(["disk", "add", "vm"]).arg(&disk));
    ok(fx.snapfs(&store).args(["snapshot", "create", "vm", "one"]));
    common::overwrite_random(&disk, 1 << 20, 1 << 20, &mut rng);
    ok(fx.snapfs(&store).args(["snapshot", "create", "vm", "two"]));

    common::assert_same_file(&fx.export(&store, "vm", "one"), &first);
    common::assert_same_file(&fx.export(&store, "vm", "two"), &disk);

    let stats = ok(fx.snapfs(&store).arg("stats"));
    assert!(
        stats.contains(&format!("s3://{BUCKET}/hosts/a/stores/")),
        "{stats}"
    );
    assert!(stats.contains("pack cache:"), "{stats}");
    // The packs are in the bucket, with their index objects and one
    // manifest per snapshot; none is kept locally.
    let bucket = fx.weed.client(BUCKET);
    let packs = bucket.keys_ending("hosts/a", ".pack");
    assert!(!packs.is_empty());
    assert_eq!(bucket.keys_ending("hosts/a", ".index").len(), packs.len());
    assert_eq!(
        bucket.keys_ending("hosts/a", ".json").len(),
        3,
        "store + 2 manifests"
    );
    assert!(
        !store.join("packs").exists() || common::hostile::names_in(&store.join("packs")).is_empty()
    );
    assert!(common::hostile::names_in(&store.join("staging")).is_empty());
    ok(fx.snapfs(&store).arg("verify"));
    ok(fx.snapfs(&store).args(["verify", "--quick"]));
}

#[test]
fn mount_of_a_store_in_a_bucket_reads_every_snapshot() {
    let test = "mount_of_a_store_in_a_bucket_reads_every_snapshot";
    if !need_weed(test) || !common::need_fuse(test) {
        return;
    }
    let fx = Fixture::new();
    let store = fx.path("store");
    fx.init(&store, "m");
    let mut rng = Rng::new(12);
    let (disk, first) = disk_with_copy(&fx, "vm.img", (5 << 20) + 4096, &mut rng);
    ok(fx.snapfs(&store).args(["disk", "add", "vm"]).arg(&disk));
    ok(fx.snapfs(&store).args(["snapshot", "create", "vm", "one"]));
    common::overwrite_random(&disk, 0, 300_000, &mut rng);
    ok(fx.snapfs(&store).args(["snapshot", "create", "vm", "two"]));
    // A small chunk cache: reads go to the pack cache and the bucket.
    let mount = Mount::start_env(&store, &["--cache-size", "1M"], &fx.envs());
    common::assert_same_file(&mount.disk("vm").join("one"), &first);
    common::assert_same_file(&mount.disk("vm").join("two"), &disk);
    // A snapshot taken through the mount lands in the bucket too.
    common::overwrite_random(&disk, 4 << 20, 4096, &mut rng);
    ok(fx
        .snapfs(&store)
        .args(["snapshot", "create", "vm", "three"]));
    common::assert_same_file(&mount.disk("vm").join("three"), &disk);
    drop(mount);
    assert_eq!(
        fx.weed.client(BUCKET).keys_ending("m", ".json").len(),
        4,
        "store + 3 manifests"
    );
}

#[test]
fn init_from_rebuilds_every_snapshot_from_the_bucket_alone() {
    if !need_weed("init_from_rebuilds_every_snapshot_from_the_bucket_alone") {
        return;
    }
    let fx = Fixture::new();
    let old = fx.path("old-host");
    fx.init(&old, "fleet");
    let mut rng = Rng::new(13);
    let (a, a1) = disk_with_copy(&fx, "a.img", 3 << 20, &mut rng);
    let (b, _) = disk_with_copy(&fx, "b.img", 2 << 20, &mut rng);
    ok(fx.snapfs(&old).args(["disk", "add", "a"]).arg(&a));
    ok(fx.snapfs(&old).args(["disk", "add", "b"]).arg(&b));
    ok(fx.snapfs(&old).args(["snapshot", "create", "a", "one"]));
    ok(fx.snapfs(&old).args(["snapshot", "create", "b", "gone"]));
    common::overwrite_random(&a, 0, 500_000, &mut rng);
    ok(fx.snapfs(&old).args(["snapshot", "create", "a", "two"]));
    ok(fx.snapfs(&old).args(["snapshot", "create", "b", "keep"]));
    ok(fx.snapfs(&old).args(["snapshot", "rm", "b", "gone"]));
    ok(fx
        .snapfs(&old)
        .args(["snapshot", "rename", "a", "two", "latest"]));
    ok(fx.snapfs(&old).args(["snapshot", "protect", "b", "keep"]));
    let before = snapshot_names(&fx, &old);

    // The old host is gone: only the bucket is left.
    std::fs::remove_dir_all(&old).expect("lose the old host's store");
    let new = fx.path("new-host");
    let said = ok(fx
        .snapfs(&new)
        .args(["init", "--from", &format!("s3://{BUCKET}/fleet")]));
    assert!(said.contains("3 snapshot(s)"), "{said}");
    assert_eq!(snapshot_names(&fx, &new), before);
    common::assert_same_file(&fx.export(&new, "a", "one"), &a1);
    common::assert_same_file(&fx.export(&new, "a", "latest"), &a);
    common::assert_same_file(&fx.export(&new, "b", "keep"), &b);
    let protected = fails(fx.snapfs(&new).args(["snapshot", "rm", "b", "keep"]));
    assert!(protected.contains("protected"), "{protected}");
    ok(fx.snapfs(&new).arg("verify"));

    // The new host goes on where the old one stopped.
    common::overwrite_random(&a, 1 << 20, 4096, &mut rng);
    ok(fx.snapfs(&new).args(["snapshot", "create", "a", "after"]));
    common::assert_same_file(&fx.export(&new, "a", "after"), &a);
    assert_eq!(
        fx.weed.client(BUCKET).keys_ending("fleet", ".json").len(),
        5,
        "store + 4 manifests"
    );
}

#[test]
fn manifest_whose_pack_is_missing_is_reported_and_not_imported() {
    if !need_weed("manifest_whose_pack_is_missing_is_reported_and_not_imported") {
        return;
    }
    let fx = Fixture::new();
    let old = fx.path("old");
    fx.init(&old, "p");
    let mut rng = Rng::new(14);
    let (a, a1) = disk_with_copy(&fx, "a.img", 2 << 20, &mut rng);
    ok(fx.snapfs(&old).args(["disk", "add", "a"]).arg(&a));
    ok(fx.snapfs(&old).args(["snapshot", "create", "a", "one"]));
    let bucket = fx.weed.client(BUCKET);
    let first_packs = bucket.keys_ending("p", ".pack");
    common::write_random_file(&a, 2 << 20, &mut rng);
    ok(fx.snapfs(&old).args(["snapshot", "create", "a", "two"]));
    // The pack that only snapshot two reaches goes missing.
    let new_packs: Vec<String> = bucket
        .keys_ending("p", ".pack")
        .into_iter()
        .filter(|key| !first_packs.contains(key))
        .collect();
    assert_eq!(new_packs.len(), 1, "{new_packs:?}");
    bucket.delete(&new_packs[0]);

    let new = fx.path("new");
    let ran = common::run(
        fx.snapfs(&new)
            .args(["init", "--from", &format!("s3://{BUCKET}/p")]),
    );
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(
        ran.stderr
            .lines()
            .any(|l| l.starts_with("not imported:") && l.contains("snapshot two of disk a")),
        "{}",
        ran.stderr
    );
    assert!(ran.stdout.contains("1 snapshot(s)"), "{}", ran.stdout);
    assert_eq!(
        snapshot_names(&fx, &new),
        vec![("a".to_string(), "one".to_string())]
    );
    common::assert_same_file(&fx.export(&new, "a", "one"), &a1);
}

#[test]
fn wrong_credentials_and_a_missing_bucket_are_refused_with_one_line() {
    if !need_weed("wrong_credentials_and_a_missing_bucket_are_refused_with_one_line") {
        return;
    }
    let fx = Fixture::new();
    let endpoint = fx.weed.endpoint();
    let store = fx.path("store");
    let mut wrong = snapfs(&store);
    aws_env(&mut wrong, &endpoint, ACCESS_KEY, "not-the-secret");
    let said = fails(wrong.args(["init", "--packs", &format!("s3://{BUCKET}/x")]));
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(said.contains("refused the credentials"), "{said}");

    let missing =
        fails(
            fx.snapfs(&fx.path("other"))
                .args(["init", "--packs", "s3://no-such-bucket/x"]),
        );
    assert_eq!(missing.trim().lines().count(), 1, "{missing}");
    assert!(missing.contains("does not exist"), "{missing}");

    // An existing store refuses to open with the wrong credentials.
    fx.init(&store, "x");
    let mut wrong = snapfs(&store);
    aws_env(&mut wrong, &endpoint, ACCESS_KEY, "not-the-secret");
    let said = fails(wrong.args(["snapshot", "list"]));
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(said.contains("refused the credentials"), "{said}");
    // And a prefix that holds a store is not given to a second one.
    let twice =
        fails(
            fx.snapfs(&fx.path("second"))
                .args(["init", "--packs", &format!("s3://{BUCKET}/x")]),
        );
    assert!(twice.contains("already holds a snapfs store"), "{twice}");
}

#[test]
fn a_profile_in_the_aws_files_gives_the_endpoint_region_and_keys() {
    if !need_weed("a_profile_in_the_aws_files_gives_the_endpoint_region_and_keys") {
        return;
    }
    let fx = Fixture::new();
    let config = fx.path("aws-config");
    let credentials = fx.path("aws-credentials");
    std::fs::write(
        &config,
        format!(
            "[default]\nregion = eu-west-1\n\n[profile lab]\nregion = us-east-1\nendpoint_url = {}\n",
            fx.weed.endpoint()
        ),
    )
    .expect("write config");
    std::fs::write(
        &credentials,
        format!(
            "[lab]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {}\n",
            common::seaweed::SECRET_KEY
        ),
    )
    .expect("write credentials");
    // Nothing in the environment but the profile's name and files.
    let with_profile = |store: &Path| {
        let mut cmd = snapfs(store);
        for (var, _) in std::env::vars().filter(|(v, _)| v.starts_with("AWS_")) {
            cmd.env_remove(var);
        }
        cmd.env("AWS_PROFILE", "lab")
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", &credentials);
        cmd
    };
    let store = fx.path("store");
    let image = fx.path("disk.img");
    std::fs::write(&image, vec![7u8; 1 << 20]).expect("write image");
    ok(with_profile(&store).args(["init", "--packs", &format!("s3://{BUCKET}/profile")]));
    ok(with_profile(&store).args(["disk", "add", "d"]).arg(&image));
    ok(with_profile(&store).args(["snapshot", "create", "d", "s1"]));
    let out = fx.path("out.img");
    ok(with_profile(&store)
        .args(["export", "d", "s1", "-o"])
        .arg(&out));
    assert_eq!(
        std::fs::read(&out).expect("read export"),
        vec![7u8; 1 << 20]
    );
    // The profile's keys are what let it in: a wrong one is refused.
    // (Without keys at all the client would ask the EC2 metadata service,
    // which is not on loopback: not tried here.)
    let wrong = fx.path("aws-credentials-wrong");
    std::fs::write(
        &wrong,
        format!("[lab]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = not-it\n"),
    )
    .expect("write credentials");
    let said = fails(
        with_profile(&store)
            .env("AWS_SHARED_CREDENTIALS_FILE", &wrong)
            .args(["snapshot", "list"]),
    );
    assert!(said.contains("refused the credentials"), "{said}");
}
