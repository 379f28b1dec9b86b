//! Hostile arguments to every subcommand: generated names, sizes, levels,
//! rates, policy settings, paths and non-UTF-8 arguments. Whatever comes
//! in, the CLI exits 0, 1 with one line `snapfs: ...` on stderr, or 2
//! (usage) with a reason; it never panics or dies by a signal; a refused
//! command changes nothing in the store and creates nothing beside it.
//! Where the contract says what is valid (snapshot and disk names, chunk
//! sizes, zstd levels), the CLI accepts exactly that.
//!
//! Cases: SNAPFS_FUZZ_CASES (default 40); seed: PROPTEST_RNG_SEED. No
//! root needed: these run the CLI on a store, not a mount.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::hostile::{check, fuzz_runner, paths_under, Fixture};
use common::{ok, run_timeout, snapfs, store_state};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Long enough for a slow machine; a command that takes longer hangs.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A snapshot name the contract allows (as a person chooses it).
fn allowed_snapshot_name(name: &[u8]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    allowed_component(name, 128) && !name.starts_with("auto")
}

fn allowed_component(part: &str, max: usize) -> bool {
    (1..=max).contains(&part.chars().count())
        && !part.starts_with('.')
        && !part.starts_with('-')
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// A disk name the contract allows: one or two components of 1 to 64.
fn allowed_disk_name(name: &[u8]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() <= 2 && parts.iter().all(|p| allowed_component(p, 64))
}

// ------------------------------------------------------------ generators

/// One argument: names, good and hostile, as raw bytes.
fn name_arg() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => "[a-zA-Z0-9_][a-zA-Z0-9._:-]{0,20}".prop_map(String::into_bytes),
        1 => "[a-z]{1,8}/[a-z]{1,8}".prop_map(String::into_bytes),
        1 => prop::sample::select(
            &["s", "d", "..", ".", "/", "../x", "a/../../b", "-x", ".hidden", "auto-1",
              "a b", "a/b/c", "", "x:y", "--help", "-h", "--version"][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => (129usize..300).prop_map(|n| vec![b'n'; n]),
        2 => prop::collection::vec(any::<u8>(), 1..40)
            .prop_map(|mut b| { b.retain(|c| *c != 0); b }),
    ]
    .boxed()
}

/// Sizes as people might type them, and as they should not.
fn size_arg() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => (0u64..5000, prop::sample::select(&["", "K", "M", "G", "T", "KiB", "Q", "k", " M"][..]))
            .prop_map(|(n, unit)| format!("{n}{unit}").into_bytes()),
        1 => prop::sample::select(
            &["-1", "0", "1", "64K", "4M", "8M", "3M", "99999999999999999999", "18446744073709551615T",
              "1e6", "0x10", "", " ", "NaN", "1.5M", "65536", "131072"][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 1..12)
            .prop_map(|mut b| { b.retain(|c| *c != 0); b }),
    ]
    .boxed()
}

fn policy_setting() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        prop::sample::select(
            &[
                "keep-last=3",
                "keep-last=0",
                "keep-daily=x",
                "retain-days=7",
                "retain-days=0",
                "retain-days=forever",
                "max-rate=10M",
                "max-rate=",
                "at=25",
                "days=mon",
                "bogus=1",
                "keep-last",
                "=",
                "every=0",
                "every=-5m",
                "keep-hourly=4294967296"
            ][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 1..20).prop_map(|mut b| {
            b.retain(|c| *c != 0);
            b
        }),
    ]
    .boxed()
}

