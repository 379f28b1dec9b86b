//! Store-wide commands: init, export, gc, verify, stats.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::snapshot::progress_bar;
use super::{print_json, Output};
use snapfs::image::{export as export_image, ExportTarget};
use snapfs::store::backend::s3::keys::S3Url;
use snapfs::store::backend::s3::S3Config;
use snapfs::store::backend::PacksConfig;
use snapfs::store::{Compression, StoreConfig};
use snapfs::units::{format_bytes, parse_size};
use snapfs::Repository;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Chunk size: a power of two from 64K to 4M
    #[arg(long, value_name = "SIZE", default_value = "64K", value_parser = parse_size)]
    chunk_size: u64,
    /// Compression of stored chunks: lz4 reads back and compresses faster, zstd packs about a fifth tighter [default: lz4; zstd for packs in a bucket or when a level is given]
    #[arg(long, value_name = "lz4|zstd|none")]
    compression: Option<Compression>,
    /// zstd level: 1 is fastest, higher levels trade speed for space (implies --compression zstd) [default: 1]
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=19))]
    level: Option<i32>,
    /// Keep the packs in an S3 bucket, under PREFIX (endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION); the index, catalog and a cache stay in the store directory
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    packs: Option<S3Url>,
    /// Most local disk the cache of pack data takes (a store in a bucket only) [default: 2G]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Rebuild this store from the store kept in a bucket (its settings come from there; the previous host must no longer use it)
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]", conflicts_with_all = ["packs", "chunk_size", "compression", "level"])]
    from: Option<S3Url>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    pub disk: String,
    pub snapshot: String,
    /// Output file (written sparse), or - for standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Rewrite a pack once at least this percentage of it is dead (0 reclaims every dead byte)
    #[arg(long, value_name = "PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    min_dead: u8,
    /// A store in a bucket: remove packs that no commit names once this old (those of snapshots running here are always kept)
    #[arg(long, value_name = "SECONDS", default_value_t = snapfs::store::gc::ORPHAN_GRACE.as_secs())]
    orphan_grace: u64,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Only the snapshots of this disk
    disk: Option<String>,
    /// Only this snapshot of DISK
    snapshot: Option<String>,
    /// Read no data: check that every pack (and in a bucket, its index object) exists with its committed size
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

pub fn init(dir: &Path, args: InitArgs) -> Result<()> {
    let cache_bytes = match args.cache_size {
        Some(_) if args.packs.is_none() && args.from.is_none() => {
            bail!("--cache-size is the cache of a store in a bucket: give --packs or --from too")
        }
        size => size.unwrap_or(snapfs::store::backend::s3::DEFAULT_CACHE_BYTES),
    };
    if let Some(url) = &args.from {
        return init_from(dir, url, cache_bytes);
    }
    let chunk_size = u32::try_from(args.chunk_size)
        .map_err(|_| anyhow::anyhow!("chunk size {} is too large", args.chunk_size))?;
    let defaults = StoreConfig::default();
    let compression = match (args.compression, args.level) {
        (Some(Compression::Zstd), _) | (None, Some(_)) => Compression::Zstd,
        (Some(other), Some(_)) => bail!("--level is zstd's, not {other}'s"),
        (Some(other), None) => other,
        // A bucket's packs cost transfer time (and money) per byte, where
        // a local store's cost CPU: there zstd's smaller packs win.
        (None, None) if args.packs.is_some() => Compression::Zstd,
        (None, None) => defaults.compression,
    };
    let config = StoreConfig {
        chunk_size,
        compression,
        zstd_level: args.level.unwrap_or(defaults.zstd_level),
    };
    let packs = match &args.packs {
        Some(url) => PacksConfig::S3(S3Config::new_store(url, cache_bytes)?),
        None => PacksConfig::Local,
    };
    let repo = Repository::init_with(dir, config, packs)
        .with_context(|| format!("cannot create store {}", dir.display()))?;
    println!(
        "created store {} (chunk size {}, compression {}, packs in {})",
        dir.display(),
        format_bytes(chunk_size as u64),
        compression,
        repo.store().packs_location()
    );
    Ok(())
}

