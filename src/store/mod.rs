//! The chunk store: packs of chunk records and the sled index that finds
//! them. It knows chunks only: disks, snapshots and maps belong to the
//! layers above, which open their own sled trees through [`Store::open_tree`]
//! and commit them with new chunks through [`Ingest::commit`]. It owns the
//! store directory:
//!
//! ```text
//! STORE/FORMAT        "snapfs store format 1": checked before sled opens
//! STORE/lock          flock; names the holding pid (and mountpoint)
//! STORE/db/           sled: meta, index, packs, damaged (and the catalog's trees)
//! STORE/packs/*.pack  append-only chunk records (see pack.rs, backend/local.rs)
//! STORE/staging/, STORE/cache/   an S3 store's packs being written, and its
//!                     cache of pack data (backend/s3/); its packs are in the bucket
//! ```
//!
//! Pack bytes go through a [`backend::PackStorage`] only: pack.rs says what
//! the bytes mean (records, header, verification), codec.rs how a record's
//! bytes are compressed, the backend where they live. Nothing else in the
//! crate touches a pack.
//!
//! Durability order: pack bytes are fsynced (and sealed: a remote backend
//! uploads them, and the pack's index object follows), then the index
//! entries, the packs' committed lengths and the catalog change commit in
//! one sled transaction, then sled is flushed. At open, bytes past a pack's
//! committed length and packs with no committed length are removed.

pub mod backend;
pub mod codec;
mod damaged;
pub mod gc;
pub mod import;
mod ingest;
pub mod lock;
pub mod pack;
pub mod pack_index;
mod single_flight;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::num::NonZeroUsize;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use lru::LruCache;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::hash::ChunkHash;
use backend::local;
use backend::s3::{self, Opening};
use backend::{PackInfo, PackStorage, PacksConfig, Sidecar};
use codec::Encoding;
pub use ingest::{abort as ingest_abort, CommitTrees, Ingest};
use lock::StoreLock;
use pack::Location;
use single_flight::{SingleFlight, Turn};

pub const FORMAT_VERSION: u32 = 1;
const FORMAT_FILE: &str = "FORMAT";
const FORMAT_PREFIX: &str = "snapfs store format ";

pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;
pub const DEFAULT_CHUNK_SIZE: u32 = 64 << 10;
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
/// Bytes of evicted chunk buffers kept for reuse.
const SPARE_BUFFER_BYTES: u64 = 8 << 20;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Lz4,
    None,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::None => "none",
        })
    }
}

impl std::str::FromStr for Compression {
    type Err = Error;
    fn from_str(text: &str) -> Result<Compression> {
        match text {
            "zstd" => Ok(Compression::Zstd),
            "lz4" => Ok(Compression::Lz4),
            "none" => Ok(Compression::None),
            other => Err(Error::Invalid(format!(
                "unknown compression {other:?} (use zstd, lz4 or none)"
            ))),
        }
    }
}

/// Settings fixed when a store is created.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub chunk_size: u32,
    pub compression: Compression,
    pub zstd_level: i32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        // lz4: cheaper to read back and to compress than zstd, which
        // packs about a fifth tighter (codec.rs; `init --compression zstd`).
        StoreConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            compression: Compression::Lz4,
            zstd_level: 1,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<()> {
        let size = self.chunk_size;
        if !size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
            return Err(Error::Invalid(format!(
                "chunk size {size} must be a power of two from 64 KiB to 4 MiB"
            )));
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(Error::Invalid(format!(
                "zstd level {} must be from 1 to 19",
                self.zstd_level
            )));
        }
        Ok(())
    }

    /// How new chunks are compressed.
    pub fn encoding(&self) -> Encoding {
        match self.compression {
            Compression::Zstd => Encoding::Zstd {
                level: self.zstd_level,
            },
            Compression::Lz4 => Encoding::Lz4,
            Compression::None => Encoding::Plain,
        }
    }
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Create the store with this configuration when it does not exist.
    pub create: Option<StoreConfig>,
    /// Bytes of decompressed chunks kept in memory.
    pub cache_bytes: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            create: Some(StoreConfig::default()),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Where a store created by an open keeps its packs (an existing store's
/// choice is in its `meta` tree and wins).
#[derive(Clone, Debug, Default)]
pub struct Placement {
    pub packs: PacksConfig,
    /// Take over the bucket's store named in `packs` (`init --from`)
    /// instead of starting one there.
    pub adopt: bool,
}

/// The settings object of a store in a bucket (`stores/ID/store.json`):
/// what `init --from` needs to make the local store again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// Version of the object layout in the bucket (FORMAT.md).
    pub format: u32,
    pub store_id: String,
    pub config: StoreConfig,
}

