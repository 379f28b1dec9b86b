//! The command line: clap definitions and the code that runs each command.
//! Every command opens the store itself (creating it with default settings
//! on first use), does its work and prints a short result.

mod disk;
mod snapshot;
mod store_cmds;
pub mod units;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use snapfs::store::{OpenOptions, Store};

#[derive(Parser, Debug)]
#[command(
    name = "snapfs",
    version,
    about = "Deduplicated disk snapshots for VM hosts, served as a filesystem",
    long_about = "snapfs keeps snapshots of disk images and block devices in one store, \
                  cut into fixed-size chunks addressed by their blake3 hash, so that equal \
                  data is stored once across all disks and snapshots.\n\n\
                  Exit status: 0 on success, 1 on failure, 2 on a usage error."
)]
pub struct Cli {
    /// The store directory [default: /var/lib/snapfs for root, $XDG_DATA_HOME/snapfs otherwise]
    #[arg(long, global = true, env = "SNAPFS_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a store with the given settings
    Init(store_cmds::InitArgs),
    /// Register, list and remove disks
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Take, list, rename and remove snapshots
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Write a snapshot out as a raw disk image
    Export(store_cmds::ExportArgs),
    /// Reclaim the space of deleted snapshots
    Gc(store_cmds::GcArgs),
    /// Re-read and re-hash every chunk the snapshots reach; exit 1 on damage
    Verify(store_cmds::VerifyArgs),
    /// Show logical and stored bytes, dedup and compression ratios
    Stats(store_cmds::StatsArgs),
}

/// The store directory: --store, $SNAPFS_STORE, or the default.
pub fn store_dir(cli_store: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = cli_store {
        return Ok(dir);
    }
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/snapfs"));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(data).join("snapfs"));
    }
    let home = std::env::var_os("HOME").context("neither --store, SNAPFS_STORE, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/snapfs"))
}

/// Opens the store, creating it with default settings when missing.
pub fn open_store(dir: &std::path::Path) -> Result<Arc<Store>> {
    let store = Store::open(dir, &OpenOptions::default())
        .with_context(|| format!("cannot open store {}", dir.display()))?;
    Ok(Arc::new(store))
}

pub fn run(cli: Cli) -> Result<()> {
    let dir = store_dir(cli.store)?;
    match cli.command {
        Command::Init(args) => store_cmds::init(&dir, args),
        Command::Disk(command) => disk::run(&dir, command),
        Command::Snapshot(command) => snapshot::run(&dir, command),
        Command::Export(args) => store_cmds::export(&dir, args),
        Command::Gc(args) => store_cmds::gc(&dir, args),
        Command::Verify(args) => store_cmds::verify(&dir, args),
        Command::Stats(args) => store_cmds::stats(&dir, args),
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
