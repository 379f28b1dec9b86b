//! The command line: clap definitions and the code that runs each command.
//!
//! A command opens the store itself (creating it with default settings on
//! first use). While a mount holds the store, commands go through the mount
//! instead (`remote`): snapshots through `.create`, exports by reading the
//! image file, everything else through `/.control`, which runs the same
//! `execute` inside the mount process. A mount that is going away (detached,
//! or its process ending) is waited for briefly, then the store is opened
//! here (`remote::mountpoint_of`).

mod disk;
mod mount;
mod policy;
mod remote;
mod rollback;
mod signals;
mod snapshot;
mod store_cmds;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use snapfs::store::OpenOptions;
use snapfs::Repository;

#[derive(Parser, Debug)]
#[command(
    name = "snapfs",
    version,
    about = "Deduplicated disk snapshots for VM hosts, served as a filesystem",
    long_about = "snapfs keeps snapshots of disk images and block devices in one store, \
                  cut into fixed-size chunks addressed by their blake3 hash, so that equal \
                  data is stored once across all disks and snapshots. `snapfs mount` shows \
                  every disk as a folder and every snapshot as a read-only raw image file.\n\n\
                  While the store is mounted, every command works through the mount.\n\n\
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
    /// Set, show and remove automatic snapshot policies
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Delete the automatic snapshots that policies no longer keep
    Prune(policy::PruneArgs),
    /// Write a snapshot back onto its disk (or --to a file or device), changing only the chunks that differ
    Rollback(rollback::RollbackArgs),
    /// Mount the store: a folder per disk, a read-only image file per snapshot
    Mount(mount::MountArgs),
    /// Unmount a snapfs mount and wait until its process has ended
    Umount(mount::UmountArgs),
}

/// Where a command writes its results, and whether a person watches.
pub struct Output<'a> {
    pub out: &'a mut dyn Write,
    pub interactive: bool,
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
    let home = std::env::var_os("HOME")
        .context("neither --store, SNAPFS_STORE, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/snapfs"))
}

/// Opens the store, creating it with default settings when missing.
pub fn open_store(dir: &Path, cache_bytes: Option<u64>) -> Result<Arc<Repository>> {
    let mut options = OpenOptions::default();
    if let Some(bytes) = cache_bytes {
        options.cache_bytes = bytes;
    }
    let repo = Repository::open(dir, &options)
        .with_context(|| format!("cannot open store {}", dir.display()))?;
    Ok(Arc::new(repo))
}

pub fn run(cli: Cli) -> Result<()> {
    let dir = store_dir(cli.store)?;
    // Neither waits for a mount that is ending: mount checks by itself,
    // umount may be what ends it.
    let mounted = match &cli.command {
        Command::Mount(_) | Command::Umount(_) => None,
        _ => remote::mountpoint_of(&dir)?,
    };
    match (cli.command, mounted) {
        (Command::Mount(args), _) => mount::mount(&dir, args),
        (Command::Umount(args), _) => mount::umount(&dir, args),
        (Command::Init(_), Some(mnt)) => {
            bail!(
                "a store exists at {} (mounted at {})",
                dir.display(),
                mnt.display()
            )
        }
        (Command::Init(args), None) => store_cmds::init(&dir, args),
        (command, Some(mnt)) => remote::run(&mnt, command),
        (Command::Export(args), None) => store_cmds::export(&*open_store(&dir, None)?, args),
        (command, None) => {
            let repo = open_store(&dir, None)?;
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            let mut out = Output {
                out: &mut lock,
                interactive: true,
            };
            execute(&repo, command, &mut out)
        }
    }
}

/// Runs a command against an open store; the mount runs `.control`
/// requests through here too.
pub fn execute(repo: &Repository, command: Command, out: &mut Output) -> Result<()> {
    match command {
        Command::Disk(command) => disk::run(repo, command, out),
        Command::Snapshot(command) => snapshot::run(repo, command, out),
        Command::Gc(args) => store_cmds::gc(repo, args, out),
        Command::Verify(args) => store_cmds::verify(repo, args, out),
        Command::Stats(args) => store_cmds::stats(repo, args, out),
        Command::Policy(command) => policy::run(repo, command, out),
        Command::Prune(args) => policy::prune_command(repo, args, out),
        Command::Export(args) => store_cmds::export(repo, args),
        Command::Rollback(args) => rollback::run(repo, args, out),
        Command::Init(_) => bail!("a store exists at {}", repo.store().root().display()),
        Command::Mount(_) | Command::Umount(_) => {
            bail!("the store is already mounted; run mount and umount outside of it")
        }
    }
}

/// Prints a value as pretty JSON.
pub fn print_json<T: serde::Serialize>(out: &mut Output, value: &T) -> Result<()> {
    writeln!(out.out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// An error and its causes on one line. Library errors that already print
/// their cause (`{context}: {source}`) also report it as their source, so
/// a cause that the line already ends with is not repeated.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
