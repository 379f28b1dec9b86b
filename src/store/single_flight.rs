//! One read per chunk at a time: when several threads miss the cache on
//! the same chunk (a reader and the read-ahead pool, say), the first reads
//! and decompresses it and the others wait for its bytes instead of doing
//! the same work again.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use crate::hash::ChunkHash;

#[derive(Default)]
pub(crate) struct SingleFlight {
    loading: Mutex<HashMap<ChunkHash, Arc<Flight>>>,
}

#[derive(Default)]
struct Flight {
    /// None while loading; then the bytes, or None again if it failed.
    done: Mutex<Option<Option<Arc<Vec<u8>>>>>,
    landed: Condvar,
}

/// What a thread that missed the cache is to do.
pub(crate) enum Turn<'a> {
    /// Load the chunk, then [`Landing::land`] it (dropped unlanded, say by
    /// a panic, it lands as failed: nobody waits forever).
    Load(Landing<'a>),
    /// Another thread loaded it meanwhile: the bytes, or None if that
    /// load failed (load it yourself then, to get your own error).
    Loaded(Option<Arc<Vec<u8>>>),
}

pub(crate) struct Landing<'a> {
    owner: &'a SingleFlight,
    hash: ChunkHash,
    flight: Arc<Flight>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SingleFlight {
    /// Loads `hash` here, or waits for the thread loading it.
    pub(crate) fn turn(&self, hash: &ChunkHash) -> Turn<'_> {
        let flight = {
            let mut loading = lock(&self.loading);
            match loading.get(hash) {
                Some(flight) => flight.clone(),
                None => {
                    let flight = Arc::new(Flight::default());
                    loading.insert(*hash, flight.clone());
                    return Turn::Load(Landing {
                        owner: self,
                        hash: *hash,
                        flight,
                    });
                }
            }
        };
        let mut done = lock(&flight.done);
        while done.is_none() {
            done = flight.landed.wait(done).unwrap_or_else(|e| e.into_inner());
        }
        Turn::Loaded(done.clone().flatten())
    }
}

impl Landing<'_> {
    /// Ends the load: wakes the waiters with its bytes (None: it failed).
    pub(crate) fn land(self, bytes: Option<Arc<Vec<u8>>>) {
        self.finish(bytes);
    }

    fn finish(&self, bytes: Option<Arc<Vec<u8>>>) {
        {
            let mut loading = lock(&self.owner.loading);
            // Only our own flight: a later one for the same chunk may be up.
            if loading
                .get(&self.hash)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                loading.remove(&self.hash);
            }
        }
        let mut done = lock(&self.flight.done);
        if done.is_none() {
            *done = Some(bytes);
        }
        self.flight.landed.notify_all();
    }
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        // After `land` this finds the flight done and changes nothing.
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_thread_waits_for_the_first_load_and_gets_its_bytes() {
        let flights = SingleFlight::default();
        let hash = ChunkHash::of(b"chunk");
        // The waiter must ask while the load runs; on a loaded machine it
        // may come late, so try until one round shows the wait.
        let waited = (0..20).any(|_| {
            let Turn::Load(landing) = flights.turn(&hash) else {
                panic!("nothing loads: this thread loads");
            };
            std::thread::scope(|scope| {
                let waiter = scope.spawn(|| match flights.turn(&hash) {
                    Turn::Loaded(bytes) => bytes.map(|b| b.to_vec()),
                    Turn::Load(late) => {
                        late.land(None);
                        None
                    }
                });
                std::thread::sleep(std::time::Duration::from_millis(20));
                landing.land(Some(Arc::new(b"bytes".to_vec())));
                waiter.join().expect("waiter").as_deref() == Some(&b"bytes"[..])
            })
        });
        assert!(waited, "a waiter never got the first load's bytes");
        // Landed: the next miss loads anew.
        assert!(matches!(flights.turn(&hash), Turn::Load(_)));
    }

    #[test]
    fn a_load_dropped_without_landing_wakes_its_waiters_as_failed() {
        let flights = SingleFlight::default();
        let hash = ChunkHash::of(b"chunk");
        let Turn::Load(landing) = flights.turn(&hash) else {
            panic!("the first thread loads");
        };
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| matches!(flights.turn(&hash), Turn::Loaded(None)));
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(landing);
            assert!(waiter.join().expect("waiter"), "told the load failed");
        });
    }
}
