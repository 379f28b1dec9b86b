//! The fuser adapter: each handler calls the filesystem core in `fs` and
//! matches the result onto a reply. Errors are logged here, once.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, FileKind, FsError, SnapFs};

/// How long the kernel may cache names and attributes. Short, because
/// snapshots appear and go through other paths (the CLI, policies).
const TTL: Duration = Duration::from_secs(1);

pub struct FuseAdapter {
    fs: Arc<SnapFs>,
    uid: u32,
    gid: u32,
    /// Threads answering long requests (see `run_long`); joined at the end.
    long_requests: Mutex<Vec<JoinHandle<()>>>,
}

impl FuseAdapter {
    pub fn new(fs: SnapFs) -> FuseAdapter {
        FuseAdapter {
            fs: Arc::new(fs),
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            long_requests: Mutex::new(Vec::new()),
        }
    }

    /// The filesystem core, for the parts of the mount that run beside the
    /// FUSE session (the policy runner uses its snapshot service).
    pub fn fs(&self) -> Arc<SnapFs> {
        self.fs.clone()
    }

    /// Answers a request on a thread of its own. Taking a snapshot or
    /// running a CLI command lasts minutes; on one of the session's few
    /// threads it would stall every other request of the mount (a few
    /// snapshots at once would freeze `ls` and every reader).
    fn run_long(&self, work: impl FnOnce() + Send + 'static) {
        let mut threads = self.long_requests.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        // If no thread starts, the reply inside `work` is dropped: EIO.
        match std::thread::Builder::new()
            .name("snapfs-request".into())
            .spawn(work)
        {
            Ok(thread) => threads.push(thread),
            Err(e) => log::error!("cannot start a thread for a request: {e}"),
        }
    }

    fn attr(&self, attr: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(attr.ino),
            size: attr.size,
            blocks: attr.blocks,
            atime: attr.mtime,
            mtime: attr.mtime,
            ctime: attr.mtime,
            crtime: attr.mtime,
            kind: match attr.kind {
                FileKind::Directory => FileType::Directory,
                FileKind::File => FileType::RegularFile,
            },
            perm: attr.perm,
            nlink: attr.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

/// Logs the cause of an error once (with what the request was doing) and
/// turns it into the reply's errno.
fn errno(op: &str, e: FsError) -> Errno {
    if e.cause.is_some() || e.context.is_some() {
        if e.errno == libc::EIO {
            log::error!("{op}: {e}");
        } else {
            log::debug!("{op}: {e}");
        }
    }
    Errno::from_i32(e.errno)
}

impl Filesystem for FuseAdapter {
    fn destroy(&mut self) {
        let threads = std::mem::take(
            self.long_requests
                .get_mut()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for thread in threads {
            let _ = thread.join();
        }
        // After the last request: nothing writes a live disk any more.
        self.fs.shutdown_live_disks();
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests and deep read-ahead: snapshot images are read in
        // big sequential runs.
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        // Without it an O_DIRECT io_submit on a live file waits for each
        // reply, and a guest's queue depth of 16 acts as 1.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &self.attr(&attr), Generation(0)),
            Err(e) => reply.error(errno("lookup", e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &self.attr(&attr)),
            Err(e) => reply.error(errno("getattr", e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let other =
            mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some();
        match self.fs.setattr(ino.0, size, other) {
            Ok(attr) => reply.attr(&TTL, &self.attr(&attr)),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("unlink", e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            return reply.error(Errno::EINVAL);
        }
        match self.fs.rename(parent.0, name, newparent.0, newname) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rename", e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0, flags.0) {
            Ok(opened) => {
                let mut fopen = FopenFlags::empty();
                if opened.direct_io {
                    fopen |= FopenFlags::FOPEN_DIRECT_IO;
                }
                if opened.keep_cache {
                    fopen |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                if opened.parallel_writes {
                    fopen |= FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
                }
                reply.opened(FileHandle(opened.fh), fopen)
            }
            Err(e) => reply.error(errno("open", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if self.fs.is_long_running(fh.0) {
            let fs = self.fs.clone();
            return self.run_long(move || reply_read(&fs, fh.0, offset, size, reply));
        }
        reply_read(&self.fs, fh.0, offset, size, reply)
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.fs.is_long_running(fh.0) {
            let (fs, data) = (self.fs.clone(), data.to_vec());
            return self.run_long(move || reply_write(&fs, fh.0, offset, &data, reply));
        }
        reply_write(&self.fs, fh.0, offset, data, reply)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsync(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.fs.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fallocate", e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0) {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    let kind = match kind {
                        FileKind::Directory => FileType::Directory,
                        FileKind::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(*ino), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno("readdir", e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno("statfs", e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name) {
            Ok(value) => reply_xattr(reply, &value, size),
            Err(e) => reply.error(errno("getxattr", e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(value) => reply_xattr(reply, &value, size),
            Err(e) => reply.error(errno("listxattr", e)),
        }
    }

    // Files and folders appear only through disks and snapshots: creating
    // or removing one by hand is not permitted (rather than ENOSYS, which
    // tells a user the kernel lacks something).
    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are enforced by the kernel (default_permissions).
        reply.ok();
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if offset < 0 {
            return reply.error(Errno::EINVAL);
        }
        match self.fs.lseek(fh.0, offset as u64, whence) {
            Ok(pos) => reply.offset(pos as i64),
            Err(e) => reply.error(errno("lseek", e)),
        }
    }
}

fn reply_read(fs: &SnapFs, fh: u64, offset: u64, size: u32, reply: ReplyData) {
    match fs.read(fh, offset, size) {
        Ok(data) => reply.data(data.as_slice()),
        Err(e) => reply.error(errno("read", e)),
    }
}

fn reply_write(fs: &SnapFs, fh: u64, offset: u64, data: &[u8], reply: ReplyWrite) {
    match fs.write(fh, offset, data) {
        Ok(written) => reply.written(written),
        Err(e) => reply.error(errno("write", e)),
    }
}

/// Size probe (size 0), the value, or ERANGE when it does not fit.
fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() <= size as usize {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}
