//! Helpers for the hostile-input and permission tests: a store with one
//! small disk, raw writes that report their errno, everything a refused
//! operation could have changed (to compare before and after), and
//! commands run as another user or with another umask.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tempfile::TempDir;

use super::{ok, snapfs, write_random_file, Rng};

/// The user other users' tests run as.
pub const NOBODY: u32 = 65534;

/// A temporary folder holding a store with disk `d` (a small random image).
pub struct Fixture {
    pub tmp: TempDir,
    pub store: PathBuf,
    pub source: PathBuf,
}

impl Fixture {
    pub fn new(disk_len: u64, seed: u64) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("snapfs-hostile-")
            .tempdir()
            .expect("temp dir");
        let store = tmp.path().join("store");
        let source = tmp.path().join("d.img");
        write_random_file(&source, disk_len, &mut Rng::new(seed));
        ok(snapfs(&store).args(["disk", "add", "d"]).arg(&source));
        Fixture { tmp, store, source }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// The errno of a failed operation (-1 when it carries none).
pub fn errno_of<T>(result: std::io::Result<T>) -> Result<T, i32> {
    result.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Opens `path` write-only (no O_TRUNC) and writes each part in one
/// write(2); the result of every write, in order. Err(errno) of the open
/// is the only entry when the open fails.
pub fn write_parts(path: &Path, parts: &[&[u8]]) -> Vec<Result<usize, i32>> {
    let mut file = match errno_of(OpenOptions::new().write(true).open(path)) {
        Ok(file) => file,
        Err(errno) => return vec![Err(errno)],
    };
    parts
        .iter()
        .map(|part| errno_of(file.write(part)))
        .collect()
}

/// One write of `bytes` to `path`: Ok when all of it was taken.
pub fn write_once(path: &Path, bytes: &[u8]) -> Result<(), i32> {
    match write_parts(path, &[bytes]).remove(0) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(_) => Err(-2),
        Err(errno) => Err(errno),
    }
}

/// The names in a folder, sorted (`.` and `..` left out).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every path under `root` (relative), for "nothing appeared" checks.
pub fn paths_under(root: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path.clone());
            }
            found.insert(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    found
}

/// Every path under `root` with its permission bits and whether it is a
/// folder (`root` itself included, as "").
pub fn modes_under(root: &Path) -> Vec<(PathBuf, u32, bool)> {
    let meta = fs::metadata(root).expect("stat store");
    let mut modes = vec![(PathBuf::new(), meta.mode() & 0o7777, true)];
    for rel in paths_under(root) {
        if let Ok(meta) = fs::symlink_metadata(root.join(&rel)) {
            modes.push((rel, meta.mode() & 0o7777, meta.is_dir()));
        }
    }
    modes
}

/// Runs `cmd` with umask `mask`.
pub fn with_umask(cmd: &mut Command, mask: u32) -> &mut Command {
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        });
    }
    cmd
}

/// Runs `cmd` as user and group `id`, with no supplementary groups.
pub fn as_user(cmd: &mut Command, id: u32) -> &mut Command {
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(id, id, id) != 0
                || libc::setresuid(id, id, id) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A proptest runner of `SNAPFS_FUZZ_CASES` cases (`default_cases`, the
/// CI size, when unset), writing no regression files.
pub fn fuzz_runner(default_cases: u32) -> TestRunner {
    let cases = std::env::var("SNAPFS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    })
}

/// Fails the proptest case with `why` unless `condition` holds.
pub fn check(condition: bool, why: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if condition {
        Ok(())
    } else {
        Err(TestCaseError::fail(why()))
    }
}
