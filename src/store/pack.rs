//! Pack files: append-only files of chunk records.
//!
//! A pack starts with a 16-byte header (magic `SNAPFSPK`, u32 LE format
//! version, u32 reserved) followed by records. A record is a 48-byte header
//! and the stored bytes:
//!
//! | offset | size | field                                  |
//! |--------|------|----------------------------------------|
//! | 0      | 4    | magic `CHNK`                           |
//! | 4      | 32   | blake3 hash of the plain bytes         |
//! | 36     | 4    | stored length, u32 LE                  |
//! | 40     | 4    | plain length, u32 LE                   |
//! | 44     | 1    | codec: 0 none, 1 zstd, 2 lz4 (codec.rs)|
//! | 45     | 3    | reserved, zero                         |
//!
//! A pack never changes once written up to its committed length (kept in the
//! index); bytes past it are the tail of an interrupted write and are cut off
//! when the store opens. Where pack bytes live is the backend's business
//! (store/backend/): this file owns what they mean.

use super::backend::{PackAppender, PackStorage};
use super::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::hash::ChunkHash;

pub const PACK_MAGIC: &[u8; 8] = b"SNAPFSPK";
pub const PACK_VERSION: u32 = 1;
pub const PACK_HEADER_LEN: u64 = 16;
pub const RECORD_MAGIC: &[u8; 4] = b"CHNK";
pub const RECORD_HEADER_LEN: usize = 48;

/// A pack is closed and a new one started past this size, so that gc can
/// rewrite a pack without copying gigabytes.
pub const PACK_TARGET_SIZE: u64 = 128 << 20;

/// Where a chunk's record lives. This is the value of the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: u64,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
}

const LOCATION_LEN: usize = 25;

impl Location {
    /// Index value: pack u64 LE, offset u64 LE, stored u32 LE, raw u32 LE, codec u8.
    pub fn encode(&self) -> [u8; LOCATION_LEN] {
        let mut out = [0u8; LOCATION_LEN];
        out[0..8].copy_from_slice(&self.pack.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..20].copy_from_slice(&self.stored_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.raw_len.to_le_bytes());
        out[24] = self.codec as u8;
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Location> {
        let bad = || Error::BadMetadata(format!("index entry of {} bytes", bytes.len()));
        if bytes.len() != LOCATION_LEN {
            return Err(bad());
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap_or([0; 4]));
        Ok(Location {
            pack: u64_at(0),
            offset: u64_at(8),
            stored_len: u32_at(16),
            raw_len: u32_at(20),
            codec: Codec::from_u8(bytes[24]).ok_or_else(bad)?,
        })
    }

    /// Bytes the record takes in its pack, header included.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + self.stored_len as u64
    }
}

/// Appends records to one new pack.
pub struct PackWriter {
    id: u64,
    out: Box<dyn PackAppender>,
    len: u64,
    /// Every record written, for the pack's index object.
    records: Vec<(ChunkHash, Location)>,
}

