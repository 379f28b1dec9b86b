//! Deeper read-ahead for the mount's backing device (sysfs).

use std::path::Path;

/// The kernel offers FUSE only 128 KiB of read-ahead at init; a deeper
/// window keeps more requests in flight for sequential readers. Best effort:
/// it needs root, and the mount works without it.
pub fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&path, "1024") {
        log::debug!("cannot raise read-ahead through {path}: {e}");
    }
}
