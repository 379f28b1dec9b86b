//! Writing new chunks: one `Ingest` per snapshot (or gc pass) appends to its
//! own pack files and commits their index entries with the catalog change
//! that makes them reachable.

use std::collections::HashMap;

use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::Transactional;

use super::codec::{self, Codec};
use super::gc::{self, Roots};
use super::pack::{self, Location, PackWriter, PACK_TARGET_SIZE};
use super::Store;
use crate::error::{Error, Result};
use crate::hash::ChunkHash;

/// Most bytes a session appends between two looks at the free space.
const SPACE_CHECK_EVERY: u64 = 8 << 20;

/// The trees a commit may change besides the new index entries: the
/// store's own, and the trees of the layer above that the caller named
/// (`extra`, in the order given to [`Ingest::commit`]).
pub struct CommitTrees<'t> {
    pub index: &'t TransactionalTree,
    pub packs: &'t TransactionalTree,
    pub extra: &'t [TransactionalTree],
}

/// A pack's seal running on a thread of its own: its index object when
/// it ended well.
struct Sealing {
    id: u64,
    thread: std::thread::JoinHandle<Result<Vec<u8>>>,
}

/// The catalog part of a commit, run inside the sled transaction.
pub type CatalogChange<'a> = dyn Fn(&CommitTrees) -> ConflictableTransactionResult<(), Error> + 'a;

pub struct Ingest<'s> {
    store: &'s Store,
    writer: Option<PackWriter>,
    /// Finished (synced and sealed, or failed at it) but not yet
    /// committed: (pack id, length).
    synced_packs: Vec<(u64, u64)>,
    /// Written but not yet committed index entries.
    pending: Vec<(ChunkHash, Location)>,
    /// Everything this session wrote, so it never writes a chunk twice.
    written: HashMap<ChunkHash, Location>,
    /// Bytes appended to packs by this session.
    added_bytes: u64,
    /// Bytes that may be appended before the free space is checked again.
    unchecked_room: u64,
    /// Packs committed before the final commit (one per full pack): a
    /// session that fails afterwards hands them back (see Drop).
    committed_early: Vec<u64>,
    committed: bool,
    /// Registration in the store's gc coordination (None for gc itself).
    session: Option<u64>,
    /// A full pack being synced and sealed (uploaded, for a remote store)
    /// while the next one fills; its entries commit once that ended.
    sealing: Option<Sealing>,
    /// Every pack this session created (registered as open for gc).
    created: Vec<u64>,
    /// What a failed session asks about before it gives back the packs it
    /// committed early (None for gc itself).
    roots: Option<&'s dyn Roots>,
}

