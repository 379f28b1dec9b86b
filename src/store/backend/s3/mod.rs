//! Packs in an S3 bucket (`object_store` underneath, see client.rs). A new
//! pack is written to `STORE/staging/` like a local one and uploaded whole
//! when sealed; the seal returns only once the bucket confirmed it, so the
//! index and catalog commit after the upload (the durability order, one
//! step longer). Reads are ranged GETs of whole blocks into the bounded
//! local cache `STORE/cache/` (cache.rs). Sealed packs are immutable: only
//! a staging pack can be cut back. Keys: keys.rs and FORMAT.md.

mod cache;
mod client;
mod fetch;
pub mod keys;
mod profile;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::local::LocalPacks;
use super::{PackAppender, PackInfo, PackStorage, Sidecar};
use crate::error::{Error, Result};
use cache::{PackCache, BLOCK};
pub use client::Bucket;
use keys::{Named, S3Url, StoreKeys};

/// The folders of the store that hold staging packs and the cache.
pub const STAGING_FOLDER: &str = "staging";
pub const CACHE_FOLDER: &str = "cache";

/// Local cache size when `init` is not told one.
pub const DEFAULT_CACHE_BYTES: u64 = 2 << 30;

/// An S3 store's settings, kept in the store's `meta` tree.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    /// Random per store: all its keys are under `PREFIX/stores/STORE_ID/`.
    pub store_id: String,
    /// Bound of the local cache of pack data.
    pub cache_bytes: u64,
}

impl S3Config {
    /// A new store's settings for `url`, with a fresh random store id.
    pub fn new_store(url: &S3Url, cache_bytes: u64) -> Result<S3Config> {
        Ok(S3Config {
            bucket: url.bucket.clone(),
            prefix: url.prefix.clone(),
            store_id: random_id()?,
            cache_bytes,
        })
    }

    pub fn url(&self) -> S3Url {
        S3Url {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
        }
    }

    pub fn keys(&self) -> StoreKeys {
        StoreKeys::new(&self.prefix, &self.store_id)
    }
}

/// 64 random bits as 16 hex digits.
fn random_id() -> Result<String> {
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes));
    read.map_err(|e| Error::Io {
        context: "reading /dev/urandom for a store id".into(),
        source: e,
    })?;
    Ok(format!("{:016x}", u64::from_le_bytes(bytes)))
}

/// How the store is being opened.
pub enum Opening<'a> {
    /// An existing store: its settings object must be in the bucket.
    Existing,
    /// A new store: the prefix must hold no store yet; `settings` becomes
    /// its settings object.
    New { settings: &'a [u8] },
    /// A new local store taking over the bucket's store (`init --from`).
    Adopt,
}

pub struct S3Packs {
    bucket: Arc<Bucket>,
    keys: StoreKeys,
    url: String,
    staging: Arc<LocalPacks>,
    /// Packs being written by this process (their bytes are in staging).
    staged: Arc<Mutex<HashSet<u64>>>,
    /// Lengths of remote packs, from listings and uploads.
    lengths: Arc<Mutex<HashMap<u64, u64>>>,
    cache: Arc<PackCache>,
    /// The last block verify fetched fresh, so that the next chunks of the
    /// same block cost no request.
    fresh: Mutex<Option<FreshBlock>>,
    /// Fetches of blocks into the cache (one per block, read-ahead).
    fetcher: fetch::Fetcher,
}

/// (pack, block) and its bytes.
type FreshBlock = ((u64, u64), Arc<Vec<u8>>);

