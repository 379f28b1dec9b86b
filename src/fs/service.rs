//! The snapshot service: takes snapshots for `.create` and for policies.
//! "A snapshot of this disk is running" is decided here, once, by the
//! repository's running set (`repo.running().start`), which a rollback and
//! a CLI snapshot through `.control` mark too; the guard it returns is
//! handed to `create_marked`. Progress and every outcome go to `.status`
//! and the log.

use std::sync::Arc;
use std::time::Instant;

use super::status::StatusBoard;
use super::{FsResult, MountOptions};
use crate::catalog::SnapshotRecord;
use crate::error::Error;
use crate::policy::Policy;
use crate::repository::Repository;
use crate::snapshot::create::create_marked;
use crate::snapshot::hooks::Hooks;
use crate::snapshot::{CreateOptions, Progress};

/// Who asks for a snapshot: says how a refusal is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A name written to `.create`.
    Create,
    /// A policy's automatic snapshot (the `auto` prefix is allowed).
    Policy,
}

pub struct SnapshotService {
    repo: Arc<Repository>,
    status: StatusBoard,
    options: MountOptions,
    /// Disks whose last automatic snapshot failed as torn: a policy on a
    /// disk that is always written would otherwise log the same error at
    /// every due time.
    torn_disks: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl SnapshotService {
    pub fn new(repo: Arc<Repository>, options: MountOptions) -> SnapshotService {
        SnapshotService {
            repo,
            status: StatusBoard::default(),
            options,
            torn_disks: Default::default(),
        }
    }

    pub fn repo(&self) -> &Arc<Repository> {
        &self.repo
    }

    pub fn status(&self) -> &StatusBoard {
        &self.status
    }

    /// Takes snapshot `name` of `disk`: one per disk at a time (EBUSY),
    /// progress and outcome in `.status`. `max_rate` and `hooks` (a
    /// policy's) override the mount's defaults.
    pub fn take_snapshot(
        &self,
        disk: &str,
        name: &str,
        trigger: Trigger,
        max_rate: Option<u64>,
        hooks: Option<&Hooks>,
    ) -> FsResult<SnapshotRecord> {
        self.take_snapshot_with(disk, name, trigger, max_rate, hooks, None)
    }

    /// `.create` of a live disk: returns once the snapshot is frozen and
    /// its image file reads the frozen content, and goes on storing it in
    /// a thread of its own. A failure before the freeze (a refused name,
    /// EBUSY, a failing pre-hook) is returned; a later one shows in
    /// `.status` and the log, like every outcome.
    pub fn take_snapshot_until_frozen(self: &Arc<Self>, disk: &str, name: &str) -> FsResult<()> {
        let (sender, receiver) = std::sync::mpsc::channel::<Option<FsResult<()>>>();
        let service = self.clone();
        let (disk, name) = (disk.to_string(), name.to_string());
        let spawned = std::thread::Builder::new()
            .name("snapfs-live-snapshot".into())
            .spawn(move || {
                let frozen = sender.clone();
                let on_frozen = move || {
                    let _ = frozen.send(None);
                };
                let result = service.take_snapshot_with(
                    &disk,
                    &name,
                    Trigger::Create,
                    None,
                    None,
                    Some(&on_frozen),
                );
                // Nobody listens any more once frozen: that is fine.
                let _ = sender.send(Some(result.map(|_| ())));
            });
        if let Err(e) = spawned {
            return Err(
                super::FsError::from(e).context("cannot start a snapshot thread".to_string())
            );
        }
        match receiver.recv() {
            Ok(None) => Ok(()),
            Ok(Some(result)) => result,
            Err(_) => Err(super::FsError::new(libc::EIO)),
        }
    }

    fn take_snapshot_with(
        &self,
        disk: &str,
        name: &str,
        trigger: Trigger,
        max_rate: Option<u64>,
        hooks: Option<&Hooks>,
        on_frozen: Option<&(dyn Fn() + Sync)>,
    ) -> FsResult<SnapshotRecord> {
        // Checked and marked at once: of two writers racing here one is
        // refused, and the running one keeps its progress line.
        let running = match self.repo.running().start(disk) {
            Ok(running) => running,
            Err(e) => {
                match trigger {
                    Trigger::Create => self.refuse(disk, name, &e.to_string()),
                    Trigger::Policy => {
                        let why = "the previous snapshot of this disk is still running";
                        log::info!("policy of disk {disk}: skipped {name}: {why}");
                        self.status.skipped(disk, name, why);
                    }
                }
                return Err(e.into());
            }
        };
        self.status.start(disk, name);
        let report = |p: &Progress| self.status.progress(disk, p);
        let options = CreateOptions {
            threads: self.options.snapshot_threads,
            progress: Some(&report),
            cancel: self.options.cancel.as_deref(),
            automatic: trigger == Trigger::Policy,
            max_rate: max_rate.or(self.options.max_rate),
            hooks: hooks.unwrap_or(&self.options.hooks).clone(),
            on_frozen,
            ..CreateOptions::default()
        };
        let started = Instant::now();
        match create_marked(&self.repo, &running, name, &options) {
            Ok(record) => {
                let seconds = started.elapsed().as_secs_f64();
                log::info!("snapshot {name} of disk {disk} accomplished in {seconds:.1} s");
                self.torn_disks().remove(disk);
                self.status.accomplished(disk, &record, seconds);
                Ok(record)
            }
            Err(e) => {
                let repeat = matches!(e, Error::Torn { .. })
                    && trigger == Trigger::Policy
                    && !self.torn_disks().insert(disk.to_string());
                if repeat {
                    log::debug!("snapshot {name} of disk {disk} failed again: {e}");
                } else if matches!(e, Error::Torn { .. }) && trigger == Trigger::Policy {
                    log::error!(
                        "snapshot {name} of disk {disk} failed: {e} (until one succeeds, \
                         further torn automatic snapshots of this disk are only in .status)"
                    );
                } else {
                    log::error!("snapshot {name} of disk {disk} failed: {e}");
                }
                self.status.failed(disk, name, &e.to_string());
                Err(e.into())
            }
        }
    }

    fn torn_disks(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.torn_disks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports a name that `.create` did not take, in `.status` and the log.
    pub fn refuse(&self, disk: &str, name: &str, why: &str) {
        log::warn!(
            "refused snapshot {:?} of disk {disk}: {why}",
            crate::catalog::names::shown(name)
        );
        self.status.refused(disk, name, why);
    }
}

impl crate::policy::runner::Snapshots for SnapshotService {
    fn repo(&self) -> &Arc<Repository> {
        &self.repo
    }

    fn take_automatic(&self, disk: &str, name: &str, policy: &Policy) {
        // A policy's own hooks replace the mount's; failures are logged and
        // shown in `.status` by take_snapshot.
        let hooks = policy.hooks();
        let hooks = hooks.any().then_some(&hooks);
        let _ = self.take_snapshot(disk, name, Trigger::Policy, policy.max_rate, hooks);
    }

    fn note(&self, disk: &str, line: &str) {
        self.status.note(disk, line);
    }
}
