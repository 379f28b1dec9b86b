//! Hostile input through a real mount: generated writes to `.create`,
//! `.policy` and `.control` (random bytes, NUL, non-UTF-8, `/`, `..`,
//! leading `.`/`-`, the reserved `auto` prefix, overlong names, a
//! megabyte and more, names split over several writes), hostile names for
//! rename, create, link and lookup. Each must be refused with its errno
//! and leave nothing behind; valid input is generated too and must work,
//! so no property holds by refusing everything.
//!
//! The expected outcome comes from the contract (DESIGN.md), written out
//! here, not from the code under test. A write to `.create` is one name:
//! a name split over several writes is several names, each judged alone.
//!
//! Cases per property: SNAPFS_FUZZ_CASES (default 48); proptest's seed
//! can be fixed with PROPTEST_RNG_SEED. The tests need root and
//! /dev/fuse: without them they skip with a printed reason, unless
//! SNAPFS_REQUIRE_FUSE=1 (CI) makes them fail.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::hostile::{check, errno_of, fuzz_runner, names_in, write_once, write_parts, Fixture};
use common::mount::Mount;
use common::{need_fuse, ok, snapfs};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const DISK_LEN: u64 = 256 << 10;
const CONTROL_FILES: [&str; 3] = [".create", ".policy", ".status"];
/// Past this many snapshots a property deletes them, so long runs stay fast.
const MAX_KEPT: usize = 40;
/// `.status` keeps 20 outcome lines: however hostile the writes, it stays small.
const MAX_STATUS_LEN: usize = 64 << 10;

// ------------------------------------------------------------ the contract

/// The snapshot name a write to `.create` asks for, if the contract allows
/// it: one trailing newline dropped; UTF-8; 1 to 128 of letters, digits,
/// `.` `_` `-` `:`; not starting with `.` or `-`; not `auto...`.
fn allowed_name(bytes: &[u8]) -> Option<String> {
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let name = std::str::from_utf8(text).ok()?;
    let good_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    let ok = (1..=128).contains(&name.chars().count())
        && good_chars
        && !name.starts_with('.')
        && !name.starts_with('-')
        && !name.starts_with("auto");
    ok.then(|| name.to_string())
}

// ------------------------------------------------------------ generators

fn valid_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_:][a-zA-Z0-9._:-]{0,24}",
        "[a-z0-9][a-z0-9.-]{100,127}",
    ]
}

/// Fragments that must never be accepted inside a name.
const HOSTILE: &[&[u8]] = &[
    b"/",
    b"..",
    b"../",
    b"/..",
    b"\0",
    b" ",
    b"\t",
    b"\n",
    b"\r\n",
    b"\xff",
    b"\xc3",
    "é".as_bytes(),
    "\u{202e}".as_bytes(),
    b"*",
    b"\\",
    b"$(id)",
    b"%s%n",
    b"\x1b[2J",
];

/// Whole names that must never be accepted.
const FIXED_HOSTILE: &[&[u8]] = &[
    b".",
    b"..",
    b"/",
    b"\n",
    b"\n\n",
    b"\0",
    b"auto",
    b"a\0",
    b"nightly\n\n",
    b"one\ntwo",
];

fn hostile_name() -> BoxedStrategy<Vec<u8>> {
    let spliced = (
        valid_name(),
        prop::sample::select(HOSTILE),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(name, bad, at)| {
            let mut bytes = name.into_bytes();
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, bad.iter().copied());
            bytes
        });
    let prefixed = (
        prop::sample::select(&[".", "-", "auto", "auto-", "..", "../", "/", "./"][..]),
        valid_name(),
    )
        .prop_map(|(prefix, name)| format!("{prefix}{name}").into_bytes());
    let fixed = prop::sample::select(FIXED_HOSTILE).prop_map(|b| b.to_vec());
    let overlong = (129usize..400).prop_map(|n| vec![b'x'; n]);
    let random = prop::collection::vec(any::<u8>(), 1..300);
    prop_oneof![
        3 => spliced,
        2 => prefixed,
        1 => fixed,
        1 => overlong,
        2 => random,
    ]
    .boxed()
}

