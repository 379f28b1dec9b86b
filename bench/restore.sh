#!/usr/bin/env bash
# bench/restore.sh: reading snapshots back against the raw image, in one run.
#
#   cargo build --release && sudo bench/restore.sh
#
# On the engine benchmark's workload (4 GiB ext4 images v1 and v2), a store
# holds snapshots s1 (v1) and s2 (v2) of disk vm1. For BENCH_ROUNDS rounds,
# the raw v2.img and the snapshot s2 take turns at every step (who goes first
# alternates by round), each with a dropped page cache and, through the
# mount, a freshly started mount:
#   qemu-img convert -O raw, a read of the data regions only (SEEK_DATA,
#   1 MiB reads), cat of the whole image, fio 4 KiB random reads (psync,
#   1 and 4 jobs); cp --sparse=always of the raw file against snapfs export
#   without and with a mount running;
#   rollback of a copy of v2 to s1 against its reference: a read of the
#   target's data regions plus a dd conv=notrunc of as many bytes as the
#   rollback wrote;
#   the first snapshot of v1 against borg's (lz4 defaults), with the CPU
#   share of each (user+sys over wall).
# Prints per step the median and range of each side and their ratio, the
# mount's peak memory against its --cache-size, and writes the table to
# bench/results-restore-latest.md. Needs root. BENCH_COMPRESSION (default
# lz4, the store's default) sets the stores' `init --compression`.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_SUBDIR=run-restore
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"

BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_FIO_RUNTIME=${BENCH_FIO_RUNTIME:-10}
BENCH_RESTORE_RESULTS=${BENCH_RESTORE_RESULTS:-$SCRIPT_DIR/results-restore-latest.md}
BENCH_COMPRESSION=${BENCH_COMPRESSION:-lz4}
CACHE_SIZE=256M   # the mount's default --cache-size

# peak_rss_mb PID: the process's peak resident memory so far, in MB.
peak_rss_mb() {
    awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"
}

# snap_read STEP NAME CMD...: a fresh mount, then CMD on the snapshot s2
# (written "{}" in CMD); notes the time and the mount's peak memory.
snap_read() {
    local step=$1 name=$2; shift 2
    local f="$MNT/vm1/s2" args=() a
    for a in "$@"; do args+=("${a//\{\}/$f}"); done
    mount_with "$BIN" "$STORE" "$MNT"
    measure snap "$step" "$name" "${args[@]}"
    note mem "$step" "$(peak_rss_mb "$MOUNT_PID")"
    unmount_with "$MNT" "$STORE"
}

raw_read() {
    local step=$1 name=$2; shift 2
    local f="$WL/disk-v2.img" args=() a
    for a in "$@"; do args+=("${a//\{\}/$f}"); done
    measure raw "$step" "$name" "${args[@]}"
}

# Both sides of one read step, in the round's order.
read_step() {
    local step=$1 n=$2; shift 2
    local side
    for side in $ORDER; do
        "${side}_read" "$step" "$side-$n-$step" "$@"
        rm -f "$OUT"
    done
}

fio_step() {
    local jobs=$1 n=$2 side
    for side in $ORDER; do
        if [[ $side == raw ]]; then
            note raw "fio$jobs" "$(fio_randread_iops "$WL/disk-v2.img" "$jobs" "raw-$n-fio$jobs")"
        else
            mount_with "$BIN" "$STORE" "$MNT"
            note snap "fio$jobs" "$(fio_randread_iops "$MNT/vm1/s2" "$jobs" "snap-$n-fio$jobs")"
            note mem "fio$jobs" "$(peak_rss_mb "$MOUNT_PID")"
            unmount_with "$MNT" "$STORE"
        fi
    done
}

