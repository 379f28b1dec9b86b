//! `snapfs snapshot ...`

use std::io::IsTerminal;

use anyhow::Result;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use super::signals;
use super::{print_json, Output};
use snapfs::catalog::SnapshotRecord;
use snapfs::snapshot::hooks::Hooks;
use snapfs::snapshot::{create_snapshot, CreateOptions, Progress};
use snapfs::units::parse_size;
use snapfs::units::{format_bytes, format_time_ms, rfc3339_ms};
use snapfs::Repository;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a snapshot of DISK named NAME (a progress bar shows on a terminal)
    ///
    /// A snapshot is the disk at one moment, or it fails. An image file on XFS or btrfs
    /// is read from a reflink clone (method reflink); with --pre-hook/--post-hook the
    /// read runs between them (method hook); otherwise a disk that changes while it is
    /// read fails the snapshot as torn and nothing is kept (method checked). A live disk
    /// is frozen at one instant in its write path (method freeze). See SNAPSHOTS OF
    /// RUNNING MACHINES in the man page.
    Create {
        /// The disk, as registered (e.g. vm1/system)
        disk: String,
        /// The new snapshot's name (1-128 of letters, digits, . _ - :)
        name: String,
        /// Cap on how fast the disk is read, per second (e.g. 50M)
        #[arg(long, value_name = "RATE", value_parser = parse_size)]
        max_rate: Option<u64>,
        #[command(flatten)]
        hooks: HookArgs,
        /// Live disk served by a mount: return at the freeze, while the mount goes on storing
        /// the snapshot (its file reads the frozen content at once; .status shows progress)
        #[arg(long)]
        no_wait: bool,
    },
    /// List snapshots: name, disk, created, size, state, bytes added to the store
    List {
        /// Only the snapshots of this disk
        disk: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (gc reclaims its space)
    Rm { disk: String, name: String },
    /// Rename a snapshot
    Rename {
        disk: String,
        old: String,
        new: String,
    },
    /// Protect a snapshot: nothing deletes it (rm, prune, disk rm) until unprotected
    Protect { disk: String, name: String },
    /// Lift the protection of a snapshot
    Unprotect { disk: String, name: String },
}

/// Commands that hold a running guest still around the read of its disk.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct HookArgs {
    /// Run CMD (with sh -c) before the disk is read, e.g. 'virsh domfsfreeze vm1'; its failure fails the snapshot
    #[arg(long, value_name = "CMD")]
    pub pre_hook: Option<String>,
    /// Run CMD after the disk is read, whatever happened (also on failure or cancel), e.g. 'virsh domfsthaw vm1'
    #[arg(long, value_name = "CMD")]
    pub post_hook: Option<String>,
    /// Seconds a hook may take before it is killed and the snapshot fails [default: 60]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub hook_timeout: Option<u32>,
}

impl HookArgs {
    pub fn any(&self) -> bool {
        self.pre_hook.is_some() || self.post_hook.is_some() || self.hook_timeout.is_some()
    }

    pub fn hooks(&self) -> Hooks {
        Hooks {
            pre: self.pre_hook.clone(),
            post: self.post_hook.clone(),
            timeout: self
                .hook_timeout
                .map(|s| std::time::Duration::from_secs(s as u64)),
        }
    }
}

#[derive(serde::Serialize)]
pub struct SnapshotRow {
    pub disk: String,
    pub name: String,
    pub id: u64,
    pub created: String,
    pub created_ms: i64,
    pub size: u64,
    pub state: &'static str,
    pub added_bytes: u64,
    pub nonzero_bytes: u64,
    pub protected: bool,
    /// reflink, hook, checked (None: taken before snapfs recorded it).
    pub method: Option<snapfs::catalog::CaptureMethod>,
}

impl From<&SnapshotRecord> for SnapshotRow {
    fn from(s: &SnapshotRecord) -> SnapshotRow {
        SnapshotRow {
            disk: s.disk.clone(),
            name: s.name.clone(),
            id: s.id,
            created: rfc3339_ms(s.created_ms),
            created_ms: s.created_ms,
            size: s.size,
            state: "accomplished",
            added_bytes: s.added_bytes,
            nonzero_bytes: s.nonzero_bytes,
            protected: s.protected,
            method: s.method,
        }
    }
}

