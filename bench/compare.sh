#!/usr/bin/env bash
# bench/compare.sh: one snapfs binary against another, in one run.
#
#   cargo build --release && cp target/release/snapfs /tmp/snapfs-new
#   git stash / checkout the old commit, cargo build --release, cp ... /tmp/snapfs-old
#   sudo SNAPFS_BASELINE=/tmp/snapfs-old SNAPFS=/tmp/snapfs-new bench/compare.sh
#
# On the engine benchmark's workload, for BENCH_ROUNDS rounds the two
# binaries take turns at every step (who goes first alternates by round), so
# that a noisy machine slows both alike:
#   engine: first snapshot of v1, second snapshot after v2 was copied over it
#           (a full re-read), export of the second to a sparse file (synced);
#   mount:  snapshot of v1 through `.create`, cold `cat` of its image file,
#           a read of its data regions only (SEEK_DATA), fio 4 KiB random
#           reads (psync, 4 jobs); the raw v1 file is read, and v2 copied
#           with `cp --sparse=always`, as references.
# Every timed step starts with a dropped page cache and (mount steps) a
# freshly started mount. Prints, per step, the median and range of each
# binary and the ratio of the medians, and writes the table to
# bench/results-compare-latest.md. Needs root.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_SUBDIR=run-compare
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"

BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_FIO_RUNTIME=${BENCH_FIO_RUNTIME:-10}
BENCH_COMPARE_RESULTS=${BENCH_COMPARE_RESULTS:-$SCRIPT_DIR/results-compare-latest.md}
SNAPFS_BASELINE=${SNAPFS_BASELINE:-}

# engine_round TAG BIN ROUND
engine_round() {
    local tag=$1 bin=$2 n=$3 dir="$RUN/$1" store="$RUN/$1/store-$3"
    local sf=("$bin" --store "$store")
    mkdir -p "$dir"
    rm -rf "$store"
    cp --sparse=always "$WL/disk-v1.img" "$dir/vm1.img"
    logged "$tag" "${sf[@]}" init
    logged "$tag" "${sf[@]}" disk add vm1 "$dir/vm1.img"
    measure "$tag" first "$tag-$n-first" "${sf[@]}" snapshot create vm1 s1
    cp --sparse=always "$WL/disk-v2.img" "$dir/vm1.img"
    measure "$tag" second "$tag-$n-second" "${sf[@]}" snapshot create vm1 s2
    local out="$dir/export.img"
    rm -f "$out"
    # shellcheck disable=SC2016  # $0/$@ are for the inner sh
    measure "$tag" export "$tag-$n-export" sh -c '"$@" && sync "$0"' "$out" "${sf[@]}" export vm1 s2 -o "$out"
    cmp -s "$out" "$WL/disk-v2.img" || die "$tag: the export of s2 differs from disk-v2.img"
    rm -rf "$out" "$store"
}

# mount_round TAG BIN ROUND: a fresh store; s1 through `.create`, then
# reads of s1, each through a fresh mount.
mount_round() {
    local tag=$1 bin=$2 n=$3 store="$RUN/$1/mstore-$3" mnt="$RUN/$1/mnt" f
    rm -rf "$store"
    logged "$tag" "$bin" --store "$store" init
    logged "$tag" "$bin" --store "$store" disk add vm1 "$WL/disk-v1.img"
    mount_with "$bin" "$store" "$mnt"
    # shellcheck disable=SC2016
    measure "$tag" create "$tag-$n-create" sh -c 'echo s1 >"$1"' _ "$mnt/vm1/.create"
    unmount_with "$mnt" "$store"
    f="$mnt/vm1/s1"
    mount_with "$bin" "$store" "$mnt"
    # shellcheck disable=SC2016
    measure "$tag" cat "$tag-$n-cat" sh -c 'cat "$1" >/dev/null' _ "$f"
    unmount_with "$mnt" "$store"
    mount_with "$bin" "$store" "$mnt"
    measure "$tag" data "$tag-$n-data" "$PYTHON" "$SCRIPT_DIR/read-data.py" "$f"
    unmount_with "$mnt" "$store"
    mount_with "$bin" "$store" "$mnt"
    note "$tag" fio4 "$(fio_randread_iops "$f" 4 "$tag-$n-fio")"
    unmount_with "$mnt" "$store"
    rm -rf "$store"
}

