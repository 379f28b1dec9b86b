#!/usr/bin/env bash
# bench/gentle.sh: what a snapshot costs the disk's own users.
#
# The source is the engine workload's v1 image, a file on the host's disk.
# fio does 4 KiB random reads of that image with direct I/O (so the page cache
# does not hide the disk) in several conditions, each from a dropped page
# cache and a fresh store:
#   baseline     fio alone, no snapshot (first, and again last to bracket drift)
#   alone        the snapshot alone, no fio (how long it takes unhindered)
#   uncapped     fio and `snapfs snapshot create` started together, no cap
#                (the snapshot reads at idle I/O priority, its default)
#   cap RATE     the same with `--max-rate RATE`, for each BENCH_GENTLE_RATES
# For each run it reports fio's IOPS over its whole run and over the time the
# snapshot ran beside it (from fio's per-interval IOPS log), the snapshot's
# time and read rate, and which run ended first. Also prints the I/O
# scheduler of the disk holding BENCH_DIR (the idle I/O class is honoured by
# BFQ; mq-deadline only orders by class, `none` and kyber ignore it). Prints a
# Markdown table and writes it to bench/results-gentle-latest.md.
#
# Needs root (drop_caches, apt-get for fio).
set -euo pipefail

# ---------------------------------------------------------------- settings
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_SUBDIR=run-gentle      # store and logs of this run: $BENCH_DIR/run-gentle
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"   # settings shared with engine.sh and mount.sh, cleanup, workload

BENCH_FIO_RUNTIME=${BENCH_FIO_RUNTIME:-20}            # seconds of each fio run
BENCH_GENTLE_RATES=${BENCH_GENTLE_RATES:-"20M 50M"}   # --max-rate values to try
BENCH_SNAPSHOT_TIMEOUT=${BENCH_SNAPSHOT_TIMEOUT:-900}  # cap of one snapshot, seconds
BENCH_GENTLE_RESULTS=${BENCH_GENTLE_RESULTS:-$SCRIPT_DIR/results-gentle-latest.md}
FIO_LOG_MS=500                                        # fio IOPS log interval

IMG="$WL/disk-v1.img"      # the disk being snapshotted and read by fio
STORE="$RUN/store"

# The store is big (the whole compressed image): remove it on any exit, after
# the processes are gone. Logs stay in $RUN/logs.
cleanup_gentle() { cleanup; rm -rf "$STORE"; }
trap cleanup_gentle EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }

