//! For tests: a [`PackStorage`] decorator that fails on purpose. It passes
//! every call to the storage it wraps, except that on the Nth call of a
//! chosen operation (or on every call from the Nth on) it answers EIO or
//! ENOSPC, returns from a read with only part of the buffer filled, or
//! sleeps first. The faults live in a shared [`Faults`] that a test keeps,
//! so it can inject and clear them while the store is open:
//!
//! ```text
//! let faults = Faults::new();
//! let repo = Repository::open_with(root, &options, FaultyPacks::wrapper(&faults))?;
//! faults.inject(Op::Append, Fault::NoSpace, When::Nth(40));
//! ```
//!
//! Calls are counted per injected fault, from when it was injected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{PackAppender, PackInfo, PackStorage};
use crate::error::{Error, Result};

/// An operation of a pack storage or of one of its appenders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Append,
    Sync,
    Seal,
    Read,
    List,
    Remove,
    Truncate,
    CheckRoom,
}

impl Op {
    fn doing(self) -> &'static str {
        match self {
            Op::Create => "creating",
            Op::Append => "writing",
            Op::Sync => "syncing",
            Op::Seal => "sealing",
            Op::Read => "reading",
            Op::List => "listing",
            Op::Remove => "removing",
            Op::Truncate => "truncating",
            Op::CheckRoom => "making room in",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with EIO.
    Eio,
    /// The call fails with ENOSPC; an append writes half its bytes first,
    /// as a filling disk does.
    NoSpace,
    /// A read fills only the first half of the buffer (the rest is junk)
    /// and reports success: the caller must notice. Other calls: EIO.
    ShortRead,
    /// The call waits this long, then goes ahead.
    Latency(Duration),
}

/// Which calls of the operation a fault hits, counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Nth(u64),
    FromNth(u64),
}

struct Rule {
    op: Op,
    fault: Fault,
    when: When,
    calls: u64,
}

/// The faults a [`FaultyPacks`] answers with; shared with the test.
#[derive(Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    fired: AtomicU64,
}

impl Faults {
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// From now on, the `when` call(s) of `op` answer `fault`.
    pub fn inject(&self, op: Op, fault: Fault, when: When) {
        self.lock().push(Rule {
            op,
            fault,
            when,
            calls: 0,
        });
    }

    /// Removes every fault: calls go through again.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many calls a fault hit so far (a test checks its fault fired).
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a call of `op`; the fault it must answer, if any (the first
    /// injected wins when several are due).
    fn due(&self, op: Op) -> Option<Fault> {
        let mut due = None;
        for rule in self.lock().iter_mut().filter(|rule| rule.op == op) {
            rule.calls += 1;
            let hit = match rule.when {
                When::Nth(n) => rule.calls == n,
                When::FromNth(n) => rule.calls >= n,
            };
            if hit && due.is_none() {
                due = Some(rule.fault);
            }
        }
        if due.is_some() {
            self.fired.fetch_add(1, Ordering::SeqCst);
        }
        due
    }

    /// Applies the fault due for `op` on `what`: Err for a failure, the
    /// fault itself when the caller must act it out (a short read, a
    /// partial append), None to go ahead.
    fn apply(&self, op: Op, what: &dyn Fn() -> String) -> Result<Option<Fault>> {
        match self.due(op) {
            None => Ok(None),
            Some(Fault::Latency(pause)) => {
                std::thread::sleep(pause);
                Ok(None)
            }
            Some(Fault::Eio) => Err(injected(op, what(), libc::EIO)),
            Some(Fault::ShortRead) if op != Op::Read => Err(injected(op, what(), libc::EIO)),
            Some(Fault::NoSpace) if op != Op::Append => Err(injected(op, what(), libc::ENOSPC)),
            Some(acted_out) => Ok(Some(acted_out)),
        }
    }
}

fn injected(op: Op, what: String, code: i32) -> Error {
    Error::Io {
        context: format!("{} {what} (injected fault)", op.doing()),
        source: std::io::Error::from_raw_os_error(code),
    }
}

/// A pack storage that answers the faults of a [`Faults`].
pub struct FaultyPacks {
    inner: Arc<dyn PackStorage>,
    faults: Arc<Faults>,
}

impl FaultyPacks {
    pub fn new(inner: Arc<dyn PackStorage>, faults: Arc<Faults>) -> FaultyPacks {
        FaultyPacks { inner, faults }
    }

    /// What `Store::open_with` and `Repository::open_with` take.
    pub fn wrapper(
        faults: &Arc<Faults>,
    ) -> impl FnOnce(Arc<dyn PackStorage>) -> Arc<dyn PackStorage> {
        let faults = faults.clone();
        move |inner| Arc::new(FaultyPacks::new(inner, faults))
    }

    fn pack(&self, id: u64) -> impl Fn() -> String + '_ {
        move || format!("pack {}", self.inner.pack_name(id))
    }
}

impl PackStorage for FaultyPacks {
    fn create(&self, id: u64) -> Result<Box<dyn PackAppender>> {
        self.faults.apply(Op::Create, &self.pack(id))?;
        Ok(Box::new(FaultyAppender {
            inner: self.inner.create(id)?,
            faults: self.faults.clone(),
            name: self.inner.pack_name(id),
        }))
    }

