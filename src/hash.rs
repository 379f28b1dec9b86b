//! Chunk addresses: the blake3 hash of a chunk's plain bytes.

use std::fmt;

/// The address of a chunk or map page. The all-zero value never names
/// stored data: it stands for a chunk (or a whole subtree) of zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    pub const ZERO: ChunkHash = ChunkHash([0; 32]);

    pub fn of(data: &[u8]) -> ChunkHash {
        ChunkHash(*blake3::hash(data).as_bytes())
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Option<ChunkHash> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ChunkHash(out))
    }

    pub fn from_slice(bytes: &[u8]) -> Option<ChunkHash> {
        Some(ChunkHash(bytes.try_into().ok()?))
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({})", &self.to_hex()[..16])
    }
}

impl serde::Serialize for ChunkHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ChunkHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ChunkHash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("bad chunk hash"))
    }
}

/// True when every byte is zero; word-wise, as this runs on every chunk.
pub fn is_all_zero(data: &[u8]) -> bool {
    let (head, words, tail) = unsafe { data.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = ChunkHash::of(b"hello");
        assert_eq!(ChunkHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ChunkHash::from_hex("zz"), None);
    }

    #[test]
    fn zero_detection_at_every_alignment() {
        let mut buf = vec![0u8; 100];
        assert!(is_all_zero(&buf));
        for i in 0..100 {
            buf[i] = 1;
            assert!(!is_all_zero(&buf), "byte {i}");
            assert!(is_all_zero(&buf[i + 1..]));
            buf[i] = 0;
        }
    }
}
