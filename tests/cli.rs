//! The command line as a user meets it: every kind of bad input fails with
//! exit status 1 and one clear line `snapfs: ...` on stderr and leaves the
//! store as it was; usage errors exit 2; a locked store names its holder;
//! the man page documents every command.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    fails, list_snapshots, ok, run_expect, run_timeout, snapfs, snapfs_bare, store_state,
    usage_error, write_random_file, Rng,
};
// The errno the mount would answer: mapped at the filesystem edge.
use snapfs::fs::ToErrno;
use snapfs::snapshot::{create_snapshot, CreateOptions};
use snapfs::store::OpenOptions;
use snapfs::Repository;
use tempfile::TempDir;

/// A store with one disk `d` (1 MiB of random data) and one snapshot
/// `base`.
struct Fixture {
    tmp: TempDir,
    store: PathBuf,
    source: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let source = tmp.path().join("disk.img");
        write_random_file(&source, (1 << 20) + 12_345, &mut Rng::new(1));
        ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
        ok(snapfs(&store).args(["disk", "add", "d"]).arg(&source));
        ok(snapfs(&store).args(["snapshot", "create", "d", "base"]));
        Fixture { tmp, store, source }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Runs `args`, which must fail with exit 1 and one line on stderr
    /// containing every one of `needles`, and must leave the store as it
    /// was. Returns the line.
    fn fails_unchanged(&self, args: &[&str], needles: &[&str]) -> String {
        let before = store_state(&self.store);
        let line = fails(snapfs(&self.store).args(args));
        for needle in needles {
            assert!(
                line.contains(needle),
                "snapfs {args:?}: message {line:?} does not mention {needle:?}"
            );
        }
        assert_eq!(
            store_state(&self.store),
            before,
            "snapfs {args:?} failed but changed the store"
        );
        line
    }
}

fn bad_snapshot_names() -> Vec<String> {
    vec![
        String::new(),
        ".hidden".into(),
        ".".into(),
        "..".into(),
        "-x".into(),
        "--".into(),
        "a/b".into(),
        "../escape".into(),
        "with space".into(),
        "tab\there".into(),
        "new\nline".into(),
        "caf\u{e9}".into(),
        "\u{1F4A9}".into(),
        "x".repeat(129),
        "auto".into(),
        "auto-20261128".into(),
        "automatic".into(),
        "star*".into(),
        "q?".into(),
    ]
}

#[test]
fn every_bad_snapshot_name_fails_cleanly_and_changes_nothing() {
    let fx = Fixture::new();
    for name in bad_snapshot_names() {
        // `--` so that names starting with '-' reach snapfs as names.
        let line = fx.fails_unchanged(
            &["snapshot", "create", "d", "--", &name],
            &["invalid snapshot name"],
        );
        assert!(!line.contains('\n'));
        fx.fails_unchanged(
            &["snapshot", "rename", "d", "base", "--", &name],
            &["invalid snapshot name"],
        );
    }
    // The longest allowed name and every allowed character work.
    let longest = "x".repeat(128);
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", &longest]));
    ok(snapfs(&fx.store).args(["snapshot", "rename", "d", &longest, "Az09._-:x"]));
    let names: Vec<String> = list_snapshots(&fx.store)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["base", "Az09._-:x"]);
}

