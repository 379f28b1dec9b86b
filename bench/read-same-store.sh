#!/usr/bin/env bash
# bench/read-same-store.sh: the read path of two binaries on the SAME store.
#
#   sudo SNAPFS_BASELINE=/tmp/snapfs-old SNAPFS=/tmp/snapfs-new bench/read-same-store.sh
#
# compare.sh lets each binary take its own snapshot; this one takes one
# snapshot of the engine workload's v1 (with the new binary) and mounts that
# store with each binary in turn, BENCH_ROUNDS times, timing a cold read of
# the image's data regions (SEEK_DATA walk, 1 MiB reads) through a fresh
# mount. Differences here are the read path's alone. Needs root.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_SUBDIR=run-same-store
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"

BENCH_ROUNDS=${BENCH_ROUNDS:-4}
SNAPFS_BASELINE=${SNAPFS_BASELINE:-}

main() {
    require_root
    check_bench_dir
    [[ -x $SNAPFS_BASELINE && -x $SNAPFS ]] || die "set SNAPFS_BASELINE and SNAPFS to two binaries"
    build_workload
    rm -rf "$RUN"
    mkdir -p "$LOG_DIR"
    cp "$SNAPFS_BASELINE" "$RUN/snapfs-old"
    cp "$SNAPFS" "$RUN/snapfs-new"
    local store="$RUN/store" mnt="$RUN/mnt" n tag pid
    export SNAPFS_STORE=$store
    logged setup "$RUN/snapfs-new" --store "$store" disk add vm1 "$WL/disk-v1.img"
    logged setup "$RUN/snapfs-new" --store "$store" snapshot create vm1 s1
    mkdir -p "$mnt"
    declare -A times=()
    for ((n = 1; n <= BENCH_ROUNDS; n++)); do
        for tag in old new; do
            "$RUN/snapfs-$tag" --store "$store" mount "$mnt" >>"$LOG_DIR/mount.log" 2>&1 &
            pid=$!
            push_undo pid "$pid"
            push_undo snapfs "$mnt"
            for ((i = 0; i < 300; i++)); do [[ -e $mnt/vm1/s1 ]] && break; sleep 0.1; done
            timed "$tag-$n-data" "$PYTHON" "$SCRIPT_DIR/read-data.py" "$mnt/vm1/s1"
            times[$tag]="${times[$tag]:-} $T_S"
            release snapfs "$mnt"
            release pid "$pid"
        done
    done
    echo "| binary | cold read of the data regions, s: median (min-max) over $BENCH_ROUNDS rounds |"
    echo "|---|--:|"
    for tag in old new; do
        # shellcheck disable=SC2086
        printf '%s\n' ${times[$tag]} | sort -g | awk -v t="$tag" '
            { v[NR] = $1 }
            END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                  printf "| %s | %g (%g-%g) |\n", t, m, v[1], v[NR] }'
    done
}

main "$@"
