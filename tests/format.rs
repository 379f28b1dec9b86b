//! The on-disk formats of FORMAT.md, checked against golden bytes: a change
//! of layout fails here instead of silently producing stores that older
//! binaries misread. Regenerate the golden files only with a format version
//! bump: `SNAPFS_BLESS=1 cargo test --test format`.

use std::path::Path;

use snapfs::hash::ChunkHash;
use snapfs::map::encode_page;
use snapfs::store::backend::local::LocalPacks;
use snapfs::store::codec::Codec;
use snapfs::store::pack::{Location, PackWriter};

fn check_golden(name: &str, bytes: &[u8]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("SNAPFS_BLESS").is_some() {
        std::fs::write(&path, bytes).unwrap();
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        bytes,
        golden.as_slice(),
        "{name} differs from its golden file"
    );
}

#[test]
fn pack_file_layout_is_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let packs = LocalPacks::in_store(dir.path()).unwrap();
    let mut writer = PackWriter::create(&packs, 0x2a).unwrap();
    let plain = b"snapfs golden chunk".repeat(4);
    let hash = ChunkHash::of(&plain);
    let location = writer
        .append(&hash, plain.len() as u32, Codec::None, &plain)
        .unwrap();
    writer.sync().unwrap();
    writer.seal().unwrap();
    let bytes = std::fs::read(packs.pack_path(0x2a)).unwrap();

    // The documented layout, field by field.
    assert_eq!(&bytes[..8], b"SNAPFSPK");
    assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
    assert_eq!(location.offset, 16);
    assert_eq!(&bytes[16..20], b"CHNK");
    assert_eq!(&bytes[20..52], &hash.0);
    assert_eq!(&bytes[52..56], &(plain.len() as u32).to_le_bytes());
    assert_eq!(bytes[60], 0);
    assert_eq!(&bytes[64..], plain.as_slice());
    check_golden("pack-v1.bin", &bytes);
}

#[test]
fn index_entry_layout_is_frozen() {
    let location = Location {
        pack: 0x0102030405060708,
        offset: 0x1112131415161718,
        stored_len: 0x21222324,
        raw_len: 0x31323334,
        codec: Codec::Zstd,
    };
    check_golden("index-entry-v1.bin", &location.encode());
    assert_eq!(Location::decode(&location.encode()).unwrap(), location);
    // The codec bytes of FORMAT.md, in records and index entries alike.
    for (codec, byte) in [(Codec::None, 0u8), (Codec::Zstd, 1), (Codec::Lz4, 2)] {
        assert_eq!(codec as u8, byte);
        assert_eq!(Codec::from_u8(byte), Some(codec));
    }
    assert_eq!(Codec::from_u8(3), None);
}

#[test]
fn map_page_layout_is_frozen() {
    let entries = [ChunkHash::of(b"a"), ChunkHash::ZERO, ChunkHash::of(b"b")];
    let page = encode_page(1, &entries);
    assert_eq!(&page[..4], b"SFMP");
    assert_eq!(page[4], 1, "page version");
    assert_eq!(page[5], 1, "level");
    assert_eq!(&page[8..12], &3u32.to_le_bytes());
    assert_eq!(page.len(), 12 + 3 * 32);
    check_golden("map-page-v1.bin", &page);
}

#[test]
fn damaged_chunk_marks_are_frozen() {
    use snapfs::store::{Ingest, OpenOptions};
    use snapfs::Repository;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let plain = b"a chunk that will be damaged".repeat(8);
    let hash = {
        let store = Repository::open(&root, &OpenOptions::default()).unwrap();
        let mut ingest = Ingest::new(store.store(), &store);
        let hash = ingest.put_plain(&plain).unwrap();
        ingest.commit(&[], &|_| Ok(())).unwrap();
        hash
    };
    // Damage the record's last byte, then read it: the read marks it.
    let pack = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&pack).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    {
        let store = Repository::open(&root, &OpenOptions::default()).unwrap();
        assert!(store.store().read_verified(&hash).is_err());
        store.store().flush().unwrap();
    }
    // FORMAT.md: tree `damaged`, key the 32-byte hash, value empty.
    let db = sled::open(root.join("db")).unwrap();
    let marks: Vec<(Vec<u8>, Vec<u8>)> = db
        .open_tree("damaged")
        .unwrap()
        .iter()
        .map(|item| {
            let (key, value) = item.unwrap();
            (key.to_vec(), value.to_vec())
        })
        .collect();
    assert_eq!(marks, [(hash.0.to_vec(), Vec::new())]);
}
