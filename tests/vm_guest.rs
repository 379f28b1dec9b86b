//! A real VM (QEMU under TCG, the host's Debian kernel, a busybox
//! initramfs; see tests/common/vm.rs) runs the fsync-ordered write workload
//! on an ext4 image, and the host checks its crash-consistency invariant on
//! what the image holds afterwards: after a clean poweroff, and after qemu
//! is killed with SIGKILL while the guest writes. These pin down the harness
//! that the live-disk and torn-snapshot tests build on; two more check the
//! harness itself (commands, deadlines, drive options) and that the checker
//! does catch a broken invariant.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::vm::{
    check_image, check_workload, e2fsck_clean, need_vm, workload_file, Aio, Cache, Disk, Guest,
    WORKLOAD_DIR,
};
use common::Ext4Image;

const IMAGE_SIZE: u64 = 128 << 20;
/// How long the workload runs (TCG writes a few dozen files a second).
const WORKLOAD_TIME: Duration = Duration::from_secs(5);

/// A fresh ext4 image (mkfs.ext4 on a sparse file) in a temporary folder.
fn fresh_image() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("snapfs-vm-test-")
        .tempdir()
        .expect("temporary folder for the image");
    let image = dir.path().join("disk.img");
    Ext4Image::create(&image, IMAGE_SIZE);
    (dir, image)
}

fn boot(image: &std::path::Path) -> Guest {
    let guest = Guest::boot(&[Disk::new(image)]);
    eprintln!("guest booted in {:.1?}", guest.boot_time);
    guest
}

#[test]
fn workload_survives_clean_poweroff() {
    if !need_vm("workload_survives_clean_poweroff") {
        return;
    }
    let (_dir, image) = fresh_image();
    let mut guest = boot(&image);
    guest.run("mount -t ext4 /dev/vda /mnt");
    guest.start_workload("/mnt");
    std::thread::sleep(WORKLOAD_TIME);
    let done = guest.stop_workload();
    assert!(done > 0, "the workload wrote no file in {WORKLOAD_TIME:?}");
    guest
        .poweroff()
        .unwrap_or_else(|why| panic!("clean poweroff: {why}"));
    // Unmounted cleanly: the image itself needs no journal replay.
    e2fsck_clean(&image).unwrap_or_else(|why| panic!("{why}"));
    let verified = check_image(&image).unwrap_or_else(|why| panic!("{why}"));
    eprintln!("{done} files written, {verified} verified");
    assert_eq!(verified, done, "every file the workload completed is there");
}

#[test]
fn workload_survives_sigkill_of_qemu() {
    if !need_vm("workload_survives_sigkill_of_qemu") {
        return;
    }
    let (_dir, image) = fresh_image();
    let mut guest = boot(&image);
    guest.run("mount -t ext4 /dev/vda /mnt");
    guest.start_workload("/mnt");
    let started = Instant::now();
    let first = guest.wait_workload(3, Duration::from_secs(60));
    std::thread::sleep(WORKLOAD_TIME.saturating_sub(started.elapsed()));
    let before = guest.workload_progress();
    assert!(
        before > first,
        "the workload does not advance ({first} -> {before})"
    );
    let pid = guest.pid().expect("qemu runs");
    guest.kill();
    assert!(
        common::mount::wait_pid_gone(pid, Duration::from_secs(10)),
        "qemu (pid {pid}) still runs after kill"
    );
    let verified = check_image(&image).unwrap_or_else(|why| panic!("{why}"));
    eprintln!("the guest had logged {before} before the kill; {verified} files verified");
    // The guest logged `before` only after the log's fsync for before - 1
    // returned: that much was durable when qemu died.
    assert!(
        verified + 1 >= before,
        "fsynced files lost: logged {before} before the kill, only {verified} survived"
    );
}

#[test]
fn guest_commands_deadlines_and_drive_options() {
    if !need_vm("guest_commands_deadlines_and_drive_options") {
        return;
    }
    let (_dir, image) = fresh_image();
    let second = image.with_file_name("second.img");
    std::fs::File::create(&second)
        .and_then(|f| f.set_len(8 << 20))
        .expect("create second image");
    let mut guest = Guest::boot(&[
        Disk::new(&image).aio(Aio::Native),
        Disk::new(&second)
            .cache(Cache::Writeback)
            .locking(false)
            .read_only(),
    ]);
    eprintln!("guest with two disks booted in {:.1?}", guest.boot_time);
    let pid = guest.pid().expect("qemu runs");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("qemu's command line");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    for option in [
        "cache=none,aio=native ",
        "cache=writeback,aio=threads,readonly=on,file.locking=off ",
        "-accel tcg ",
        "-nic none ",
    ] {
        assert!(cmdline.contains(option), "no {option:?} in {cmdline}");
    }
    // Quotes, several lines, stderr and the exit status come back as sent.
    let (status, out) = guest
        .try_run(
            "echo \"it's\" 'a \"quote\"'\necho err >&2\nexit 3",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|why| panic!("{why}"));
    assert_eq!((status, out.as_str()), (3, "it's a \"quote\"\nerr\n"));
    assert_eq!(guest.run("cat /sys/block/vdb/ro"), "1\n");
    assert_eq!(
        guest.run("cat /sys/block/vdb/size"),
        format!("{}\n", (8 << 20) / 512)
    );
    // A command past its deadline fails the call, and the next answer is
    // still matched to its own command.
    let late = guest.try_run("sleep 3; echo late", Duration::from_secs(1));
    assert!(late.is_err(), "a 3 s command met a 1 s deadline: {late:?}");
    assert_eq!(guest.run("echo next"), "next\n");
    guest.run("mount -t ext4 /dev/vda /mnt && echo hello > /mnt/hello");
    guest.poweroff().unwrap_or_else(|why| panic!("{why}"));
    assert!(guest.pid().is_none(), "qemu still runs after poweroff");
    e2fsck_clean(&image).unwrap_or_else(|why| panic!("{why}"));
}

/// The checker on a plain folder: a complete run passes, and each way the
/// invariant can break is reported.
#[test]
fn checker_catches_broken_invariant() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let root = dir.path();
    let files = root.join(WORKLOAD_DIR);
    std::fs::create_dir(&files).expect("create workload folder");
    let write = |name: &str, data: &[u8]| std::fs::write(files.join(name), data).expect("write");
    let mut log = String::new();
    for n in 1..=5 {
        write(&format!("f{n}"), &workload_file(n));
        log.push_str(&format!("{n}\n"));
    }
    // f6 written but not logged yet: any content is allowed.
    write("f6", b"half");
    write("log", log.as_bytes());
    assert_eq!(check_workload(root), Ok(5));

    let mut short = workload_file(3);
    short.truncate(short.len() - 1);
    write("f3", &short);
    let err = check_workload(root).expect_err("a truncated file passed");
    assert!(err.contains("f3 differs"), "{err}");
    write("f3", &workload_file(3));

    std::fs::remove_file(files.join("f4")).expect("remove f4");
    let err = check_workload(root).expect_err("a missing file passed");
    assert!(err.contains("4 is logged"), "{err}");
    write("f4", &workload_file(4));

    write("log", b"1\n2\n4\n");
    let err = check_workload(root).expect_err("a gap in the log passed");
    assert!(err.contains("line 3"), "{err}");
    write("log", b"1\n2");
    let err = check_workload(root).expect_err("a torn log passed");
    assert!(err.contains("newline"), "{err}");
    write("log", b"");
    assert_eq!(check_workload(root), Ok(0));
}
