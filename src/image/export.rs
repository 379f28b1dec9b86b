//! Writing a snapshot out as a raw image: to a regular file sparsely (zero
//! chunks become holes), or as a stream with the zeros written out.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use crate::catalog::SnapshotRecord;
use crate::error::{Error, IoContext, Result};
use crate::map::MapReader;
use crate::store::Store;

pub enum ExportTarget<'a> {
    /// A regular file, written sparse; truncated to the image size.
    File(&'a File),
    /// Any byte stream (stdout, a pipe, a device): every byte written.
    Stream(&'a mut dyn Write),
}

/// Writes the image of `record` to `target`; `progress` gets the bytes done.
pub fn export(
    store: &Store,
    record: &SnapshotRecord,
    target: ExportTarget,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let chunk_size = record.chunk_size as u64;
    let size = record.size;
    let map = MapReader::new(store, record.map);
    let zeros = vec![0u8; chunk_size as usize];
    let mut done = 0u64;
    let write_err = |e: std::io::Error| Error::Io {
        context: "writing the exported image".into(),
        source: e,
    };
    match target {
        ExportTarget::File(file) => {
            file.set_len(0).map_err(write_err)?;
            map.walk(&mut |_| true, &mut |chunk, hash| {
                let offset = chunk * chunk_size;
                let len = (size - offset).min(chunk_size);
                if !hash.is_zero() {
                    let data = checked_chunk(store, record, chunk, hash)?;
                    file.write_all_at(&data, offset).map_err(write_err)?;
                }
                done += len;
                progress(done);
                Ok(())
            })?;
            file.set_len(size).map_err(write_err)?;
            file.sync_all()
                .context(|| "syncing the exported image".into())?;
        }
        ExportTarget::Stream(out) => {
            map.walk(&mut |_| true, &mut |chunk, hash| {
                let offset = chunk * chunk_size;
                let len = (size - offset).min(chunk_size);
                if hash.is_zero() {
                    out.write_all(&zeros[..len as usize]).map_err(write_err)?;
                } else {
                    out.write_all(&checked_chunk(store, record, chunk, hash)?)
                        .map_err(write_err)?;
                }
                done += len;
                progress(done);
                Ok(())
            })?;
            out.flush().map_err(write_err)?;
        }
    }
    Ok(())
}

/// A chunk's bytes from the store, verified, of the length the image needs.
fn checked_chunk(
    store: &Store,
    record: &SnapshotRecord,
    chunk: u64,
    hash: &crate::hash::ChunkHash,
) -> Result<Vec<u8>> {
    let data = store.read_verified(hash)?;
    record.check_chunk_len(chunk, hash, data.len())?;
    Ok(data)
}
