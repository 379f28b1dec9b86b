//! `verify`: re-read and re-hash every chunk and map page that the chosen
//! snapshots reach, and name every snapshot and offset whose data is damaged.
//! A store in a bucket is read from the bucket, not from its local cache,
//! and a damaged record names its object. `quick` reads no data: it checks
//! that every committed pack (and in a bucket, its index object) exists
//! with its committed length, and names the snapshots that reach a bad one.

use std::collections::{HashMap, HashSet};

use crate::catalog::SnapshotRecord;
use crate::error::Error;
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

impl Damage {
    fn at(record: &SnapshotRecord, offset: u64, what: String) -> Damage {
        Damage {
            disk: record.disk.clone(),
            snapshot: record.name.clone(),
            offset,
            what,
        }
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub damage: Vec<Damage>,
    /// Damaged or missing pack objects (and index objects), named.
    pub objects: Vec<String>,
}

/// An error of a chunk read, naming the pack (file or object) it is in.
fn describe(store: &Store, error: &Error) -> String {
    match error {
        Error::Corrupt { pack, .. } => format!("{error} in {}", store.pack_name(*pack)),
        other => other.to_string(),
    }
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
    let mut objects: HashSet<String> = HashSet::new();
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
                let checked = store.read_verified_fresh(hash).and_then(|data| {
                    record.check_chunk_len(chunk, hash, data.len())?;
                    Ok(data.len() as u64)
                });
                match checked {
                    Ok(len) => {
                        report.bytes_checked += len;
                        None
                    }
                    Err(e) => {
                        if let Error::Corrupt { pack, .. } = &e {
                            objects.insert(store.pack_name(*pack));
                        }
                        Some(describe(store, &e))
                    }
                }
            });
            if let Some(what) = verdict {
                damage.push(Damage::at(record, offset, what.clone()));
            }
            Ok(())
        });
        if let Err(e) = walked {
            damage.push(Damage::at(record, 0, format!("map unreadable: {e}")));
        }
        report.damage.extend(damage);
        progress(done + 1);
    }
    report.objects = objects.into_iter().collect();
    report.objects.sort();
    report
}

/// Checks that every pack the index commits exists with its committed
/// length (and has its index object in a bucket), without reading data;
/// names each snapshot that reaches a bad pack once per pack.
pub fn verify_quick(
    store: &Store,
    snapshots: &[SnapshotRecord],
    progress: &mut dyn FnMut(usize),
) -> crate::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let bad = store.check_pack_objects()?;
    report.objects = bad.values().cloned().collect();
    report.objects.sort();
    for (done, record) in snapshots.iter().enumerate() {
        report.snapshots += 1;
        let mut named: HashSet<u64> = HashSet::new();
        let chunk_size = record.chunk_size as u64;
        let map = MapReader::new(store, record.map);
        let mut damage = Vec::new();
        let walked = map.walk(&mut |_| true, &mut |chunk, hash| {
            if hash.is_zero() {
                return Ok(());
            }
            report.chunks_checked += 1;
            let Some(location) = store.locate(hash)? else {
                damage.push(Damage::at(
                    record,
                    chunk * chunk_size,
                    Error::MissingChunk(*hash).to_string(),
                ));
                return Ok(());
            };
            if let Some(why) = bad.get(&location.pack) {
                if named.insert(location.pack) {
                    damage.push(Damage::at(record, chunk * chunk_size, why.clone()));
                }
            }
            Ok(())
        });
        if let Err(e) = walked {
            damage.push(Damage::at(
                record,
                0,
                format!("map unreadable: {}", describe(store, &e)),
            ));
        }
        report.damage.extend(damage);
        progress(done + 1);
    }
    Ok(report)
}