report() {
    local step label unit
    {
        echo "# snapfs: one binary against another"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, kernel $(uname -r); $BENCH_ROUNDS rounds, the binaries"
        echo "taking turns at every step. Baseline: \`$SNAPFS_BASELINE\`; new: \`$SNAPFS_NEW\`."
        echo "Workload: the engine benchmark's (BENCH_DATA_MB=$BENCH_DATA_MB, $(mb "$ALLOC_V1") MB allocated in v1)."
        echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)."
        echo "Cells: median (min-max). Ratio: new / baseline of the medians (time: below 1 is faster; IOPS: above 1 is faster)."
        echo
        echo "| step | unit | baseline | new | ratio |"
        echo "|---|---|--:|--:|--:|"
        for step in first second export create cat data fio4; do
            case $step in
                first) label="first snapshot of v1 (CLI)" ;;
                second) label="second snapshot, full re-read of v2 (CLI)" ;;
                export) label="export of the second to a sparse file, synced" ;;
                create) label="snapshot of v1 through \`.create\`" ;;
                cat) label="cold \`cat\` of the image through the mount" ;;
                data) label="cold read of its data regions (SEEK_DATA)" ;;
                fio4) label="fio 4 KiB random read, 4 jobs" ;;
            esac
            unit=s; [[ $step == fio4 ]] && unit=IOPS
            echo "| $label | $unit | $(stat_of old "$step") | $(stat_of new "$step") | $(ratio "$(median_of new "$step")" "$(median_of old "$step")") |"
        done
        echo "| reference: cold \`cat\` of the raw v1 file | s | $(stat_of raw cat) | | |"
        echo "| reference: \`cp --sparse=always\` of the raw v2 file, synced | s | $(stat_of raw export) | | |"
    } | tee "$BENCH_COMPARE_RESULTS"
    log "table written to $BENCH_COMPARE_RESULTS; logs in $LOG_DIR"
}

main() {
    require_root
    install_tools fio=fio fusermount3=fuse3
    check_bench_dir
    [[ -n $SNAPFS_BASELINE ]] || die "set SNAPFS_BASELINE to the binary to compare against"
    [[ -x $SNAPFS_BASELINE && -x $SNAPFS ]] || die "no binary at $SNAPFS_BASELINE or $SNAPFS"
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    build_workload
    ALLOC_V1=$(alloc_of "$WL/disk-v1.img")
    rm -rf "$RUN"
    mkdir -p "$LOG_DIR"
    # Copies: others may rebuild the binaries while this runs.
    cp "$SNAPFS_BASELINE" "$RUN/snapfs-old"
    cp "$SNAPFS" "$RUN/snapfs-new"
    SNAPFS_NEW=$SNAPFS
    local n order tag
    for ((n = 1; n <= BENCH_ROUNDS; n++)); do
        order="old new"; ((n % 2 == 0)) && order="new old"
        for tag in $order; do engine_round "$tag" "$RUN/snapfs-$tag" "$n"; done
        for tag in $order; do mount_round "$tag" "$RUN/snapfs-$tag" "$n"; done
        # shellcheck disable=SC2016
        measure raw cat "raw-$n-cat" sh -c 'cat "$1" >/dev/null' _ "$WL/disk-v1.img"
        rm -f "$RUN/raw-copy.img"
        # shellcheck disable=SC2016
        measure raw export "raw-$n-cp" sh -c 'cp --sparse=always "$1" "$2" && sync "$2"' _ "$WL/disk-v2.img" "$RUN/raw-copy.img"
        rm -f "$RUN/raw-copy.img"
    done
    report
}

main "$@"