pub fn run(repo: &Repository, command: SnapshotCommand, out: &mut Output) -> Result<()> {
    match command {
        SnapshotCommand::Create {
            disk,
            name,
            max_rate,
            hooks,
            no_wait,
        } => {
            if no_wait {
                if !repo.catalog().disk(&disk)?.live {
                    anyhow::bail!(
                        "--no-wait: disk {disk} is not live, so its snapshot is the read \
                         itself; leave --no-wait out"
                    );
                }
                eprintln!(
                    "no mount serves this store, so nothing writes disk {disk}: \
                     waiting until the snapshot is stored"
                );
            }
            let bar = progress_bar(out.interactive);
            let report = |p: &Progress| {
                if let Some(bar) = &bar {
                    bar.set_length(p.total_bytes);
                    bar.set_position(p.done_bytes);
                }
            };
            // A local command stops cleanly on Ctrl-C or SIGTERM, so that
            // the post-hook runs; inside the mount, the mount handles signals.
            let cancel = out.interactive.then(signals::cancel_on_signal);
            let options = CreateOptions {
                progress: Some(&report),
                max_rate,
                hooks: hooks.hooks(),
                cancel,
                cancelled_by: "a signal stopped it",
                ..CreateOptions::default()
            };
            let started = std::time::Instant::now();
            let result = create_snapshot(repo, &disk, &name, &options);
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let record = result?;
            let secs = started.elapsed().as_secs_f64();
            writeln!(
                out.out,
                "snapshot {} of disk {}: {} in {:.1} s ({}/s), {} added to the store{}",
                record.name,
                record.disk,
                format_bytes(record.size),
                secs,
                format_bytes((record.size as f64 / secs.max(1e-3)) as u64),
                format_bytes(record.added_bytes),
                record
                    .method
                    .map(|m| format!(", method {m}"))
                    .unwrap_or_default()
            )?;
        }
        SnapshotCommand::List { disk, json } => {
            let snapshots = repo.catalog().snapshots(disk.as_deref())?;
            let rows: Vec<SnapshotRow> = snapshots.iter().map(SnapshotRow::from).collect();
            if json {
                return print_json(out, &rows);
            }
            writeln!(
                out.out,
                "{:<24} {:<24} {:<19} {:>10} {:<12} {:>10}",
                "DISK", "NAME", "CREATED", "SIZE", "STATE", "ADDED"
            )?;
            for s in &snapshots {
                writeln!(
                    out.out,
                    "{:<24} {:<24} {:<19} {:>10} {:<12} {:>10}",
                    s.disk,
                    s.name,
                    format_time_ms(s.created_ms),
                    format_bytes(s.size),
                    "accomplished",
                    format_bytes(s.added_bytes)
                )?;
            }
        }
        SnapshotCommand::Rm { disk, name } => {
            repo.catalog().remove_snapshot(&disk, &name)?;
            writeln!(
                out.out,
                "removed snapshot {name} of disk {disk}; run snapfs gc to reclaim its space"
            )?;
        }
        SnapshotCommand::Protect { disk, name } => {
            repo.catalog().protect_snapshot(&disk, &name, true)?;
            writeln!(out.out, "protected snapshot {name} of disk {disk}")?;
        }
        SnapshotCommand::Unprotect { disk, name } => {
            repo.catalog().protect_snapshot(&disk, &name, false)?;
            writeln!(out.out, "unprotected snapshot {name} of disk {disk}")?;
        }
        SnapshotCommand::Rename { disk, old, new } => {
            repo.catalog().rename_snapshot(&disk, &old, &new)?;
            writeln!(out.out, "renamed snapshot {old} of disk {disk} to {new}")?;
        }
    }
    Ok(())
}

/// A byte progress bar on stderr, only for a person at a terminal.
pub fn progress_bar(interactive: bool) -> Option<ProgressBar> {
    if !interactive || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(bar)
}