/// A megabyte or more in one write(2): the kernel hands it over in one or
/// more requests, and it is refused either way.
fn huge_write() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(&[(1usize << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20][..]),
        any::<u8>(),
    )
        .prop_map(|(len, fill)| {
            let fill = if allowed_name(&[fill]).is_some() {
                fill
            } else {
                b'z'
            };
            vec![fill; len]
        })
}

/// The writes of one open of `.create`: mostly one, sometimes a name
/// split over several.
fn create_writes() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let single = prop_oneof![
        4 => valid_name().prop_map(|n| n.into_bytes()),
        2 => valid_name().prop_map(|n| format!("{n}\n").into_bytes()),
        6 => hostile_name(),
        1 => huge_write(),
    ]
    .prop_map(|w| vec![w]);
    let split = (
        valid_name(),
        prop::collection::vec(any::<prop::sample::Index>(), 1..3),
    )
        .prop_map(|(name, cuts)| {
            let bytes = format!("{name}\n").into_bytes();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| 1 + c.index(bytes.len() - 1)).collect();
            cuts.sort();
            cuts.dedup();
            let mut parts = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                if cut > start {
                    parts.push(bytes[start..cut].to_vec());
                    start = cut;
                }
            }
            parts
        });
    prop_oneof![5 => single, 1 => split]
}

// ------------------------------------------------------------ the world

/// A mount of a store with disk `d`, and what must hold around it.
struct World {
    fx: Fixture,
    mount: Mount,
    disk: PathBuf,
    /// The snapshots of `d`, as the contract says they must be.
    taken: BTreeSet<String>,
    store_top: Vec<String>,
    mount_parent: Vec<String>,
}

impl World {
    fn new(seed: u64) -> World {
        let fx = Fixture::new(DISK_LEN, seed);
        let mount = Mount::start(&fx.store);
        let disk = mount.disk("d");
        let store_top = names_in(&fx.store);
        let mount_parent = names_in(mount.path().parent().expect("parent"));
        World {
            fx,
            mount,
            disk,
            taken: BTreeSet::new(),
            store_top,
            mount_parent,
        }
    }

    fn expected_listing(&self) -> Vec<String> {
        let mut names: Vec<String> = CONTROL_FILES.iter().map(|s| s.to_string()).collect();
        names.extend(self.taken.iter().cloned());
        names.sort();
        names
    }

    /// The folder shows exactly the snapshots the contract allows, and no
    /// file appeared in the store's top folder or beside the mountpoint.
    fn check_nothing_else(&self) -> Result<(), TestCaseError> {
        let listing = names_in(&self.disk);
        check(listing == self.expected_listing(), || {
            format!(
                "folder lists {listing:?}, expected {:?}",
                self.expected_listing()
            )
        })?;
        let status_len = fs::metadata(self.disk.join(".status")).map_or(0, |m| m.len());
        check(status_len as usize <= MAX_STATUS_LEN, || {
            format!(".status grew to {status_len} bytes")
        })?;
        let top = names_in(&self.fx.store);
        check(top == self.store_top, || format!("store now holds {top:?}"))?;
        let parent = names_in(self.mount.path().parent().expect("parent"));
        check(parent == self.mount_parent, || {
            format!("beside the mountpoint: {parent:?}")
        })?;
        let root = names_in(self.mount.path());
        check(root == [".control", "d"], || {
            format!("mount root lists {root:?}")
        })
    }

    /// The catalog (through the CLI) names the same snapshots, and each
    /// reads back as the source.
    fn check_catalog(&self) {
        let listed: BTreeSet<String> = common::list_snapshots(&self.fx.store)
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        assert_eq!(
            listed, self.taken,
            "snapshot list disagrees with the contract"
        );
        let source = fs::read(&self.fx.source).expect("read source");
        for name in &self.taken {
            let image = fs::read(self.disk.join(name)).expect("read snapshot");
            assert!(image == source, "snapshot {name} differs from its source");
        }
    }

    /// Deletes every snapshot when there are many (with `rm`, as a user).
    fn thin_out(&mut self) {
        if self.taken.len() > MAX_KEPT {
            for name in std::mem::take(&mut self.taken) {
                fs::remove_file(self.disk.join(&name)).expect("rm snapshot");
            }
        }
    }
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
    format!("{text:?} ({} bytes)", bytes.len())
}