impl S3Packs {
    /// The packs of the store at `root` in the bucket of `config`: checks
    /// that the bucket answers (credentials, bucket, store) before
    /// anything else happens.
    pub fn open(root: &Path, config: &S3Config, opening: Opening) -> Result<S3Packs> {
        let bucket = Bucket::connect(&config.bucket)?;
        let keys = config.keys();
        let url = bucket.url(&keys.store_object());
        let refused = |e: Error| Error::Io {
            context: format!("store in {}", config.url()),
            source: io::Error::other(e.to_string()),
        };
        match opening {
            Opening::Existing | Opening::Adopt => {
                bucket.get(&keys.store_object()).map_err(|e| match &e {
                    Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                        Error::NotAStore {
                            path: PathBuf::from(&url),
                            why: "no store settings object there (wrong bucket or prefix, or it was removed)".into(),
                        }
                    }
                    _ => refused(e),
                })?;
            }
            Opening::New { settings } => {
                let stores = bucket
                    .folders(&keys::stores_folder(&config.prefix))
                    .map_err(refused)?;
                if let Some(other) = stores.first() {
                    return Err(Error::Invalid(format!(
                        "{} already holds a snapfs store (id {other}); take it over with \
                         `init --from`, or choose another prefix",
                        config.url()
                    )));
                }
                bucket
                    .put_new(&keys.store_object(), settings.to_vec())
                    .map_err(refused)?;
            }
        }
        let staging = LocalPacks::in_folder(root.join(STAGING_FOLDER))?;
        // Nothing in staging is needed at open: a pack is committed only
        // after its upload, so a staging file is either garbage or a copy.
        for pack in staging.list()? {
            staging.remove(pack.id)?;
        }
        let cache = Arc::new(PackCache::open(
            root.join(CACHE_FOLDER),
            config.cache_bytes,
        )?);
        let bucket = Arc::new(bucket);
        Ok(S3Packs {
            url: config.url().to_string() + "/stores/" + &config.store_id,
            fetcher: fetch::Fetcher::new(bucket.clone(), cache.clone()),
            bucket,
            keys,
            staging: Arc::new(staging),
            staged: Arc::default(),
            lengths: Arc::default(),
            cache,
            fresh: Mutex::new(None),
        })
    }

    fn staged(&self) -> MutexGuard<'_, HashSet<u64>> {
        locked(&self.staged)
    }

    fn lengths(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        locked(&self.lengths)
    }

    /// The length of remote pack `id` (asked once, then remembered).
    fn remote_len(&self, id: u64) -> Result<u64> {
        if let Some(len) = self.lengths().get(&id) {
            return Ok(*len);
        }
        let len = self.bucket.size(&self.keys.pack(id))?;
        self.lengths().insert(id, len);
        Ok(len)
    }

    /// Block `block` of remote pack `id`, fetched from the bucket.
    fn fetch_block(&self, id: u64, block: u64, pack_len: u64) -> Result<Vec<u8>> {
        self.bucket
            .get_range(&self.keys.pack(id), fetch::range(block, pack_len))
    }

    /// Reads through the cache (`fresh`: from the bucket, refreshing it).
    fn read_remote(&self, id: u64, offset: u64, buf: &mut [u8], fresh: bool) -> Result<()> {
        let pack_len = self.remote_len(id)?;
        let end = offset + buf.len() as u64;
        if end > pack_len {
            return Err(Error::Io {
                context: format!("reading {} at {offset}", self.pack_name(id)),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the object holds {pack_len} bytes, not {end}"),
                ),
            });
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (block, within) = (at / BLOCK, at % BLOCK);
            let n = (buf.len() - done).min((BLOCK - within) as usize);
            let part = &mut buf[done..done + n];
            if fresh {
                let bytes = self.fresh_block(id, block, pack_len)?;
                copy_part(&bytes, within, part, &self.pack_name(id))?;
            } else if !self.cache.read(id, block, within, part) {
                let key = self.keys.pack(id);
                let bytes = self.fetcher.get(id, &key, block, pack_len)?;
                copy_part(&bytes, within, part, &self.pack_name(id))?;
            }
            done += n;
        }
        Ok(())
    }

    fn fresh_block(&self, id: u64, block: u64, pack_len: u64) -> Result<Arc<Vec<u8>>> {
        let key = (id, block);
        let memo = || self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, bytes)) = memo().as_ref() {
            if *at == key {
                return Ok(bytes.clone());
            }
        }
        let bytes = Arc::new(self.fetch_block(id, block, pack_len)?);
        self.cache.insert(id, block, &bytes);
        *memo() = Some((key, bytes.clone()));
        Ok(bytes)
    }

    fn listed(&self, folder: &str) -> Result<Vec<(Named, u64, SystemTime)>> {
        Ok(self
            .bucket
            .list(folder)?
            .into_iter()
            .filter_map(|o| keys::parse_name(&o.key).map(|named| (named, o.size, o.modified)))
            .collect())
    }
}

