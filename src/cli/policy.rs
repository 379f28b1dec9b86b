//! `snapfs policy ...` and `snapfs prune`.

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{print_json, Output};
use snapfs::policy::prune::prune;
use snapfs::policy::Policy;
use snapfs::Repository;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create or change the policy of DISK (settings not given stay as they are)
    Set(Box<SetArgs>),
    /// Show the policy of DISK, or of every disk that has one
    Show {
        disk: Option<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Remove the policy of DISK (its automatic snapshots stay)
    Rm { disk: String },
}

#[derive(Args, Debug)]
pub struct SetArgs {
    disk: String,
    /// Hours of the day to snapshot at (0-23, local time), e.g. 2,14; none clears
    #[arg(long, value_name = "HOURS")]
    at: Option<String>,
    /// Days of the week for --at, e.g. mon,wed,fri (default: every day); none clears
    #[arg(long, value_name = "DAYS")]
    days: Option<String>,
    /// Snapshot every DURATION instead (30s, 15m, 2h, 1d); none clears
    #[arg(long, value_name = "DURATION")]
    every: Option<String>,
    /// Delete automatic snapshots older than N days (1-65536), or forever
    #[arg(long, value_name = "N")]
    retain_days: Option<String>,
    /// Keep the N newest automatic snapshots
    #[arg(long, value_name = "N")]
    keep_last: Option<String>,
    /// Keep the newest automatic snapshot of each of the last N hours
    #[arg(long, value_name = "N")]
    keep_hourly: Option<String>,
    /// Keep the newest automatic snapshot of each of the last N days
    #[arg(long, value_name = "N")]
    keep_daily: Option<String>,
    /// Keep the newest automatic snapshot of each of the last N weeks
    #[arg(long, value_name = "N")]
    keep_weekly: Option<String>,
    /// Keep the newest automatic snapshot of each of the last N months
    #[arg(long, value_name = "N")]
    keep_monthly: Option<String>,
    /// Cap on how fast this disk's snapshots read it, e.g. 50M (per second); none clears
    #[arg(long, value_name = "RATE")]
    max_rate: Option<String>,
    /// Run CMD before each automatic snapshot's read (e.g. 'virsh domfsfreeze vm1'); none clears
    #[arg(long, value_name = "CMD")]
    pre_hook: Option<String>,
    /// Run CMD after each automatic snapshot's read, whatever happened; none clears
    #[arg(long, value_name = "CMD")]
    post_hook: Option<String>,
    /// Time a hook may take (30s, 2m); none clears (default 60s)
    #[arg(long, value_name = "DURATION")]
    hook_timeout: Option<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Only this disk (default: every disk with a policy)
    disk: Option<String>,
    /// Only list what would be deleted
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(repo: &Repository, command: PolicyCommand, out: &mut Output) -> Result<()> {
    match command {
        PolicyCommand::Set(args) => {
            let mut policy = repo.catalog().policy(&args.disk)?.unwrap_or_default();
            let settings = [
                ("at", &args.at),
                ("days", &args.days),
                ("every", &args.every),
                ("retain-days", &args.retain_days),
                ("keep-last", &args.keep_last),
                ("keep-hourly", &args.keep_hourly),
                ("keep-daily", &args.keep_daily),
                ("keep-weekly", &args.keep_weekly),
                ("keep-monthly", &args.keep_monthly),
                ("max-rate", &args.max_rate),
                ("pre-hook", &args.pre_hook),
                ("post-hook", &args.post_hook),
                ("hook-timeout", &args.hook_timeout),
            ];
            for (key, value) in settings {
                if let Some(value) = value {
                    policy.set(key, value)?;
                }
            }
            repo.catalog().set_policy(&args.disk, &policy)?;
            writeln!(out.out, "policy of disk {}: {policy}", args.disk)?;
        }
        PolicyCommand::Show { disk, json } => {
            let policies: Vec<(String, Policy)> = match disk {
                Some(disk) => repo
                    .catalog()
                    .policy(&disk)?
                    .map(|p| (disk, p))
                    .into_iter()
                    .collect(),
                None => repo.catalog().policies()?,
            };
            if json {
                let rows: Vec<serde_json::Value> = policies
                    .iter()
                    .map(|(disk, policy)| {
                        serde_json::json!({"disk": disk, "text": policy.to_string(), "policy": policy})
                    })
                    .collect();
                return print_json(out, &rows);
            }
            if policies.is_empty() {
                writeln!(out.out, "no policy")?;
            }
            for (disk, policy) in policies {
                writeln!(out.out, "{disk}: {policy}")?;
            }
        }
        PolicyCommand::Rm { disk } => {
            if repo.catalog().remove_policy(&disk)? {
                writeln!(out.out, "removed the policy of disk {disk}")?;
            } else {
                writeln!(out.out, "disk {disk} had no policy")?;
            }
        }
    }
    Ok(())
}

pub fn prune_command(repo: &Repository, args: PruneArgs, out: &mut Output) -> Result<()> {
    let disks: Vec<String> = match args.disk {
        Some(disk) => {
            repo.catalog().disk(&disk)?;
            vec![disk]
        }
        None => repo
            .catalog()
            .policies()?
            .into_iter()
            .map(|(disk, _)| disk)
            .collect(),
    };
    let mut results = Vec::new();
    for disk in disks {
        results.push(prune(repo.catalog(), &disk, args.dry_run)?);
    }
    if args.json {
        return print_json(out, &results);
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let mut total = 0;
    for pruned in &results {
        for name in &pruned.snapshots {
            writeln!(out.out, "{verb} {name} of disk {}", pruned.disk)?;
            total += 1;
        }
    }
    writeln!(out.out, "prune: {total} snapshot(s) {verb}")?;
    if total > 0 && !args.dry_run {
        writeln!(
            out.out,
            "run snapfs gc to reclaim their space (a mount does it by itself)"
        )?;
    }
    Ok(())
}
