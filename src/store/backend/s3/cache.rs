//! The local cache of pack data: blocks of [`BLOCK`] bytes of remote packs
//! as files `CACHE/<pack>-<block>`, at most `capacity` bytes in all, the
//! least recently used evicted first. Only a hint: a block whose file went
//! away (the folder deleted under a mount) is a miss and is fetched again,
//! and every chunk read from it is still verified against its hash above.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use lru::LruCache;

use crate::error::{IoContext, Result};

/// Bytes of a pack fetched and cached at once: sequential chunk reads then
/// cost one request per block, not per chunk.
pub const BLOCK: u64 = 1 << 20;

type Key = (u64, u64);

pub struct PackCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
}

struct State {
    /// (pack, block) -> bytes in its file.
    blocks: LruCache<Key, u64>,
    used: u64,
}

impl PackCache {
    /// The cache in `dir`, keeping what an earlier process left there.
    pub fn open(dir: PathBuf, capacity: u64) -> Result<PackCache> {
        crate::modes::create_private_dir(&dir).context(|| format!("creating {}", dir.display()))?;
        let cache = PackCache {
            capacity,
            state: Mutex::new(State {
                blocks: LruCache::unbounded(),
                used: 0,
            }),
            dir,
        };
        let listing = || format!("listing {}", cache.dir.display());
        for entry in fs::read_dir(&cache.dir).context(listing)? {
            let entry = entry.context(listing)?;
            let name = entry.file_name();
            let parsed = name.to_str().and_then(parse_name);
            match (parsed, entry.metadata()) {
                (Some(key), Ok(meta)) => {
                    let mut state = cache.lock();
                    state.blocks.put(key, meta.len());
                    state.used += meta.len();
                }
                // Half-written blocks and strangers go.
                _ => {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        cache.evict();
        Ok(cache)
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Bytes the cached blocks take.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the map cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, (pack, block): Key) -> PathBuf {
        self.dir.join(format!("{pack:016x}-{block:08x}"))
    }

    /// True when block `block` of `pack` is cached (not counted as a use).
    pub fn has(&self, pack: u64, block: u64) -> bool {
        self.lock().blocks.contains(&(pack, block))
    }

    /// Fills `buf` from `offset` in block `block` of `pack`, if cached
    /// with enough bytes.
    pub fn read(&self, pack: u64, block: u64, offset: u64, buf: &mut [u8]) -> bool {
        let key = (pack, block);
        match self.lock().blocks.get(&key) {
            Some(&len) if offset + buf.len() as u64 <= len => {}
            _ => return false,
        }
        let read = File::open(self.path(key)).and_then(|file| file.read_exact_at(buf, offset));
        if read.is_err() {
            // Gone under us (or unreadable): fetch it again.
            self.forget(key);
            return false;
        }
        true
    }

    /// Keeps `bytes` as block `block` of `pack`. Failing to is no error:
    /// the data was fetched, only the next read costs another request.
    pub fn insert(&self, pack: u64, block: u64, bytes: &[u8]) {
        let key = (pack, block);
        if bytes.len() as u64 > self.capacity {
            return;
        }
        if let Err(e) = self.write_file(key, bytes) {
            log::debug!("not caching block {block} of pack {pack:016x}: {e}");
            return;
        }
        {
            let mut state = self.lock();
            if let Some(old) = state.blocks.put(key, bytes.len() as u64) {
                state.used -= old;
            }
            state.used += bytes.len() as u64;
        }
        self.evict();
    }

    fn write_file(&self, key: Key, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path(key);
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(crate::modes::PRIVATE_FILE)
                .open(&tmp)?;
            file.write_all(bytes)?;
            // A rename only once whole: a crash leaves no short block.
            fs::rename(&tmp, &path)
        };
        match write() {
            // The folder was deleted under us: make it again, once.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::modes::create_private_dir(&self.dir)?;
                write()
            }
            other => other,
        }
    }

    fn forget(&self, key: Key) {
        let mut state = self.lock();
        if let Some(len) = state.blocks.pop(&key) {
            state.used -= len;
        }
        drop(state);
        let _ = fs::remove_file(self.path(key));
    }

    /// Drops every cached block of `pack` (removed, or found damaged).
    /// Returns whether any was cached.
    pub fn forget_pack(&self, pack: u64) -> bool {
        let keys: Vec<Key> = self
            .lock()
            .blocks
            .iter()
            .map(|(key, _)| *key)
            .filter(|(p, _)| *p == pack)
            .collect();
        for key in &keys {
            self.forget(*key);
        }
        !keys.is_empty()
    }

    fn evict(&self) {
        loop {
            let mut state = self.lock();
            if state.used <= self.capacity {
                return;
            }
            let Some((key, len)) = state.blocks.pop_lru() else {
                return;
            };
            state.used -= len;
            drop(state);
            let _ = fs::remove_file(self.path(key));
        }
    }
}

fn parse_name(name: &str) -> Option<Key> {
    let (pack, block) = name.split_once('-')?;
    if pack.len() != 16 || block.len() != 8 {
        return None;
    }
    Some((
        u64::from_str_radix(pack, 16).ok()?,
        u64::from_str_radix(block, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_read_back_evict_and_survive_a_deleted_folder() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackCache::open(dir.path().join("cache"), 10).unwrap();
        cache.insert(1, 0, b"hello");
        cache.insert(1, 1, b"world");
        let mut buf = [0u8; 3];
        assert!(cache.read(1, 0, 2, &mut buf));
        assert_eq!(&buf, b"llo");
        // Over capacity: the least recently used (block 1) goes.
        cache.insert(2, 0, b"abc");
        assert!(!cache.read(1, 1, 0, &mut buf));
        assert!(cache.read(1, 0, 0, &mut buf));
        assert!(cache.used() <= 10);
        fs::remove_dir_all(dir.path().join("cache")).unwrap();
        assert!(!cache.read(1, 0, 0, &mut buf));
        cache.insert(3, 0, b"xyz");
        assert!(cache.read(3, 0, 0, &mut buf));
        assert_eq!(&buf, b"xyz");
        // A new process finds what is there.
        let again = PackCache::open(dir.path().join("cache"), 10).unwrap();
        assert!(again.read(3, 0, 0, &mut buf));
        assert!(again.forget_pack(3));
        assert!(!again.read(3, 0, 0, &mut buf));
    }
}