/// A panic while holding these sets cannot leave them inconsistent.
pub(super) fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn copy_part(block: &[u8], within: u64, part: &mut [u8], name: &str) -> Result<()> {
    let from = within as usize;
    let Some(bytes) = block.get(from..from + part.len()) else {
        return Err(Error::Io {
            context: format!("reading {name}"),
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "the object is shorter"),
        });
    };
    part.copy_from_slice(bytes);
    Ok(())
}

impl PackStorage for S3Packs {
    fn create(&self, id: u64) -> Result<Box<dyn PackAppender>> {
        let inner = self.staging.create(id)?;
        self.staged().insert(id);
        Ok(Box::new(S3Appender {
            inner,
            id,
            key: self.keys.pack(id),
            path: self.staging.pack_path(id),
            bucket: self.bucket.clone(),
            staging: self.staging.clone(),
            staged: self.staged.clone(),
            lengths: self.lengths.clone(),
        }))
    }

    fn read_exact_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        if self.staged().contains(&id) {
            return self.staging.read_exact_at(id, offset, buf);
        }
        self.read_remote(id, offset, buf, false)
    }

    fn read_fresh(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        if self.staged().contains(&id) {
            return self.staging.read_exact_at(id, offset, buf);
        }
        self.read_remote(id, offset, buf, true)
    }

    fn drop_cached(&self, id: u64) -> bool {
        *self.fresh.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.cache.forget_pack(id)
    }

    fn list(&self) -> Result<Vec<PackInfo>> {
        let mut packs: Vec<PackInfo> = self
            .listed(&self.keys.packs_folder())?
            .into_iter()
            .filter_map(|(named, len, _)| match named {
                Named::Pack(id) => Some(PackInfo { id, len }),
                _ => None,
            })
            .collect();
        {
            let mut lengths = self.lengths();
            for pack in &packs {
                lengths.insert(pack.id, pack.len);
            }
        }
        let staged = self.staged().clone();
        for pack in self.staging.list()? {
            if staged.contains(&pack.id) {
                packs.retain(|p| p.id != pack.id);
                packs.push(pack);
            }
        }
        Ok(packs)
    }

    fn recoverable(&self) -> Result<Vec<PackInfo>> {
        // Staging was emptied at open; the bucket is gc's to tidy.
        Ok(Vec::new())
    }

    fn settled(&self, age: Duration) -> Result<Vec<PackInfo>> {
        let before = SystemTime::now() - age;
        let staged = self.staged().clone();
        Ok(self
            .listed(&self.keys.packs_folder())?
            .into_iter()
            .filter_map(|(named, len, modified)| match named {
                Named::Pack(id) if modified < before && !staged.contains(&id) => {
                    Some(PackInfo { id, len })
                }
                _ => None,
            })
            .collect())
    }

    fn remove(&self, id: u64) -> Result<()> {
        if self.staged().remove(&id) {
            // Never uploaded by us (a failed seal): nothing of it is in the
            // bucket, unless a PUT whose answer was lost stored it; gc
            // removes such an orphan after its grace period.
            return self.staging.remove(id);
        }
        // The index object first: an index never names a missing pack.
        self.bucket.delete(&self.keys.pack_index(id))?;
        self.bucket.delete(&self.keys.pack(id))?;
        self.lengths().remove(&id);
        self.drop_cached(id);
        Ok(())
    }

    fn truncate(&self, id: u64, len: u64) -> Result<()> {
        if self.staged().contains(&id) {
            return self.staging.truncate(id, len);
        }
        // A sealed object cannot be cut; bytes past the committed length
        // are never read, and gc rewrites the pack if it is worth it.
        log::info!(
            "leaving {} as it is (a sealed object cannot be cut)",
            self.pack_name(id)
        );
        Ok(())
    }

    fn check_room(&self, bytes: u64) -> Result<u64> {
        self.staging.check_room(bytes)
    }

    fn pack_name(&self, id: u64) -> String {
        if self.staged().contains(&id) {
            return self.staging.pack_name(id);
        }
        self.bucket.url(&self.keys.pack(id))
    }

    fn location(&self) -> String {
        self.url.clone()
    }

    fn sidecar(&self) -> Option<&dyn Sidecar> {
        Some(self)
    }

    fn cache_usage(&self) -> Option<(PathBuf, u64, u64)> {
        Some((
            self.cache.dir().to_path_buf(),
            self.cache.used(),
            self.cache.capacity(),
        ))
    }
}