/// `init --from`: the store rebuilt from a bucket, with what was left out.
fn init_from(dir: &Path, url: &S3Url, cache_bytes: u64) -> Result<()> {
    let (repo, report) = snapfs::rebuild::rebuild(dir, url, cache_bytes)
        .with_context(|| format!("cannot rebuild store {} from {url}", dir.display()))?;
    for line in report.packs.skipped.iter().chain(&report.skipped_snapshots) {
        eprintln!("not imported: {line}");
    }
    println!(
        "rebuilt store {} from {}: {} snapshot(s), {} pack(s), {} chunks{}",
        dir.display(),
        repo.store().packs_location(),
        report.snapshots,
        report.packs.packs,
        report.packs.chunks,
        match report.packs.skipped.len() + report.skipped_snapshots.len() {
            0 => String::new(),
            n => format!("; {n} object(s) not imported (above)"),
        }
    );
    Ok(())
}

pub fn export(repo: &Repository, args: ExportArgs) -> Result<()> {
    let record = repo.catalog().snapshot(&args.disk, &args.snapshot)?;
    let bar = progress_bar(true);
    if let Some(bar) = &bar {
        bar.set_length(record.size);
    }
    let mut progress = |done: u64| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    };
    let result = if args.output.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
        export_image(
            repo.store(),
            &record,
            ExportTarget::Stream(&mut out),
            &mut progress,
        )
    } else {
        let (file, is_regular) = open_export_output(&args.output)?;
        if is_regular {
            export_image(
                repo.store(),
                &record,
                ExportTarget::File(&file),
                &mut progress,
            )
        } else {
            let mut out: &File = &file;
            export_image(
                repo.store(),
                &record,
                ExportTarget::Stream(&mut out),
                &mut progress,
            )
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    result.with_context(|| format!("export of {}/{} failed", args.disk, args.snapshot))?;
    if args.output.as_os_str() != "-" {
        eprintln!(
            "exported {} of disk {} ({}) to {}",
            record.name,
            record.disk,
            format_bytes(record.size),
            args.output.display()
        );
    }
    Ok(())
}

/// Opens where an export goes: a regular file (created or truncated; the
/// bool says so, and that it may be written sparse) or a stream such as a
/// pipe. Block devices are refused: `rollback --to` writes those.
pub fn open_export_output(path: &Path) -> Result<(File, bool)> {
    let meta = std::fs::metadata(path).ok();
    if meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device())
    {
        bail!(
            "{} is a block device; export writes files or streams (use rollback --to for devices)",
            path.display()
        );
    }
    let is_regular = meta.is_none_or(|m| m.file_type().is_file());
    let created = OpenOptions::new().write(true).create_new(true).open(path);
    let file = match created {
        // A new file: the mode the user's umask asks for, not the store's.
        Ok(file) => snapfs::modes::give_user_mode(&file).map(|()| file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
            .write(true)
            .truncate(is_regular)
            .open(path),
        Err(e) => Err(e),
    }
    .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((file, is_regular))
}

pub fn gc(repo: &Repository, args: GcArgs, out: &mut Output) -> Result<()> {
    let grace = std::time::Duration::from_secs(args.orphan_grace);
    let report = repo.gc_with_grace(args.min_dead, grace)?;
    if args.json {
        return print_json(out, &report);
    }
    writeln!(out.out,
        "gc: {} live chunks kept, {} chunks removed, {} packs removed, {} packs rewritten, {} freed",
        report.live_chunks,
        report.removed_chunks,
        report.packs_removed,
        report.packs_rewritten,
        format_bytes(report.bytes_freed)
    )?;
    if report.orphans_removed > 0 {
        writeln!(
            out.out,
            "gc: {} uncommitted pack(s) removed from the bucket",
            report.orphans_removed
        )?;
    }
    if report.dead_bytes_kept > 0 {
        writeln!(
            out.out,
            "gc: {} of dead data left in packs less than {}% dead (--min-dead 0 reclaims it)",
            format_bytes(report.dead_bytes_kept),
            args.min_dead
        )?;
    }
    Ok(())
}

pub fn verify(repo: &Repository, args: VerifyArgs, out: &mut Output) -> Result<()> {
    let snapshots = match (&args.disk, &args.snapshot) {
        (Some(disk), Some(name)) => vec![repo.catalog().snapshot(disk, name)?],
        (Some(disk), None) => repo.catalog().snapshots(Some(disk))?,
        _ => repo.catalog().snapshots(None)?,
    };
    let bar = progress_bar(out.interactive);
    if let Some(bar) = &bar {
        bar.set_length(snapshots.len() as u64);
    }
    let mut progress = |done: usize| {
        if let Some(bar) = &bar {
            bar.set_position(done as u64);
        }
    };
    let report = if args.quick {
        snapfs::verify::verify_quick(repo.store(), &snapshots, &mut progress)?
    } else {
        snapfs::verify::verify(repo.store(), &snapshots, &mut progress)
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if args.json {
        print_json(out, &report)?;
    } else {
        for damage in &report.damage {
            writeln!(
                out.out,
                "DAMAGED {} {} offset {}: {}",
                damage.disk, damage.snapshot, damage.offset, damage.what
            )?;
        }
        for object in &report.objects {
            writeln!(out.out, "DAMAGED OBJECT {object}")?;
        }
        writeln!(
            out.out,
            "verified {} snapshot(s), {} chunks, {}: {}",
            report.snapshots,
            report.chunks_checked,
            format_bytes(report.bytes_checked),
            if report.damage.is_empty() {
                "all good".to_string()
            } else {
                format!("{} damaged chunk reference(s)", report.damage.len())
            }
        )?;
    }
    out.out.flush()?;
    if !report.damage.is_empty() || !report.objects.is_empty() {
        bail!("verify found damage in the store");
    }
    Ok(())
}

pub fn stats(repo: &Repository, args: StatsArgs, out: &mut Output) -> Result<()> {
    let stats = snapfs::stats::stats(repo)?;
    if args.json {
        return print_json(out, &stats);
    }
    writeln!(out.out, "disks:             {}", stats.disks)?;
    writeln!(out.out, "snapshots:         {}", stats.snapshots)?;
    writeln!(
        out.out,
        "logical bytes:     {}",
        format_bytes(stats.logical_bytes)
    )?;
    writeln!(
        out.out,
        "non-zero bytes:    {}",
        format_bytes(stats.nonzero_bytes)
    )?;
    writeln!(
        out.out,
        "unique bytes:      {}",
        format_bytes(stats.unique_bytes)
    )?;
    writeln!(
        out.out,
        "stored in packs:   {}",
        format_bytes(stats.stored_bytes)
    )?;
    writeln!(
        out.out,
        "index database:    {}",
        format_bytes(stats.db_bytes)
    )?;
    writeln!(out.out, "packs stored in:   {}", stats.packs_location)?;
    if let Some(cache) = &stats.pack_cache {
        writeln!(
            out.out,
            "pack cache:        {} of {} in {}",
            format_bytes(cache.used_bytes),
            format_bytes(cache.capacity_bytes),
            cache.dir.display()
        )?;
    }
    writeln!(out.out, "chunks:            {}", stats.chunks)?;
    writeln!(out.out, "packs:             {}", stats.packs)?;
    writeln!(out.out, "dedup ratio:       {:.2}", stats.dedup_ratio)?;
    writeln!(out.out, "compression ratio: {:.2}", stats.compression_ratio)?;
    Ok(())
}