# ---------------------------------------------------------------- the disk
# disk_info DIR: "DEVICE SCHEDULER-LINE" of the block device holding DIR
# (the whole disk, not the partition; the first member of a device-mapper
# device or md array).
disk_info() {
    local dir=$1 majmin sys name
    majmin=$(stat -c '%Hd:%Ld' "$dir" 2>/dev/null || true)
    sys=$(readlink -f "/sys/dev/block/$majmin" 2>/dev/null || true)
    if [[ -z $majmin || ! -d $sys ]]; then
        echo "unknown (no block device for $(findmnt -n -o SOURCE -T "$dir"))"
        return
    fi
    [[ -e $sys/partition ]] && sys=$(dirname "$sys")
    # dm-*/md*: look at what they are built on
    local slave
    for slave in "$sys"/slaves/*; do
        [[ -e $slave ]] || break
        sys=$(readlink -f "$slave")
        [[ -e $sys/partition ]] && sys=$(dirname "$sys")
        break
    done
    name=$(basename "$sys")
    if [[ -r /sys/block/$name/queue/scheduler ]]; then
        echo "/dev/$name: $(sed 's/ *$//' "/sys/block/$name/queue/scheduler")"
    else
        echo "/dev/$name: (no scheduler file)"
    fi
}

# ---------------------------------------------------------------- runs
fresh_store() {
    rm -rf "$STORE"
    logged store "$SNAPFS" --store "$STORE" init
    logged store "$SNAPFS" --store "$STORE" disk add vm1 "$IMG"
}

# Results: R[id|key]; IDS keeps the print order.
declare -A R=()
IDS=()
get() { echo "${R["$1|$2"]:--}"; }

# run ID LABEL FIO(0|1) SNAP(none|uncapped|RATE): one condition. Fresh store,
# cold cache, then fio and/or the snapshot started together; waits for both.
run() {
    local id=$1 label=$2 want_fio=$3 snap=$4
    local fio_pid="" snap_pid="" t0 t_fio="" t_snap="" pid rc done_pid
    IDS+=("$id"); R["$id|label"]=$label
    fresh_store
    drop_caches
    R["$id|load"]=$(cut -d' ' -f1 /proc/loadavg)
    log "run $id: fio=$want_fio snapshot=$snap (load $(get "$id" load))"
    local snap_cmd=("$SNAPFS" --store "$STORE" snapshot create vm1 s1)
    [[ $snap != none && $snap != uncapped ]] && snap_cmd+=(--max-rate "$snap")
    local fio_cmd=(fio --name=gentle --filename="$IMG" --readonly --rw=randread --bs=4k
        --ioengine=psync --direct=1 --numjobs=1 --size="$(stat -c %s "$IMG")"
        --runtime="$BENCH_FIO_RUNTIME" --time_based --output-format=json
        --output="$LOG_DIR/$id.fio.json"
        --write_iops_log="$LOG_DIR/$id" --log_avg_msec="$FIO_LOG_MS")

    t0=$(now_ms)
    if [[ $snap != none ]]; then
        echo "### $id: ${snap_cmd[*]}" >>"$LOG_DIR/$id.snapshot.log"
        timeout "$BENCH_SNAPSHOT_TIMEOUT" "${snap_cmd[@]}" >>"$LOG_DIR/$id.snapshot.log" 2>&1 &
        snap_pid=$!
        push_undo pid "$snap_pid"
    fi
    if ((want_fio)); then
        echo "### $id: ${fio_cmd[*]}" >"$LOG_DIR/$id.fio.log"
        "${fio_cmd[@]}" >>"$LOG_DIR/$id.fio.log" 2>&1 &
        fio_pid=$!
        push_undo pid "$fio_pid"
    fi
    # Wait for each, noting when it ended (wait -n -p: bash >= 5.1).
    local pids=() left
    [[ -z $snap_pid ]] || pids+=("$snap_pid")
    [[ -z $fio_pid ]] || pids+=("$fio_pid")
    left=${#pids[@]}
    while ((left > 0)); do
        rc=0 done_pid=""
        wait -n -p done_pid "${pids[@]}" || rc=$?
        pid=$done_pid
        left=$((left - 1))
        local keep=() p
        for p in "${pids[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
        pids=("${keep[@]}")
        if [[ $pid == "$snap_pid" ]]; then
            t_snap=$(now_ms)
            release pid "$snap_pid"
            if ((rc != 0)); then
                tail -n 5 "$LOG_DIR/$id.snapshot.log" >&2
                die "$id: snapshot failed (exit $rc; 124 = timed out after $BENCH_SNAPSHOT_TIMEOUT s)"
            fi
            log "$id: snapshot done after $(secs $((t_snap - t0))) s"
        elif [[ $pid == "$fio_pid" ]]; then
            t_fio=$(now_ms)
            release pid "$fio_pid"
            if ((rc != 0)); then
                tail -n 5 "$LOG_DIR/$id.fio.log" >&2
                die "$id: fio failed (exit $rc)"
            fi
            log "$id: fio done after $(secs $((t_fio - t0))) s"
        else
            die "$id: wait returned an unknown pid '$pid' (exit $rc)"
        fi
    done

    if [[ -n $snap_pid ]]; then
        local snap_ms=$((t_snap - t0))
        R["$id|snap_s"]=$(secs "$snap_ms")
        R["$id|snap_rate"]=$(rate "$ALLOC_V1" "$(secs "$snap_ms")")
        "$SNAPFS" --store "$STORE" snapshot list vm1 >>"$LOG_DIR/$id.snapshot.log" 2>&1 ||
            die "$id: snapshot list failed"
    fi
    if [[ -n $fio_pid ]]; then
        # fio's IOPS log is relative to its start; its JSON timestamp_ms is the
        # end of the run, so start = timestamp_ms - job_runtime. The overlap is
        # every whole log interval that ended before the snapshot did.
        local snap_end=${t_snap:-0} out
        out=$("$PYTHON" - "$LOG_DIR/$id.fio.json" "$LOG_DIR/${id}_iops.1.log" "$snap_end" "$FIO_LOG_MS" <<'EOF'
import json, sys
jpath, lpath, snap_end, step = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(jpath).read()
d = json.loads(text[text.index("{"):])
job = d["jobs"][0]
iops = job["read"]["iops"]
start = d["timestamp_ms"] - job["job_runtime"]
lat_us = job["read"]["clat_ns"]["mean"] / 1000
during, after = [], []
for line in open(lpath):
    f = line.split(",")
    if len(f) < 2:
        continue
    t, v = int(f[0]), float(f[1])
    if snap_end and start + t <= snap_end:
        during.append(v)
    elif snap_end and start + t - step >= snap_end:
        after.append(v)
fmt = lambda xs: "%.0f" % (sum(xs) / len(xs)) if xs else "-"
# whole-run IOPS, mean latency, IOPS while the snapshot ran, seconds of
# overlap, IOPS after the snapshot ended, fio start (epoch ms)
print("%.0f %.0f %s %.1f %s %d" % (iops, lat_us, fmt(during), len(during) * step / 1000, fmt(after), start))
EOF
        ) || die "$id: cannot read fio's results ($LOG_DIR/$id.fio.json)"
        local iops lat during overlap after fstart
        read -r iops lat during overlap after fstart <<<"$out"
        R["$id|iops"]=$iops; R["$id|lat"]=$lat
        if [[ -n $snap_pid ]]; then
            R["$id|during"]=$during; R["$id|overlap"]=$overlap; R["$id|after"]=$after
            if ((t_snap < t_fio)); then
                R["$id|note"]="snapshot ended first, $(secs $((t_snap - fstart))) s into fio's ${BENCH_FIO_RUNTIME} s; IOPS after it: $after"
            else
                R["$id|note"]="snapshot covered all of fio's run and went on $(secs $((t_snap - t_fio))) s longer"
            fi
        fi
    fi
}

# ---------------------------------------------------------------- report
pct_of_base() {  # pct_of_base IOPS -> "NN%" of the baseline (mean of the no-snapshot runs)
    local b
    b=$(awk -v a="${R["base|iops"]:-}" -v c="${R["base-end|iops"]:-}" 'BEGIN {
        if (a != "" && c != "") print (a + c) / 2; else if (a != "") print a; else print "" }')
    [[ -n $b && $1 != - && -n $1 ]] || { echo -; return; }
    awk -v a="$1" -v b="$b" 'BEGIN { printf "%.0f%%", 100 * a / b }'
}

print_table() {
    local id
    echo "| condition | load (1 min) at start | fio IOPS (whole ${BENCH_FIO_RUNTIME} s run) | fio mean latency µs | fio IOPS while the snapshot ran | of baseline | overlap s | snapshot time s | snapshot read MB/s | note |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    for id in "${IDS[@]}"; do
        local during base_col
        during=$(get "$id" during)
        if [[ $id == base* ]]; then base_col=$(pct_of_base "$(get "$id" iops)"); during=-
        else base_col=$(pct_of_base "$during"); fi
        echo "| $(get "$id" label) | $(get "$id" load) | $(get "$id" iops) | $(get "$id" lat) | $during | $base_col | $(get "$id" overlap) | $(get "$id" snap_s) | $(get "$id" snap_rate) | $(get "$id" note) |"
    done
}

report() {
    local snapfs_v
    snapfs_v=$("$SNAPFS" --version 2>/dev/null | head -n 1 || true)
    {
        echo "# snapfs gentle-snapshot benchmark (what a snapshot costs the disk's users)"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r); ${snapfs_v:-snapfs}, default store settings; $(fio --version)."
        echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg). The machine is shared and noisy: treat the numbers as rough."
        echo
        echo "Disk holding BENCH_DIR ($BENCH_DIR) and its I/O scheduler: $DISK_INFO."
        echo "$SCHED_NOTE"
        echo
        echo "Source: the engine workload's v1 image ($(mb "$SIZE_V1") MB sparse file, $(mb "$ALLOC_V1") MB allocated, BENCH_DATA_MB=$BENCH_DATA_MB),"
        echo "the store on the same disk. fio: 4 KiB random reads of the whole image, psync, direct=1, 1 job, ${BENCH_FIO_RUNTIME} s time-based, --readonly;"
        echo "about $(awk -v a="$ALLOC_V1" -v s="$SIZE_V1" 'BEGIN { printf "%.0f", 100 * a / s }')% of its reads land on data, the rest on holes (served without disk I/O)."
        echo "Every run starts from a dropped page cache and a fresh store; fio and the snapshot start together."
        echo "\"While the snapshot ran\" is fio's mean IOPS over the ${FIO_LOG_MS} ms intervals that ended before the snapshot did;"
        echo "\"of baseline\" compares it with the mean of the two no-snapshot runs (one first, one last, to bracket the machine's drift)."
        echo "Snapshot read MB/s = allocated data / snapshot wall time (MB = 10^6 bytes); --max-rate takes powers of 1024 (20M = 20.97 MB/s)."
        echo
        print_table
    } | tee "$BENCH_GENTLE_RESULTS"
    log "table written to $BENCH_GENTLE_RESULTS; logs in $LOG_DIR"
}

# ---------------------------------------------------------------- main
main() {
    local r
    require_root
    install_tools fio=fio
    check_bench_dir
    [[ -x $SNAPFS ]] || die "no snapfs binary at $SNAPFS (cargo build --release, or set SNAPFS)"
    ((BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1))) ||
        die "needs bash >= 5.1 (wait -n -p)"
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

    build_workload
    ALLOC_V1=$(alloc_of "$IMG")
    SIZE_V1=$(stat -c %s "$IMG")

    rm -rf "$RUN"
    mkdir -p "$LOG_DIR"
    # Run a copy: others may rebuild target/release while this runs.
    cp "$SNAPFS" "$RUN/snapfs"
    SNAPFS="$RUN/snapfs"

    DISK_INFO=$(disk_info "$BENCH_DIR")
    case $DISK_INFO in
        *"[bfq]"*) SCHED_NOTE="BFQ: it honours the idle I/O class the snapshot reads in." ;;
        *"[mq-deadline]"*) SCHED_NOTE="Not BFQ: only BFQ gives idle-class I/O real idle treatment; mq-deadline merely dispatches higher classes first (with prio_aging_expire), so idle priority helps little here and --max-rate is what protects the disk's users." ;;
        *) SCHED_NOTE="Not BFQ: the idle I/O class the snapshot reads in has no effect here; only --max-rate protects the disk's users." ;;
    esac
    log "disk: $DISK_INFO"
    log "$SCHED_NOTE"

    run base "(a) no snapshot (fio alone)" 1 none
    run alone "snapshot alone, no fio, no cap" 0 uncapped
    run uncapped "(b) snapshot, no cap (idle I/O priority)" 1 uncapped
    for r in $BENCH_GENTLE_RATES; do
        run "cap-$r" "(c) snapshot --max-rate $r" 1 "$r"
    done
    run base-end "(a) no snapshot, again at the end" 1 none
    report
}

main "$@"