#[test]
fn every_bad_disk_name_fails_cleanly_and_changes_nothing() {
    let fx = Fixture::new();
    let source = fx.source.to_str().expect("utf-8 path").to_string();
    let long = "y".repeat(65);
    let long_group = format!("{long}/disk");
    let bad = [
        "",
        "/",
        "a/",
        "/a",
        "a//b",
        "a/b/c",
        "../x",
        "a/..",
        ".x",
        "-x",
        "a b",
        "caf\u{e9}",
        &long,
        &long_group,
        "g/.hidden",
    ];
    for name in bad {
        fx.fails_unchanged(
            &["disk", "add", "--", name, &source],
            &["invalid disk name"],
        );
    }
    // A name cannot be both a disk and a group.
    fx.fails_unchanged(&["disk", "add", "d/sub", &source], &["clashes"]);
    // The same disk twice.
    fx.fails_unchanged(&["disk", "add", "d", &source], &["disk d already exists"]);
    // Commands on disks that do not exist.
    fx.fails_unchanged(
        &["snapshot", "create", "nope", "s"],
        &["no disk named nope"],
    );
    fx.fails_unchanged(&["snapshot", "list", "nope"], &["nope"]);
    fx.fails_unchanged(&["disk", "rm", "nope"], &["no disk named nope"]);
    fx.fails_unchanged(&["verify", "nope"], &["nope"]);
    // A disk with snapshots is not removed by accident.
    fx.fails_unchanged(&["disk", "rm", "d"], &["d", "snapshot"]);
}

#[test]
fn duplicate_and_missing_snapshots_fail_cleanly() {
    let fx = Fixture::new();
    fx.fails_unchanged(
        &["snapshot", "create", "d", "base"],
        &["already has a snapshot named base"],
    );
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "other"]));
    fx.fails_unchanged(
        &["snapshot", "rename", "d", "other", "base"],
        &["already has a snapshot named base"],
    );
    fx.fails_unchanged(&["snapshot", "rm", "d", "ghost"], &["no snapshot ghost"]);
    fx.fails_unchanged(
        &["snapshot", "rename", "d", "ghost", "new"],
        &["no snapshot ghost"],
    );
    fx.fails_unchanged(&["verify", "d", "ghost"], &["no snapshot ghost"]);
    // A failed export creates no output file.
    let out = fx.path("ghost.img");
    let out_str = out.to_str().expect("utf-8");
    fx.fails_unchanged(&["export", "d", "ghost", "-o", out_str], &["ghost"]);
    assert!(!out.exists(), "a failed export left {}", out.display());
    // An export into a folder that does not exist.
    let nowhere = fx.path("no/such/dir/x.img");
    fx.fails_unchanged(
        &[
            "export",
            "d",
            "base",
            "-o",
            nowhere.to_str().expect("utf-8"),
        ],
        &["no/such/dir"],
    );
}

#[test]
fn missing_and_unreadable_sources_fail_cleanly() {
    let fx = Fixture::new();
    let missing = fx.path("missing.img");
    let no_parent = fx.path("no/parent/disk.img");
    let dir = fx.path("a-directory");
    fs::create_dir(&dir).expect("mkdir");
    let fifo = fx.path("a-fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("cstring");
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");

    // At `disk add`.
    for bad in [&missing, &no_parent, &dir, &fifo] {
        let before = store_state(&fx.store);
        let ran = run_timeout(
            snapfs(&fx.store).args(["disk", "add", "x"]).arg(bad),
            Duration::from_secs(30),
        );
        assert_eq!(ran.code, Some(1), "disk add {}: {ran:?}", bad.display());
        let line = ran.stderr.trim_end();
        assert!(
            line.starts_with("snapfs: ") && !line.contains('\n'),
            "one line: {line:?}"
        );
        let name = bad.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(line.contains(name), "{line:?} does not name {name}");
        assert_eq!(store_state(&fx.store), before);
    }

    // At `snapshot create`: the registered source went away or was replaced.
    let source = fx.source.clone();
    let saved = fx.path("saved.img");
    fs::rename(&source, &saved).expect("move source away");
    fx.fails_unchanged(&["snapshot", "create", "d", "s1"], &["disk.img"]);
    fs::create_dir(&source).expect("directory in its place");
    fx.fails_unchanged(
        &["snapshot", "create", "d", "s1"],
        &["disk.img", "not a regular file"],
    );
    fs::remove_dir(&source).expect("rmdir");
    let c_source = std::ffi::CString::new(source.to_str().expect("utf-8")).expect("cstring");
    assert_eq!(unsafe { libc::mkfifo(c_source.as_ptr(), 0o600) }, 0);
    let before = store_state(&fx.store);
    let ran = run_timeout(
        snapfs(&fx.store).args(["snapshot", "create", "d", "s1"]),
        Duration::from_secs(30),
    );
    assert_eq!(ran.code, Some(1), "snapshot of a FIFO: {ran:?}");
    assert!(ran.stderr.contains("disk.img"), "{}", ran.stderr);
    assert_eq!(store_state(&fx.store), before);
    fs::remove_file(&source).expect("rm fifo");

    // Back in place, the disk snapshots again.
    fs::rename(&saved, &source).expect("restore source");
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "s1"]));
}

