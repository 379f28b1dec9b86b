//! Environment faults for the tests: a disk source that fails its reads
//! part-way, and a store on a small filesystem that fills up.
//!
//! `FaultySource` is a FUSE filesystem of the test's own (the kernel here
//! has no device-mapper `error` target) serving one file, `disk.img`,
//! whose bytes come from a backing image and whose reads answer EIO over
//! a chosen byte range while failing is switched on. Its guard unmounts.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    Request,
};
use tempfile::TempDir;

use super::mount::is_mounted;
use super::{Ext4Image, MountGuard};

const ROOT: u64 = 1;
const DISK: u64 = 2;
const DISK_NAME: &str = "disk.img";

/// What the test can change while the source is mounted.
struct Fault {
    failing: AtomicBool,
    /// Reads touching `start..end` fail with EIO.
    start: u64,
    end: u64,
    /// Reads that failed so far.
    failed_reads: AtomicU64,
}

struct FaultyFs {
    backing: File,
    size: u64,
    fault: Arc<Fault>,
}

impl FaultyFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, perm, nlink) = if ino == ROOT {
            (FileType::Directory, 0, 0o755, 2)
        } else {
            (FileType::RegularFile, self.size, 0o444, 1)
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

const TTL: Duration = Duration::from_secs(1);

impl Filesystem for FaultyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT && name == DISK_NAME {
            reply.entry(&TTL, &self.attr(DISK), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT | DISK => reply.attr(&TTL, &self.attr(ino.0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 != DISK {
            return reply.error(Errno::EISDIR);
        }
        // No page cache: every read reaches us, so switching the fault
        // on or off takes effect at once.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let end = (offset + size as u64).min(self.size);
        if offset >= end {
            return reply.data(&[]);
        }
        let fault = &self.fault;
        if fault.failing.load(Ordering::SeqCst) && offset < fault.end && end > fault.start {
            fault.failed_reads.fetch_add(1, Ordering::SeqCst);
            return reply.error(Errno::EIO);
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        match self.backing.read_exact_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (DISK, FileType::RegularFile, DISK_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok()
    }
}

/// A mounted `FaultySource`; dropping it unmounts (lazily if a reader
/// still holds the file).
pub struct FaultySource {
    session: Option<fuser::BackgroundSession>,
    dir: Option<TempDir>,
    fault: Arc<Fault>,
}

impl FaultySource {
    /// Serves `backing` as `disk.img`; reads touching `bad` fail with EIO
    /// while failing is on (it starts on).
    pub fn mount(backing: &Path, bad: std::ops::Range<u64>) -> FaultySource {
        let file = File::open(backing).expect("open backing image");
        let size = file.metadata().expect("backing size").len();
        let fault = Arc::new(Fault {
            failing: AtomicBool::new(true),
            start: bad.start,
            end: bad.end,
            failed_reads: AtomicU64::new(0),
        });
        let dir = tempfile::Builder::new()
            .prefix("snapfs-faulty-")
            .tempdir()
            .expect("mountpoint");
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("faulty".into()),
            MountOption::RO,
            MountOption::DefaultPermissions,
        ];
        // Other processes (the snapfs under test) read it.
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(2);
        let fs = FaultyFs {
            backing: file,
            size,
            fault: fault.clone(),
        };
        let session = fuser::Session::new(fs, dir.path(), &config)
            .and_then(|s| s.spawn())
            .expect("mount the faulty source");
        FaultySource {
            session: Some(session),
            dir: Some(dir),
            fault,
        }
    }

    /// The path of the served disk image.
    pub fn path(&self) -> PathBuf {
        self.mountpoint().join(DISK_NAME)
    }

    fn mountpoint(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// Switches the failing range on or off.
    pub fn set_failing(&self, failing: bool) {
        self.fault.failing.store(failing, Ordering::SeqCst);
    }

    /// Reads answered with EIO so far.
    pub fn failed_reads(&self) -> u64 {
        self.fault.failed_reads.load(Ordering::SeqCst)
    }
}

impl Drop for FaultySource {
    fn drop(&mut self) {
        let mountpoint = self.mountpoint().to_path_buf();
        if let Some(session) = self.session.take() {
            if session.umount_and_join().is_err() && is_mounted(&mountpoint) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&mountpoint)
                    .status();
            }
        }
        if let Some(dir) = self.dir.take() {
            if is_mounted(&mountpoint) {
                let _ = dir.keep();
            }
        }
    }
}

/// A store folder on a loop-mounted ext4 of `size` bytes (a store that can
/// fill up); the guard unmounts and detaches.
pub struct SmallFs {
    pub mount: MountGuard,
    _image_dir: TempDir,
}

impl SmallFs {
    pub fn new(size: u64) -> SmallFs {
        let image_dir = tempfile::Builder::new()
            .prefix("snapfs-smallfs-")
            .tempdir()
            .expect("image folder");
        let image = Ext4Image::create(&image_dir.path().join("fs.img"), size);
        let mount = image.mount();
        SmallFs {
            mount,
            _image_dir: image_dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// Bytes free on the filesystem (statvfs f_bavail).
    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes())
            .expect("path without NUL");
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        assert_eq!(rc, 0, "statvfs {}", self.path().display());
        stat.f_bavail as u64 * stat.f_frsize as u64
    }
}

/// Runs `work` on a thread and returns its result, panicking if it takes
/// longer than `timeout` (a step that hangs must fail the test, not the
/// suite). A hung thread is left behind; the test's guards still clean up.
pub fn within<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    match rx.recv_timeout(timeout) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {timeout:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Writes `name` to `DISK/.create` in one write(2) (a file opened without
/// O_TRUNC); Err holds the errno.
pub fn write_create(disk: &Path, name: &str) -> Result<(), i32> {
    use std::io::Write;
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(disk.join(".create"))
        .map_err(errno)?;
    let line = format!("{name}\n");
    match file.write(line.as_bytes()).map_err(errno)? {
        n if n == line.len() => Ok(()),
        // Never seen; a distinct value so that a test names it.
        _ => Err(-2),
    }
}

/// What `DISK/.status` says now.
pub fn status(disk: &Path) -> String {
    std::fs::read_to_string(disk.join(".status")).unwrap_or_else(|e| format!("(unreadable: {e})"))
}

/// The snapshot files of a disk folder, sorted.
pub fn snapshot_files(disk: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(disk)
        .unwrap_or_else(|e| panic!("list {}: {e}", disk.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Fills the filesystem holding `dir` with a file `dir/filler` until a
/// write fails with ENOSPC; returns the path (remove it to free space).
pub fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = File::create(&path).expect("create filler");
    for size in [1 << 20, 4096] {
        let buf = vec![0xa5u8; size];
        loop {
            match file.write_all(&buf) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("fill {}: {e}", path.display()),
            }
        }
    }
    let _ = file.sync_all();
    path
}

/// Like `fill_up`, then gives back `leave` bytes: the filesystem has about
/// that much free.
pub fn fill_up_leaving(dir: &Path, leave: u64) -> PathBuf {
    let path = fill_up(dir);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open filler");
    let len = file.metadata().expect("filler size").len();
    file.set_len(len.saturating_sub(leave))
        .and_then(|_| file.sync_all())
        .expect("shrink filler");
    path
}
