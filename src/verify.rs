//! `verify`: re-read and re-hash every chunk and map page that the chosen
//! snapshots reach, and name every snapshot and offset whose data is damaged.

use std::collections::HashMap;

use crate::catalog::SnapshotRecord;
use crate::hash::ChunkHash;
use crate::map::MapReader;
use crate::store::Store;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    pub disk: String,
    pub snapshot: String,
    /// Byte offset in the image of the damaged chunk (for map damage, the
    /// start of the snapshot).
    pub offset: u64,
    pub what: String,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub damage: Vec<Damage>,
}

/// Checks `snapshots`; every chunk is read once however many snapshots
/// share it. `progress` gets the number of snapshots done.
pub fn verify(
    store: &Store,
    snapshots: &[SnapshotRecord],
    progress: &mut dyn FnMut(usize),
) -> VerifyReport {
    let mut report = VerifyReport::default();
    // hash -> None when good, Some(reason) when damaged.
    let mut seen: HashMap<ChunkHash, Option<String>> = HashMap::new();
    for (done, record) in snapshots.iter().enumerate() {
        report.snapshots += 1;
        let chunk_size = record.chunk_size as u64;
        let map = MapReader::new(store, record.map);
        let mut damage = Vec::new();
        let walked = map.walk(&mut |_| true, &mut |chunk, hash| {
            if hash.is_zero() {
                return Ok(());
            }
            let offset = chunk * chunk_size;
            let verdict = seen.entry(*hash).or_insert_with(|| {
                report.chunks_checked += 1;
                let checked = store.read_verified(hash).and_then(|data| {
                    record.check_chunk_len(chunk, hash, data.len())?;
                    Ok(data.len() as u64)
                });
                match checked {
                    Ok(len) => {
                        report.bytes_checked += len;
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            });
            if let Some(what) = verdict {
                damage.push(Damage {
                    disk: record.disk.clone(),
                    snapshot: record.name.clone(),
                    offset,
                    what: what.clone(),
                });
            }
            Ok(())
        });
        if let Err(e) = walked {
            damage.push(Damage {
                disk: record.disk.clone(),
                snapshot: record.name.clone(),
                offset: 0,
                what: format!("map unreadable: {e}"),
            });
        }
        report.damage.extend(damage);
        progress(done + 1);
    }
    report
}
