//! `snapfs rollback DISK SNAPSHOT [--to PATH] [--yes] [--json]`

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::snapshot::progress_bar;
use super::{print_json, Output};
use snapfs::image::rollback::{prepare_live_rollback, Scope};
use snapfs::image::{rollback, RollbackReport, Target, TargetKind};
use snapfs::units::format_bytes;
use snapfs::Repository;

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The disk whose snapshot to write back
    pub disk: String,
    /// The snapshot to write
    pub snapshot: String,
    /// Write to this file (created if missing) or block device instead of the disk's source
    #[arg(long, value_name = "PATH")]
    pub to: Option<PathBuf>,
    /// Do not ask (required when standard input is not a terminal, and through a mount)
    #[arg(short, long)]
    pub yes: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

impl RollbackArgs {
    /// The arguments for the mount's `/.control`, with `--to` made
    /// absolute: the mount resolves paths against its own working folder.
    pub fn control_args(&self) -> Result<Vec<String>> {
        let mut args = vec!["rollback".into(), self.disk.clone(), self.snapshot.clone()];
        if let Some(to) = &self.to {
            let to = std::path::absolute(to).with_context(|| format!("target {}", to.display()))?;
            let to = to
                .into_os_string()
                .into_string()
                .map_err(|s| anyhow::anyhow!("target {s:?} is not UTF-8"))?;
            args.extend(["--to".into(), to]);
        }
        if self.yes {
            args.push("--yes".into());
        }
        if self.json {
            args.push("--json".into());
        }
        Ok(args)
    }
}

pub fn run(repo: &Repository, args: RollbackArgs, out: &mut Output) -> Result<()> {
    let record = repo.catalog().snapshot(&args.disk, &args.snapshot)?;
    let disk = repo.catalog().disk(&args.disk)?;
    let path = args.to.clone().unwrap_or_else(|| disk.source.clone());
    if args.to.is_none() && !path.exists() {
        bail!(
            "source {} of disk {} does not exist; pass --to {} to create it",
            path.display(),
            args.disk,
            path.display()
        );
    }
    // No snapshot of the disk may read it while it is rewritten.
    let is_source = path.canonicalize().is_ok_and(|p| p == disk.source);
    let _busy = if is_source {
        Some(repo.running().start(&args.disk)?)
    } else {
        None
    };
    let target = Target::open(&path, args.to.is_some())?;
    if let Err(e) = target.check_fits(record.size) {
        target.discard();
        return Err(e.into());
    }
    if !args.yes {
        let question = format!(
            "Roll back {} ({}) to {}? This overwrites it.",
            args.disk,
            path.display(),
            args.snapshot
        );
        let refusal = format!(
            "rollback overwrites {} with snapshot {} of disk {}: pass --yes to confirm \
             (there is no terminal to ask on)",
            path.display(),
            args.snapshot,
            args.disk
        );
        match confirm(&question, &refusal, out.interactive) {
            Ok(true) => {}
            Ok(false) => {
                target.discard();
                bail!("rollback cancelled; {} is unchanged", path.display());
            }
            Err(e) => {
                target.discard();
                return Err(e);
            }
        }
    }

    // A live disk's backing rewritten outside its write path: its change
    // record and the maps tell which chunks can differ, and those are
    // marked first; failing that, the record is distrusted and every
    // chunk compared.
    let canonical = path.canonicalize().ok();
    let mut live = Vec::new();
    let mut scope = None;
    for other in repo.catalog().disks()? {
        if other.live && canonical.as_ref() == Some(&other.source) {
            let disk = repo.live_disk(&other)?;
            scope = prepare_live_rollback(repo, &disk, &record)?;
            if scope.is_none() {
                disk.record().distrust(&format!(
                    "rolled back to snapshot {} of disk {}",
                    record.name, record.disk
                ))?;
            }
            live.push(disk);
        }
    }
    let scope = match &scope {
        Some(ranges) => Scope::Chunks(ranges),
        None => Scope::Whole,
    };

    let bar = progress_bar(out.interactive);
    if let Some(bar) = &bar {
        bar.set_length(record.size);
    }
    let result = rollback(repo, &record, &target, scope, &mut |done| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = result?;
    for disk in &live {
        // The live file takes the snapshot's size too.
        if disk.size() != record.size {
            disk.set_len(record.size)?;
        }
    }
    if args.json {
        return print_json(out, &report);
    }
    print_report(out, &report)
}

/// Asks a person at a terminal; refuses when nobody can answer.
fn confirm(question: &str, refusal: &str, interactive: bool) -> Result<bool> {
    let stdin = std::io::stdin();
    if !interactive || !stdin.is_terminal() {
        bail!("{refusal}");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn print_report(out: &mut Output, r: &RollbackReport) -> Result<()> {
    let target = r.target.display();
    writeln!(
        out.out,
        "rolled back {target} to snapshot {} of disk {} ({}) in {:.1} s",
        r.snapshot,
        r.disk,
        format_bytes(r.size),
        r.elapsed_ms as f64 / 1000.0
    )?;
    writeln!(
        out.out,
        "compared {} chunks of {}: wrote {} ({}), punched {} as holes, left {} as they were",
        r.chunks_compared,
        format_bytes(r.chunk_size),
        r.chunks_written,
        format_bytes(r.bytes_written),
        r.holes_punched,
        r.chunks_compared - r.chunks_written - r.holes_punched
    )?;
    if r.only_changed {
        writeln!(
            out.out,
            "compared only the chunks the live disk's change record and the snapshots' maps name"
        )?;
    }
    match r.target_kind {
        TargetKind::File if r.previous_size > r.size => writeln!(
            out.out,
            "truncated {target} from {} to {}, the snapshot's size",
            format_bytes(r.previous_size),
            format_bytes(r.size)
        )?,
        TargetKind::File if r.previous_size < r.size => writeln!(
            out.out,
            "grew {target} from {} to {}, the snapshot's size",
            format_bytes(r.previous_size),
            format_bytes(r.size)
        )?,
        TargetKind::BlockDevice if r.untouched_tail > 0 => writeln!(
            out.out,
            "{target} is larger than the snapshot: its last {} were left as they were",
            format_bytes(r.untouched_tail)
        )?,
        _ => {}
    }
    Ok(())
}
