//! Running commands through a mount that holds the store: a second open of
//! the database is never attempted while a mount runs.
//!
//! - `snapshot create` writes the name into `DISK/.create`, as a script
//!   would, and follows the disk folder's `user.snapfs.status` xattr (the
//!   JSON form of `.status`, see `snapfs::fs::status`);
//! - `export` reads the snapshot's image file (sparse: SEEK_DATA/SEEK_HOLE);
//! - everything else goes through `/.control`: the client writes its
//!   arguments as a JSON array, the mount runs them through the same code as
//!   a local command, and the client reads back the response (the format
//!   is `snapfs::control`'s).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::disk::DiskCommand;
use super::snapshot::{progress_bar, SnapshotCommand};
use super::store_cmds::{open_export_output, ExportArgs};
use super::Command;
use snapfs::catalog::names::{check_any_snapshot_name, check_disk_name, check_snapshot_name};
use snapfs::control;
use snapfs::fs::status::{Outcome, StatusReport};
use snapfs::snapshot::source::next_data_region;
use snapfs::store::lock;
use snapfs::units::format_bytes;

/// How long a command waits for a mount that is going away (detached by
/// `umount -l`, or its process ending) to let go of the store.
const ENDING_WAIT: Duration = Duration::from_secs(5);

/// The pid and mountpoint that the lock of the store at `dir` names, if a
/// live mount process holds it.
fn mount_holder(dir: &Path) -> Option<(u32, PathBuf)> {
    if !lock::is_locked(dir) {
        return None;
    }
    let holder = lock::read_holder(dir)?;
    Some((holder.pid, holder.mountpoint?))
}

/// Whether the mount at `mnt` is served by process `pid`. The lock outlives
/// the mount while its process ends: after `umount -l` the path shows the
/// folder underneath (no xattr), a dead mount answers ENOTCONN.
fn serves(mnt: &Path, pid: u32) -> bool {
    match read_xattr(mnt, "user.snapfs.pid") {
        Ok(value) => {
            std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                == Some(pid)
        }
        Err(e) => !matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN)
                | Some(libc::ECONNABORTED)
                | Some(libc::ENODATA)
                | Some(libc::ENOTSUP)
                | Some(libc::ENOENT)
                | Some(libc::ENOTDIR)
        ),
        // Anything else (EACCES): a mount is there; the command through it
        // says what is wrong.
    }
}

/// The mountpoint of the mount that serves the store at `dir`, if any. A
/// mount that is going away gets a few seconds to let go of the store
/// (then the caller opens the store itself); if it still holds the store,
/// this fails with one line saying so.
pub fn mountpoint_of(dir: &Path) -> Result<Option<PathBuf>> {
    let deadline = std::time::Instant::now() + ENDING_WAIT;
    loop {
        let Some((pid, mnt)) = mount_holder(dir) else {
            return Ok(None);
        };
        if serves(&mnt, pid) {
            return Ok(Some(mnt));
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "the mount at {} is ending (pid {pid}) and still holds the store; \
                 try again once it has ended",
                mnt.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(mnt: &Path, command: Command) -> Result<()> {
    match command {
        // `.create` takes a bare name: a rate cap goes through /.control.
        Command::Snapshot(SnapshotCommand::Create {
            disk,
            name,
            max_rate: None,
            hooks,
            no_wait,
        }) if !hooks.any() => create(mnt, &disk, &name, no_wait),
        Command::Snapshot(SnapshotCommand::Create { no_wait: true, .. }) => bail!(
            "--no-wait goes through the disk's .create, which takes no rate cap or hooks: \
             give those to the mount (snapfs mount --max-rate, --pre-hook) or leave --no-wait out"
        ),
        Command::Export(args) => export(mnt, args),
        Command::Rollback(args) => control(mnt, args.control_args()?).map_err(|e| {
            let target = args
                .to
                .as_deref()
                .map_or(format!("disk {}", args.disk), |p| p.display().to_string());
            cut_off(
                e,
                format!(
                    "rollback to snapshot {} was cut off: {target} may be half rolled back \
                     (neither the snapshot nor its former content); roll back again",
                    args.snapshot
                ),
            )
        }),
        // The mount resolves paths against its own working folder, not ours.
        Command::Disk(DiskCommand::Add { name, source, live }) => {
            let mut args = vec!["disk".into(), "add".into(), name, absolute(&source)?];
            if live {
                args.push("--live".into());
            }
            control(mnt, args)
        }
        Command::Disk(DiskCommand::Create {
            name,
            size,
            backing,
        }) => {
            let mut args = vec!["disk".into(), "create".into(), name];
            args.extend(["--size".into(), size.to_string()]);
            if let Some(backing) = backing {
                args.extend(["--backing".into(), absolute(&backing)?]);
            }
            control(mnt, args)
        }
        _ => {
            let args = std::env::args_os()
                .skip(1)
                .map(|a| a.into_string())
                .collect::<Result<Vec<String>, _>>()
                .map_err(|a| anyhow::anyhow!("argument {a:?} is not UTF-8"))?;
            let what = format!("snapfs {} may not have been done", command_words(&args));
            control(mnt, args).map_err(|e| cut_off(e, what))
        }
    }
}

/// `path` made absolute: the mount resolves paths against its own working
/// folder, not ours.
fn absolute(path: &Path) -> Result<String> {
    let absolute = std::path::absolute(path).with_context(|| format!("path {}", path.display()))?;
    absolute
        .into_os_string()
        .into_string()
        .map_err(|s| anyhow::anyhow!("path {s:?} is not UTF-8"))
}

/// The command's first words (`snapshot rename`, `gc`), for messages.
fn command_words(args: &[String]) -> String {
    let mut words = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--store" {
            args.next();
        } else if arg.starts_with('-') || words.len() == 2 {
            break;
        } else {
            words.push(arg.as_str());
        }
    }
    words.join(" ")
}

/// Says what a command cut off by the end of the mount may have left.
fn cut_off(e: anyhow::Error, consequence: String) -> anyhow::Error {
    if e.is::<MountGone>() {
        e.context(consequence)
    } else {
        e
    }
}

/// The mount's process ended while it ran a command for us (killed or
/// crashed): the command may or may not have taken effect.
#[derive(Debug)]
struct MountGone {
    mnt: PathBuf,
}

impl std::fmt::Display for MountGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the mount at {} ended before it answered (its process is gone; \
             `snapfs umount {}` clears it)",
            self.mnt.display(),
            self.mnt.display()
        )
    }
}