/// A source that shrinks while it is read (a disk truncated under the
/// snapshot) fails the snapshot and leaves nothing behind.
#[test]
fn source_that_shrinks_during_snapshot_fails_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("disk.img");
    write_random_file(&source, 192 << 20, &mut Rng::new(2));
    let store_dir = tmp.path().join("store");
    {
        let store = Repository::open(&store_dir, &OpenOptions::default()).expect("open");
        store.catalog().add_disk("d", &source).expect("add");
        create_snapshot(&store, "d", "first", &CreateOptions::default()).expect("first");
    }
    let before = store_state(&store_dir);
    {
        let store = Repository::open(&store_dir, &OpenOptions::default()).expect("open");
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&source)
            .expect("open source");
        // Change the data too, so that the snapshot has new chunks to write.
        file.write_all_at(&Rng::new(3).bytes(64 << 20), 0)
            .expect("change");
        let shrunk = AtomicBool::new(false);
        // Mid-read only: the last report comes after the commit. The rate
        // cap keeps the read going for a couple of seconds.
        let shrink = |p: &snapfs::snapshot::Progress| {
            if p.done_bytes < p.total_bytes && !shrunk.swap(true, Ordering::SeqCst) {
                file.set_len(8 << 20).expect("truncate source");
            }
        };
        let options = CreateOptions {
            threads: 1,
            progress: Some(&shrink),
            max_rate: Some(100 << 20),
            ..CreateOptions::default()
        };
        let result = create_snapshot(&store, "d", "second", &options);
        assert!(
            shrunk.load(Ordering::SeqCst),
            "the snapshot finished before the test could shrink its source"
        );
        let err = result.expect_err("a snapshot of a shrinking source must fail");
        assert!(err.to_string().contains("shrank"), "{err}");
        assert!(matches!(err, snapfs::Error::Source { .. }), "{err:?}");
        assert_eq!(err.errno(), libc::EIO);
    }
    assert_eq!(
        store_state(&store_dir),
        before,
        "the failed snapshot left traces"
    );
    let names: Vec<String> = list_snapshots(&store_dir)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["first"]);
    ok(snapfs(&store_dir).args(["verify"]));
}