/// The object layout version in a bucket.
pub const OBJECT_FORMAT_VERSION: u32 = 1;

pub struct Store {
    root: PathBuf,
    /// Only for fs/scheduler.rs until it asks `stored_bytes()`.
    /// Where pack bytes live.
    storage: Arc<dyn PackStorage>,
    /// Packs whose header was found good (checked once, on first read).
    checked_packs: RwLock<HashSet<u64>>,
    config: StoreConfig,
    db: sled::Db,
    meta: sled::Tree,
    pub(crate) index: sled::Tree,
    pub(crate) packs: sled::Tree,
    /// Chunks whose stored copy is known bad (see damaged.rs).
    pub(crate) damaged: damaged::DamagedChunks,
    cache: Mutex<LruCache<ChunkHash, Arc<Vec<u8>>>>,
    /// Buffers of chunks evicted from the cache, reused for the next reads.
    spare_buffers: Mutex<Vec<Vec<u8>>>,
    /// Chunks being read after a cache miss, so that each is read once.
    loading: SingleFlight,
    /// What gc must treat as live besides the catalog (see gc.rs).
    pub(crate) gc_coord: Mutex<GcCoordination>,
    /// One gc pass at a time.
    pub(crate) gc_run: Mutex<()>,
    lock: Mutex<StoreLock>,
    /// (device, inode) of the store folder when it was opened.
    root_id: (u64, u64),
    /// Added to every id sled generates: a store rebuilt from a bucket
    /// never hands out an id that the bucket's objects already use.
    id_floor: AtomicU64,
}

/// Chunks that writing sessions reference but the catalog does not yet:
/// every hash a session decides to reuse or write is recorded here under
/// the mutex, in the same step as its presence check, so gc can never
/// remove a chunk between that check and the session's commit.
#[derive(Default)]
pub(crate) struct GcCoordination {
    /// Per open session: every hash it referenced so far.
    pub sessions: HashMap<u64, Vec<ChunkHash>>,
    pub next_session: u64,
    /// While gc sweeps: hashes referenced since its mark began.
    pub touched: Option<HashSet<ChunkHash>>,
    /// Packs that writing sessions (gc's too) created and have not given
    /// up: gc never removes one of them as an orphan, however young the
    /// grace period.
    pub open_packs: HashSet<u64>,
}

impl Store {
    /// Creates a new store; fails if one exists at `root`.
    pub fn init(root: &Path, config: StoreConfig) -> Result<Store> {
        Store::init_with(root, config, PacksConfig::Local)
    }

    /// `init`, keeping the packs where `packs` says.
    pub fn init_with(root: &Path, config: StoreConfig, packs: PacksConfig) -> Result<Store> {
        config.validate()?;
        if root.join(FORMAT_FILE).exists() {
            return Err(Error::StoreExists(root.to_path_buf()));
        }
        let options = OpenOptions {
            create: Some(config),
            ..OpenOptions::default()
        };
        let placement = Placement {
            packs,
            adopt: false,
        };
        Store::open_placed(root, &options, &placement, |packs| packs)
    }

    pub fn open(root: &Path, options: &OpenOptions) -> Result<Store> {
        Store::open_with(root, options, |packs| packs)
    }

