//! `snapfs mount` and `snapfs umount`: the order in which a mount starts
//! and stops. Each piece of plumbing has a file of its own: `daemon`
//! (`--daemon` and its readiness pipe), `signals`, `unmount`, `readahead`
//! (sysfs) and `control_server` (the mount side of `/.control`).
//!
//! The mount runs in the foreground by default; `--daemon` starts a copy of
//! this command in a new session and returns once that copy serves the
//! mount (it tells us through a pipe), so a script can use the mount right
//! after `snapfs mount --daemon` returns. Under systemd (`NOTIFY_SOCKET`
//! set) the process that serves says so at the same moment, and again when
//! it begins to stop.

mod control_server;
mod daemon;
mod notify;
mod readahead;
mod signals;
mod unmount;

use super::snapshot::HookArgs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use fuser::{Config, MountOption, SessionACL};

use super::open_store;
use super::remote::mountpoint_of;
use control_server::control_handler;
use daemon::{report_ready, start_daemon};
use notify::Notifier;
use readahead::raise_readahead;
use signals::{block_signals, wait_for_end};
use snapfs::fs::{MountOptions, SnapFs};
use snapfs::fuse::FuseAdapter;
use snapfs::policy::runner;
use snapfs::store::lock;
use snapfs::units::parse_size;
use snapfs::Repository;
use unmount::{dead_mount_hint, mount_server_pid, unmount_path};

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An empty folder to mount on
    mountpoint: PathBuf,
    /// Register a disk on the way (repeatable)
    #[arg(long = "disk", value_name = "NAME=SOURCE")]
    disks: Vec<String>,
    /// Mount options, comma separated: allow_other, allow_root, default_permissions is always on
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Memory for decompressed chunks
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    cache_size: u64,
    /// Threads serving filesystem requests
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Detach once the mount serves; logs go to STORE/snapfs.log
    #[arg(long)]
    daemon: bool,
    /// Default cap on how fast snapshots read their disk, per second (a policy's max-rate wins)
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    max_rate: Option<u64>,
    /// Default hooks around every snapshot's read (a policy's own hooks win)
    #[command(flatten)]
    hooks: HookArgs,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// Where the store is mounted
    mountpoint: PathBuf,
}

pub fn mount(dir: &Path, args: MountArgs) -> Result<()> {
    // Out of the environment before any thread starts, and before hooks
    // could inherit it.
    let notifier = Notifier::take_from_env();
    if let Some(mnt) = mountpoint_of(dir)? {
        bail!(
            "store {} is already mounted at {}",
            dir.display(),
            mnt.display()
        );
    }
    let ready_fd = daemon::ready_fd();
    if args.daemon && ready_fd.is_none() {
        return start_daemon(notifier.as_ref());
    }
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    match std::fs::metadata(&mountpoint) {
        Ok(meta) if meta.is_dir() => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            bail!(
                "cannot mount on {}{}",
                mountpoint.display(),
                dead_mount_hint(&mountpoint)
            )
        }
        _ => bail!("mountpoint {} is not a folder", mountpoint.display()),
    }
    let config = fuse_config(&args)?;

    // Signals are taken by sigwait in this thread: block them before any
    // thread starts so that every thread inherits the mask.
    let signals = block_signals();
    let repo = open_store(dir, Some(args.cache_size))?;
    let store = repo.store();
    let store_root = store.root().canonicalize()?;
    if mountpoint.starts_with(&store_root) || store_root.starts_with(&mountpoint) {
        bail!(
            "the mountpoint {} and the store {} must not contain each other",
            mountpoint.display(),
            store_root.display()
        );
    }
    register_disks(&repo, &args.disks)?;

    let cancel = Arc::new(AtomicBool::new(false));
    let fs = SnapFs::new(
        repo.clone(),
        control_handler(repo.clone()),
        MountOptions {
            cancel: Some(cancel.clone()),
            max_rate: args.max_rate,
            hooks: args.hooks.hooks(),
            ..MountOptions::default()
        },
    );
    let adapter = FuseAdapter::new(fs);
    let policies = runner::spawn(adapter.fs().service().clone(), cancel.clone())
        .context("cannot start the policy runner")?;
    let session = fuser::Session::new(adapter, &mountpoint, &config).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::ENOTCONN) {
            dead_mount_hint(&mountpoint)
        } else {
            String::new()
        };
        anyhow::Error::new(e).context(format!("cannot mount on {}{hint}", mountpoint.display()))
    })?;
    let session = session.spawn().context("cannot start the filesystem")?;
    store.announce_mount(Some(&mountpoint))?;
    raise_readahead(&mountpoint);
    log::info!(
        "serving {} on {}",
        store_root.display(),
        mountpoint.display()
    );
    // systemd first: once `--daemon` returns, the message is there too.
    if let Some(notifier) = &notifier {
        notifier.ready(&store_root, &mountpoint);
    }
    if let Some(fd) = ready_fd {
        report_ready(fd, &store_root);
    }

    let stop_reason = wait_for_end(&signals, &session);
    if let Some(notifier) = &notifier {
        notifier.stopping(&mountpoint);
    }
    cancel.store(true, Ordering::Relaxed);
    let mut join = true;
    if let Some(signal) = stop_reason {
        log::info!("signal {signal}: unmounting {}", mountpoint.display());
        if unmount_path(&mountpoint, false).is_err() {
            // Files are open in the mount (a reader, a loop device, a
            // snapshot being written). Exiting now would leave a dead
            // mount behind them: leave the namespace instead, serve them
            // until they close, and stop at once on a second signal.
            log::warn!(
                "{} is busy: detached; serving open files until they close (signal again to stop now)",
                mountpoint.display()
            );
            if let Err(e) = unmount_path(&mountpoint, true) {
                log::warn!("cannot detach {}: {e}", mountpoint.display());
            }
            if let Some(signal) = wait_for_end(&signals, &session) {
                log::warn!("signal {signal}: stopping with files still open");
                join = false;
            }
        }
    }
    if join {
        if let Err(e) = session.join() {
            log::warn!("filesystem session: {e}");
        }
    }
    let _ = policies.join();
    store.flush()?;
    store.announce_mount(None)?;
    log::info!("unmounted {}", mountpoint.display());
    Ok(())
}

