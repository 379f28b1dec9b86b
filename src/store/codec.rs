//! How a chunk's bytes are stored in its pack record: plain, zstd or lz4.
//! The store's setting picks the codec for new chunks; every record names
//! its own, so a store reads whatever it once wrote.
//!
//! zstd packs tighter; lz4 is cheaper both ways. On the restore
//! benchmark's disk (bench/restore.sh): zstd level 1 packs were a fifth
//! smaller (679 MB against 847), while with lz4 a first snapshot took
//! 1.76-1.91 s against 2.13-2.32 s and a read through the mount 1.40-1.75
//! s against 1.66-1.77 s.

use std::cell::RefCell;

/// The codec byte of a pack record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None = 0,
    Zstd = 1,
    Lz4 = 2,
}

impl Codec {
    pub fn from_u8(value: u8) -> Option<Codec> {
        match value {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Lz4),
            _ => None,
        }
    }
}

/// How new chunks are compressed (from the store's settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    Zstd { level: i32 },
    Lz4,
}

thread_local! {
    // zstd contexts are costly to set up (more than compressing a small
    // chunk): each thread keeps one of each and reuses it.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Compresses a chunk when that saves space; returns the codec used and the
/// bytes to store.
pub fn encode_chunk(plain: &[u8], encoding: Encoding) -> (Codec, Vec<u8>) {
    let packed = match encoding {
        Encoding::Plain => None,
        Encoding::Zstd { level } => zstd_compress(plain, level).ok().map(|p| (Codec::Zstd, p)),
        Encoding::Lz4 => Some((Codec::Lz4, lz4_compress(plain))),
    };
    match packed {
        Some((codec, packed)) if packed.len() < plain.len() => (codec, packed),
        _ => (Codec::None, plain.to_vec()),
    }
}

/// Decompresses `packed` (stored with `codec`, not None) into `out`, which
/// is cleared first and must come out `plain_len` long.
pub fn decode_into(
    codec: Codec,
    packed: &[u8],
    plain_len: usize,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    match codec {
        Codec::None => {
            out.clear();
            out.extend_from_slice(packed);
        }
        Codec::Zstd => {
            out.clear();
            zstd_decompress_into(packed, plain_len, out)?;
        }
        Codec::Lz4 => {
            // A recycled buffer keeps its old bytes rather than being
            // zeroed: the decoder overwrites all it reports as written,
            // and the rest is cut off.
            out.truncate(plain_len);
            out.resize(plain_len, 0);
            let n = lz4_flex::block::decompress_into(packed, out)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            out.truncate(n);
        }
    }
    Ok(())
}

/// Compresses into a per-thread scratch buffer, then copies out exactly
/// the compressed bytes: a fresh buffer of the worst-case size per chunk
/// would be a fresh memory mapping each time.
fn zstd_compress(plain: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match slot.take() {
            Some((kept, compressor)) if kept == level => compressor,
            _ => zstd::bulk::Compressor::new(level)?,
        };
        let (_, compressor) = slot.insert((level, compressor));
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            scratch.reserve(zstd::zstd_safe::compress_bound(plain.len()));
            let len = compressor.compress_to_buffer(plain, &mut *scratch)?;
            Ok(scratch[..len].to_vec())
        })
    })
}

/// lz4's block format, through the same per-thread scratch buffer.
fn lz4_compress(plain: &[u8]) -> Vec<u8> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.resize(lz4_flex::block::get_maximum_output_size(plain.len()), 0);
        match lz4_flex::block::compress_into(plain, &mut scratch) {
            Ok(len) => scratch[..len].to_vec(),
            // Cannot happen with a buffer of the maximum size; storing the
            // chunk plain is always right.
            Err(_) => plain.to_vec(),
        }
    })
}

fn zstd_decompress_into(packed: &[u8], capacity: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    out.reserve(capacity);
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match slot.take() {
            Some(decompressor) => decompressor,
            None => zstd::bulk::Decompressor::new()?,
        };
        slot.insert(decompressor)
            .decompress_to_buffer(packed, out)
            .map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..100_000u32).map(|i| (i % 251) as u8 / 3).collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let plain = sample();
        for (encoding, codec) in [
            (Encoding::Plain, Codec::None),
            (Encoding::Zstd { level: 3 }, Codec::Zstd),
            (Encoding::Lz4, Codec::Lz4),
        ] {
            let (used, stored) = encode_chunk(&plain, encoding);
            assert_eq!(used, codec);
            let mut out = vec![9u8; 7];
            decode_into(used, &stored, plain.len(), &mut out).unwrap();
            assert_eq!(out, plain, "{codec:?}");
        }
    }

    #[test]
    fn incompressible_chunks_are_stored_plain() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for encoding in [Encoding::Zstd { level: 1 }, Encoding::Lz4] {
            assert_eq!(encode_chunk(&noise, encoding), (Codec::None, noise.clone()));
        }
    }

    #[test]
    fn damaged_lz4_is_an_error_not_a_panic() {
        let plain = sample();
        let (_, stored) = encode_chunk(&plain, Encoding::Lz4);
        let mut out = Vec::new();
        // Cut short, and with every byte of the start flipped in turn.
        assert!(decode_into(
            Codec::Lz4,
            &stored[..stored.len() / 2],
            plain.len(),
            &mut out
        )
        .is_err());
        for i in 0..64 {
            let mut bad = stored.clone();
            bad[i] ^= 0xff;
            // Either an error or other bytes: the hash check catches those.
            if decode_into(Codec::Lz4, &bad, plain.len(), &mut out).is_ok() {
                assert!(out.len() <= plain.len());
            }
        }
    }
}