    fn read_exact_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self.faults.apply(Op::Read, &self.pack(id))? {
            Some(Fault::ShortRead) => {
                let (head, tail) = buf.split_at_mut(buf.len() / 2);
                tail.fill(0xa5);
                self.inner.read_exact_at(id, offset, head)
            }
            _ => self.inner.read_exact_at(id, offset, buf),
        }
    }

    fn list(&self) -> Result<Vec<PackInfo>> {
        self.faults.apply(Op::List, &|| "packs".into())?;
        self.inner.list()
    }

    fn remove(&self, id: u64) -> Result<()> {
        self.faults.apply(Op::Remove, &self.pack(id))?;
        self.inner.remove(id)
    }

    fn truncate(&self, id: u64, len: u64) -> Result<()> {
        self.faults.apply(Op::Truncate, &self.pack(id))?;
        self.inner.truncate(id, len)
    }

    fn check_room(&self, bytes: u64) -> Result<u64> {
        self.faults
            .apply(Op::CheckRoom, &|| format!("room for {bytes} bytes"))?;
        self.inner.check_room(bytes)
    }

    fn stored_bytes(&self) -> Result<u64> {
        self.inner.stored_bytes()
    }

    fn pack_name(&self, id: u64) -> String {
        self.inner.pack_name(id)
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn read_fresh(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.faults.apply(Op::Read, &self.pack(id))?;
        self.inner.read_fresh(id, offset, buf)
    }

    fn drop_cached(&self, id: u64) -> bool {
        self.inner.drop_cached(id)
    }

    fn recoverable(&self) -> Result<Vec<PackInfo>> {
        self.faults.apply(Op::List, &|| "packs".into())?;
        self.inner.recoverable()
    }

    fn settled(&self, age: std::time::Duration) -> Result<Vec<PackInfo>> {
        self.inner.settled(age)
    }

    fn sidecar(&self) -> Option<&dyn super::Sidecar> {
        self.inner.sidecar()
    }

    fn cache_usage(&self) -> Option<(std::path::PathBuf, u64, u64)> {
        self.inner.cache_usage()
    }
}

struct FaultyAppender {
    inner: Box<dyn PackAppender>,
    faults: Arc<Faults>,
    name: String,
}

impl FaultyAppender {
    fn what(&self) -> impl Fn() -> String + '_ {
        move || format!("pack {}", self.name)
    }
}

impl PackAppender for FaultyAppender {
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let due = self.faults.apply(Op::Append, &self.what())?;
        if due == Some(Fault::NoSpace) {
            self.inner.append(&bytes[..bytes.len() / 2])?;
            return Err(injected(Op::Append, self.what()(), libc::ENOSPC));
        }
        self.inner.append(bytes)
    }

    fn sync(&mut self) -> Result<()> {
        self.faults.apply(Op::Sync, &self.what())?;
        self.inner.sync()
    }

    fn seal(self: Box<Self>) -> Result<()> {
        self.faults.apply(Op::Seal, &self.what())?;
        self.inner.seal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::local::LocalPacks;

    fn faulty() -> (tempfile::TempDir, Arc<Faults>, FaultyPacks) {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn PackStorage> = Arc::new(LocalPacks::in_store(dir.path()).unwrap());
        let faults = Faults::new();
        let packs = FaultyPacks::new(local, faults.clone());
        (dir, faults, packs)
    }

    fn errno(result: Result<()>) -> Option<i32> {
        match result {
            Err(crate::error::Error::Io { source, .. }) => source.raw_os_error(),
            Err(other) => panic!("not an I/O error: {other}"),
            Ok(()) => None,
        }
    }

    #[test]
    fn nth_and_from_nth_count_from_injection() {
        let (_dir, faults, packs) = faulty();
        let mut pack = packs.create(1).unwrap();
        pack.append(b"0123456789").unwrap();
        faults.inject(Op::Append, Fault::Eio, When::Nth(2));
        assert_eq!(errno(pack.append(b"a")), None);
        assert_eq!(errno(pack.append(b"b")), Some(libc::EIO));
        assert_eq!(errno(pack.append(b"c")), None);
        faults.inject(Op::Sync, Fault::Eio, When::FromNth(1));
        assert_eq!(errno(pack.sync()), Some(libc::EIO));
        assert_eq!(errno(pack.sync()), Some(libc::EIO));
        assert_eq!(faults.fired(), 3);
        faults.clear();
        pack.sync().unwrap();
        pack.seal().unwrap();
        let mut buf = [0u8; 12];
        packs.read_exact_at(1, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"0123456789ac");
    }

    #[test]
    fn no_space_on_append_writes_part_and_fails() {
        let (_dir, faults, packs) = faulty();
        let mut pack = packs.create(2).unwrap();
        faults.inject(Op::Append, Fault::NoSpace, When::Nth(1));
        let full = pack.append(b"abcdef").unwrap_err();
        assert!(full.is_no_space(), "{full}");
        pack.sync().unwrap();
        assert_eq!(packs.stored_bytes().unwrap(), 3);
        faults.inject(Op::CheckRoom, Fault::NoSpace, When::Nth(1));
        assert!(packs.check_room(1).unwrap_err().is_no_space());
        assert!(packs.check_room(1).is_ok());
    }

    #[test]
    fn short_read_fills_half_and_says_ok() {
        let (_dir, faults, packs) = faulty();
        let mut pack = packs.create(3).unwrap();
        pack.append(b"abcd").unwrap();
        pack.sync().unwrap();
        faults.inject(Op::Read, Fault::ShortRead, When::Nth(1));
        let mut buf = [0u8; 4];
        packs.read_exact_at(3, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"ab\xa5\xa5");
        packs.read_exact_at(3, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"abcd");
    }
}
