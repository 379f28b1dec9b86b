//! `snapfs disk ...`

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::{print_json, Output};
use snapfs::snapshot::source::{ChunkSource, ImageSource};
use snapfs::units::{format_bytes, rfc3339_ms};
use snapfs::Repository;

#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Register a disk: NAME is `disk` or `group/disk`, SOURCE a raw image file or block device
    Add { name: String, source: PathBuf },
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
        DiskCommand::Add { name, source } => {
            let record = repo.catalog().add_disk(&name, &source)?;
            let size = ImageSource::open(&record.source)
                .map(|s| s.size())
                .unwrap_or(0);
            writeln!(
                out.out,
                "added disk {} ({}, {})",
                record.name,
                record.source.display(),
                format_bytes(size)
            )?;
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
            writeln!(out.out, "removed disk {name}")?;
        }
    }
    Ok(())
}
