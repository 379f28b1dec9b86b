//! Read-ahead for sequential readers: after each read that continues the
//! previous one, the next chunks are fetched into the chunk cache by a small
//! pool of threads. The window starts at one chunk and doubles while reads
//! stay sequential; a seek closes it, so random readers pay for nothing
//! they did not ask for.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use crate::image::ImageReader;

/// Chunks read ahead at most.
const MAX_WINDOW: u64 = 16;

pub struct Prefetcher {
    queue: Mutex<SyncSender<(Arc<ImageReader>, u64)>>,
}

impl Prefetcher {
    pub fn new(threads: usize) -> Prefetcher {
        let (tx, rx) = sync_channel::<(Arc<ImageReader>, u64)>(256);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("prefetch-{i}"))
                .spawn(move || prefetch_loop(&rx));
            if let Err(e) = spawned {
                log::warn!("cannot start a prefetch thread: {e}");
            }
        }
        Prefetcher {
            queue: Mutex::new(tx),
        }
    }

    fn request(&self, reader: &Arc<ImageReader>, chunk: u64) {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        match queue.try_send((reader.clone(), chunk)) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Notes a read of `len` bytes at `offset` and schedules read-ahead.
    pub fn on_read(
        &self,
        reader: &Arc<ImageReader>,
        state: &Mutex<ReadState>,
        offset: u64,
        len: u64,
    ) {
        let chunk_size = reader.record().chunk_size as u64;
        let chunks = reader.size().div_ceil(chunk_size);
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let last = (offset + len.max(1) - 1) / chunk_size;
        let sequential = offset == state.next_offset && offset != 0;
        state.next_offset = offset + len;
        if !sequential {
            // A seek (or the first read): random readers get no read-ahead,
            // which would only double their work.
            state.window = 0;
            state.fetched_to = last + 1;
            return;
        }
        state.window = (state.window * 2).clamp(1, MAX_WINDOW);
        if last + 1 >= chunks {
            return;
        }
        let target = (last + state.window).min(chunks - 1);
        let from = state.fetched_to.max(last + 1);
        for chunk in from..=target {
            self.request(reader, chunk);
        }
        state.fetched_to = state.fetched_to.max(target + 1);
    }
}

/// Per-handle sequential-read tracking.
#[derive(Default)]
pub struct ReadState {
    next_offset: u64,
    window: u64,
    fetched_to: u64,
}

fn prefetch_loop(rx: &Mutex<Receiver<(Arc<ImageReader>, u64)>>) {
    loop {
        let item = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((reader, chunk)) = item else { return };
        if let Err(e) = reader.chunk(chunk) {
            log::debug!("prefetch of chunk {chunk} failed: {e}");
        }
    }
}
