#!/usr/bin/env bash
# A walk through snapfs on a small example disk it makes itself: build,
# register the disk, mount, snapshot through .create, look at the snapshot,
# loop-mount it, change the disk, snapshot again, delete, unmount.
# Needs root (loop devices and FUSE). Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "demo.sh needs root for loop devices and FUSE: sudo $0" >&2
    exit 1
fi
command -v mkfs.ext4 >/dev/null || apt-get install -y -qq e2fsprogs
cargo build --release --quiet
snapfs=$PWD/target/release/snapfs

work=$(mktemp -d /var/tmp/snapfs-demo.XXXXXX)
export SNAPFS_STORE=$work/store
cleanup() {
    set +e
    mountpoint -q "$work/old" && umount "$work/old"
    mountpoint -q "$work/disk" && umount "$work/disk"
    mountpoint -q "$work/mnt" && "$snapfs" umount "$work/mnt" >/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

echo "== a 256 MiB ext4 disk image with some files"
truncate -s 256M "$work/vm1.img"
mkfs.ext4 -q "$work/vm1.img"
mkdir "$work/disk" "$work/mnt" "$work/old"
mount -o loop "$work/vm1.img" "$work/disk"
cp -r /usr/share/doc/. "$work/disk/" 2>/dev/null || true
echo "version 1" > "$work/disk/hello.txt"
umount "$work/disk"

step snapfs disk add vm1/system vm1.img
"$snapfs" disk add vm1/system "$work/vm1.img"
step snapfs mount mnt --daemon
"$snapfs" mount "$work/mnt" --daemon
step 'echo nightly > mnt/vm1/system/.create'
echo nightly > "$work/mnt/vm1/system/.create"
step ls -l mnt/vm1/system
ls -l "$work/mnt/vm1/system"
step cat mnt/vm1/system/.status
cat "$work/mnt/vm1/system/.status"
step getfattr -d mnt/vm1/system/nightly
getfattr -d "$work/mnt/vm1/system/nightly" 2>/dev/null || echo "(install the attr package to see xattrs)"

echo; echo "== change the disk, take a second snapshot: only the change is stored"
mount -o loop "$work/vm1.img" "$work/disk"
echo "version 2" > "$work/disk/hello.txt"
umount "$work/disk"
step 'echo after-change > mnt/vm1/system/.create'
echo after-change > "$work/mnt/vm1/system/.create"
step snapfs snapshot list
"$snapfs" snapshot list

step 'mount -o loop,ro mnt/vm1/system/nightly old; cat old/hello.txt'
mount -o loop,ro "$work/mnt/vm1/system/nightly" "$work/old"
cat "$work/old/hello.txt"
umount "$work/old"

step rm mnt/vm1/system/nightly
rm "$work/mnt/vm1/system/nightly"
step snapfs gc --min-dead 0
"$snapfs" gc --min-dead 0
step snapfs stats
"$snapfs" stats
step snapfs umount mnt
"$snapfs" umount "$work/mnt"
echo; echo "demo done; everything it made is removed on exit"
