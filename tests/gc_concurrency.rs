//! gc runs beside snapshots being taken and images being read: no snapshot
//! may lose a chunk, whatever the interleaving.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use snapfs::image::ImageReader;
use snapfs::snapshot::{create_snapshot, CreateOptions};
use snapfs::store::{OpenOptions, StoreConfig};
use snapfs::Repository;

const DISK_SIZE: usize = 6 << 20;

/// Deterministic bytes for round `round`: most chunks repeat from round to
/// round (so snapshots share chunks that gc must not drop), some change.
fn disk_contents(round: u64) -> Vec<u8> {
    let mut data = vec![0u8; DISK_SIZE];
    for (i, chunk) in data.chunks_mut(64 << 10).enumerate() {
        let version = if i % 7 == (round % 7) as usize {
            round
        } else {
            0
        };
        let seed = blake3::hash(format!("{i}/{version}").as_bytes());
        for (j, piece) in chunk.chunks_mut(32).enumerate() {
            let word = blake3::hash(&[seed.as_bytes().as_slice(), &j.to_le_bytes()].concat());
            piece.copy_from_slice(&word.as_bytes()[..piece.len()]);
        }
    }
    data
}

#[test]
fn snapshots_and_reads_survive_concurrent_gc() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        chunk_size: 64 << 10,
        ..StoreConfig::default()
    };
    let store = Arc::new(
        Repository::open(
            &dir.path().join("store"),
            &OpenOptions {
                create: Some(config),
                cache_bytes: 1 << 20,
            },
        )
        .unwrap(),
    );
    let source = dir.path().join("disk.img");
    std::fs::write(&source, disk_contents(0)).unwrap();
    store.catalog().add_disk("d", &source).unwrap();

    let expected: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(6);

    std::thread::scope(|scope| {
        // Snapshots of a changing disk; old ones deleted as we go.
        scope.spawn(|| {
            let mut round = 0u64;
            while Instant::now() < deadline {
                round += 1;
                let data = disk_contents(round);
                std::fs::write(&source, &data).unwrap();
                let name = format!("s{round}");
                create_snapshot(&store, "d", &name, &CreateOptions::default()).unwrap();
                expected.lock().unwrap().insert(name, data);
                if round > 3 && round.is_multiple_of(2) {
                    let old = format!("s{}", round - 3);
                    store.catalog().remove_snapshot("d", &old).unwrap();
                    expected.lock().unwrap().remove(&old);
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        // gc over and over, reclaiming every dead byte.
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                store.gc(0).unwrap();
            }
        });
        // A reader that keeps a snapshot open across its deletion and gc.
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let snapshots = store.catalog().snapshots(Some("d")).unwrap();
                let Some(record) = snapshots.first().cloned() else {
                    continue;
                };
                let Some(want) = expected.lock().unwrap().get(&record.name).cloned() else {
                    continue;
                };
                let reader = ImageReader::new(store.clone(), record);
                std::thread::sleep(Duration::from_millis(20));
                let mut got = vec![0u8; DISK_SIZE];
                reader.read_at(0, &mut got).unwrap();
                assert!(got == want, "an open image changed under gc");
            }
        });
    });

    store.gc(0).unwrap();
    store.store().clear_cache();
    let expected = expected.lock().unwrap();
    assert!(expected.len() >= 3, "too few rounds ran to mean anything");
    for record in store.catalog().snapshots(Some("d")).unwrap() {
        let reader = ImageReader::new(store.clone(), record.clone());
        let mut got = vec![0u8; DISK_SIZE];
        reader.read_at(0, &mut got).unwrap();
        assert!(
            got == expected[&record.name],
            "snapshot {} changed",
            record.name
        );
    }
    let report = snapfs::verify::verify(
        store.store(),
        &store.catalog().snapshots(None).unwrap(),
        &mut |_| {},
    );
    assert!(report.damage.is_empty(), "{:?}", report.damage);
}