impl Sidecar for S3Packs {
    fn put_pack_index(&self, id: u64, bytes: Vec<u8>) -> Result<()> {
        self.bucket.put_new(&self.keys.pack_index(id), bytes)
    }

    fn pack_index(&self, id: u64) -> Result<Vec<u8>> {
        self.bucket.get(&self.keys.pack_index(id))
    }

    fn pack_indexes(&self) -> Result<Vec<PackInfo>> {
        Ok(self
            .listed(&self.keys.packs_folder())?
            .into_iter()
            .filter_map(|(named, len, _)| match named {
                Named::PackIndex(id) => Some(PackInfo { id, len }),
                _ => None,
            })
            .collect())
    }

    fn put_manifest(&self, id: u64, bytes: Vec<u8>) -> Result<()> {
        self.bucket.put_new(&self.keys.manifest(id), bytes)
    }

    fn manifest(&self, id: u64) -> Result<Vec<u8>> {
        self.bucket.get(&self.keys.manifest(id))
    }

    fn manifests(&self) -> Result<Vec<u64>> {
        Ok(self
            .listed(&self.keys.snapshots_folder())?
            .into_iter()
            .filter_map(|(named, _, _)| match named {
                Named::Manifest(id) => Some(id),
                _ => None,
            })
            .collect())
    }

    fn remove_manifest(&self, id: u64) -> Result<()> {
        self.bucket.delete(&self.keys.manifest(id))
    }

    fn manifest_name(&self, id: u64) -> String {
        self.bucket.url(&self.keys.manifest(id))
    }
}

/// Writes a pack to staging; its seal uploads it.
struct S3Appender {
    inner: Box<dyn PackAppender>,
    id: u64,
    key: String,
    path: PathBuf,
    bucket: Arc<Bucket>,
    staging: Arc<LocalPacks>,
    staged: Arc<Mutex<HashSet<u64>>>,
    lengths: Arc<Mutex<HashMap<u64, u64>>>,
}

impl PackAppender for S3Appender {
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.append(bytes)
    }

    fn sync(&mut self) -> Result<()> {
        self.inner.sync()
    }

    /// Uploads the staged pack and returns once the bucket has all of it;
    /// then the staging copy goes. A failed upload leaves the staging file
    /// to the session, which removes the pack.
    fn seal(self: Box<Self>) -> Result<()> {
        let S3Appender {
            inner,
            id,
            key,
            path,
            bucket,
            staging,
            staged,
            lengths,
        } = *self;
        inner.seal()?;
        let len = std::fs::metadata(&path)
            .map_err(|e| Error::Io {
                context: format!("reading {}", path.display()),
                source: e,
            })?
            .len();
        bucket.upload_file(&key, &path)?;
        locked(&lengths).insert(id, len);
        locked(&staged).remove(&id);
        if let Err(e) = staging.remove(id) {
            log::warn!("cannot remove the staging copy of an uploaded pack: {e}");
        }
        Ok(())
    }
}
