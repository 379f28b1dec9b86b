//! Writing a snapshot out as a raw image: to a regular file sparsely (zero
//! chunks become holes), or as a stream with the zeros written out.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use crate::catalog::SnapshotRecord;
use crate::error::{Error, IoContext, Result};
use crate::hash::ChunkHash;
use crate::map::MapReader;
use crate::store::Store;

pub enum ExportTarget<'a> {
    /// A regular file, written sparse; truncated to the image size.
    File(&'a File),
    /// Any byte stream (stdout, a pipe, a device): every byte written.
    Stream(&'a mut dyn Write),
}

/// Writes the image of `record` to `target`; `progress` gets the bytes done.
/// Chunks are read, decompressed and verified on every core, and written
/// in order by the calling thread.
pub fn export(
    store: &Store,
    record: &SnapshotRecord,
    target: ExportTarget,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let chunk_size = record.chunk_size as u64;
    let size = record.size;
    let zeros = vec![0u8; chunk_size as usize];
    let mut done = 0u64;
    let write_err = |e: std::io::Error| Error::Io {
        context: "writing the exported image".into(),
        source: e,
    };
    match target {
        ExportTarget::File(file) => {
            file.set_len(0).map_err(write_err)?;
            chunks_in_order(store, record, &mut |chunk, data| {
                if let Some(data) = data {
                    file.write_all_at(&data, chunk * chunk_size)
                        .map_err(write_err)?;
                }
                done += record.chunk_len(chunk);
                progress(done);
                Ok(())
            })?;
            file.set_len(size).map_err(write_err)?;
            file.sync_all()
                .context(|| "syncing the exported image".into())?;
        }
        ExportTarget::Stream(out) => {
            chunks_in_order(store, record, &mut |chunk, data| {
                let len = record.chunk_len(chunk);
                match data {
                    Some(data) => out.write_all(&data),
                    None => out.write_all(&zeros[..len as usize]),
                }
                .map_err(write_err)?;
                done += len;
                progress(done);
                Ok(())
            })?;
            out.flush().map_err(write_err)?;
        }
    }
    Ok(())
}

/// One chunk in disk order: zero, or the verified bytes a worker sends.
enum Slot {
    Zero(u64),
    Data(u64, Receiver<Result<Vec<u8>>>),
    Failed(Error),
}

/// Hands every chunk of `record`, in order, to `sink` (None for an
/// all-zero chunk). A walker thread reads the map, workers read and verify
/// the chunks, and a bounded queue of one slot per chunk keeps the order
/// and the memory: at most a few chunks per worker are in flight.
fn chunks_in_order(
    store: &Store,
    record: &SnapshotRecord,
    sink: &mut dyn FnMut(u64, Option<Vec<u8>>) -> Result<()>,
) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (order_tx, order_rx) = sync_channel::<Slot>(threads * 8);
    let (work_tx, work_rx) =
        sync_channel::<(u64, ChunkHash, SyncSender<Result<Vec<u8>>>)>(threads * 2);
    let work_rx = Mutex::new(work_rx);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let map = MapReader::new(store, record.map);
            let stopped = || Error::Invalid("export stopped".into());
            let walked = map.walk(&mut |_| true, &mut |chunk, hash| {
                if hash.is_zero() {
                    return order_tx.send(Slot::Zero(chunk)).map_err(|_| stopped());
                }
                let (data_tx, data_rx) = sync_channel(1);
                order_tx
                    .send(Slot::Data(chunk, data_rx))
                    .map_err(|_| stopped())?;
                work_tx.send((chunk, *hash, data_tx)).map_err(|_| stopped())
            });
            if let Err(e) = walked {
                let _ = order_tx.send(Slot::Failed(e));
            }
        });
        for _ in 0..threads {
            let work_rx = &work_rx;
            scope.spawn(move || loop {
                let item = match work_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((chunk, hash, data_tx)) = item else {
                    return;
                };
                let _ = data_tx.send(checked_chunk(store, record, chunk, &hash));
            });
        }
        // Dropping the queue on the way out stops the walker, and so the workers.
        let order_rx = order_rx;
        for slot in order_rx.iter() {
            match slot {
                Slot::Zero(chunk) => sink(chunk, None)?,
                Slot::Data(chunk, data) => {
                    let data = data
                        .recv()
                        .map_err(|_| Error::Invalid("export stopped".into()))??;
                    sink(chunk, Some(data))?;
                }
                Slot::Failed(e) => return Err(e),
            }
        }
        Ok(())
    })
}

/// A chunk's bytes from the store, verified, of the length the image needs.
fn checked_chunk(
    store: &Store,
    record: &SnapshotRecord,
    chunk: u64,
    hash: &ChunkHash,
) -> Result<Vec<u8>> {
    let data = store.read_verified(hash)?;
    record.check_chunk_len(chunk, hash, data.len())?;
    Ok(data)
}