fn fuse_config(args: &MountArgs) -> Result<Config> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("snapfs".into()),
        MountOption::Subtype("snapfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    for option in args.options.iter().flat_map(|o| o.split(',')) {
        match option.trim() {
            "" => {}
            "allow_other" => config.acl = SessionACL::All,
            "allow_root" => config.acl = SessionACL::RootAndOwner,
            "ro" | "rw" | "default_permissions" => {}
            "noatime" => config.mount_options.push(MountOption::NoAtime),
            "noexec" => config.mount_options.push(MountOption::NoExec),
            other => bail!(
                "unknown mount option {other:?} (known: allow_other, allow_root, noatime, noexec)"
            ),
        }
    }
    config.n_threads = Some(args.threads as usize);
    Ok(config)
}

fn register_disks(repo: &Repository, disks: &[String]) -> Result<()> {
    for spec in disks {
        let Some((name, source)) = spec.split_once('=') else {
            bail!("--disk {spec:?}: expected NAME=SOURCE");
        };
        match repo.catalog().disk(name) {
            Ok(existing) => {
                let wanted = Path::new(source).canonicalize().ok();
                if wanted.as_deref() != Some(existing.source.as_path()) {
                    bail!(
                        "disk {name} is registered with source {}, not {source}",
                        existing.source.display()
                    );
                }
            }
            Err(_) => {
                repo.catalog().add_disk(name, Path::new(source))?;
            }
        }
    }
    Ok(())
}

pub fn umount(dir: &Path, args: UmountArgs) -> Result<()> {
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    // The serving process: from the mount itself, else from the store's lock.
    let server = mount_server_pid(&mountpoint).or_else(|| {
        lock::read_holder(dir)
            .filter(|h| h.mountpoint.as_deref() == Some(&mountpoint))
            .map(|h| h.pid)
    });
    if let Err(err) = unmount_path(&mountpoint, false) {
        bail!("cannot unmount {}: {err}", mountpoint.display());
    }
    // Wait for the mount process to flush the store and end.
    if let Some(pid) = server {
        if !unmount::wait_ended(pid, Duration::from_secs(60)) {
            bail!("unmounted, but the mount process (pid {pid}) has not ended yet");
        }
    }
    println!("unmounted {}", mountpoint.display());
    Ok(())
}
