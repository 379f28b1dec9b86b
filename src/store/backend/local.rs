//! Packs as files in the store folder: `STORE/packs/%016x.pack`, mode 0600,
//! written through a 1 MiB buffer and made durable with `sync_data` plus an
//! fsync of the folder (a new pack's name must survive a power cut too).
//! Readers share one open handle per pack, opened on first use.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{space, PackAppender, PackInfo, PackStorage};
use crate::error::{IoContext, Result};

/// The folder of the store that holds the packs.
pub const FOLDER: &str = "packs";

/// Bytes an appender gathers before it writes to the file.
const WRITE_BUFFER: usize = 1 << 20;

pub struct LocalPacks {
    dir: PathBuf,
    /// Read handles, opened on first use and dropped when a pack goes.
    readers: Mutex<HashMap<u64, Arc<File>>>,
}

impl LocalPacks {
    /// The packs of the store at `root`; makes their folder if need be.
    pub fn in_store(root: &Path) -> Result<LocalPacks> {
        LocalPacks::in_folder(root.join(FOLDER))
    }

    /// Packs in `dir` (a remote backend's staging folder).
    pub fn in_folder(dir: PathBuf) -> Result<LocalPacks> {
        crate::modes::create_private_dir(&dir).context(|| format!("creating {}", dir.display()))?;
        Ok(LocalPacks {
            dir,
            readers: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of pack `id`.
    pub fn pack_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.pack"))
    }

    fn readers(&self) -> MutexGuard<'_, HashMap<u64, Arc<File>>> {
        // A panic while holding the map cannot leave it inconsistent.
        self.readers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reader(&self, id: u64) -> Result<Arc<File>> {
        let mut readers = self.readers();
        if let Some(file) = readers.get(&id) {
            return Ok(file.clone());
        }
        let path = self.pack_path(id);
        let file = File::open(&path).context(|| format!("opening pack {}", path.display()))?;
        let file = Arc::new(file);
        readers.insert(id, file.clone());
        Ok(file)
    }
}

/// Parses a pack file name back into its id.
fn pack_id_from_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".pack")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

impl PackStorage for LocalPacks {
    fn create(&self, id: u64) -> Result<Box<dyn PackAppender>> {
        let path = self.pack_path(id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::modes::PRIVATE_FILE)
            .open(&path)
            .context(|| format!("creating pack {}", path.display()))?;
        Ok(Box::new(LocalAppender {
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            dir: self.dir.clone(),
            path,
        }))
    }

    fn read_exact_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.reader(id)?
            .read_exact_at(buf, offset)
            .context(|| format!("reading pack {id:016x}"))
    }

    fn list(&self) -> Result<Vec<PackInfo>> {
        let listing = || format!("listing {}", self.dir.display());
        let mut packs = Vec::new();
        for entry in fs::read_dir(&self.dir).context(listing)? {
            let entry = entry.context(listing)?;
            let Some(id) = entry.file_name().to_str().and_then(pack_id_from_name) else {
                continue;
            };
            let len = entry
                .metadata()
                .context(|| format!("reading {}", entry.path().display()))?
                .len();
            packs.push(PackInfo { id, len });
        }
        Ok(packs)
    }

    fn remove(&self, id: u64) -> Result<()> {
        let path = self.pack_path(id);
        // Under the readers' lock: no reader opens the file meanwhile and
        // keeps a handle of a removed pack cached.
        let mut readers = self.readers();
        readers.remove(&id);
        fs::remove_file(&path).context(|| format!("removing {}", path.display()))
    }

    fn truncate(&self, id: u64, len: u64) -> Result<()> {
        let path = self.pack_path(id);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        file.set_len(len)
            .and_then(|_| file.sync_all())
            .context(|| format!("truncating {}", path.display()))
    }

    fn check_room(&self, bytes: u64) -> Result<u64> {
        space::check_room(&self.dir, bytes)
    }

    fn pack_name(&self, id: u64) -> String {
        self.pack_path(id).display().to_string()
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

struct LocalAppender {
    out: BufWriter<File>,
    path: PathBuf,
    dir: PathBuf,
}

impl PackAppender for LocalAppender {
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let path = &self.path;
        self.out
            .write_all(bytes)
            .context(|| format!("writing pack {}", path.display()))
    }

    fn sync(&mut self) -> Result<()> {
        let path = &self.path;
        // The folder too: a new pack whose name a power cut loses would
        // leave the index pointing at nothing.
        self.out
            .flush()
            .and_then(|_| self.out.get_ref().sync_data())
            .and_then(|_| File::open(&self.dir)?.sync_all())
            .context(|| format!("syncing pack {}", path.display()))
    }

    fn seal(mut self: Box<Self>) -> Result<()> {
        // Nothing is left to write after a sync; a flush failing here means
        // the caller skipped it.
        let path = &self.path;
        self.out
            .flush()
            .context(|| format!("writing pack {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_names_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let packs = LocalPacks::in_store(dir.path()).unwrap();
        let name = packs.pack_path(0x2a);
        let name = name.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(name, "000000000000002a.pack");
        assert_eq!(pack_id_from_name(name), Some(0x2a));
        assert_eq!(pack_id_from_name("2a.pack"), None);
        assert_eq!(pack_id_from_name("000000000000002a.tmp"), None);
    }

    #[test]
    fn appended_bytes_read_back_and_truncate_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let packs = LocalPacks::in_store(dir.path()).unwrap();
        let mut pack = packs.create(7).unwrap();
        pack.append(b"hello ").unwrap();
        pack.append(b"world").unwrap();
        pack.sync().unwrap();
        pack.seal().unwrap();
        let mut buf = [0u8; 5];
        packs.read_exact_at(7, 6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        assert_eq!(packs.list().unwrap(), [PackInfo { id: 7, len: 11 }]);
        packs.truncate(7, 5).unwrap();
        let short = packs.read_exact_at(7, 6, &mut buf);
        assert!(matches!(short, Err(crate::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::UnexpectedEof));
        packs.remove(7).unwrap();
        let gone = packs.read_exact_at(7, 0, &mut buf);
        assert!(matches!(gone, Err(crate::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound));
        assert_eq!(packs.stored_bytes().unwrap(), 0);
    }
}