#[test]
fn store_of_another_format_version_is_refused_untouched() {
    let fx = Fixture::new();
    let before = store_state(&fx.store);
    let format = fx.store.join("FORMAT");
    let original = fs::read_to_string(&format).expect("FORMAT");
    assert_eq!(original.trim(), "snapfs store format 1");
    fs::write(&format, "snapfs store format 2\n").expect("edit FORMAT");
    let db_listing = |dir: &Path| {
        let mut names: Vec<String> = fs::read_dir(dir.join("db"))
            .expect("db dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let db_before = db_listing(&fx.store);
    let out = fx.path("x.img");
    let out_str = out.to_str().expect("utf-8").to_string();
    let source = fx.source.to_str().expect("utf-8").to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["snapshot", "list"],
        vec!["snapshot", "create", "d", "new"],
        vec!["snapshot", "rm", "d", "base"],
        vec!["disk", "add", "e", &source],
        vec!["disk", "list"],
        vec!["export", "d", "base", "-o", &out_str],
        vec!["gc", "--min-dead", "0"],
        vec!["verify"],
        vec!["stats"],
    ];
    for args in &commands {
        let line = fails(snapfs(&fx.store).args(args));
        assert!(
            line.contains("format version 2") && line.contains("format version 1"),
            "snapfs {args:?}: {line:?}"
        );
    }
    let init = fails(snapfs(&fx.store).args(["init"]));
    assert!(init.contains("exists"), "{init}");
    assert!(!out.exists());
    assert_eq!(
        fs::read_to_string(&format).expect("FORMAT"),
        "snapfs store format 2\n",
        "FORMAT was rewritten"
    );
    assert_eq!(db_listing(&fx.store), db_before, "the database was touched");
    fs::write(&format, original).expect("restore FORMAT");
    assert_eq!(store_state(&fx.store), before);
}

#[test]
fn locked_store_names_the_holding_pid() {
    let fx = Fixture::new();
    let before = store_state(&fx.store);
    let pid = std::process::id().to_string();
    {
        let _held = Repository::open(
            &fx.store,
            &OpenOptions {
                create: None,
                ..OpenOptions::default()
            },
        )
        .expect("open store in the test");
        for args in [
            vec!["snapshot", "list"],
            vec!["snapshot", "create", "d", "s1"],
            vec!["gc"],
            vec!["stats"],
        ] {
            let line = fails(snapfs(&fx.store).args(&args));
            assert!(
                line.contains(&format!("pid {pid}")) && line.contains("in use"),
                "snapfs {args:?}: {line:?} does not name pid {pid}"
            );
        }
        // A second open in the same process is refused the same way.
        let second = Repository::open(&fx.store, &OpenOptions::default());
        assert!(matches!(second, Err(snapfs::Error::Locked { .. })));
    }
    assert_eq!(store_state(&fx.store), before);
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "s1"]));
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["frobnicate"],
        vec!["snapshot"],
        vec!["snapshot", "create"],
        vec!["snapshot", "create", "d"],
        vec!["snapshot", "create", "d", "s", "extra"],
        vec!["snapshot", "list", "--bogus"],
        vec!["disk", "add", "d"],
        vec!["export", "d", "s"],
        vec!["gc", "--min-dead", "101"],
        vec!["gc", "--min-dead", "-1"],
        vec!["gc", "--min-dead", "lots"],
        vec!["init", "--chunk-size", "12X"],
        vec!["init", "--compression", "lzma"],
        vec!["verify", "d", "s", "extra"],
        vec!["stats", "extra"],
    ];
    for args in cases {
        usage_error(snapfs(&store).args(&args));
    }
    usage_error(&mut snapfs_bare());
    // Nothing was created by a usage error.
    assert!(!store.exists(), "a usage error created the store");
    // Help and version are not errors.
    run_expect(snapfs_bare().arg("--help"), 0);
    run_expect(snapfs_bare().arg("--version"), 0);
    // A bad value that parses but is refused is a failure, not usage.
    let line = fails(snapfs(&store).args(["init", "--chunk-size", "3M"]));
    assert!(line.contains("power of two"), "{line}");
}