impl PackWriter {
    /// Starts pack `id` in `storage` with its header.
    pub fn create(storage: &dyn PackStorage, id: u64) -> Result<PackWriter> {
        let mut out = storage.create(id)?;
        let mut header = [0u8; PACK_HEADER_LEN as usize];
        header[..8].copy_from_slice(PACK_MAGIC);
        header[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
        if let Err(e) = out.append(&header) {
            // No writer means nobody else would clean this pack up.
            drop(out);
            let _ = storage.remove(id);
            return Err(e);
        }
        Ok(PackWriter {
            id,
            out,
            len: PACK_HEADER_LEN,
            records: Vec::new(),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == PACK_HEADER_LEN
    }

    pub fn append(
        &mut self,
        hash: &ChunkHash,
        raw_len: u32,
        codec: Codec,
        stored: &[u8],
    ) -> Result<Location> {
        let location = Location {
            pack: self.id,
            offset: self.len,
            stored_len: stored.len() as u32,
            raw_len,
            codec,
        };
        self.out.append(&record_header(hash, &location))?;
        self.out.append(stored)?;
        self.len += location.record_len();
        self.records.push((*hash, location));
        Ok(location)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<()> {
        self.out.sync()
    }

    /// Ends the pack after `sync` (a remote backend uploads it here), and
    /// returns its index object (see pack_index.rs).
    pub fn seal(self) -> Result<Vec<u8>> {
        self.out.seal()?;
        Ok(super::pack_index::encode(self.id, self.len, &self.records))
    }
}

fn record_header(hash: &ChunkHash, location: &Location) -> [u8; RECORD_HEADER_LEN] {
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[0..4].copy_from_slice(RECORD_MAGIC);
    header[4..36].copy_from_slice(&hash.0);
    header[36..40].copy_from_slice(&location.stored_len.to_le_bytes());
    header[40..44].copy_from_slice(&location.raw_len.to_le_bytes());
    header[44] = location.codec as u8;
    header
}

/// Reads one record and returns its plain bytes, verified against `hash`.
/// The pack's header is the caller's to check (once per pack).
pub fn read_record(
    storage: &dyn PackStorage,
    hash: &ChunkHash,
    location: &Location,
) -> Result<Vec<u8>> {
    read_record_into(storage, hash, location, Vec::new())
}

/// `read_record`, decompressing into `out` (a recycled buffer: reusing one
/// spares the page faults of a fresh mapping per chunk).
pub fn read_record_into(
    storage: &dyn PackStorage,
    hash: &ChunkHash,
    location: &Location,
    out: Vec<u8>,
) -> Result<Vec<u8>> {
    let read = |id: u64, offset: u64, buf: &mut [u8]| storage.read_exact_at(id, offset, buf);
    read_record_with(&read, hash, location, out)
}

/// Reads bytes of a pack: (pack id, offset, buffer to fill).
pub type ReadAt<'a> = dyn Fn(u64, u64, &mut [u8]) -> Result<()> + 'a;

/// `read_record_into` with the bytes read by `read` (pack, offset, buf):
/// verify reads past a remote store's cache this way.
pub fn read_record_with(
    read: &ReadAt,
    hash: &ChunkHash,
    location: &Location,
    mut out: Vec<u8>,
) -> Result<Vec<u8>> {
    let corrupt = |why: String| Error::Corrupt {
        hash: *hash,
        pack: location.pack,
        offset: location.offset,
        why,
    };
    // Chunks are at most MAX_CHUNK_SIZE and stored compressed only when
    // that is smaller: a damaged index entry must not size an allocation.
    if location.raw_len > super::MAX_CHUNK_SIZE || location.stored_len > location.raw_len {
        return Err(corrupt(format!(
            "impossible record length ({} stored, {} plain) in the index",
            location.stored_len, location.raw_len
        )));
    }
    let mut record = vec![0u8; location.record_len() as usize];
    read(location.pack, location.offset, &mut record).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            corrupt("pack is shorter than the index says".into())
        }
        other => other,
    })?;
    if record[..RECORD_HEADER_LEN] != record_header(hash, location) {
        return Err(corrupt("record header does not match the index".into()));
    }
    let plain = match location.codec {
        Codec::None => {
            // Shift the data over the header in place: no second buffer.
            record.copy_within(RECORD_HEADER_LEN.., 0);
            record.truncate(location.stored_len as usize);
            record
        }
        codec => {
            codec::decode_into(
                codec,
                &record[RECORD_HEADER_LEN..],
                location.raw_len as usize,
                &mut out,
            )
            .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
            out
        }
    };
    if plain.len() != location.raw_len as usize {
        return Err(corrupt(format!(
            "decompressed to {} bytes, expected {}",
            plain.len(),
            location.raw_len
        )));
    }
    if ChunkHash::of(&plain) != *hash {
        return Err(corrupt("content does not match its hash".into()));
    }
    Ok(plain)
}

/// Checks the header of pack `id`.
pub fn check_pack_header(storage: &dyn PackStorage, id: u64) -> Result<()> {
    let mut header = [0u8; PACK_HEADER_LEN as usize];
    storage
        .read_exact_at(id, 0, &mut header)
        .map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                Error::Io {
                    context: format!("reading header of pack {id:016x}"),
                    source,
                }
            }
            other => other,
        })?;
    if &header[..8] != PACK_MAGIC {
        return Err(Error::BadMetadata(format!(
            "pack {id:016x} has no pack header"
        )));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or([0; 4]));
    if version != PACK_VERSION {
        return Err(Error::BadMetadata(format!(
            "pack {id:016x} has format version {version}, expected {PACK_VERSION}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::local::LocalPacks;

    #[test]
    fn location_round_trip() {
        let loc = Location {
            pack: 7,
            offset: 1 << 40,
            stored_len: 12345,
            raw_len: 65536,
            codec: Codec::Zstd,
        };
        assert_eq!(Location::decode(&loc.encode()).unwrap(), loc);
        assert!(Location::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn record_round_trip_and_flip_detected() {
        let dir = tempfile::tempdir().unwrap();
        let packs = LocalPacks::in_store(dir.path()).unwrap();
        let mut writer = PackWriter::create(&packs, 1).unwrap();
        let data = vec![7u8; 100_000];
        let hash = ChunkHash::of(&data);
        let (codec, stored) = codec::encode_chunk(&data, codec::Encoding::Zstd { level: 3 });
        assert_eq!(codec, Codec::Zstd);
        let loc = writer
            .append(&hash, data.len() as u32, codec, &stored)
            .unwrap();
        writer.sync().unwrap();
        writer.seal().unwrap();
        check_pack_header(&packs, 1).unwrap();
        assert_eq!(read_record(&packs, &hash, &loc).unwrap(), data);

        let path = packs.pack_path(1);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_record(&packs, &hash, &loc),
            Err(Error::Corrupt { .. })
        ));
    }
}