export_step() {
    local n=$1 side
    for side in $ORDER; do
        if [[ $side == raw ]]; then
            # shellcheck disable=SC2016
            measure raw export "raw-$n-cp" sh -c 'cp --sparse=always "$1" "$2" && sync "$2"' _ "$WL/disk-v2.img" "$OUT"
        else
            # shellcheck disable=SC2016
            measure snap export "snap-$n-export" sh -c '"$@" && sync "$0"' "$OUT" "$BIN" --store "$STORE" export vm1 s2 -o "$OUT"
            cmp -s "$OUT" "$WL/disk-v2.img" || die "the export of s2 differs from disk-v2.img"
            rm -f "$OUT"
            mount_with "$BIN" "$STORE" "$MNT"
            # shellcheck disable=SC2016
            measure snap export_mounted "snap-$n-export-mounted" sh -c '"$@" && sync "$0"' "$OUT" "$BIN" --store "$STORE" export vm1 s2 -o "$OUT"
            unmount_with "$MNT" "$STORE"
        fi
        rm -f "$OUT"
    done
}

# The rollback of a copy of v2 to s1 (~190 MB differ), and its reference.
rollback_step() {
    local n=$1 target="$RUN/rollback-target.img" written
    cp --sparse=always "$WL/disk-v2.img" "$target"
    measure snap rollback "snap-$n-rollback" "$BIN" --store "$STORE" rollback vm1 s1 --to "$target" --yes --json
    cmp -s "$target" "$WL/disk-v1.img" || die "the rollback target differs from disk-v1.img"
    written=$(grep -o '"bytes_written": *[0-9]*' "$LOG_DIR/snap-$n-rollback.log" | grep -o '[0-9]*$')
    ROLLBACK_WRITTEN=$written
    cp --sparse=always "$WL/disk-v2.img" "$target"
    timed "ref-$n-read" "$PYTHON" "$SCRIPT_DIR/read-data.py" "$target"
    local read_s=$T_S
    timed "ref-$n-dd" dd if="$WL/disk-v1.img" of="$target" bs=1M count=$(((written + (1 << 20) - 1) >> 20)) \
        conv=notrunc,fdatasync status=none
    note ref rollback "$(awk -v a="$read_s" -v b="$T_S" 'BEGIN { print a + b }')"
    rm -f "$target"
}

# The first snapshot of v1: snapfs against borg, with the CPU share.
first_step() {
    local n=$1 side store="$RUN/first-store" repo="$RUN/borg-repo" cpu
    for side in $ORDER; do
        rm -rf "$store" "$repo"
        if [[ $side == snap ]]; then
            logged first "$BIN" --store "$store" init --compression "$BENCH_COMPRESSION"
            logged first "$BIN" --store "$store" disk add vm1 "$RUN/v1.img"
            timed "snap-$n-first" "$BIN" --store "$store" snapshot create vm1 s1
            note snap first "$T_S"
            note snapcpu first "$(cpu_share "snap-$n-first")"
        else
            logged first borg init --encryption none "$repo"
            # shellcheck disable=SC2016
            timed "borg-$n-first" sh -c 'cd "$1" && borg create "$2::s1" v1.img' _ "$RUN" "$repo"
            note borg first "$T_S"
            note borgcpu first "$(cpu_share "borg-$n-first")"
        fi
    done
    rm -rf "$store" "$repo"
}

# cpu_share NAME: (user + sys) / wall of a `timed` run, in percent.
cpu_share() {
    awk '{ printf "%.0f", ($3 + $4) / ($1 > 0 ? $1 : 1) * 100 }' "$LOG_DIR/$1.time"
}