#[test]
fn happy_path_round_trip_through_the_cli() {
    let fx = Fixture::new();
    // Export to a file (over a larger file full of junk) and to stdout.
    let out = fx.path("base.img");
    write_random_file(&out, 3 << 20, &mut Rng::new(9));
    ok(snapfs(&fx.store)
        .args(["export", "d", "base", "-o"])
        .arg(&out));
    common::assert_same_file(&out, &fx.source);
    let streamed = run_expect(
        snapfs(&fx.store).args(["export", "d", "base", "-o", "-"]),
        0,
    );
    common::assert_bytes_equal_file(&streamed.stdout_bytes, &fx.source, "export to stdout");

    // Change the disk, snapshot, rename, check both.
    let saved = fx.path("base-copy.img");
    fs::copy(&fx.source, &saved).expect("copy");
    common::overwrite_random(&fx.source, 100_000, 70_000, &mut Rng::new(5));
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "next"]));
    ok(snapfs(&fx.store).args(["snapshot", "rename", "d", "next", "renamed"]));
    let added = common::snapshot_added_bytes(&fx.store, "d", "renamed");
    // Two changed chunks and one map page.
    assert!(added > 0 && added <= 3 * (64 << 10), "added {added}");
    ok(snapfs(&fx.store)
        .args(["export", "d", "renamed", "-o"])
        .arg(&out));
    common::assert_same_file(&out, &fx.source);
    ok(snapfs(&fx.store)
        .args(["export", "d", "base", "-o"])
        .arg(&out));
    common::assert_same_file(&out, &saved);
    let verified = ok(snapfs(&fx.store).args(["verify"]));
    assert!(verified.contains("all good"), "{verified}");
    ok(snapfs(&fx.store).args(["verify", "d", "base"]));

    // Remove the first, gc, the second is intact.
    ok(snapfs(&fx.store).args(["snapshot", "rm", "d", "base"]));
    ok(snapfs(&fx.store).args(["gc", "--min-dead", "0"]));
    ok(snapfs(&fx.store)
        .args(["export", "d", "renamed", "-o"])
        .arg(&out));
    common::assert_same_file(&out, &fx.source);
    let stats = common::stats_json(&fx.store);
    assert_eq!(stats["snapshots"], 1);
    assert_eq!(stats["disks"], 1);
    ok(snapfs(&fx.store).args(["snapshot", "rm", "d", "renamed"]));
    ok(snapfs(&fx.store).args(["disk", "rm", "d"]));
    ok(snapfs(&fx.store).args(["gc", "--min-dead", "0"]));
    let stats = common::stats_json(&fx.store);
    assert_eq!(stats["chunks"], 0, "{stats}");
    assert_eq!(stats["stored_bytes"], 0, "{stats}");
    let _ = File::open(&fx.source).expect("source untouched");
}

/// Every command path clap knows (found by walking `--help` recursively)
/// is documented in man/snapfs.1, as `snapfs PATH`.
#[test]
fn man_page_documents_every_command() {
    let man_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/snapfs.1");
    let man = fs::read_to_string(&man_path)
        .unwrap_or_else(|e| panic!("{} must exist: {e}", man_path.display()));
    let man = normalise_roff(&man);
    let mut missing = Vec::new();
    let mut checked = 0;
    let mut queue: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = queue.pop() {
        for sub in subcommands(&path) {
            let mut full = path.clone();
            full.push(sub);
            let text = format!("snapfs {}", full.join(" "));
            checked += 1;
            if !contains_words(&man, &text) {
                missing.push(text);
            }
            queue.push(full);
        }
    }
    assert!(checked >= 10, "found only {checked} commands in --help");
    assert!(
        missing.is_empty(),
        "{} does not document: {missing:?}",
        man_path.display()
    );
}

