//! QEMU's image locking through the live file. QEMU takes byte-range
//! locks (fcntl OFD locks) on a disk it opens, so that a second QEMU cannot
//! open a disk another one writes: through `MNT/DISK/live` that must hold as
//! it does on the backing file, or two guests could write one disk. And the
//! lock must end with its QEMU, also with one killed by SIGKILL, or a
//! crashed guest could never be started again.

mod common;

use std::path::{Path, PathBuf};

use common::mount::Mount;
use common::vm::{need_vm, Cache, Disk, Guest, GuestOptions};
use common::{ok, snapfs, Ext4Image};
use tempfile::TempDir;

const DISK: &str = "vm/sys";

/// A store with one live disk (an ext4 made on its backing) and a mount.
/// The mount drops (unmounts) before the folder that holds the store.
struct Fixture {
    mount: Mount,
    _tmp: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("snapfs-live-locking-")
            .tempdir()
            .expect("temp dir");
        let store = tmp.path().join("store");
        ok(snapfs(&store).args(["init", "--chunk-size", "64K"]));
        let backing = tmp.path().join("vm.img");
        Ext4Image::create(&backing, 64 << 20);
        ok(snapfs(&store)
            .args(["disk", "add", DISK])
            .arg(&backing)
            .arg("--live"));
        let mount = Mount::start(&store);
        Fixture { mount, _tmp: tmp }
    }

    /// Unmounts, asserting a clean end (the temp folder goes after).
    fn unmount(self) {
        self.mount.unmount();
    }

    fn live(&self) -> PathBuf {
        self.mount.disk(DISK).join("live")
    }
}

/// How the tests' guests open a live disk: cache=none (O_DIRECT), QEMU's
/// locking on (the default).
fn drive(live: &Path) -> Disk {
    Disk::new(live).cache(Cache::None)
}

/// Starts a second QEMU on `live`, which must be refused for QEMU's lock;
/// returns what it printed.
fn assert_refused(live: &Path, holder: &str) -> String {
    match Guest::boot_with(GuestOptions::new(&[drive(live)])) {
        Ok(mut guest) => {
            guest.kill();
            panic!(
                "a second qemu booted from {} while {holder} runs from it",
                live.display()
            );
        }
        Err(why) => {
            assert!(
                why.contains("Failed to get") && why.contains("lock"),
                "a second qemu on {} while {holder} runs from it failed, but not for \
                 QEMU's image lock:\n{why}",
                live.display()
            );
            why
        }
    }
}

#[test]
fn a_second_qemu_is_refused_the_live_file_until_the_first_has_exited() {
    if !need_vm("a_second_qemu_is_refused_the_live_file_until_the_first_has_exited") {
        return;
    }
    let fx = Fixture::new();
    let live = fx.live();
    let mut first = Guest::boot(&[drive(&live)]);
    eprintln!("first guest booted in {:.1?}", first.boot_time);
    first.run("mount -t ext4 /dev/vda /mnt && echo first >/mnt/owner && sync");

    let refused = assert_refused(&live, "the first guest");
    eprintln!("second qemu refused, as it must be:\n{refused}");

    // The first gone (a clean poweroff), the next one opens the disk and
    // sees what the first wrote.
    first.poweroff().unwrap_or_else(|why| panic!("{why}"));
    let mut second = Guest::boot(&[drive(&live)]);
    assert_eq!(
        second.run("mount -t ext4 /dev/vda /mnt && cat /mnt/owner"),
        "first\n"
    );
    second.run("echo second >/mnt/owner && sync");
    assert_refused(&live, "the second guest");

    // A QEMU killed with SIGKILL leaves no lock behind.
    second.kill();
    let mut third = Guest::boot(&[drive(&live)]);
    assert_eq!(
        third.run("mount -t ext4 /dev/vda /mnt && cat /mnt/owner"),
        "second\n"
    );
    third.poweroff().unwrap_or_else(|why| panic!("{why}"));
    fx.unmount();
}