impl std::error::Error for MountGone {}

fn is_mount_gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
    )
}

/// Names a lost mount as such instead of by its errno.
fn mount_error(mnt: &Path, e: std::io::Error, doing: String) -> anyhow::Error {
    if is_mount_gone(&e) {
        return mount_gone(mnt);
    }
    anyhow::Error::new(e).context(doing)
}

fn mount_gone(mnt: &Path) -> anyhow::Error {
    MountGone {
        mnt: mnt.to_path_buf(),
    }
    .into()
}

fn control(mnt: &Path, args: Vec<String>) -> Result<()> {
    let path = mnt.join(".control");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| {
            mount_error(
                mnt,
                e,
                format!("cannot reach the mount at {}", mnt.display()),
            )
        })?;
    file.write_all(&control::encode_request(&args))
        .map_err(|e| mount_error(mnt, e, format!("writing {}", path.display())))?;
    // The response is read from offset 0 of the same handle.
    let mut response = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read_at(&mut buf, response.len() as u64)
            .map_err(|e| mount_error(mnt, e, format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let response =
        control::Response::decode(&response).context("the mount sent a malformed response")?;
    print!("{}", response.stdout);
    eprint!("{}", response.stderr);
    std::io::stdout().flush()?;
    if response.code != 0 {
        std::process::exit(response.code);
    }
    Ok(())
}

/// The folder of `disk` in the mount, after checking the name so that it
/// cannot leave the mount.
fn disk_folder(mnt: &Path, disk: &str) -> Result<PathBuf> {
    check_disk_name(disk)?;
    let folder = mnt.join(disk);
    match std::fs::metadata(&folder) {
        Ok(meta) if meta.is_dir() => Ok(folder),
        Err(e) if is_mount_gone(&e) => Err(mount_gone(mnt)),
        _ => bail!("no disk named {disk}"),
    }
}

/// The value of xattr `name` of `path`.
pub fn read_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let name = std::ffi::CString::new(name)?;
    // The value may grow between the size probe and the read: retry.
    for _ in 0..4 {
        let len = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut value = vec![0u8; len as usize + 1024];
        let len = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            return Ok(value);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}

/// The disk folder's `user.snapfs.status`: the declared, machine-readable
/// form of `.status`.
fn disk_status(folder: &Path) -> Option<StatusReport> {
    let value = read_xattr(folder, "user.snapfs.status").ok()?;
    serde_json::from_slice(&value).ok()
}

/// Takes a snapshot through `.create`. The write returns when the
/// snapshot is stored, or for a live disk at its freeze: then, unless
/// `no_wait`, this follows `.status` until the mount has stored it.
fn create(mnt: &Path, disk: &str, name: &str, no_wait: bool) -> Result<()> {
    check_snapshot_name(name)?;
    let folder = disk_folder(mnt, disk)?;
    let live = folder.join(snapfs::catalog::names::LIVE_FILE).exists();
    if no_wait && !live {
        bail!(
            "--no-wait: disk {disk} is not live, so its snapshot is the read itself; \
             leave --no-wait out"
        );
    }
    let running = |folder: &Path| {
        disk_status(folder)
            .and_then(|s| s.running)
            .filter(|r| r.snapshot == name)
    };
    let done = AtomicBool::new(false);
    let started = std::time::Instant::now();
    let result = std::thread::scope(|scope| {
        if let Some(bar) = progress_bar(true) {
            bar.set_length(100);
            let (done, folder) = (&done, &folder);
            scope.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let percent = running(folder).map(|r| r.percent);
                    if let Some(percent) = percent {
                        bar.set_position(percent as u64);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                bar.finish_and_clear();
            });
        }
        let result = OpenOptions::new()
            .write(true)
            .open(folder.join(".create"))
            .and_then(|mut file| file.write_all(format!("{name}\n").as_bytes()));
        if result.is_ok() && !no_wait {
            // A live disk's .create returns at the freeze: the mount is
            // storing it now.
            while running(&folder).is_some() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        done.store(true, Ordering::Relaxed);
        result
    });
    if no_wait && result.is_ok() {
        println!(
            "snapshot {name} of disk {disk} frozen; the mount is storing it \
             (its file reads it already; see {}/.status)",
            folder.display()
        );
        return Ok(());
    }
    let status = disk_status(&folder);
    let outcome = status.as_ref().and_then(|s| s.last_about(name).cloned());
    match result {
        // Frozen, then stored (or not) while we followed .status.
        Ok(()) if live => match outcome {
            Some(o) if o.outcome == Outcome::Accomplished => {
                println!("{}", o.line);
                Ok(())
            }
            Some(o) => bail!(
                "snapshot {name} of disk {disk} failed after its freeze: {}",
                o.why.unwrap_or(o.line)
            ),
            None if status.is_none() => Err(mount_gone(mnt).context(format!(
                "snapshot {name} of disk {disk} was frozen but may not have been stored"
            ))),
            None => bail!("snapshot {name} of disk {disk}: .status tells no outcome"),
        },
        Ok(()) => {
            let secs = started.elapsed().as_secs_f64();
            match outcome {
                Some(outcome) => println!("{}", outcome.line),
                None => println!("snapshot {name} of disk {disk} accomplished in {secs:.1} s"),
            }
            Ok(())
        }
        Err(e) if is_mount_gone(&e) => Err(mount_gone(mnt).context(format!(
            "snapshot {name} of disk {disk} may not have been taken"
        ))),
        Err(e) => {
            let why = outcome.and_then(|o| o.why).unwrap_or_else(|| e.to_string());
            bail!("snapshot {name} of disk {disk} failed: {why}")
        }
    }
}

fn export(mnt: &Path, args: ExportArgs) -> Result<()> {
    check_any_snapshot_name(&args.snapshot)?;
    let path = disk_folder(mnt, &args.disk)?.join(&args.snapshot);
    let image = File::open(&path).map_err(|e| {
        if is_mount_gone(&e) {
            mount_gone(mnt)
        } else {
            anyhow::anyhow!("no snapshot {} of disk {}", args.snapshot, args.disk)
        }
    })?;
    let size = image.metadata()?.len();
    let failed = |e: std::io::Error| {
        cut_off(
            mount_error(mnt, e, "export failed".into()),
            format!("export to {} is incomplete", args.output.display()),
        )
    };
    if args.output.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
        std::io::copy(&mut (&image), &mut out).map_err(failed)?;
        out.flush()?;
        return Ok(());
    }
    let (out, is_regular) = open_export_output(&args.output)?;
    if is_regular {
        copy_sparse(&image, &out, size).map_err(failed)?;
        out.set_len(size)?;
        out.sync_all()?;
    } else {
        std::io::copy(&mut (&image), &mut (&out)).map_err(failed)?;
    }
    eprintln!(
        "exported {} of disk {} ({}) to {}",
        args.snapshot,
        args.disk,
        format_bytes(size),
        args.output.display()
    );
    Ok(())
}

/// Copies only the data regions that SEEK_DATA/SEEK_HOLE report.
fn copy_sparse(from: &File, to: &File, size: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while let Some((data, end)) = next_data_region(from, pos, size) {
        let mut at = data;
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            let n = from.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            to.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        pos = end;
    }
    Ok(())
}
