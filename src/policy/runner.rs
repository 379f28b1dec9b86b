//! The mount's policy runner: takes automatic snapshots when a disk's
//! policy says so, prunes what the policy no longer keeps, and runs gc in
//! the background once enough pruned data may be dead. Snapshots it takes
//! go through the mount's snapshot service (`Snapshots`), like `.create`:
//! one per disk at a time, progress and outcome in `.status`; the service,
//! not the runner, decides that a disk is busy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Local, TimeZone};

use super::prune::prune;
use super::schedule::next_due;
use super::Policy;
use crate::catalog::names::AUTO_PREFIX;
use crate::repository::Repository;

/// What the runner needs of the mount: its repository, a way to take an
/// automatic snapshot, and lines in `.status`.
pub trait Snapshots: Send + Sync + 'static {
    fn repo(&self) -> &Arc<Repository>;
    /// Takes an automatic snapshot; a failure, or a skip because the disk
    /// is busy, is logged and shown in `.status` by the service.
    fn take_automatic(&self, disk: &str, name: &str, policy: &Policy);
    /// A line in the disk's `.status`.
    fn note(&self, disk: &str, line: &str);
}

/// How often policies are looked at.
const TICK: Duration = Duration::from_secs(1);
/// How often retention is applied even when no snapshot was taken (so
/// that `retain-days` expires snapshots of disks that are not snapshotted).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

struct Runner<S> {
    fs: Arc<S>,
    stop: Arc<AtomicBool>,
    /// When a run was last started per disk, so a failing one is not
    /// retried every second.
    last_attempt: HashMap<String, DateTime<Local>>,
    last_prune: Instant,
    /// Bytes that pruned snapshots had added: what gc may get back.
    dead_estimate: Arc<AtomicU64>,
    gc_running: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts the policy runner; it ends when `stop` is set, after the
/// snapshots it started have ended.
pub fn spawn<S: Snapshots>(fs: Arc<S>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("snapfs-policies".into())
        .spawn(move || {
            let mut runner = Runner {
                fs,
                stop,
                last_attempt: HashMap::new(),
                last_prune: Instant::now(),
                dead_estimate: Arc::new(AtomicU64::new(0)),
                gc_running: Arc::new(AtomicBool::new(false)),
                threads: Vec::new(),
            };
            while !runner.stop.load(Ordering::Relaxed) {
                runner.tick();
                std::thread::sleep(TICK);
            }
            for thread in runner.threads.drain(..) {
                let _ = thread.join();
            }
        })
}

impl<S: Snapshots> Runner<S> {
    fn tick(&mut self) {
        self.threads.retain(|t| !t.is_finished());
        let repo = self.fs.repo().clone();
        let policies = match repo.catalog().policies() {
            Ok(policies) => policies,
            Err(e) => {
                log::error!("cannot read policies: {e}");
                return;
            }
        };
        let now = Local::now();
        let prune_all = self.last_prune.elapsed() >= PRUNE_EVERY;
        if prune_all {
            self.last_prune = Instant::now();
        }
        for (disk, policy) in policies {
            let snapshot = self.due_snapshot(&repo, &disk, &policy, now);
            // One thread per disk: a snapshot's work prunes after it anyway.
            if snapshot.is_some() || prune_all {
                self.spawn_work(&disk, snapshot);
            }
        }
    }

    /// The automatic snapshot (name, policy) `disk`'s policy wants now,
    /// if any.
    fn due_snapshot(
        &mut self,
        repo: &Repository,
        disk: &str,
        policy: &Policy,
        now: DateTime<Local>,
    ) -> Option<(String, Policy)> {
        if !policy.schedules() {
            return None;
        }
        let last_auto = repo.catalog().snapshots(Some(disk)).ok().and_then(|list| {
            list.iter()
                .filter(|s| s.name.starts_with(AUTO_PREFIX))
                .map(|s| s.created_ms)
                .max()
        });
        let last_auto = last_auto.and_then(|ms| Local.timestamp_millis_opt(ms).earliest());
        let last = match (last_auto, self.last_attempt.get(disk)) {
            (Some(a), Some(b)) => Some(a.max(*b)),
            (a, b) => a.or(b.copied()),
        };
        let due = next_due(policy, last.as_ref(), &now)?;
        if due > now {
            return None;
        }
        self.last_attempt.insert(disk.to_string(), now);
        let name = format!("{AUTO_PREFIX}-{}", now.format("%Y%m%d-%H%M%S"));
        Some((name, policy.clone()))
    }

    /// On a thread of its own: take a snapshot (if given), then prune the
    /// disk, then start gc if enough may be dead.
    fn spawn_work(&mut self, disk: &str, snapshot: Option<(String, Policy)>) {
        let fs = self.fs.clone();
        let disk = disk.to_string();
        let dead_estimate = self.dead_estimate.clone();
        let gc_running = self.gc_running.clone();
        let work = move || {
            if let Some((name, policy)) = snapshot {
                fs.take_automatic(&disk, &name, &policy);
            }
            match prune(fs.repo().catalog(), &disk, false) {
                Ok(pruned) if !pruned.snapshots.is_empty() => {
                    let line = format!("pruned {}", pruned.snapshots.join(" "));
                    log::info!("policy of disk {disk}: {line}");
                    fs.note(&disk, &line);
                    dead_estimate.fetch_add(pruned.added_bytes, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => log::error!("prune of disk {disk} failed: {e}"),
            }
            maybe_gc(fs.as_ref(), &dead_estimate, &gc_running);
        };
        match std::thread::Builder::new()
            .name("snapfs-policy-run".into())
            .spawn(work)
        {
            Ok(thread) => self.threads.push(thread),
            Err(e) => log::error!("cannot start a policy run: {e}"),
        }
    }
}

/// Runs gc once pruned snapshots may have left a tenth of the packs dead.
fn maybe_gc(fs: &impl Snapshots, dead_estimate: &AtomicU64, gc_running: &AtomicBool) {
    let dead = dead_estimate.load(Ordering::Relaxed);
    if dead == 0 {
        return;
    }
    let packs = fs.repo().store().stored_bytes().unwrap_or(u64::MAX);
    if dead * 10 < packs || gc_running.swap(true, Ordering::SeqCst) {
        return;
    }
    dead_estimate.store(0, Ordering::Relaxed);
    match fs.repo().gc(10) {
        Ok(report) => log::info!(
            "background gc: {} chunks removed, {} bytes freed",
            report.removed_chunks,
            report.bytes_freed
        ),
        Err(e) => log::error!("background gc failed: {e}"),
    }
    gc_running.store(false, Ordering::SeqCst);
}
