//! Maps that gc must keep although the catalog may no longer name them: a
//! snapshot deleted while its image is open (or being rolled back from)
//! stays readable until the last reader lets go.

use std::collections::HashMap;
use std::sync::Mutex;

use super::MapRoot;

#[derive(Default)]
pub struct PinnedMaps {
    counts: Mutex<HashMap<MapRoot, usize>>,
}

/// Keeps one map pinned until dropped.
pub struct Pin<'p> {
    pins: &'p PinnedMaps,
    root: MapRoot,
}

impl PinnedMaps {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MapRoot, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pins `root` for as long as the returned guard lives.
    pub fn pin(&self, root: MapRoot) -> Pin<'_> {
        self.add(root);
        Pin { pins: self, root }
    }

    /// Pins `root` until `remove` (for owners that cannot hold a guard).
    pub fn add(&self, root: MapRoot) {
        *self.lock().entry(root).or_insert(0) += 1;
    }

    pub fn remove(&self, root: MapRoot) {
        let mut counts = self.lock();
        if let Some(count) = counts.get_mut(&root) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&root);
            }
        }
    }

    pub fn roots(&self) -> Vec<MapRoot> {
        self.lock().keys().copied().collect()
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.pins.remove(self.root);
    }
}