/// Every long option of every command appears in the man page.
#[test]
fn man_page_documents_every_option() {
    let man_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/snapfs.1");
    let man = fs::read_to_string(&man_path)
        .unwrap_or_else(|e| panic!("{} must exist: {e}", man_path.display()));
    let man = normalise_roff(&man);
    let mut missing = Vec::new();
    let mut queue: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = queue.pop() {
        for option in long_options(&path) {
            if !contains_words(&man, &option) {
                missing.push(format!("snapfs {} {option}", path.join(" ")));
            }
        }
        for sub in subcommands(&path) {
            let mut full = path.clone();
            full.push(sub);
            queue.push(full);
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "{} does not document: {missing:?}",
        man_path.display()
    );
}

fn help_text(path: &[String]) -> String {
    let ran = run_expect(snapfs_bare().args(path).arg("--help"), 0);
    ran.stdout
}

/// The subcommands listed under "Commands:" in `snapfs PATH --help`.
fn subcommands(path: &[String]) -> Vec<String> {
    let help = help_text(path);
    let mut out = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line.trim_end() == "Commands:" {
            in_commands = true;
            continue;
        }
        if !in_commands {
            continue;
        }
        if line.trim().is_empty() || !line.starts_with("  ") {
            if !line.starts_with("  ") {
                in_commands = false;
            }
            continue;
        }
        // "  name     description"; descriptions wrapped onto further lines
        // are indented deeper.
        if line.starts_with("   ") {
            continue;
        }
        if let Some(name) = line.split_whitespace().next() {
            if name != "help" {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// The long options (`--name`) that `snapfs PATH --help` lists, without
/// the ones every command has.
fn long_options(path: &[String]) -> Vec<String> {
    let help = help_text(path);
    let mut out = Vec::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        for word in line.split(|c: char| c.is_whitespace() || c == ',' || c == '=') {
            if let Some(name) = word.strip_prefix("--") {
                if !name.is_empty() && !matches!(name, "help" | "version") {
                    out.push(format!("--{name}"));
                }
            }
        }
    }
    out
}

/// The man page as plain text: font escapes dropped, escaped dashes and
/// spaces made plain, macros and whitespace collapsed.
fn normalise_roff(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.starts_with('.') {
            // ".SS "snapfs init ..."", ".B snapfs", ".BR a b": keep the words.
            line.split_once(' ').map_or("", |(_, rest)| rest)
        } else {
            line
        };
        out.push_str(line);
        out.push(' ');
    }
    let mut plain = String::new();
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            plain.push(if c == '"' { ' ' } else { c });
            continue;
        }
        match chars.next() {
            // \fB, \fI, \fR, \fP or \f(XX
            Some('f') if chars.next() == Some('(') => {
                chars.next();
                chars.next();
            }
            Some('f') => {}
            Some('-') => plain.push('-'),
            Some(' ') | Some('~') => plain.push(' '),
            Some('&') => {}
            Some('e') => plain.push('\\'),
            Some(other) => plain.push(other),
            None => {}
        }
    }
    plain.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `needle` occurs in `haystack` as whole words.
fn contains_words(haystack: &str, needle: &str) -> bool {
    let is_word = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    haystack.match_indices(needle).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + needle.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// While a snapshot of a disk runs, a second one of the same disk is
/// refused (EBUSY) and leaves nothing; removing the disk meanwhile makes
/// the running snapshot fail at its commit, leaving nothing either.
#[test]
fn busy_disk_refuses_a_second_snapshot_and_a_removed_disk_aborts_the_first() {
    use std::sync::mpsc;

    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("disk.img");
    write_random_file(&source, 128 << 20, &mut Rng::new(4));
    let other = tmp.path().join("other.img");
    write_random_file(&other, 1 << 20, &mut Rng::new(5));
    let store_dir = tmp.path().join("store");
    {
        let store = Repository::open(&store_dir, &OpenOptions::default()).expect("open");
        store.catalog().add_disk("busy", &source).expect("add");
        store.catalog().add_disk("other", &other).expect("add");
        create_snapshot(&store, "other", "keep", &CreateOptions::default()).expect("keep");
    }
    let before = store_state(&store_dir);
    let store = Repository::open(&store_dir, &OpenOptions::default()).expect("open");
    let (running_tx, running_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let running_tx = std::sync::Mutex::new(Some(running_tx));
    let go_rx = std::sync::Mutex::new(go_rx);
    // The first progress report says "running" and waits for the test.
    let pause = |_: &snapfs::snapshot::Progress| {
        if let Some(tx) = running_tx.lock().expect("lock").take() {
            let _ = tx.send(());
            let _ = go_rx
                .lock()
                .expect("lock")
                .recv_timeout(Duration::from_secs(60));
        }
    };
    std::thread::scope(|scope| {
        let store = &store;
        let first = scope.spawn(move || {
            let options = CreateOptions {
                threads: 1,
                progress: Some(&pause),
                ..CreateOptions::default()
            };
            create_snapshot(store, "busy", "first", &options)
        });
        running_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the first snapshot reports progress");
        let second = create_snapshot(store, "busy", "second", &CreateOptions::default());
        let err = second.expect_err("a second snapshot of a busy disk");
        assert!(matches!(err, snapfs::Error::Busy(_)), "{err:?}");
        assert_eq!(err.errno(), libc::EBUSY);
        // Another disk is not busy.
        create_snapshot(store, "other", "meanwhile", &CreateOptions::default())
            .expect("a snapshot of another disk");
        store
            .catalog()
            .remove_snapshot("other", "meanwhile")
            .expect("rm");
        store
            .catalog()
            .remove_disk("busy", true)
            .expect("remove the busy disk");
        go_tx.send(()).expect("go");
        let err = first
            .join()
            .expect("join")
            .expect_err("the snapshot of a removed disk must fail");
        assert!(
            matches!(err, snapfs::Error::DiskNotFound(_)),
            "{err:?}: {err}"
        );
    });
    drop(store);
    // Only the disk is gone; after gc (which reclaims the removed
    // `meanwhile`), nothing else changed.
    ok(snapfs(&store_dir).args(["gc", "--min-dead", "0"]));
    let after = store_state(&store_dir);
    let names = list_snapshots(&store_dir);
    assert_eq!(names, [("other".to_string(), "keep".to_string())]);
    let stats = common::stats_json(&store_dir);
    let before_stats = before
        .lines()
        .find(|l| l.starts_with("stats: "))
        .expect("stats line");
    let after_stats = after
        .lines()
        .find(|l| l.starts_with("stats: "))
        .expect("stats line");
    assert_eq!(stats["disks"], 1);
    // Same chunks and bytes as before the busy snapshot started.
    let strip = |line: &str| {
        let mut v: serde_json::Value =
            serde_json::from_str(line.trim_start_matches("stats: ")).expect("json");
        if let Some(m) = v.as_object_mut() {
            m.remove("disks");
        }
        v
    };
    assert_eq!(strip(after_stats), strip(before_stats));
    ok(snapfs(&store_dir).arg("verify"));
}

/// A store whose filesystem fills up fails the snapshot with a clear
/// message and leaves the store as it was, still usable.
#[test]
fn full_store_fails_the_snapshot_cleanly() {
    if !common::need_root("full_store_fails_the_snapshot_cleanly") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let small = tmp.path().join("small.img");
    let big = tmp.path().join("big.img");
    write_random_file(&small, 2 << 20, &mut Rng::new(6));
    write_random_file(&big, 32 << 20, &mut Rng::new(7));
    let fs = common::TmpfsMount::new(12 << 20);
    let store = fs.path().join("store");
    ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
    ok(snapfs(&store).args(["disk", "add", "small"]).arg(&small));
    ok(snapfs(&store).args(["disk", "add", "big"]).arg(&big));
    ok(snapfs(&store).args(["snapshot", "create", "small", "s1"]));
    let before = store_state(&store);
    let line = fails(snapfs(&store).args(["snapshot", "create", "big", "b1"]));
    assert!(
        line.contains("No space left") || line.contains("full"),
        "{line}"
    );
    assert_eq!(
        store_state(&store),
        before,
        "the failed snapshot left traces"
    );
    ok(snapfs(&store).arg("verify"));
    // What fits still works.
    common::overwrite_random(&small, 0, 100_000, &mut Rng::new(8));
    ok(snapfs(&store).args(["snapshot", "create", "small", "s2"]));
    let out = tmp.path().join("s2.img");
    ok(snapfs(&store)
        .args(["export", "small", "s2", "-o"])
        .arg(&out));
    common::assert_same_file(&out, &small);
}