report() {
    local step label unit r
    {
        echo "# snapfs: reading snapshots back, against the raw image"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, kernel $(uname -r); $BENCH_ROUNDS rounds, the two sides"
        echo "taking turns at every step, cold caches. Binary: \`$BIN_SOURCE\`."
        echo "Workload: the engine benchmark's (BENCH_DATA_MB=$BENCH_DATA_MB, $(mb "$(alloc_of "$WL/disk-v2.img")") MB allocated in v2)."
        echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)."
        echo "Store: \`init --compression $BENCH_COMPRESSION\`, $(du -sm "$STORE" | cut -f1) MB on disk for s1 and s2."
        echo "Cells: median (min-max). Ratio: the raw or reference side over snapfs for times, snapfs over raw for IOPS: above 1, snapfs is faster."
        echo
        echo "| step | unit | raw v2.img / reference | snapshot s2 | ratio | mount peak RSS MB |"
        echo "|---|---|--:|--:|--:|--:|"
        for step in convert data cat fio1 fio4 export export_mounted rollback first; do
            unit=s
            case $step in
                convert) label="\`qemu-img convert -O raw\`" ;;
                data) label="read of the data regions (SEEK_DATA, 1 MiB reads)" ;;
                cat) label="\`cat\` of the whole image" ;;
                fio1) label="fio 4 KiB random read, psync, 1 job"; unit=IOPS ;;
                fio4) label="fio 4 KiB random read, psync, 4 jobs"; unit=IOPS ;;
                export) label="\`cp --sparse=always\` vs \`snapfs export\`, no mount, synced" ;;
                export_mounted) label="\`cp --sparse=always\` vs \`snapfs export\` with a mount running, synced" ;;
                rollback) label="rollback of a copy of v2 to s1 vs reading its data regions + dd of the bytes written" ;;
                first) label="first snapshot of v1: borg (lz4) vs snapfs" ;;
            esac
            local base=raw
            [[ $step == export_mounted ]] && base=raw && T["raw|export_mounted"]=${T["raw|export"]:-}
            [[ $step == rollback ]] && base=ref
            [[ $step == first ]] && base=borg
            if [[ $unit == IOPS ]]; then
                r=$(ratio "$(median_of snap "$step")" "$(median_of "$base" "$step")")
            else
                r=$(ratio "$(median_of "$base" "$step")" "$(median_of snap "$step")")
            fi
            echo "| $label | $unit | $(stat_of "$base" "$step") | $(stat_of snap "$step") | $r | $(stat_of mem "$step") |"
        done
        echo
        echo "CPU share of the first snapshot (user+sys over wall, %): snapfs $(stat_of snapcpu first), borg $(stat_of borgcpu first)."
        echo "The rollback wrote $(mb "${ROLLBACK_WRITTEN:-0}") MB; the mount's --cache-size is $CACHE_SIZE."
    } | tee "$BENCH_RESTORE_RESULTS"
    log "table written to $BENCH_RESTORE_RESULTS; logs in $LOG_DIR"
}

main() {
    require_root
    install_tools fio=fio fusermount3=fuse3 qemu-img=qemu-utils borg=borgbackup
    check_bench_dir
    BIN_SOURCE=$SNAPFS
    [[ -x $SNAPFS ]] || die "no binary at $SNAPFS"
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    build_workload
    rm -rf "$RUN"
    mkdir -p "$LOG_DIR"
    # A copy: others may rebuild the binary while this runs.
    BIN="$RUN/snapfs"
    cp "$SNAPFS" "$BIN"
    STORE="$RUN/store"
    MNT="$RUN/mnt"
    OUT="$RUN/out.img"
    cp --sparse=always "$WL/disk-v1.img" "$RUN/v1.img"
    logged setup "$BIN" --store "$STORE" init --compression "$BENCH_COMPRESSION"
    logged setup "$BIN" --store "$STORE" disk add vm1 "$RUN/v1.img"
    logged setup "$BIN" --store "$STORE" snapshot create vm1 s1
    cp --sparse=always "$WL/disk-v2.img" "$RUN/v1.img"
    logged setup "$BIN" --store "$STORE" snapshot create vm1 s2
    cp --sparse=always "$WL/disk-v1.img" "$RUN/v1.img"
    local n
    for ((n = 1; n <= BENCH_ROUNDS; n++)); do
        ORDER="raw snap"; ((n % 2 == 0)) && ORDER="snap raw"
        read_step convert "$n" qemu-img convert -O raw "{}" "$OUT"
        read_step data "$n" "$PYTHON" "$SCRIPT_DIR/read-data.py" "{}"
        # shellcheck disable=SC2016
        read_step cat "$n" sh -c 'cat "$1" >/dev/null' _ "{}"
        fio_step 1 "$n"
        fio_step 4 "$n"
        export_step "$n"
        rollback_step "$n"
        ORDER="borg snap"; ((n % 2 == 0)) && ORDER="snap borg"
        first_step "$n"
    done
    report
}

main "$@"