/// A path argument, always inside the test's folder (or harmless: a
/// missing folder, /dev/null), so that no accepted command can touch
/// anything else.
fn path_arg(base: PathBuf) -> BoxedStrategy<OsString> {
    let inside = name_arg().prop_map(move |name| {
        let mut path = base.clone().into_os_string().into_vec();
        path.push(b'/');
        // Keep it one level inside: a '/' from the name would walk elsewhere.
        // `.`, `..` and "" would name the folder or its parent.
        match name.as_slice() {
            b"" | b"." | b".." => path.extend_from_slice(b"dots"),
            _ => path.extend(name.iter().map(|b| if *b == b'/' { b'_' } else { *b })),
        }
        OsString::from_vec(path)
    });
    prop_oneof![
        3 => inside,
        1 => prop::sample::select(&["/nonexistent/snapfs/x", "/dev/null", ""][..]).prop_map(OsString::from),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
struct Invocation {
    args: Vec<OsString>,
    /// What the contract says of it, where it says something.
    expect: Expect,
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Exit 0 (a valid request that can succeed here).
    Accepted,
    /// Exit 1 or 2.
    Refused,
    /// Whatever status, as long as it is 0, 1 or 2 and well behaved.
    Any,
}

fn any_of(args: Vec<OsString>) -> Invocation {
    Invocation {
        args,
        expect: Expect::Any,
    }
}

/// Compression settings, good and bad.
const COMPRESSIONS: &[&[u8]] = &[b"zstd", b"none", b"lz4", b"lzma", b"", b"\xff"];

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

fn osv(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

/// Every subcommand with generated arguments. `base` is the test's folder.
fn invocation(base: PathBuf) -> BoxedStrategy<Invocation> {
    let b = base.clone();
    prop_oneof![
        // snapshot create d NAME: exactly the allowed, free names are taken
        // (the test refuses a taken one itself).
        4 => name_arg().prop_map(|name| {
            let expect = if allowed_snapshot_name(&name) {
                Expect::Accepted
            } else {
                Expect::Refused
            };
            let mut args = osv(&["snapshot", "create", "d"]);
            args.push(os(&name));
            Invocation { args, expect }
        }),
        // snapshot rename d s NEW: renames stay inside the rules; renamed back after.
        1 => name_arg().prop_map(|name| {
            let expect = if allowed_snapshot_name(&name) { Expect::Any } else { Expect::Refused };
            let mut args = osv(&["snapshot", "rename", "d", "s"]);
            args.push(os(&name));
            Invocation { args, expect }
        }),
        1 => (prop::sample::select(&["rm", "protect", "unprotect"][..]), name_arg(), name_arg())
            .prop_map(move |(verb, disk, name)| {
                let mut args = osv(&["snapshot", verb]);
                args.extend([os(&disk), os(&name)]);
                // Only d/s exists and it is not touched by generated names.
                let names_s = disk == b"d" && name == b"s";
                Invocation { args, expect: if names_s { Expect::Any } else { Expect::Refused } }
            }),
        1 => name_arg().prop_map(|disk| {
            let mut args = osv(&["snapshot", "list"]);
            args.push(os(&disk));
            args.push("--json".into());
            any_of(args)
        }),
        // disk add NAME SOURCE: a name outside the rules is always refused.
        1 => (name_arg(), path_arg(b.clone())).prop_map(|(name, source)| {
            let mut args = osv(&["disk", "add"]);
            args.extend([os(&name), source]);
            let expect = if allowed_disk_name(&name) { Expect::Any } else { Expect::Refused };
            Invocation { args, expect }
        }),
        // disk d stays: other tests of the run need it.
        1 => (name_arg().prop_filter("not d", |n| n != b"d"), any::<bool>()).prop_map(|(name, with)| {
            let mut args = osv(&["disk", "rm"]);
            args.push(os(&name));
            if with {
                args.push("--with-snapshots".into());
            }
            Invocation { args, expect: Expect::Refused }
        }),
        1 => (name_arg(), prop::collection::vec(policy_setting(), 0..4)).prop_map(|(disk, settings)| {
            let mut args = osv(&["policy", "set"]);
            args.push(os(&disk));
            args.extend(settings.iter().map(|s| os(s)));
            any_of(args)
        }),
        1 => (prop::sample::select(&["show", "rm"][..]), name_arg()).prop_map(|(verb, disk)| {
            let mut args = osv(&["policy", verb]);
            args.push(os(&disk));
            any_of(args)
        }),
        1 => (name_arg(), name_arg(), path_arg(b.clone())).prop_map(|(disk, name, out)| {
            let mut args = osv(&["export"]);
            args.extend([os(&disk), os(&name), "-o".into(), out]);
            any_of(args)
        }),
        1 => (name_arg(), name_arg(), path_arg(b.clone())).prop_map(|(disk, name, to)| {
            let mut args = osv(&["rollback"]);
            args.extend([os(&disk), os(&name), "--to".into(), to, "--yes".into()]);
            any_of(args)
        }),
        1 => size_arg().prop_map(|pct| {
            let mut args = osv(&["gc", "--min-dead"]);
            args.push(os(&pct));
            any_of(args)
        }),
        1 => (name_arg(), name_arg()).prop_map(|(disk, name)| {
            let mut args = osv(&["verify"]);
            args.extend([os(&disk), os(&name)]);
            any_of(args)
        }),
        1 => name_arg().prop_map(|disk| {
            let mut args = osv(&["prune"]);
            args.extend([os(&disk), "--dry-run".into()]);
            any_of(args)
        }),
        // mount: the mountpoint never exists, so nothing is ever mounted;
        // bad sizes, thread counts and options are refused before that.
        1 => (size_arg(), size_arg(), size_arg(), name_arg()).prop_map(move |(cache, threads, rate, opts)| {
            let mut args = osv(&["mount"]);
            args.push(base.join("no-such-mountpoint").into_os_string());
            args.extend(["--cache-size".into(), os(&cache), "--threads".into(), os(&threads)]);
            args.extend(["--max-rate".into(), os(&rate), "-o".into(), os(&opts)]);
            Invocation { args, expect: Expect::Refused }
        }),
        1 => path_arg(b.clone()).prop_map(|mnt| {
            let mut args = osv(&["umount"]);
            args.push(mnt);
            Invocation { args, expect: Expect::Refused }
        }),
        // Loose words; never (u)mount, which would act on paths outside the test.
        1 => prop::collection::vec(name_arg(), 0..3)
            .prop_filter("no (u)mount", |w| !w.iter().any(|w| w == b"mount" || w == b"umount"))
            .prop_map(|words| any_of(words.iter().map(|w| os(w)).collect())),
    ]
    .boxed()
}

/// `init` on a fresh folder: accepted exactly for a power-of-two chunk size
/// from 64 KiB to 4 MiB and a zstd level from 1 to 19 with zstd (a level
/// with lz4 or none is refused).
fn init_invocation() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<u8>)> {
    let valid_chunk = prop::sample::select(&["64K", "128K", "256KiB", "1M", "4M", "65536"][..])
        .prop_map(|s| s.as_bytes().to_vec());
    (
        prop_oneof![2 => valid_chunk, 1 => size_arg()],
        prop_oneof![
            3 => (1i64..=19).prop_map(|n| n.to_string().into_bytes()),
            1 => (-3i64..30).prop_map(|n| n.to_string().into_bytes()),
            1 => size_arg(),
        ],
        prop_oneof![
            3 => prop::sample::select(&COMPRESSIONS[..2]).prop_map(|b| b.to_vec()),
            1 => prop::sample::select(COMPRESSIONS).prop_map(|b| b.to_vec()),
        ],
    )
}

fn parse_chunk_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

// ------------------------------------------------------------ checks

fn describe(args: &[OsString]) -> String {
    let words: Vec<String> = args.iter().map(|a| format!("{:?}", a)).collect();
    format!("snapfs {}", words.join(" "))
}

/// Exit 0, 1 (one `snapfs:` line) or 2 (a reason); never a panic or signal.
fn check_behaved(args: &[OsString], ran: &common::Ran) -> Result<(), TestCaseError> {
    let cmd = describe(args);
    check(ran.code.is_some(), || {
        format!("{cmd} died by a signal: {ran:?}")
    })?;
    check(!ran.stderr.contains("panicked"), || {
        format!("{cmd} panicked: {}", ran.stderr)
    })?;
    match ran.code {
        Some(0) => Ok(()),
        Some(1) => {
            let lines: Vec<&str> = ran.stderr.lines().collect();
            check(lines.len() == 1 && lines[0].starts_with("snapfs: "), || {
                format!("{cmd} exited 1 without one clear line: {:?}", ran.stderr)
            })
        }
        Some(2) => check(!ran.stderr.trim().is_empty(), || {
            format!("{cmd}: usage error without a reason")
        }),
        other => Err(TestCaseError::fail(format!(
            "{cmd} exited {other:?}: {}",
            ran.stderr
        ))),
    }
}

/// The store as a user sees it, policies included.
fn state(store: &Path) -> String {
    let policies = ok(snapfs(store).args(["policy", "show", "--json"]));
    format!("{}\npolicies: {policies}", store_state(store))
}

/// Everything beside the store in the test's folder.
fn outside(fx: &Fixture) -> BTreeSet<PathBuf> {
    paths_under(fx.tmp.path())
        .into_iter()
        .filter(|p| !p.starts_with("store"))
        .collect()
}

#[test]
fn every_subcommand_refuses_hostile_arguments_cleanly_and_changes_nothing() {
    let fx = Fixture::new(256 << 10, 11);
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "s"]));
    fuzz_cli(&fx, 40, "cli");
}