impl<'s> Ingest<'s> {
    /// A session whose references gc respects until it commits or drops;
    /// `roots` marks what the layers above reach, so that a session that
    /// fails can give back what it committed early.
    pub fn new(store: &'s Store, roots: &'s dyn Roots) -> Ingest<'s> {
        let mut coord = store.gc_coord.lock().unwrap_or_else(|e| e.into_inner());
        let id = coord.next_session;
        coord.next_session += 1;
        coord.sessions.insert(id, Vec::new());
        drop(coord);
        let mut ingest = Ingest::unregistered(store);
        ingest.session = Some(id);
        ingest.roots = Some(roots);
        ingest
    }

    /// gc's own session: it only moves chunks gc already decided about.
    pub(crate) fn unregistered(store: &'s Store) -> Ingest<'s> {
        Ingest {
            session: None,
            roots: None,
            store,
            writer: None,
            synced_packs: Vec::new(),
            pending: Vec::new(),
            written: HashMap::new(),
            added_bytes: 0,
            committed_early: Vec::new(),
            unchecked_room: 0,
            committed: false,
            sealing: None,
            created: Vec::new(),
        }
    }

    pub fn store(&self) -> &'s Store {
        self.store
    }

    pub fn added_bytes(&self) -> u64 {
        self.added_bytes
    }

    /// Records that this session will reference `hash` and says whether the
    /// store has it. From here until the commit, gc keeps the chunk.
    pub fn reference(&mut self, hash: &ChunkHash) -> Result<bool> {
        let mut coord = self
            .store
            .gc_coord
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(list) = self.session.and_then(|id| coord.sessions.get_mut(&id)) {
            list.push(*hash);
        }
        if let Some(touched) = coord.touched.as_mut() {
            touched.insert(*hash);
        }
        // A chunk known damaged counts as absent: the caller stores a
        // fresh copy, which heals it (see damaged.rs).
        Ok(self.written.contains_key(hash)
            || (!self.store.damaged.is_marked(hash) && self.store.contains(hash)?))
    }

    /// Stores an encoded chunk unless the store already has it. Returns
    /// whether it was written.
    pub fn put_encoded(
        &mut self,
        hash: &ChunkHash,
        raw_len: u32,
        codec: Codec,
        stored: &[u8],
    ) -> Result<bool> {
        if self.reference(hash)? {
            return Ok(false);
        }
        self.append(hash, raw_len, codec, stored)?;
        Ok(true)
    }

    /// Stores plain bytes (hashing and compressing them) and returns their
    /// address.
    pub fn put_plain(&mut self, plain: &[u8]) -> Result<ChunkHash> {
        let hash = ChunkHash::of(plain);
        if !self.reference(&hash)? {
            let (codec, stored) = codec::encode_chunk(plain, self.store.config().encoding());
            self.append(&hash, plain.len() as u32, codec, &stored)?;
        }
        Ok(hash)
    }

    /// Appends without the presence check; gc uses it to move live chunks.
    pub(crate) fn append(
        &mut self,
        hash: &ChunkHash,
        raw_len: u32,
        codec: Codec,
        stored: &[u8],
    ) -> Result<()> {
        // Look at the free space every few MiB, and at every record once
        // it runs low (half the room left may be written before the next
        // look, since other writers share the filesystem).
        let need = pack::PACK_HEADER_LEN + pack::RECORD_HEADER_LEN as u64 + stored.len() as u64;
        if self.unchecked_room < need {
            let room = self.store.storage().check_room(need)?;
            self.unchecked_room = need + (room / 2).min(SPACE_CHECK_EVERY);
        }
        self.unchecked_room -= need;
        if self.writer.is_none() {
            let id = self.store.new_pack_id()?;
            // gc's own session is not registered: it holds gc_coord while
            // it writes, and its packs are committed or removed within its
            // pass, before it looks for orphans.
            if self.session.is_some() {
                self.lock_coord().open_packs.insert(id);
                self.created.push(id);
            }
            self.writer = Some(PackWriter::create(self.store.storage(), id)?);
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(Error::Invalid("no pack writer".into()));
        };
        let location = writer.append(hash, raw_len, codec, stored)?;
        self.pending.push((*hash, location));
        self.written.insert(*hash, location);
        self.added_bytes += location.record_len();
        if writer.len() >= PACK_TARGET_SIZE {
            // Commit index entries per full pack so memory stays bounded on
            // huge disks; unreferenced chunks are gc's to reclaim. The
            // full pack is synced (and, for a remote store, uploaded)
            // while the next one fills: done here, it would stall the
            // whole snapshot pipeline for the length of an fsync.
            self.start_sealing()?;
        }
        Ok(())
    }

    fn seal_pack(&mut self) -> Result<()> {
        self.finish_sealing()?;
        if let Some(mut writer) = self.writer.take() {
            let (id, len) = (writer.id(), writer.len());
            // Until sealed, the pack is still this session's to clean up.
            self.synced_packs.push((id, len));
            writer.sync()?;
            let index = writer.seal()?;
            self.publish_index(id, index)?;
        }
        Ok(())
    }

    /// After the pack: an index object never names a pack the bucket does
    /// not hold.
    fn publish_index(&self, id: u64, index: Vec<u8>) -> Result<()> {
        match self.store.storage().sidecar() {
            Some(sidecar) => sidecar.put_pack_index(id, index),
            None => Ok(()),
        }
    }

    /// Syncs and seals the full pack on a thread; once the previous one's
    /// seal has ended, commits the entries of all but the one sealing now.
    fn start_sealing(&mut self) -> Result<()> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        let (id, len) = (writer.id(), writer.len());
        self.synced_packs.push((id, len));
        let previous = self.sealing.take();
        let thread = std::thread::Builder::new()
            .name("pack-seal".into())
            .spawn(move || {
                writer.sync()?;
                writer.seal()
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                return Err(Error::Io {
                    context: "starting the seal of a pack".into(),
                    source: e,
                })
            }
        };
        self.sealing = Some(Sealing { id, thread });
        if let Some(previous) = previous {
            self.join_sealing(previous)?;
            self.commit_inner(None, Some(id))?;
        }
        Ok(())
    }

    /// Waits for the pack sealing on its thread, if any.
    fn finish_sealing(&mut self) -> Result<()> {
        match self.sealing.take() {
            Some(sealing) => self.join_sealing(sealing),
            None => Ok(()),
        }
    }

    fn join_sealing(&self, sealing: Sealing) -> Result<()> {
        let index = sealing.thread.join().map_err(|_| Error::Io {
            context: format!("sealing pack {}", self.store.pack_name(sealing.id)),
            source: std::io::Error::other("the sealing thread panicked"),
        })??;
        self.publish_index(sealing.id, index)
    }

    /// Makes everything durable and applies `change` to the `extra` trees
    /// (the catalog's) in the same transaction.
    pub fn commit(mut self, extra: &[&sled::Tree], change: &CatalogChange<'_>) -> Result<()> {
        self.store.check_still_there()?;
        self.seal_pack()?;
        self.commit_inner(Some((extra, change)), None)?;
        self.committed = true;
        self.unregister();
        self.close_packs();
        Ok(())
    }

    fn lock_coord(&self) -> std::sync::MutexGuard<'_, super::GcCoordination> {
        self.store
            .gc_coord
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn unregister(&mut self) {
        if let Some(id) = self.session.take() {
            self.lock_coord().sessions.remove(&id);
        }
    }

    /// The packs this session made are no longer open: committed (gc
    /// sees their lengths) or removed.
    fn close_packs(&mut self) {
        let created = std::mem::take(&mut self.created);
        if created.is_empty() {
            // gc's session creates none, and may hold gc_coord here.
            return;
        }
        let mut coord = self.lock_coord();
        for id in created {
            coord.open_packs.remove(&id);
        }
    }

    /// Commits the pending entries and pack lengths, except those of pack
    /// `held` (still sealing), which stay pending.
    fn commit_inner(
        &mut self,
        change: Option<(&[&sled::Tree], &CatalogChange<'_>)>,
        held: Option<u64>,
    ) -> Result<()> {
        let store = self.store;
        let is_held = |pack: u64| Some(pack) == held;
        let (kept, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(_, location)| is_held(location.pack));
        let (kept_packs, packs): (Vec<_>, Vec<_>) = std::mem::take(&mut self.synced_packs)
            .into_iter()
            .partition(|(id, _)| is_held(*id));
        // On failure everything stays this session's to clean up.
        self.pending = pending;
        self.pending.extend_from_slice(&kept);
        self.synced_packs = packs;
        self.synced_packs.extend_from_slice(&kept_packs);
        let pending = &self.pending[..self.pending.len() - kept.len()];
        let packs = &self.synced_packs[..self.synced_packs.len() - kept_packs.len()];
        let mut trees: Vec<&sled::Tree> = vec![&store.index, &store.packs, store.damaged.tree()];
        if let Some((extra, _)) = change {
            trees.extend_from_slice(extra);
        }
        let result = trees.as_slice().transaction(|trees| {
            let [index, pack_lens, damaged, extra @ ..] = trees.as_slice() else {
                return abort(Error::Invalid("commit without the store's trees".into()));
            };
            for (hash, location) in pending {
                index.insert(&hash.0, &location.encode())?;
            }
            let healed = store
                .damaged
                .clear_in(damaged, pending.iter().map(|(hash, _)| *hash))?;
            for (id, len) in packs {
                pack_lens.insert(&id.to_be_bytes(), &len.to_le_bytes())?;
            }
            if let Some((_, change)) = change {
                change(&CommitTrees {
                    index,
                    packs: pack_lens,
                    extra,
                })?;
            }
            Ok(healed)
        });
        match result {
            Ok(healed) => store.damaged.forget(&healed),
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        store.flush()?;
        if change.is_none() {
            self.committed_early.extend(packs.iter().map(|(id, _)| *id));
        }
        self.pending = kept;
        self.synced_packs = kept_packs;
        Ok(())
    }
}

impl Drop for Ingest<'_> {
    /// An uncommitted session leaves nothing in its packs past what was
    /// committed: the open writer's file is cut back or removed now rather
    /// than at the next open. A failed snapshot must not cost space either:
    /// the packs it committed early go too, unless something now reaches
    /// their chunks (gc decides, once this session no longer counts).
    fn drop(&mut self) {
        let roots = self.roots;
        self.unregister();
        if self.committed {
            return;
        }
        // A pack still sealing is removed only once its upload ended.
        if let Some(sealing) = self.sealing.take() {
            let _ = sealing.thread.join();
        }
        // Closed whatever happens below: what stays uncommitted in a
        // bucket is an orphan for gc from now on.
        self.close_packs();
        let mut uncommitted: Vec<u64> = self.synced_packs.iter().map(|(id, _)| *id).collect();
        if let Some(writer) = self.writer.take() {
            uncommitted.push(writer.id());
        }
        // Best effort: what stays is cut off at the next open.
        let storage = self.store.storage();
        for id in uncommitted {
            let _ = match self.store.committed_pack_len(id) {
                Ok(None) => storage.remove(id),
                Ok(Some(len)) => storage.truncate(id, len),
                Err(e) => Err(e),
            };
        }
        // gc's own session is unregistered: its early packs hold chunks it
        // moved, which are live.
        let Some(roots) = roots.filter(|_| !self.committed_early.is_empty()) else {
            return;
        };
        if let Err(e) = gc::reclaim_packs(self.store, roots, &self.committed_early) {
            log::info!("cannot reclaim the packs of a failed snapshot (snapfs gc will): {e}");
        }
    }
}

/// Turns an error into a transaction abort.
pub fn abort<T>(e: Error) -> ConflictableTransactionResult<T, Error> {
    Err(ConflictableTransactionError::Abort(e))
}
