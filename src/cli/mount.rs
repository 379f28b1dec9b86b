//! `snapfs mount` and `snapfs umount`.
//!
//! The mount runs in the foreground by default; `--daemon` starts a copy of
//! this command in a new session and returns once that copy serves the
//! mount (it tells us through a pipe), so a script can use the mount right
//! after `snapfs mount --daemon` returns.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use fuser::{Config, MountOption, SessionACL};

use super::remote::mountpoint_of;
use super::{execute, open_store, Cli, Output};
use snapfs::control;
use snapfs::fs::{ControlHandler, MountOptions, SnapFs};
use snapfs::fuse::FuseAdapter;
use snapfs::policy::runner;
use snapfs::store::lock;
use snapfs::units::parse_size;
use snapfs::Repository;

/// Set in the daemon's environment: the fd to report readiness on.
const READY_FD_ENV: &str = "SNAPFS_READY_FD";

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
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// Where the store is mounted
    mountpoint: PathBuf,
}

pub fn mount(dir: &Path, args: MountArgs) -> Result<()> {
    if let Some(mnt) = mountpoint_of(dir) {
        bail!(
            "store {} is already mounted at {}",
            dir.display(),
            mnt.display()
        );
    }
    let ready_fd = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    if args.daemon && ready_fd.is_none() {
        return start_daemon();
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
    if let Some(fd) = ready_fd {
        report_ready(fd, &store_root);
    }

    let stop_reason = wait_for_end(&signals, &session);
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

/// A mount whose process was killed stays (ENOTCONN) until someone
/// unmounts it: say so, and how.
fn dead_mount_hint(mountpoint: &Path) -> String {
    format!(
        " (a dead mount is in the way, its process gone; `snapfs umount {}` clears it)",
        mountpoint.display()
    )
}

/// The kernel offers FUSE only 128 KiB of read-ahead at init; a deeper
/// window keeps more requests in flight for sequential readers. Best effort:
/// it needs root, and the mount works without it.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&path, "1024") {
        log::debug!("cannot raise read-ahead through {path}: {e}");
    }
}

/// Unmounts `mountpoint` (lazily: detaches it even while files are open).
/// Not root: fusermount3 may unmount our own; quietly, since the caller
/// says why in one line. The error is umount2's.
fn unmount_path(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let mut fusermount = std::process::Command::new("fusermount3");
    fusermount.arg("-u").arg("-q");
    if lazy {
        fusermount.arg("-z");
    }
    let fallback = fusermount
        .arg(mountpoint)
        .stderr(std::process::Stdio::null())
        .status();
    if fallback.is_ok_and(|s| s.success()) {
        Ok(())
    } else {
        Err(err)
    }
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

/// Runs `.control` requests with the same code as local commands.
fn control_handler(repo: Arc<Repository>) -> ControlHandler {
    Box::new(move |request: &[u8]| run_control_request(&repo, request).encode())
}

fn run_control_request(repo: &Repository, request: &[u8]) -> control::Response {
    let args = match control::decode_request(request) {
        Ok(args) => args,
        Err(e) => {
            return control::Response::refused(
                2,
                format!("snapfs: malformed control request: {e}\n"),
            )
        }
    };
    let argv =
        std::iter::once(OsString::from("snapfs")).chain(args.into_iter().map(OsString::from));
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => return control::Response::refused(e.exit_code(), e.render().to_string()),
    };
    let mut stdout = Vec::new();
    let result = execute(
        repo,
        cli.command,
        &mut Output {
            out: &mut stdout,
            interactive: false,
        },
    );
    let (code, stderr) = match result {
        Ok(()) => (0, String::new()),
        Err(e) => (1, format!("snapfs: {}\n", super::error_line(&e))),
    };
    control::Response {
        code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
    }
}

fn block_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for a signal (returned) or for the session to end by itself
/// (None: someone ran umount).
fn wait_for_end(signals: &libc::sigset_t, session: &fuser::BackgroundSession) -> Option<i32> {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    loop {
        let signal = unsafe { libc::sigtimedwait(signals, std::ptr::null_mut(), &timeout) };
        if signal > 0 {
            return Some(signal);
        }
        if session.guard.is_finished() {
            return None;
        }
    }
}

/// In the daemon: tell the waiting parent we serve, then send our stderr
/// (the logs) to the store's log file, since the terminal may go away.
fn report_ready(fd: i32, store_root: &Path) {
    let mut ready = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = std::io::Write::write_all(&mut ready, b"ready\n");
    drop(ready);
    let log_path = store_root.join("snapfs.log");
    if let Ok(log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(snapfs::modes::PRIVATE_FILE)
        .open(&log_path)
    {
        use std::os::unix::io::AsRawFd;
        unsafe {
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

/// Starts this same command detached and returns once it serves.
fn start_daemon() -> Result<()> {
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    let exe = std::env::current_exe().context("finding the snapfs binary")?;
    let mut command = std::process::Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env(READY_FD_ENV, write_fd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // The daemon starts with the user's umask, as this command did.
    let user_umask = snapfs::modes::user_umask();
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            libc::close(read_fd);
            if let Some(mask) = user_umask {
                libc::umask(mask as libc::mode_t);
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("starting the mount daemon")?;
    unsafe { libc::close(write_fd) };
    let mut reader = unsafe { std::fs::File::from_raw_fd(read_fd) };
    let mut answer = String::new();
    let _ = reader.read_to_string(&mut answer);
    if answer.starts_with("ready") {
        println!("snapfs mount running as pid {}", child.id());
        return Ok(());
    }
    let status = child.wait()?;
    bail!("the mount daemon failed to start ({status})")
}

/// The pid a snapfs mount names in its root's `user.snapfs.pid` xattr.
fn mount_server_pid(mountpoint: &Path) -> Option<u32> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).ok()?;
    let name = c"user.snapfs.pid";
    let mut value = [0u8; 32];
    let len = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if len <= 0 {
        return None;
    }
    std::str::from_utf8(&value[..len as usize])
        .ok()?
        .trim()
        .parse()
        .ok()
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
        // A zombie has ended; only its parent can reap it.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive() {
            bail!("unmounted, but the mount process (pid {pid}) has not ended yet");
        }
    }
    println!("unmounted {}", mountpoint.display());
    Ok(())
}
