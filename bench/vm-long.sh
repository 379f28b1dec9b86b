#!/usr/bin/env bash
# bench/vm-long.sh [MINUTES]: the VM crash-consistency test of
# tests/live_mount.rs (snapshots_of_a_running_vm_are_crash_consistent), run
# for MINUTES (default 10) instead of three snapshots.
#
# A guest (QEMU under TCG) runs tests/guest/workload.sh on an ext4 live disk
# through a mount with --max-rate 8M. After the test's usual three
# snapshots, SNAPFS_VM_LONG_SECS makes it go on taking snapshots one after
# another, by turns uncapped (`snapshot create --max-rate 100G`) and capped
# (`.create`, the mount's rate), checking each at once as a crash image:
# journal replay on a copy, the workload's invariant (every file logged
# before the snapshot is there, byte for byte), `e2fsck -fn`. Half way it
# kills the mount with SIGKILL under the running guest, checks the snapshot
# taken after the remount against the backing, boots a new guest from the
# live file and carries the workload on.
#
#   sudo bench/vm-long.sh            # 10 minutes
#   sudo bench/vm-long.sh 60         # an hour
#
# Exits with the test's status; the whole output goes to $VM_LONG_LOG
# (default /var/tmp/snapfs-vm-long.log) and a summary line is printed at
# the end. Needs root, /dev/fuse, qemu-system-x86_64, busybox-static and a
# kernel in /boot (the same as the VM tests). The test cleans up after
# itself (mount and guests by pid, on panic too); Ctrl-C here stops the test
# binary by pid, its mount and QEMU follow it (parent-death signals), and
# what is left in its temporary folder is unmounted and removed.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MINUTES=${1:-${VM_LONG_MINUTES:-10}}
VM_LONG_LOG=${VM_LONG_LOG:-/var/tmp/snapfs-vm-long.log}
TEST=snapshots_of_a_running_vm_are_crash_consistent

[[ $MINUTES =~ ^[0-9]+$ ]] || { echo "vm-long.sh: MINUTES must be a whole number, not '$MINUTES'" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "vm-long.sh: run as root (loop mounts, FUSE)" >&2; exit 2; }

cd "$REPO_DIR"
# Build first, then run the test binary itself, so that it can be stopped
# by its pid.
bin=$(cargo test --release --test live_mount --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*live_mount[^"]*\)".*/\1/p' | tail -n 1)
[[ -x $bin ]] || { echo "vm-long.sh: cannot build the live_mount test binary" >&2; exit 1; }

# The test's temporary folders (store, mountpoints, guest files, image
# copies) go in a folder of this run, removed at the end.
work=$(mktemp -d /var/tmp/snapfs-vm-long.XXXXXX)
pid=""
mounted_below() { awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts; }
stop() {
    local i m dev
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    # Killed, the test unwinds nothing: its mount unmounts itself on the
    # parent-death signal once its QEMU (SIGKILL, the same way) is gone.
    for ((i = 0; i < 300; i++)); do
        [[ -z $(mounted_below) ]] && break
        sleep 0.1
    done
    for m in $(mounted_below | sort -r); do umount "$m" 2>/dev/null || umount -l "$m" || true; done
    for dev in $(losetup -n -O NAME,BACK-FILE 2>/dev/null | awk -v w="$work/" 'index($2, w) == 1 { print $1 }'); do
        losetup -d "$dev" 2>/dev/null || true
    done
    if [[ -z $(mounted_below) ]]; then
        rm -rf "$work"
    else
        echo "vm-long.sh: still mounted below $work; left in place" >&2
    fi
}
trap stop EXIT
trap 'exit 130' INT TERM

echo "vm-long.sh: $MINUTES minutes of $TEST; log in $VM_LONG_LOG" >&2
started=$SECONDS
rc=0
TMPDIR=$work SNAPFS_VM_LONG_SECS=$((MINUTES * 60)) SNAPFS_REQUIRE_FUSE=1 \
    "$bin" --exact "$TEST" --nocapture --test-threads=1 >"$VM_LONG_LOG" 2>&1 &
pid=$!
wait "$pid" || rc=$?
pid=""
grep -E '^(long run|snapshot |guest booted|first in|uncapped in|capped in)' "$VM_LONG_LOG" >&2 || true
checked=$(grep -c 'workload files verified' "$VM_LONG_LOG" || true)
if ((rc == 0)); then
    echo "vm-long.sh: passed in $((SECONDS - started)) s; $checked snapshots verified (e2fsck -fn, workload invariant)" >&2
else
    tail -n 40 "$VM_LONG_LOG" >&2
    echo "vm-long.sh: FAILED (exit $rc) after $((SECONDS - started)) s; $checked snapshots verified before; log $VM_LONG_LOG" >&2
fi
exit "$rc"