// ------------------------------------------------------------ .create

#[test]
fn create_takes_exactly_the_names_the_contract_allows() {
    if !need_fuse("create_takes_exactly_the_names_the_contract_allows") {
        return;
    }
    let world = RefCell::new(World::new(1));
    let (accepted, refused) = (Cell::new(0usize), Cell::new(0usize));
    fuzz_runner(48)
        .run(&create_writes(), |writes| {
            let mut world = world.borrow_mut();
            let parts: Vec<&[u8]> = writes.iter().map(|w| w.as_slice()).collect();
            let results = write_parts(&world.disk.join(".create"), &parts);
            check(results.len() == parts.len(), || {
                format!("open failed: {results:?}")
            })?;
            let mut last = None;
            for (part, result) in parts.iter().zip(results) {
                let expected = match allowed_name(part) {
                    None => Err(libc::EINVAL),
                    Some(name) if world.taken.contains(&name) => Err(libc::EEXIST),
                    Some(name) => {
                        world.taken.insert(name);
                        Ok(part.len())
                    }
                };
                let count = if expected.is_ok() {
                    &accepted
                } else {
                    &refused
                };
                count.set(count.get() + 1);
                check(result == expected, || {
                    format!(
                        "write {} to .create: {result:?}, expected {expected:?}",
                        show(part)
                    )
                })?;
                last = Some(expected);
            }
            // The last outcome is the last line of `.status`, saying why.
            let status = fs::read_to_string(world.disk.join(".status")).expect(".status");
            let line = status.lines().last().unwrap_or_default();
            let says = match last {
                Some(Ok(_)) => "accomplished",
                Some(Err(libc::EEXIST)) => "already has a snapshot",
                _ => "refused",
            };
            check(line.contains(says), || {
                format!(".status ends with {line:?}, expected it to say {says:?}")
            })?;
            world.check_nothing_else()?;
            world.thin_out();
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (accepted, refused) = (accepted.get(), refused.get());
    eprintln!("create: {accepted} names accepted, {refused} refused");
    assert!(
        accepted > 0 && refused > 0,
        "the generator must produce both kinds"
    );
    let world = world.into_inner();
    world.check_catalog();
    world.check_nothing_else().unwrap_or_else(|e| panic!("{e}"));
    world.mount.unmount();
}

/// A megabyte of junk to `.create` and `.policy`, many times: each refused,
/// and `.status` (a few short lines per outcome) stays small and readable.
#[test]
fn huge_refused_writes_leave_status_small() {
    if !need_fuse("huge_refused_writes_leave_status_small") {
        return;
    }
    let world = World::new(2);
    let junk = vec![b'q'; 1 << 20];
    let mut with_space = junk.clone();
    with_space.extend_from_slice(b" keep-last=3");
    for _ in 0..25 {
        assert_eq!(
            write_once(&world.disk.join(".create"), &junk),
            Err(libc::EINVAL)
        );
        assert_eq!(
            write_once(&world.disk.join(".policy"), &with_space),
            Err(libc::EINVAL)
        );
    }
    let status = fs::read_to_string(world.disk.join(".status")).expect(".status");
    assert!(
        status.len() <= MAX_STATUS_LEN,
        ".status is {} bytes after refused writes",
        status.len()
    );
    let last = status.lines().last().unwrap_or_default();
    assert!(
        last.contains("refused") && last.contains(" bytes)"),
        ".status must still say what was refused: {last:?}"
    );
    world.check_nothing_else().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fs::read_to_string(world.disk.join(".policy")).expect("policy"),
        "none\n"
    );
}

// ------------------------------------------------------------ .policy

/// Settings that never schedule a snapshot (no `at`, no `every`), so the
/// mount's policy runner leaves the folder alone.
fn valid_policy() -> impl Strategy<Value = (String, Vec<String>)> {
    let setting = prop_oneof![
        (1u32..1000).prop_map(|n| format!("keep-last={n}")),
        (1u32..1000).prop_map(|n| format!("keep-hourly={n}")),
        (1u32..1000).prop_map(|n| format!("keep-daily={n}")),
        (1u32..1000).prop_map(|n| format!("keep-weekly={n}")),
        (1u32..1000).prop_map(|n| format!("keep-monthly={n}")),
        (1u32..=65536).prop_map(|n| format!("retain-days={n}")),
        (1u32..512).prop_map(|n| format!("max-rate={n}M")),
    ];
    (
        prop::collection::vec(setting, 1..5),
        prop::sample::select(&[" ", "\n", "  ", "\t"][..]),
        any::<bool>(),
    )
        .prop_map(|(settings, sep, newline)| {
            // A key given twice: the last wins; expect each key once.
            let mut seen = BTreeSet::new();
            let settings: Vec<String> = settings
                .into_iter()
                .rev()
                .filter(|s| seen.insert(s.split('=').next().unwrap_or_default().to_string()))
                .collect();
            let mut text = settings.join(sep);
            if newline {
                text.push('\n');
            }
            (text, settings)
        })
}

/// Text that is never a valid policy: a bad setting among good ones, a
/// non-ASCII or NUL byte, random bytes, a megabyte.
fn junk_policy() -> BoxedStrategy<Vec<u8>> {
    let bad = prop::sample::select(
        &[
            "bogus=1",
            "keep-last",
            "keep-last=0",
            "keep-last=-1",
            "keep-daily=1.5",
            "retain-days=0",
            "retain-days=65537",
            "at=24",
            "at=2 every=1h",
            "days=mon",
            "every=soon",
            "max-rate=fast",
            "none keep-last=3",
            "keep-last=3\0",
            "keep-last=é",
            "=",
            "../../etc=1",
        ][..],
    );
    let mixed =
        (valid_policy(), bad, any::<prop::sample::Index>()).prop_map(|((_, settings), bad, at)| {
            let mut words: Vec<String> = settings;
            let at = at.index(words.len() + 1);
            words.insert(at, bad.to_string());
            words.join(" ").into_bytes()
        });
    let random = prop::collection::vec(any::<u8>(), 1..200).prop_map(|mut b| {
        b.push(0xff);
        b
    });
    let huge = Just(vec![b'k'; (1 << 20) + 7]);
    prop_oneof![5 => mixed, 2 => random, 1 => huge].boxed()
}

#[derive(Debug, Clone)]
enum PolicyWrite {
    Valid(String, Vec<String>),
    None,
    Junk(Vec<u8>),
}

#[test]
fn policy_takes_valid_settings_and_refuses_junk_unchanged() {
    if !need_fuse("policy_takes_valid_settings_and_refuses_junk_unchanged") {
        return;
    }
    let world = World::new(3);
    let policy = world.disk.join(".policy");
    let writes = prop_oneof![
        3 => valid_policy().prop_map(|(t, s)| PolicyWrite::Valid(t, s)),
        1 => Just(PolicyWrite::None),
        5 => junk_policy().prop_map(PolicyWrite::Junk),
    ];
    let (valid, junk) = (Cell::new(0usize), Cell::new(0usize));
    fuzz_runner(48)
        .run(&writes, |write| {
            let before = fs::read_to_string(&policy).expect("read .policy");
            match write {
                PolicyWrite::Valid(text, settings) => {
                    valid.set(valid.get() + 1);
                    let result = write_once(&policy, text.as_bytes());
                    check(result.is_ok(), || {
                        format!("policy {text:?} refused: {result:?}")
                    })?;
                    let after = fs::read_to_string(&policy).expect("read .policy");
                    for setting in &settings {
                        // Counts read back as written; a rate in its own units.
                        let shown = if setting.starts_with("max-rate=") {
                            "max-rate="
                        } else {
                            setting.as_str()
                        };
                        check(
                            after.split_whitespace().any(|w| w.starts_with(shown)),
                            || format!("policy {text:?} reads back as {after:?}"),
                        )?;
                    }
                }
                PolicyWrite::None => {
                    check(write_once(&policy, b"none\n").is_ok(), || {
                        "none refused".into()
                    })?;
                    let after = fs::read_to_string(&policy).expect("read .policy");
                    check(after == "none\n", || format!("after none: {after:?}"))?;
                }
                PolicyWrite::Junk(bytes) => {
                    junk.set(junk.get() + 1);
                    let result = write_once(&policy, &bytes);
                    check(result == Err(libc::EINVAL), || {
                        format!("policy {}: {result:?}, expected EINVAL", show(&bytes))
                    })?;
                    let after = fs::read_to_string(&policy).expect("read .policy");
                    check(after == before, || {
                        format!(
                            "refused policy {} changed it: {before:?} -> {after:?}",
                            show(&bytes)
                        )
                    })?;
                }
            }
            world.check_nothing_else()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (valid, junk) = (valid.get(), junk.get());
    eprintln!("policy: {valid} valid, {junk} junk");
    assert!(
        valid > 0 && junk > 0,
        "the generator must produce both kinds"
    );
    // The CLI agrees with the file.
    let file = fs::read_to_string(&policy).expect("read .policy");
    let shown = ok(snapfs(&world.fx.store).args(["policy", "show", "d"]));
    if file != "none\n" {
        assert!(
            shown.contains(file.trim()),
            "policy show: {shown:?}, .policy: {file:?}"
        );
    }
    world.mount.unmount();
}

// ------------------------------------------------------------ .control

/// Sends `request` through one open of `.control` and reads the response.
fn control(mnt: &Path, request: &[u8]) -> Result<serde_json::Value, i32> {
    let mut file = errno_of(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(mnt.join(".control")),
    )?;
    errno_of(file.write_all(request))?;
    let mut response = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = errno_of(file.read_at(&mut buf, response.len() as u64))?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    Ok(serde_json::from_slice(&response).expect("the mount answers JSON"))
}

#[test]
fn control_refuses_junk_requests_with_a_usage_error() {
    if !need_fuse("control_refuses_junk_requests_with_a_usage_error") {
        return;
    }
    let world = World::new(4);
    let mnt = world.mount.path().to_path_buf();
    let not_json = prop::collection::vec(any::<u8>(), 1..400)
        .prop_filter("a JSON array of strings is a request", |b| {
            serde_json::from_slice::<Vec<String>>(b).is_err()
        });
    // Arguments that are no subcommand: clap refuses them.
    let bad_args = (
        "zz[a-z/.-]{0,10}",
        prop::collection::vec("[ -~]{0,20}", 0..4),
    )
        .prop_map(|(first, rest)| {
            let args: Vec<String> = std::iter::once(first).chain(rest).collect();
            serde_json::to_vec(&args).expect("json")
        });
    let requests = prop_oneof![not_json, bad_args];
    fuzz_runner(32)
        .run(&requests, |request| {
            let response = control(&mnt, &request)
                .map_err(|errno| TestCaseError::fail(format!("control errno {errno}")))?;
            check(response["code"] == 2, || {
                format!("request {}: {response}", show(&request))
            })?;
            check(
                response["stderr"]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                || format!("no reason given: {response}"),
            )?;
            world.check_nothing_else()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // More than a megabyte is refused outright, and the mount still serves.
    assert_eq!(
        control(&mnt, &vec![b'['; (1 << 20) + 1]).err(),
        Some(libc::EFBIG)
    );
    let listed = control(&mnt, br#"["snapshot","list","--json"]"#).expect("control");
    assert_eq!(listed["code"], 0, "{listed}");
    world.check_nothing_else().unwrap_or_else(|e| panic!("{e}"));
    world.mount.unmount();
}

// ------------------------------------------------------------ other files

/// Writes to files that take none, with generated bytes: refused with the
/// errno the contract names, and nothing changes.
#[test]
fn files_that_take_no_writes_refuse_them() {
    if !need_fuse("files_that_take_no_writes_refuse_them") {
        return;
    }
    let mut world = World::new(5);
    assert_eq!(write_once(&world.disk.join(".create"), b"s\n"), Ok(()));
    world.taken.insert("s".into());
    let targets: Vec<(PathBuf, i32)> = vec![
        (world.disk.join(".status"), libc::EACCES),
        (world.disk.join("s"), libc::EROFS),
        (world.disk.clone(), libc::EISDIR),
        (world.mount.path().to_path_buf(), libc::EISDIR),
    ];
    let cases = (
        prop::sample::select((0..targets.len()).collect::<Vec<_>>()),
        prop::collection::vec(any::<u8>(), 1..100),
    );
    fuzz_runner(32)
        .run(&cases, |(target, bytes)| {
            let (path, errno) = &targets[target];
            let result = write_once(path, &bytes);
            check(result == Err(*errno), || {
                format!("write to {}: {result:?}, expected {errno}", path.display())
            })?;
            world.check_nothing_else()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    world.check_catalog();
    world.mount.unmount();
}

// ------------------------------------------------------------ names in the mount

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in path")
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// rename(2) straight, as `mv` would (mv falls back to copying on EXDEV).
fn rename(from: &Path, to: &Path) -> Result<(), i32> {
    match unsafe { libc::rename(c_path(from).as_ptr(), c_path(to).as_ptr()) } {
        0 => Ok(()),
        _ => Err(last_errno()),
    }
}

/// A name as a path component: bytes without NUL and `/`.
fn component() -> impl Strategy<Value = Vec<u8>> {
    hostile_name().prop_map(|mut bytes| {
        bytes.retain(|b| *b != 0 && *b != b'/');
        if bytes.is_empty() {
            bytes.push(b'_');
        }
        bytes
    })
}

#[derive(Debug, Clone)]
enum NameOp {
    /// `mv s NEW` inside the disk folder.
    Rename(Vec<u8>),
    /// `mv s` to a path through `..` or into another folder.
    RenameOut(Vec<u8>),
    /// create(2), mkdir(2), symlink(2), link(2) with the name.
    Make(Vec<u8>),
    /// stat and rm of a name that was never made.
    Missing(Vec<u8>),
}

/// Renames with hostile names go by the contract; files with hostile names
/// cannot be made; no name leaves its folder.
#[test]
fn hostile_names_cannot_be_made_renamed_to_or_leave_their_folder() {
    if !need_fuse("hostile_names_cannot_be_made_renamed_to_or_leave_their_folder") {
        return;
    }
    let mut world = World::new(6);
    ok(snapfs(&world.fx.store).args(["snapshot", "create", "d", "s"]));
    world.taken.insert("s".into());
    let world = RefCell::new(world);
    let valid_or_hostile = prop_oneof![valid_name().prop_map(|n| n.into_bytes()), component()];
    let ops = prop_oneof![
        3 => valid_or_hostile.clone().prop_map(NameOp::Rename),
        1 => component().prop_map(NameOp::RenameOut),
        2 => component().prop_map(NameOp::Make),
        1 => valid_or_hostile.prop_map(NameOp::Missing),
    ];
    fuzz_runner(48)
        .run(&ops, |op| {
            let mut world = world.borrow_mut();
            let disk = world.disk.clone();
            let current = world.taken.iter().next().cloned().expect("one snapshot");
            let from = disk.join(&current);
            match &op {
                NameOp::Rename(new) => {
                    let to = disk.join(OsStr::from_bytes(new));
                    let expected = if new.as_slice() == b"." || new.as_slice() == b".." {
                        Err(libc::EBUSY)
                    } else if new.len() > 255 {
                        // The kernel lets FUSE judge names up to 1024 bytes.
                        Err(libc::EINVAL)
                    } else {
                        match allowed_name(new) {
                            // A trailing newline is part of a file name.
                            Some(name) if name.len() == new.len() => {
                                if name == current {
                                    Ok(())
                                } else if world.taken.contains(&name) {
                                    Err(libc::EEXIST)
                                } else {
                                    Ok(())
                                }
                            }
                            _ => Err(libc::EINVAL),
                        }
                    };
                    let result = rename(&from, &to);
                    let result = match result {
                        Err(libc::ENAMETOOLONG) if new.len() > 255 => Err(libc::EINVAL),
                        other => other,
                    };
                    check(result == expected, || {
                        format!(
                            "rename s to {}: {result:?}, expected {expected:?}",
                            show(new)
                        )
                    })?;
                    if result.is_ok() {
                        world.taken.remove(&current);
                        world
                            .taken
                            .insert(String::from_utf8(new.clone()).expect("valid name"));
                    }
                }
                NameOp::RenameOut(new) => {
                    let name = OsStr::from_bytes(new);
                    for to in [
                        disk.join("..").join(name),
                        disk.join("../..").join(name),
                        disk.join("..").join("..").join("..").join(name),
                        world.mount.path().join(name),
                    ] {
                        let result = rename(&from, &to);
                        // Out of the mount: EXDEV from the kernel; inside it: ours.
                        // `.` and `..` as the last name: EBUSY from the kernel.
                        let dots = new.as_slice() == b"." || new.as_slice() == b"..";
                        let refused =
                            result == Err(libc::EXDEV) || dots && result == Err(libc::EBUSY);
                        check(refused, || {
                            format!("rename s to {}: {result:?}, expected EXDEV", to.display())
                        })?;
                    }
                }
                NameOp::Make(name) => {
                    let path = disk.join(OsStr::from_bytes(name));
                    let too_long = name.len() > 255;
                    let expect = |what: &str, result: Result<(), i32>| {
                        let ok = matches!(result, Err(libc::EPERM) | Err(libc::EEXIST))
                            || too_long && result == Err(libc::ENAMETOOLONG);
                        check(ok, || format!("{what} {}: {result:?}", show(name)))
                    };
                    expect(
                        "create",
                        errno_of(OpenOptions::new().write(true).create_new(true).open(&path))
                            .map(|_| ()),
                    )?;
                    expect("mkdir", errno_of(fs::create_dir(&path)))?;
                    expect(
                        "symlink",
                        errno_of(std::os::unix::fs::symlink(&from, &path)),
                    )?;
                    expect("link", errno_of(fs::hard_link(&from, &path)))?;
                }
                NameOp::Missing(name) => {
                    let path = disk.join(OsStr::from_bytes(name));
                    let known = allowed_name(name).is_some_and(|n| world.taken.contains(&n))
                        || CONTROL_FILES
                            .iter()
                            .any(|c| c.as_bytes() == name.as_slice())
                        || name.as_slice() == b".."
                        || name.as_slice() == b".";
                    if !known {
                        // The kernel lets FUSE judge names up to 1024 bytes.
                        let missing = |r: &Result<(), i32>| {
                            *r == Err(libc::ENOENT)
                                || name.len() > 255 && *r == Err(libc::ENAMETOOLONG)
                        };
                        let stat = errno_of(fs::symlink_metadata(&path)).map(|_| ());
                        check(missing(&stat), || format!("stat {}: {stat:?}", show(name)))?;
                        let rm = errno_of(fs::remove_file(&path));
                        check(missing(&rm), || format!("rm {}: {rm:?}", show(name)))?;
                    }
                }
            }
            world.check_nothing_else()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let world = world.into_inner();
    world.check_catalog();
    world.mount.unmount();
}

/// Where a write lands in `.create` does not matter, nor how its bytes
/// were gathered: each write(2), pwrite(2) or writev(2) is one name.
#[test]
fn create_takes_one_name_per_write_call_whatever_its_offset() {
    if !need_fuse("create_takes_one_name_per_write_call_whatever_its_offset") {
        return;
    }
    let mut world = World::new(7);
    let file = OpenOptions::new()
        .write(true)
        .open(world.disk.join(".create"))
        .expect("open .create");
    for (name, offset) in [
        ("at0", 0u64),
        ("at100", 100),
        ("at5000", 5000),
        ("far", 1 << 40),
    ] {
        assert_eq!(
            errno_of(file.write_at(format!("{name}\n").as_bytes(), offset)),
            Ok(name.len() + 1),
            "pwrite {name} at {offset}"
        );
        world.taken.insert(name.into());
    }
    let parts = [
        std::io::IoSlice::new(b"gath"),
        std::io::IoSlice::new(b"ered\n"),
    ];
    assert_eq!(errno_of((&file).write_vectored(&parts)), Ok(9), "writev");
    world.taken.insert("gathered".into());
    // Refused the same way wherever it lands.
    assert_eq!(
        errno_of(file.write_at(b"../x\n", 1 << 30)),
        Err(libc::EINVAL)
    );
    drop(file);
    let mut append = OpenOptions::new()
        .append(true)
        .open(world.disk.join(".create"))
        .expect("open .create for appending");
    assert_eq!(errno_of(append.write(b"appended")), Ok(8));
    world.taken.insert("appended".into());
    drop(append);
    world.check_nothing_else().unwrap_or_else(|e| panic!("{e}"));
    world.check_catalog();
    world.mount.unmount();
}