/// The same through a mount: commands go through `.create`, the snapshot
/// files and `.control`, and run inside the mount process, which must
/// neither panic nor let a name lead outside the mount.
#[test]
fn through_a_mount_every_subcommand_refuses_hostile_arguments_cleanly() {
    if !common::need_fuse("through_a_mount_every_subcommand_refuses_hostile_arguments_cleanly") {
        return;
    }
    let fx = Fixture::new(256 << 10, 13);
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "s"]));
    let mount = common::mount::Mount::start(&fx.store);
    let parent = mount.path().parent().expect("parent").to_path_buf();
    let beside = common::hostile::names_in(&parent);
    fuzz_cli(&fx, 24, "cli through a mount");
    assert!(
        mount.pid().is_some(),
        "the mount died; log:\n{}",
        mount.log_text()
    );
    // The mount process works in this folder: relative paths must not land here.
    assert_eq!(common::hostile::names_in(&parent), beside);
    let log = mount.unmount();
    assert!(!log.contains("panicked"), "the mount panicked:\n{log}");
}

fn fuzz_cli(fx: &Fixture, default_cases: u32, what: &str) {
    let base = fx.tmp.path().to_path_buf();
    let baseline = std::cell::RefCell::new((state(&fx.store), outside(fx)));
    let counts = std::cell::RefCell::new([0usize; 3]);
    fuzz_runner(default_cases)
        .run(&invocation(base), |inv| {
            let mut inv = inv;
            // A help or version flag anywhere prints it and exits 0.
            let helps = ["--help", "-h", "--version", "-V"];
            if inv.args.iter().any(|a| helps.iter().any(|h| a == h)) {
                inv.expect = Expect::Any;
            }
            let creates = inv.args.len() == 4 && inv.args[..2] == osv(&["snapshot", "create"])[..];
            if creates && inv.expect == Expect::Accepted {
                let name = inv.args[3].to_string_lossy().into_owned();
                if common::list_snapshots(&fx.store)
                    .iter()
                    .any(|(_, n)| *n == name)
                {
                    inv.expect = Expect::Refused;
                }
            }
            // Relative paths land in the test's folder.
            let ran = run_timeout(
                snapfs(&fx.store).args(&inv.args).current_dir(&fx.tmp),
                COMMAND_TIMEOUT,
            );
            check_behaved(&inv.args, &ran)?;
            let cmd = describe(&inv.args);
            match (&inv.expect, ran.code) {
                (Expect::Accepted, Some(code)) => check(code == 0, || {
                    format!("{cmd} refused a valid request: {}", ran.stderr)
                })?,
                (Expect::Refused, Some(code)) => check(code != 0, || {
                    format!("{cmd} accepted what the contract refuses")
                })?,
                _ => {}
            }
            if let Some(code) = ran.code {
                counts.borrow_mut()[code.clamp(0, 2) as usize] += 1;
            }
            let mut baseline = baseline.borrow_mut();
            let now = (state(&fx.store), outside(fx));
            if ran.code == Some(0) {
                *baseline = now;
            } else {
                check(now.0 == baseline.0, || {
                    format!(
                        "refused {cmd} changed the store:\n{}\n->\n{}",
                        baseline.0, now.0
                    )
                })?;
                let appeared: Vec<&PathBuf> = now.1.difference(&baseline.1).collect();
                check(appeared.is_empty(), || {
                    format!("refused {cmd} created {appeared:?}")
                })?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let [accepted, failed, usage] = *counts.borrow();
    eprintln!("{what}: {accepted} accepted, {failed} refused (1), {usage} usage errors (2)");
}

/// The checks of the property are not vacuous: each outcome, once for sure.
#[test]
fn cli_checks_tell_accepted_refused_and_usage_apart() {
    let fx = Fixture::new(256 << 10, 12);
    let cases: [(&[&str], i32); 4] = [
        (&["snapshot", "create", "d", "fine"], 0),
        (&["snapshot", "create", "d", "../escape"], 1),
        (&["snapshot", "create", "d", "auto-mine"], 1),
        (&["gc", "--min-dead", "lots"], 2),
    ];
    for (args, code) in cases {
        let args: Vec<OsString> = osv(args);
        let before = state(&fx.store);
        let ran = run_timeout(snapfs(&fx.store).args(&args), COMMAND_TIMEOUT);
        check_behaved(&args, &ran).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ran.code, Some(code), "{}: {}", describe(&args), ran.stderr);
        if code != 0 {
            assert_eq!(
                state(&fx.store),
                before,
                "refused {} changed the store",
                describe(&args)
            );
        }
    }
    assert!(!fx.path("escape").exists() && !fx.tmp.path().join("../escape").exists());
    let names: Vec<String> = common::list_snapshots(&fx.store)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["fine"]);
}

#[test]
fn init_accepts_exactly_the_settings_the_contract_allows_and_refused_creates_nothing() {
    let tmp = tempfile::Builder::new()
        .prefix("snapfs-hostile-init-")
        .tempdir()
        .expect("temp dir");
    let counter = std::cell::Cell::new(0u32);
    let accepted = std::cell::Cell::new(0u32);
    fuzz_runner(40)
        .run(&init_invocation(), |(chunk, level, compression)| {
            counter.set(counter.get() + 1);
            let store = tmp.path().join(format!("store{}", counter.get()));
            let args: Vec<OsString> = vec![
                "init".into(),
                "--chunk-size".into(),
                os(&chunk),
                "--level".into(),
                os(&level),
                "--compression".into(),
                os(&compression),
            ];
            let ran = run_timeout(
                snapfs(&store).args(&args).current_dir(tmp.path()),
                COMMAND_TIMEOUT,
            );
            check_behaved(&args, &ran)?;
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
            let chunk_ok = text(&chunk)
                .and_then(|t| parse_chunk_size(&t))
                .is_some_and(|n| n.is_power_of_two() && ((64 << 10)..=(4 << 20)).contains(&n));
            let level_ok = text(&level)
                .and_then(|t| t.parse::<i64>().ok())
                .is_some_and(|n| (1..=19).contains(&n));
            // --level is always given here, and it is zstd's alone.
            let compression_ok = compression == b"zstd";
            let valid = chunk_ok && level_ok && compression_ok;
            let cmd = describe(&args);
            check((ran.code == Some(0)) == valid, || {
                format!(
                    "{cmd}: exit {:?}, contract says valid={valid}: {}",
                    ran.code, ran.stderr
                )
            })?;
            if valid {
                accepted.set(accepted.get() + 1);
            } else {
                check(!store.exists(), || {
                    format!("refused {cmd} created {}", store.display())
                })?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("init: {} of {} accepted", accepted.get(), counter.get());
    // Not vacuous: a valid and an invalid one, for sure.
    let valid = tmp.path().join("valid");
    ok(snapfs(&valid).args(["init", "--chunk-size", "128K", "--level", "19"]));
    let invalid = tmp.path().join("invalid");
    common::fails(snapfs(&invalid).args(["init", "--chunk-size", "96K"]));
    assert!(valid.join("FORMAT").exists() && !invalid.exists());
}
