//! A pack's index object: the records a sealed pack holds, written beside
//! it in the bucket so that `init --from` rebuilds the store's index
//! without reading the packs. Layout (FORMAT.md, "Pack index object"):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `SNAPFSPI` |
//! | 8 | 4 | version u32 = 1 |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | pack id |
//! | 24 | 8 | pack length in bytes |
//! | 32 | 8 | record count n |
//! | 40 | 52 n | records: hash (32), offset u64, stored u32, plain u32, codec u8, 3 reserved |
//! | 40 + 52 n | 32 | blake3 of every byte before |

use super::codec::Codec;
use super::pack::Location;
use crate::error::{Error, Result};
use crate::hash::ChunkHash;

pub const MAGIC: &[u8; 8] = b"SNAPFSPI";
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 40;
const ENTRY_LEN: usize = 52;

/// What an index object says.
#[derive(Debug, PartialEq, Eq)]
pub struct PackIndex {
    pub pack: u64,
    pub len: u64,
    pub records: Vec<(ChunkHash, Location)>,
}

pub fn encode(pack: u64, len: u64, records: &[(ChunkHash, Location)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * records.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&pack.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(records.len() as u64).to_le_bytes());
    for (hash, location) in records {
        out.extend_from_slice(&hash.0);
        out.extend_from_slice(&location.offset.to_le_bytes());
        out.extend_from_slice(&location.stored_len.to_le_bytes());
        out.extend_from_slice(&location.raw_len.to_le_bytes());
        out.push(location.codec as u8);
        out.extend_from_slice(&[0u8; 3]);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

pub fn decode(bytes: &[u8]) -> Result<PackIndex> {
    let bad = |why: &str| Error::BadMetadata(format!("pack index object: {why}"));
    if bytes.len() < HEADER_LEN + 32 || &bytes[..8] != MAGIC {
        return Err(bad("not a pack index"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(bad("checksum does not match"));
    }
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap_or([0; 4]));
    if u32_at(8) != VERSION {
        return Err(bad(&format!("version {} (this snapfs reads 1)", u32_at(8))));
    }
    let (pack, len, count) = (u64_at(16), u64_at(24), u64_at(32));
    if (body.len() - HEADER_LEN) as u64 != count.saturating_mul(ENTRY_LEN as u64) {
        return Err(bad("length does not match its record count"));
    }
    let mut records = Vec::with_capacity(count as usize);
    for entry in body[HEADER_LEN..].chunks_exact(ENTRY_LEN) {
        let at = |i: usize| &entry[i..];
        let hash = ChunkHash::from_slice(&entry[..32]).ok_or_else(|| bad("hash"))?;
        let location = Location {
            pack,
            offset: u64::from_le_bytes(at(32)[..8].try_into().unwrap_or([0; 8])),
            stored_len: u32::from_le_bytes(at(40)[..4].try_into().unwrap_or([0; 4])),
            raw_len: u32::from_le_bytes(at(44)[..4].try_into().unwrap_or([0; 4])),
            codec: Codec::from_u8(entry[48]).ok_or_else(|| bad("unknown codec"))?,
        };
        if location.offset + location.record_len() > len {
            return Err(bad("a record reaches past the pack's end"));
        }
        records.push((hash, location));
    }
    Ok(PackIndex { pack, len, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let hash = ChunkHash::of(b"x");
        let location = Location {
            pack: 5,
            offset: 16,
            stored_len: 10,
            raw_len: 20,
            codec: Codec::Zstd,
        };
        let bytes = encode(5, 74, &[(hash, location)]);
        assert_eq!(bytes.len(), 40 + 52 + 32);
        let index = decode(&bytes).unwrap();
        assert_eq!(index.records, vec![(hash, location)]);
        assert_eq!((index.pack, index.len), (5, 74));
        let mut bad = bytes.clone();
        bad[50] ^= 1;
        assert!(decode(&bad).is_err());
        assert!(decode(&bytes[..60]).is_err());
    }
}
