//! An open store folder with all its parts: the chunk store (packs and
//! index), the catalog (disks, snapshots, policies), the disks busy with a
//! snapshot or rollback, and the maps of images still open. Everything
//! above the store takes a `Repository`; the store itself knows chunks only.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use crate::catalog::{Catalog, DiskRecord};
use crate::error::Result;
use crate::hash::ChunkHash;
use crate::live::{LiveDisk, LiveDisks};
use crate::map::{MapReader, PinnedMaps};
use crate::snapshot::reflink;
use crate::snapshot::running::RunningDisks;
use crate::store::backend::{PackStorage, PacksConfig};
use crate::store::gc::{self, GcReport, Roots};
use crate::store::{OpenOptions, Placement, Store, StoreConfig};

pub struct Repository {
    store: Store,
    catalog: Catalog,
    running: RunningDisks,
    pins: PinnedMaps,
    live: LiveDisks,
}

impl Repository {
    /// Creates a new store; fails if one exists at `root`.
    pub fn init(root: &Path, config: StoreConfig) -> Result<Repository> {
        Repository::with_store(Store::init(root, config)?)
    }

    /// `init`, keeping the packs where `packs` says (a bucket).
    pub fn init_with(root: &Path, config: StoreConfig, packs: PacksConfig) -> Result<Repository> {
        Repository::with_store(Store::init_with(root, config, packs)?)
    }

    pub fn open(root: &Path, options: &OpenOptions) -> Result<Repository> {
        let repo = Repository::with_store(Store::open(root, options)?)?;
        repo.sync_manifests();
        Ok(repo)
    }

    /// `open`; a store created now keeps its packs per `placement`.
    pub fn open_placed(
        root: &Path,
        options: &OpenOptions,
        placement: &Placement,
    ) -> Result<Repository> {
        let store = Store::open_placed(root, options, placement, |packs| packs)?;
        let repo = Repository::with_store(store)?;
        // A store taking over a bucket has an empty catalog until the
        // import: its sync would remove every manifest.
        if !placement.adopt {
            repo.sync_manifests();
        }
        Ok(repo)
    }

    /// `open`, with the store's pack storage passed through `wrap` (tests
    /// wrap it in a `store::backend::faulty::FaultyPacks`).
    pub fn open_with(
        root: &Path,
        options: &OpenOptions,
        wrap: impl FnOnce(Arc<dyn PackStorage>) -> Arc<dyn PackStorage>,
    ) -> Result<Repository> {
        let repo = Repository::with_store(Store::open_with(root, options, wrap)?)?;
        repo.sync_manifests();
        Ok(repo)
    }

    /// Puts right what an earlier process left of the bucket's manifests
    /// (a remote store only; a failure is logged, the next open retries).
    fn sync_manifests(&self) {
        if let Err(e) = self.catalog.sync_manifests() {
            log::warn!("the bucket's snapshot manifests are behind the catalog: {e}");
        }
    }

    fn with_store(store: Store) -> Result<Repository> {
        let repo = Repository {
            catalog: Catalog::open(&store)?,
            store,
            running: RunningDisks::default(),
            pins: PinnedMaps::default(),
            live: LiveDisks::default(),
        };
        // We hold the store: no snapshot of ours reads a clone right now.
        let tag = repo.clone_tag();
        for disk in repo.catalog.disks().unwrap_or_default() {
            reflink::remove_leftover(&disk.source, &tag);
        }
        Ok(repo)
    }

    /// What names this store's reflink clones of its sources.
    pub fn clone_tag(&self) -> String {
        reflink::store_tag(self.store.root())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The disks a snapshot or rollback is running on: one at a time each.
    pub fn running(&self) -> &RunningDisks {
        &self.running
    }

    /// Maps that gc keeps while an image reads them, deleted or not.
    pub fn pins(&self) -> &PinnedMaps {
        &self.pins
    }

    /// The live disks this process has open (the mount's, or a CLI
    /// command's on an unmounted store).
    pub fn live(&self) -> &LiveDisks {
        &self.live
    }

    /// `disk`'s `LiveDisk`, opened on first use (its record in STORE/live/).
    pub fn live_disk(&self, disk: &DiskRecord) -> Result<Arc<LiveDisk>> {
        self.live
            .get(self.store.root(), self.store.chunk_size(), disk)
    }

    /// A gc pass over the whole store (see `store::gc`).
    pub fn gc(&self, min_dead_percent: u8) -> Result<GcReport> {
        gc::gc(&self.store, self, min_dead_percent)
    }

    /// `gc`, with the grace period of uncommitted packs in a bucket.
    pub fn gc_with_grace(
        &self,
        min_dead_percent: u8,
        grace: std::time::Duration,
    ) -> Result<GcReport> {
        gc::gc_with_grace(&self.store, self, min_dead_percent, grace)
    }
}

impl Roots for Repository {
    /// Every page and chunk that a catalogued snapshot or an open image
    /// reaches.
    fn mark(&self, store: &Store, live: &mut HashSet<ChunkHash>) -> Result<()> {
        let mut roots: Vec<_> = self
            .catalog
            .snapshots(None)?
            .iter()
            .map(|s| s.map)
            .collect();
        roots.extend(self.pins.roots());
        let mut pages = HashSet::new();
        for root in roots {
            let map = MapReader::new(store, root);
            // A page already marked was walked in full before: skip it.
            map.walk(&mut |page| pages.insert(*page), &mut |_, hash| {
                if !hash.is_zero() {
                    live.insert(*hash);
                }
                Ok(())
            })?;
        }
        live.extend(pages);
        Ok(())
    }
}
