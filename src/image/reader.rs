//! `ImageReader`: the bytes of a snapshot image at any offset, reassembled
//! from its chunks. Offset -> chunk is a division; chunk -> hash is a map
//! lookup through cached pages; the bytes come verified from the store's
//! chunk cache. Used by the mount and by export.

use std::sync::Arc;

use crate::catalog::SnapshotRecord;
use crate::error::Result;
use crate::hash::ChunkHash;
use crate::map::MapReader;
use crate::repository::Repository;

/// Bytes read from an image: borrowed from the chunk cache or owned.
pub enum ReadData {
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
    Owned(Vec<u8>),
    /// Assembled in this thread's reusable buffer (see [`Pooled`]).
    Pooled(Pooled),
}

/// Buffers this big are kept for the thread's next read.
const POOLED_MAX: usize = 4 << 20;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A read buffer that goes back to its thread when dropped. A mount thread
/// answers one read at a time, so one buffer per thread spares every
/// request of several chunks a fresh allocation (for 1 MiB that is an
/// mmap, zeroed pages and a page fault per 4 KiB).
pub struct Pooled(Vec<u8>);

impl Pooled {
    fn zeroed(len: usize) -> Pooled {
        let mut buf = SPARE.with(|spare| std::mem::take(&mut *spare.borrow_mut()));
        buf.clear();
        buf.resize(len, 0);
        Pooled(buf)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.capacity() <= POOLED_MAX {
            // try_with: a thread being torn down has no spare to keep.
            let _ = SPARE.try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.capacity() < buf.capacity() {
                    *spare = buf;
                }
            });
        }
    }
}

impl ReadData {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ReadData::Shared(data, range) => &data[range.clone()],
            ReadData::Owned(data) => data,
            ReadData::Pooled(buf) => &buf.0,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl From<Vec<u8>> for ReadData {
    fn from(data: Vec<u8>) -> ReadData {
        ReadData::Owned(data)
    }
}

pub struct ImageReader {
    repo: Arc<Repository>,
    record: SnapshotRecord,
}

impl ImageReader {
    /// Opens a snapshot for reading. Its map stays alive through gc until
    /// the reader is dropped, even if the snapshot is deleted meanwhile.
    pub fn new(repo: Arc<Repository>, record: SnapshotRecord) -> ImageReader {
        repo.pins().add(record.map);
        ImageReader { repo, record }
    }

    pub fn record(&self) -> &SnapshotRecord {
        &self.record
    }

    pub fn size(&self) -> u64 {
        self.record.size
    }

    fn chunk_size(&self) -> u64 {
        self.record.chunk_size as u64
    }

    fn map(&self) -> MapReader<'_> {
        MapReader::new(self.repo.store(), self.record.map)
    }

    pub fn chunk_hash(&self, chunk: u64) -> Result<ChunkHash> {
        self.map().chunk_hash(chunk)
    }

    /// The plain bytes of one chunk (None for an all-zero chunk).
    pub fn chunk(&self, chunk: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let hash = self.chunk_hash(chunk)?;
        if hash.is_zero() {
            return Ok(None);
        }
        let data = self.repo.store().get(&hash)?;
        self.record.check_chunk_len(chunk, &hash, data.len())?;
        Ok(Some(data))
    }

    /// Fills `buf` from `offset`; returns the bytes read (short only at the
    /// end of the image).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let end = (offset + buf.len() as u64).min(self.size());
        let mut pos = offset;
        while pos < end {
            let chunk = pos / self.chunk_size();
            let within = (pos % self.chunk_size()) as usize;
            let take = ((self.chunk_size() - within as u64).min(end - pos)) as usize;
            let out = &mut buf[(pos - offset) as usize..(pos - offset) as usize + take];
            match self.chunk(chunk)? {
                Some(data) => out.copy_from_slice(&data[within..within + take]),
                None => out.fill(0),
            }
            pos += take as u64;
        }
        Ok((end.saturating_sub(offset)) as usize)
    }

    /// Up to `len` bytes from `offset`: a slice of one cached chunk when
    /// the range lies in one chunk (no copy), else assembled.
    pub fn read_bytes(&self, offset: u64, len: usize) -> Result<ReadData> {
        let end = (offset + len as u64).min(self.size());
        if offset >= end {
            return Ok(ReadData::Owned(Vec::new()));
        }
        let chunk = offset / self.chunk_size();
        if (end - 1) / self.chunk_size() == chunk {
            let within = (offset % self.chunk_size()) as usize;
            let take = (end - offset) as usize;
            return Ok(match self.chunk(chunk)? {
                Some(data) => ReadData::Shared(data, within..within + take),
                None => ReadData::Owned(vec![0u8; take]),
            });
        }
        let mut buf = Pooled::zeroed((end - offset) as usize);
        let n = self.read_at(offset, &mut buf.0)?;
        buf.0.truncate(n);
        Ok(ReadData::Pooled(buf))
    }

    /// The first offset at or after `offset` in a chunk that holds data, or
    /// None if only zeros follow (SEEK_DATA).
    pub fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        let mut chunk = offset / self.chunk_size();
        while chunk * self.chunk_size() < self.size() {
            if !self.chunk_hash(chunk)?.is_zero() {
                return Ok(Some(offset.max(chunk * self.chunk_size())));
            }
            chunk += 1;
        }
        Ok(None)
    }

    /// The first offset at or after `offset` in an all-zero chunk, or the
    /// image size (SEEK_HOLE).
    pub fn next_hole(&self, offset: u64) -> Result<u64> {
        let mut chunk = offset / self.chunk_size();
        while chunk * self.chunk_size() < self.size() {
            if self.chunk_hash(chunk)?.is_zero() {
                return Ok(offset.max(chunk * self.chunk_size()));
            }
            chunk += 1;
        }
        Ok(self.size())
    }
}

impl Drop for ImageReader {
    fn drop(&mut self) {
        self.repo.pins().remove(self.record.map);
    }
}