    /// `open`, with the pack storage passed through `wrap` first (tests
    /// wrap it in a [`backend::faulty::FaultyPacks`]).
    pub fn open_with(
        root: &Path,
        options: &OpenOptions,
        wrap: impl FnOnce(Arc<dyn PackStorage>) -> Arc<dyn PackStorage>,
    ) -> Result<Store> {
        Store::open_placed(root, options, &Placement::default(), wrap)
    }

    /// `open_with`; a store created now keeps its packs per `placement`.
    pub fn open_placed(
        root: &Path,
        options: &OpenOptions,
        placement: &Placement,
        wrap: impl FnOnce(Arc<dyn PackStorage>) -> Arc<dyn PackStorage>,
    ) -> Result<Store> {
        let format_path = root.join(FORMAT_FILE);
        if !format_path.exists() && options.create.is_none() {
            return Err(Error::NotAStore {
                path: root.to_path_buf(),
                why: "no FORMAT file".into(),
            });
        }
        if !root.exists() {
            crate::modes::create_private_dir(root)
                .context(|| format!("creating store {}", root.display()))?;
        }
        if !format_path.exists() && !is_empty_or_half_made_store(root)? {
            return Err(Error::NotAStore {
                path: root.to_path_buf(),
                why: "the folder holds other files; name an empty or new folder".into(),
            });
        }
        let lock = StoreLock::acquire(root)?;
        let root_id = folder_id(root)?;
        let fresh = !format_path.exists();
        if fresh {
            // Chunks of people's disks: readable by the owner only.
            fs::set_permissions(root, fs::Permissions::from_mode(crate::modes::PRIVATE_DIR))
                .context(|| format!("setting permissions of {}", root.display()))?;
        }
        if !fresh {
            check_format_file(root)?;
        }
        // sled would make its folder with the umask's mode.
        let db_dir = root.join("db");
        crate::modes::create_private_dir(&db_dir)
            .context(|| format!("creating {}", db_dir.display()))?;
        remove_interrupted_sled_snapshots(&db_dir)?;
        let db = sled::Config::new()
            .path(db_dir)
            .cache_capacity(32 << 20)
            .open()?;
        let meta = db.open_tree("meta")?;
        let stored_config: Option<StoreConfig> = match meta.get("config")? {
            Some(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::BadMetadata(format!("store config: {e}")))?,
            ),
            None if fresh => None,
            None => return Err(Error::BadMetadata("store config is missing".into())),
        };
        let packs_config: PacksConfig = match meta.get("packs")? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::BadMetadata(format!("pack storage config: {e}")))?,
            None if stored_config.is_none() => placement.packs.clone(),
            // Stores made before the choice existed keep packs locally.
            None => PacksConfig::Local,
        };
        let config = match stored_config {
            Some(config) => config,
            None => options.create.unwrap_or_default(),
        };
        config.validate()?;
        // The bucket first: a store whose bucket refuses it is not made.
        let settings = match &packs_config {
            PacksConfig::S3(s3) => encode_json(&StoreSettings {
                format: OBJECT_FORMAT_VERSION,
                store_id: s3.store_id.clone(),
                config,
            })?,
            PacksConfig::Local => Vec::new(),
        };
        let opening = match (stored_config.is_none(), placement.adopt) {
            (false, _) => Opening::Existing,
            (true, false) => Opening::New {
                settings: &settings,
            },
            (true, true) => Opening::Adopt,
        };
        let storage = wrap(packs_config.open(root, opening)?);
        if stored_config.is_none() {
            meta.insert("config", encode_json(&config)?)?;
            meta.insert("packs", encode_json(&packs_config)?)?;
            meta.insert("format", &FORMAT_VERSION.to_le_bytes())?;
            db.flush()?;
        }
        let id_floor = meta
            .get("id_floor")?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_le_bytes);
        if fresh {
            // Also finishes an init that crashed after sled had the config.
            write_format_file(root)?;
        }
        let store = Store {
            root: root.to_path_buf(),
            storage,
            checked_packs: RwLock::new(HashSet::new()),
            config,
            index: db.open_tree("index")?,
            packs: db.open_tree("packs")?,
            damaged: damaged::DamagedChunks::load(db.open_tree("damaged")?)?,
            meta,
            db,
            cache: Mutex::new(LruCache::new(cache_entries(options.cache_bytes, config))),
            spare_buffers: Mutex::new(Vec::new()),
            loading: SingleFlight::default(),
            gc_coord: Mutex::new(GcCoordination::default()),
            gc_run: Mutex::new(()),
            lock: Mutex::new(lock),
            root_id,
            id_floor: AtomicU64::new(id_floor),
        };
        store.check_db_format()?;
        store.recover_packs()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Fails if the store folder was removed or moved while open: a commit
    /// would then land in files nobody finds again, or next to packs that
    /// cannot be written.
    pub fn check_still_there(&self) -> Result<()> {
        match folder_id(&self.root) {
            Ok(id) if id == self.root_id => Ok(()),
            _ => Err(Error::Io {
                context: format!("store {}", self.root.display()),
                source: std::io::Error::other("its folder was removed or moved while in use"),
            }),
        }
    }

    /// An I/O error of the store's own files is the folder's loss when the
    /// folder went away: say that, not "no such file".
    pub fn blame_lost_folder(&self, error: Error) -> Error {
        match error {
            Error::Io { .. } => self.check_still_there().err().unwrap_or(error),
            other => other,
        }
    }

    pub fn config(&self) -> StoreConfig {
        self.config
    }

    pub fn chunk_size(&self) -> u64 {
        self.config.chunk_size as u64
    }

    /// A sled tree of the layers above (the catalog's), in the same
    /// database, so that [`Ingest::commit`] can change it in one transaction
    /// with the chunks it makes reachable.
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    /// A number never handed out before in this store (record ids).
    pub fn generate_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()? + self.id_floor.load(Ordering::SeqCst))
    }

    /// Makes every id handed out from now on at least `floor` (a store
    /// rebuilt from a bucket, above the ids its objects use).
    pub(crate) fn raise_id_floor(&self, floor: u64) -> Result<()> {
        if floor <= self.id_floor.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.meta.insert("id_floor", &floor.to_le_bytes())?;
        self.db.flush()?;
        self.id_floor.store(floor, Ordering::SeqCst);
        Ok(())
    }

    /// Where the packs are, for people.
    pub fn packs_location(&self) -> String {
        self.storage.location()
    }

    /// The local cache of pack data of a remote store: folder, used, capacity.
    pub fn pack_cache_usage(&self) -> Option<(PathBuf, u64, u64)> {
        self.storage.cache_usage()
    }

    /// The objects that rebuild a remote store from its bucket.
    pub fn sidecar(&self) -> Option<&dyn Sidecar> {
        self.storage.sidecar()
    }

    /// Names pack `id` for messages (a path, or an object's URL).
    pub fn pack_name(&self, id: u64) -> String {
        self.storage.pack_name(id)
    }

    /// Records in the lock file that this process serves a mount.
    pub fn announce_mount(&self, mountpoint: Option<&Path>) -> Result<()> {
        self.lock
            .lock()
            .map_err(|_| Error::Invalid("lock poisoned".into()))?
            .write_holder(mountpoint)
    }

    /// Makes every committed change durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn check_db_format(&self) -> Result<()> {
        let found = self
            .meta
            .get("format")?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_le_bytes);
        match found {
            Some(FORMAT_VERSION) => Ok(()),
            other => Err(Error::FormatVersion {
                path: self.root.clone(),
                found: other.map_or("unknown".into(), |v| v.to_string()),
                expected: FORMAT_VERSION,
            }),
        }
    }

    /// Cuts off pack bytes that no commit covers and removes packs that no
    /// commit ever named: the leftovers of a crash.
    fn recover_packs(&self) -> Result<()> {
        for PackInfo { id, len } in self.storage.recoverable()? {
            let name = || self.storage.pack_name(id);
            match self.committed_pack_len(id)? {
                None => {
                    log::info!("removing uncommitted pack {}", name());
                    self.storage.remove(id)?;
                }
                Some(committed) if len > committed => {
                    log::info!(
                        "cutting {} uncommitted bytes off {}",
                        len - committed,
                        name()
                    );
                    self.storage.truncate(id, committed)?;
                }
                Some(committed) if len < committed => log::warn!(
                    "pack {} is {} bytes shorter than committed; run snapfs verify",
                    name(),
                    committed - len
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    pub(crate) fn committed_pack_len(&self, id: u64) -> Result<Option<u64>> {
        Ok(self
            .packs
            .get(id.to_be_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_le_bytes))
    }

    /// A fresh id for a new pack file.
    pub(crate) fn new_pack_id(&self) -> Result<u64> {
        Ok(self.generate_id()? + 1)
    }

    pub fn locate(&self, hash: &ChunkHash) -> Result<Option<Location>> {
        match self.index.get(hash.0)? {
            Some(bytes) => Ok(Some(Location::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn contains(&self, hash: &ChunkHash) -> Result<bool> {
        Ok(self.index.contains_key(hash.0)?)
    }

    /// The plain bytes of a chunk or page, verified against its hash,
    /// through the cache.
    pub fn get(&self, hash: &ChunkHash) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = self.cache_lock().get(hash) {
            return Ok(hit.clone());
        }
        let landing = match self.loading.turn(hash) {
            Turn::Loaded(Some(data)) => return Ok(data),
            Turn::Loaded(None) => return self.load(hash),
            Turn::Load(landing) => landing,
        };
        // Looked again: a load may have landed between the miss and the turn.
        let hit = self.cache_lock().get(hash).cloned();
        let result = match hit {
            Some(hit) => Ok(hit),
            None => self.load(hash),
        };
        landing.land(result.as_ref().ok().cloned());
        result
    }

    /// Reads, verifies and caches a chunk.
    fn load(&self, hash: &ChunkHash) -> Result<Arc<Vec<u8>>> {
        let spare = self
            .spare_buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let data = Arc::new(self.read_verified_into(hash, spare)?);
        let evicted = self.cache_lock().push(*hash, data.clone());
        // A chunk nobody else holds any more lends its buffer to the next read.
        if let Some(buffer) = evicted.and_then(|(_, old)| Arc::try_unwrap(old).ok()) {
            let mut spare = self.spare_buffers.lock().unwrap_or_else(|e| e.into_inner());
            if (spare.len() as u64 + 1) * self.chunk_size() <= SPARE_BUFFER_BYTES {
                spare.push(buffer);
            }
        }
        Ok(data)
    }

    /// Reads and verifies a chunk from its pack, bypassing the cache.
    pub fn read_verified(&self, hash: &ChunkHash) -> Result<Vec<u8>> {
        self.read_verified_into(hash, Vec::new())
    }

    /// `read_verified` from the pack's authoritative copy: a remote store
    /// reads the bucket, not its local cache (verify).
    pub fn read_verified_fresh(&self, hash: &ChunkHash) -> Result<Vec<u8>> {
        let read = || {
            let location = self.locate(hash)?.ok_or(Error::MissingChunk(*hash))?;
            self.check_pack_header(location.pack)?;
            let fresh =
                |id: u64, offset: u64, buf: &mut [u8]| self.storage.read_fresh(id, offset, buf);
            pack::read_record_with(&fresh, hash, &location, Vec::new())
        };
        read().map_err(|e| {
            let e = self.blame_lost_folder(e);
            if is_damage(&e) {
                self.damaged.mark(hash);
            }
            e
        })
    }

    /// `read_verified`, decompressing into a recycled buffer.
    fn read_verified_into(&self, hash: &ChunkHash, buffer: Vec<u8>) -> Result<Vec<u8>> {
        let result = self.read_record_into(hash, buffer);
        result.map_err(|e| {
            let e = self.blame_lost_folder(e);
            // A chunk is damaged only if its store is still in place.
            if is_damage(&e) {
                self.damaged.mark(hash);
            }
            e
        })
    }

    fn read_record_into(&self, hash: &ChunkHash, buffer: Vec<u8>) -> Result<Vec<u8>> {
        let location = self.locate(hash)?.ok_or(Error::MissingChunk(*hash))?;
        match self.read_record_at(hash, &location, buffer) {
            // gc may have moved the chunk and removed its pack between our
            // lookup and the read: then the index names another place.
            Err(e) if !matches!(e, Error::Corrupt { .. }) => match self.locate(hash)? {
                Some(moved) if moved != location => self.read_record_at(hash, &moved, Vec::new()),
                _ => Err(e),
            },
            other => other,
        }
    }

    /// The record at `location`, verified; no damage marks (gc reads its
    /// live chunks this way).
    pub(crate) fn read_record_at(
        &self,
        hash: &ChunkHash,
        location: &Location,
        buffer: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.check_pack_header(location.pack)?;
        match pack::read_record_into(&*self.storage, hash, location, buffer) {
            // A remote store's local cache may be what is damaged: once
            // its blocks are dropped, the bucket's copy decides.
            Err(Error::Corrupt { .. }) if self.storage.drop_cached(location.pack) => {
                pack::read_record_into(&*self.storage, hash, location, Vec::new())
            }
            other => other,
        }
    }

    fn check_pack_header(&self, id: u64) -> Result<()> {
        let checked = || self.checked_packs.read().unwrap_or_else(|e| e.into_inner());
        if checked().contains(&id) {
            return Ok(());
        }
        pack::check_pack_header(&*self.storage, id)?;
        self.checked_packs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        Ok(())
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, LruCache<ChunkHash, Arc<Vec<u8>>>> {
        // A panic while holding the cache cannot leave it inconsistent.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where pack bytes live (for ingest, gc and recovery).
    pub(crate) fn storage(&self) -> &dyn PackStorage {
        &*self.storage
    }

    /// The pack storage, shared (the catalog writes manifests beside it).
    pub(crate) fn storage_arc(&self) -> Arc<dyn PackStorage> {
        self.storage.clone()
    }

    /// Removes a pack that no index entry names any more.
    pub(crate) fn remove_pack(&self, id: u64) -> Result<()> {
        self.checked_packs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.storage.remove(id)
    }

    /// The committed packs that are missing, shorter than committed, or
    /// (in a bucket) without their index object, each with what is wrong.
    pub fn check_pack_objects(&self) -> Result<HashMap<u64, String>> {
        let there: HashMap<u64, u64> = self
            .storage
            .list()?
            .into_iter()
            .map(|pack| (pack.id, pack.len))
            .collect();
        let indexed: Option<HashSet<u64>> = match self.storage.sidecar() {
            Some(sidecar) => Some(sidecar.pack_indexes()?.iter().map(|p| p.id).collect()),
            None => None,
        };
        let mut bad = HashMap::new();
        for item in self.packs.iter() {
            let (key, value) = item?;
            let (Ok(id), Ok(committed)) = (
                <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes),
                <[u8; 8]>::try_from(value.as_ref()).map(u64::from_le_bytes),
            ) else {
                return Err(Error::BadMetadata("bad entry in the packs tree".into()));
            };
            let name = self.storage.pack_name(id);
            let problem = match there.get(&id) {
                None => Some(format!("pack {name} is missing")),
                Some(&len) if len < committed => Some(format!(
                    "pack {name} holds {len} bytes, {committed} committed"
                )),
                _ if indexed.as_ref().is_some_and(|ids| !ids.contains(&id)) => {
                    Some(format!("pack {name} has no index object"))
                }
                _ => None,
            };
            if let Some(problem) = problem {
                bad.insert(id, problem);
            }
        }
        Ok(bad)
    }

    /// Every pack with its length.
    pub fn stored_packs(&self) -> Result<Vec<PackInfo>> {
        self.storage.list()
    }

    /// Bytes of all packs together.
    pub fn stored_bytes(&self) -> Result<u64> {
        self.storage.stored_bytes()
    }

    /// True once a read found the stored copy of `hash` damaged, until a
    /// fresh copy is committed (see damaged.rs).
    pub fn is_damaged(&self, hash: &ChunkHash) -> bool {
        self.damaged.is_marked(hash)
    }

    /// Drops every cached chunk (used after a verify or gc pass).
    pub fn clear_cache(&self) {
        self.cache_lock().clear();
    }
}

/// True for a read error that means the stored copy of a chunk is bad (as
/// opposed to a failing disk): its record does not verify, or its pack is
/// short, missing or not a pack.
fn is_damage(error: &Error) -> bool {
    match error {
        Error::Corrupt { .. } | Error::BadMetadata(_) => true,
        Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Invalid(e.to_string()))
}

fn folder_id(path: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).context(|| format!("reading {}", path.display()))?;
    Ok((meta.dev(), meta.ino()))
}

fn cache_entries(cache_bytes: u64, config: StoreConfig) -> NonZeroUsize {
    let entries = (cache_bytes / config.chunk_size as u64).max(16) as usize;
    NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN)
}

/// True for a folder a store may be created in: empty, or holding only
/// what an interrupted creation leaves.
fn is_empty_or_half_made_store(root: &Path) -> Result<bool> {
    let entries = fs::read_dir(root).context(|| format!("listing {}", root.display()))?;
    for entry in entries {
        let entry = entry.context(|| format!("listing {}", root.display()))?;
        let name = entry.file_name();
        if !matches!(
            name.to_str(),
            Some(
                "lock"
                    | "db"
                    | local::FOLDER
                    | s3::STAGING_FOLDER
                    | s3::CACHE_FOLDER
                    | "FORMAT.tmp"
                    | "snapfs.log"
            )
        ) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes the `snap.*.generating` files that a process killed while sled
/// wrote its snapshot leaves behind. sled 0.34 writes a snapshot to such a
/// file, fsyncs it and only then renames it, so one still there was never
/// complete; but sled's own open takes it for the newest snapshot and fails
/// with "corrupted data" on every open after (spacejam/sled#1527). Without
/// it, sled recovers from the previous snapshot and its log. We hold the
/// store lock, so no other process is writing one.
fn remove_interrupted_sled_snapshots(db_dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(db_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.context(|| format!("listing {}", db_dir.display()))?,
    };
    for entry in entries {
        let entry = entry.context(|| format!("listing {}", db_dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = entry.path();
            log::info!("removing the interrupted sled snapshot {}", path.display());
            fs::remove_file(&path).context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn check_format_file(root: &Path) -> Result<()> {
    let path = root.join(FORMAT_FILE);
    let text = fs::read_to_string(&path).context(|| format!("reading {}", path.display()))?;
    let found = text
        .trim()
        .strip_prefix(FORMAT_PREFIX)
        .ok_or_else(|| Error::NotAStore {
            path: root.to_path_buf(),
            why: "FORMAT file is not a snapfs format line".into(),
        })?;
    if found.parse::<u32>().ok() != Some(FORMAT_VERSION) {
        return Err(Error::FormatVersion {
            path: root.to_path_buf(),
            found: found.to_string(),
            expected: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// Written last at creation, through a rename, so a crash mid-init leaves no
/// half store that claims to be one.
fn write_format_file(root: &Path) -> Result<()> {
    let tmp = root.join("FORMAT.tmp");
    let text = format!("{FORMAT_PREFIX}{FORMAT_VERSION}\n");
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::modes::PRIVATE_FILE)
        .open(&tmp)
        .and_then(|mut file| {
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|_| fs::rename(&tmp, root.join(FORMAT_FILE)))
        .and_then(|_| File::open(root)?.sync_all())
        .context(|| format!("writing {}", root.join(FORMAT_FILE).display()))
}
