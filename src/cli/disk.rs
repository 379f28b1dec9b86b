//! `snapfs disk ...`

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{print_json, Output};
use snapfs::catalog::names::check_disk_name;
use snapfs::catalog::DiskRecord;
use snapfs::snapshot::source::{ChunkSource, ImageSource};
use snapfs::units::{format_bytes, parse_size, rfc3339_ms};
use snapfs::Repository;

#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Register a disk: NAME is `disk` or `group/disk`, SOURCE a raw image file or block device
    Add {
        name: String,
        source: PathBuf,
        /// Adopt SOURCE as a live disk: served read-write as MNT/NAME/live for a VM to run
        /// from, its changes recorded so that snapshots are instant and incremental
        /// (nothing is copied; SOURCE stays the disk, byte for byte)
        #[arg(long)]
        live: bool,
    },
    /// Create a new, empty live disk: a sparse raw file of SIZE (in STORE/disks/ unless --backing)
    Create {
        name: String,
        /// The disk's size (e.g. 20G)
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: u64,
        /// Where to create the raw file (it must not exist)
        #[arg(long, value_name = "PATH")]
        backing: Option<PathBuf>,
    },
    /// List the registered disks
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Unregister a disk
    Rm {
        name: String,
        /// Also delete all its snapshots (their space comes back at the next gc)
        #[arg(long)]
        with_snapshots: bool,
    },
}

fn report_added(record: &DiskRecord, out: &mut Output) -> Result<()> {
    let size = ImageSource::open(&record.source)
        .map(|s| s.size())
        .unwrap_or(0);
    writeln!(
        out.out,
        "added {}disk {} ({}, {})",
        if record.live { "live " } else { "" },
        record.name,
        record.source.display(),
        format_bytes(size)
    )?;
    Ok(())
}

/// A new sparse raw file registered as a live disk; the file goes again if
/// the disk cannot be registered.
fn create(
    repo: &Repository,
    name: &str,
    size: u64,
    backing: Option<PathBuf>,
) -> Result<DiskRecord> {
    check_disk_name(name)?;
    let path = match backing {
        Some(path) => path,
        None => repo
            .store()
            .root()
            .join("disks")
            .join(format!("{name}.img")),
    };
    if let Some(folder) = path.parent() {
        // Inside the store: private like the rest of it.
        let made = if folder.starts_with(repo.store().root()) {
            snapfs::modes::create_private_dir(folder)
        } else {
            std::fs::create_dir_all(folder)
        };
        made.with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let made = file
        .set_len(size)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot size {}", path.display()))
        .and_then(|()| Ok(repo.catalog().add_disk_as(name, &path, true)?));
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    made
}

#[derive(serde::Serialize)]
struct DiskRow {
    name: String,
    source: PathBuf,
    added: String,
    snapshots: usize,
    size: Option<u64>,
}

pub fn run(repo: &Repository, command: DiskCommand, out: &mut Output) -> Result<()> {
    match command {
        DiskCommand::Add { name, source, live } => {
            let record = repo.catalog().add_disk_as(&name, &source, live)?;
            report_added(&record, out)?;
        }
        DiskCommand::Create {
            name,
            size,
            backing,
        } => {
            let record = create(repo, &name, size, backing)?;
            report_added(&record, out)?;
        }
        DiskCommand::List { json } => {
            let mut rows = Vec::new();
            for disk in repo.catalog().disks()? {
                rows.push(DiskRow {
                    snapshots: repo.catalog().snapshots(Some(&disk.name))?.len(),
                    size: ImageSource::open(&disk.source).ok().map(|s| s.size()),
                    added: rfc3339_ms(disk.added_ms),
                    name: disk.name,
                    source: disk.source,
                });
            }
            if json {
                return print_json(out, &rows);
            }
            writeln!(
                out.out,
                "{:<24} {:>10} {:>9}  SOURCE",
                "NAME", "SIZE", "SNAPSHOTS"
            )?;
            for row in rows {
                let size = row.size.map_or("unreadable".into(), format_bytes);
                writeln!(
                    out.out,
                    "{:<24} {:>10} {:>9}  {}",
                    row.name,
                    size,
                    row.snapshots,
                    row.source.display()
                )?;
            }
        }
        DiskCommand::Rm {
            name,
            with_snapshots,
        } => {
            repo.catalog().remove_disk(&name, with_snapshots)?;
            // The mount (or we) may hold it open: nothing writes it any more.
            repo.live().close(&name)?;
            writeln!(out.out, "removed disk {name}")?;
        }
    }
    Ok(())
}
