#!/usr/bin/env bash
# bench/live.sh: live disks, in one run.
#
# Two mounts of two stores run side by side for the whole run, the same
# binary: "on" (change tracking on, as shipped) and "off" (the mount started
# with SNAPFS_BENCH_NO_TRACKING=1: every snapshot reads the whole disk).
# Each step runs BENCH_ROUNDS times, the sides taking turns (who goes first
# rotates by round); the table gives the median and the range (min-max).
#   a. snapshots: the engine workload's v1 (a 4 GiB ext4 image, ~1.6 GB of
#      data) as a live disk in each store, a first snapshot, then per round
#      BENCH_LIVE_CHANGE_MB MiB of fresh random data written through
#      MNT/vm/live (1 MiB writes spread over the disk) and a snapshot through
#      `.create`, timed from a dropped page cache: incremental (on) against
#      the full re-read (off).
#   b. a BENCH_BIG_SIZE sparse live disk (`disk create`, store "on") with
#      BENCH_BIG_CHANGE_MB MiB changed per round (4 MiB writes spread over
#      it): the snapshot's time.
#   c. fio (BENCH_FIO_RUNTIME s, time-based, direct=1) on a BENCH_FIO_SIZE
#      file of random data: the raw file itself, the same file as a live disk
#      through each mount: 1 MiB sequential read and write (psync), 4 KiB
#      random read and write (libaio, iodepth 16); then 4 KiB random writes
#      through the "on" mount while a snapshot of that disk is being stored
#      (the whole disk rewritten first, so the snapshot has a lot to store)
#      against the same with no snapshot, and against the same right after
#      a snapshot (every chunk clean in the change record).
# Peak RSS (VmHWM) of each mount after each part. Prints a Markdown table
# and writes it to bench/results-live-latest.md. Needs root.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_SUBDIR=run-live
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"

BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_FIO_RUNTIME=${BENCH_FIO_RUNTIME:-10}
BENCH_FIO_SIZE=${BENCH_FIO_SIZE:-2G}
BENCH_LIVE_CHANGE_MB=${BENCH_LIVE_CHANGE_MB:-190}
BENCH_BIG_SIZE=${BENCH_BIG_SIZE:-100G}
BENCH_BIG_CHANGE_MB=${BENCH_BIG_CHANGE_MB:-1024}
BENCH_LIVE_PARTS=${BENCH_LIVE_PARTS:-"a b c"}
BENCH_LIVE_RESULTS=${BENCH_LIVE_RESULTS:-$SCRIPT_DIR/results-live-latest.md}
FIO_LOG_MS=500
MIB=$((1 << 20))

# The stores hold several GB: remove them on any exit, after the mounts and
# processes are gone. Logs stay in $RUN/logs.
cleanup_live() {
    cleanup
    local side
    for side in on off; do
        [[ -n ${MNT[$side]:-} ]] && mountpoint -q "${MNT[$side]}" && continue
        rm -rf "$RUN/store-$side"
    done
    rm -f "$RUN"/*.img "$RUN"/*.bin
}
trap cleanup_live EXIT

has_part() { [[ " $BENCH_LIVE_PARTS " == *" $1 "* ]]; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# rotate N WORD...: the words, rotated left by N (who goes first this round).
rotate() {
    local n=$1; shift
    local w=("$@") i k=$#
    for ((i = 0; i < k; i++)); do printf '%s ' "${w[(i + n) % k]}"; done
}

# ---------------------------------------------------------------- mounts
declare -A MNT=() PID=() STORE=() HWM=()

# start_mount SIDE: a foreground mount in the background, by pid; "off"
# gets SNAPFS_BENCH_NO_TRACKING=1.
start_mount() {
    local side=$1 i
    local store="$RUN/store-$side" mnt="$RUN/mnt-$side"
    local env=()
    [[ $side == off ]] && env=(SNAPFS_BENCH_NO_TRACKING=1)
    STORE[$side]=$store
    MNT[$side]=$mnt
    mkdir -p "$mnt"
    logged "mount-$side" "$BIN" --store "$store" init
    env "${env[@]}" "$BIN" --store "$store" mount "$mnt" >>"$LOG_DIR/mount-$side.log" 2>&1 &
    PID[$side]=$!
    push_undo pid "${PID[$side]}"
    push_undo snapfs "$mnt"
    for ((i = 0; i < 300; i++)); do
        [[ -e $mnt/.control ]] && return 0
        kill -0 "${PID[$side]}" 2>/dev/null || break
        sleep 0.1
    done
    die "the mount of $store on $mnt did not come up (log: $LOG_DIR/mount-$side.log)"
}

# sfs SIDE ARGS...: the CLI on a side's store (it works through the mount).
sfs() { local side=$1; shift; "$BIN" --store "${STORE[$side]}" "$@"; }

# add_live SIDE NAME FILE: register FILE as live disk NAME and check that
# the mount serves it.
add_live() {
    logged "disks" sfs "$1" disk add "$2" "$3" --live
    [[ -e ${MNT[$1]}/$2/live ]] || die "${MNT[$1]}/$2/live does not exist after disk add"
}

# hwm SIDE -> the mount's peak RSS in MiB so far.
hwm() {
    awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/${PID[$1]}/status" 2>/dev/null || echo "?"
}
note_hwm() { local s; for s in on off; do HWM["$1|$s"]=$(hwm "$s"); done; }

xattr() { getfattr --only-values -n "$2" "$1" 2>/dev/null || echo "?"; }

# wait_stored DIR NAME: until snapshot NAME of the disk folder DIR is
# stored (a live disk's `.create` returns at the freeze, before that).
wait_stored() {
    local i
    for ((i = 0; i < 60000; i++)); do
        [[ $(xattr "$1/$2" user.snapfs.state) == accomplished ]] && return 0
        sleep 0.01
    done
    die "snapshot $2 in $1 was never stored"
}

# snap SIDE DISK NAME STEP: a snapshot through `.create` (cold cache);
# notes the seconds until it is stored under STEP, and until `.create`
# returned (the freeze: the file reads the snapshot from then on) under
# STEP_freeze.
snap() {
    local side=$1 disk=$2 name=$3 step=$4 t0 t1 t2
    local dir="${MNT[$side]}/$disk"
    log "$side/$disk: $(xattr "$dir" user.snapfs.changed_bytes) bytes changed, record trusted: $(xattr "$dir" user.snapfs.record_trusted)"
    drop_caches
    t0=$(now_ms)
    echo "$name" >"$dir/.create" || die "$side/$disk: snapshot $name failed"
    t1=$(now_ms)
    wait_stored "$dir" "$name"
    t2=$(now_ms)
    note "$step" "$side" "$(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.2f", (b - a) / 1000 }')"
    note "${step}_freeze" "$side" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1000 }')"
    log "$side/$disk/$name: frozen in $((t1 - t0)) ms, stored in $((t2 - t0)) ms, added $(xattr "$dir/$name" user.snapfs.added_bytes) bytes"
}

change() {  # change FILE BYTES PIECE ROUND
    logged change "$PYTHON" "$SCRIPT_DIR/write-spread.py" "$@"
}

# ---------------------------------------------------------------- part a
part_a() {
    local side n
    for side in on off; do
        cp --sparse=always "$WL/disk-v1.img" "$RUN/vm-$side.img"
        add_live "$side" vm "$RUN/vm-$side.img"
        snap "$side" vm s0 first
    done
    # Reference: what storing that much fresh random data costs by itself
    # (a plain, not live, disk of that size, rewritten each round).
    head -c $((BENCH_LIVE_CHANGE_MB * MIB)) /dev/urandom >"$RUN/ref.img"
    logged disks sfs on disk add ref "$RUN/ref.img"
    for ((n = 1; n <= BENCH_ROUNDS; n++)); do
        for side in $(rotate $((n - 1)) on off ref); do
            if [[ $side == ref ]]; then
                head -c $((BENCH_LIVE_CHANGE_MB * MIB)) /dev/urandom >"$RUN/ref.img"
                snap on ref "r$n" ingest
            else
                change "${MNT[$side]}/vm/live" $((BENCH_LIVE_CHANGE_MB * MIB)) "$MIB" "$n"
                snap "$side" vm "s$n" incr
            fi
        done
    done
    note_hwm a
}

# ---------------------------------------------------------------- part b
part_b() {
    local n
    logged disks sfs on disk create big --size "$BENCH_BIG_SIZE"
    [[ -e ${MNT[on]}/big/live ]] || die "${MNT[on]}/big/live does not exist after disk create"
    snap on big s0 bigfirst
    for ((n = 1; n <= BENCH_ROUNDS; n++)); do
        change "${MNT[on]}/big/live" $((BENCH_BIG_CHANGE_MB * MIB)) $((4 * MIB)) "$n"
        snap on big "s$n" big
    done
    note_hwm b
}

# ---------------------------------------------------------------- part c
# fio_run ID FILE RW BS ENGINE DEPTH [EXTRA...]: one fio run; prints IOPS
# (random) or MB/s (sequential) of the direction RW uses.
fio_run() {
    local id=$1 file=$2 rw=$3 bs=$4 engine=$5 depth=$6; shift 6
    local json="$LOG_DIR/$id.fio.json"
    drop_caches
    log "fio $id: $rw $bs $engine qd$depth on $file"
    if ! fio --name="$id" --filename="$file" --rw="$rw" --bs="$bs" --ioengine="$engine" \
        --iodepth="$depth" --direct=1 --size="$BENCH_FIO_SIZE" --runtime="$BENCH_FIO_RUNTIME" \
        --time_based --output-format=json --output="$json" "$@" >>"$LOG_DIR/fio.log" 2>&1; then
        tail -n 20 "$LOG_DIR/fio.log" >&2
        die "fio $id failed"
    fi
    "$PYTHON" - "$json" "$rw" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.index("{"):])["jobs"][0]
d = job["write" if "write" in sys.argv[2] else "read"]
print("%.0f" % (d["iops"] if sys.argv[2].startswith("rand") else d["bw_bytes"] / 1e6))
EOF
}

fio_file() {  # fio_file SIDE -> the file fio works on
    case $1 in
        raw) echo "$RUN/fio-raw.img" ;;
        *) echo "${MNT[$1]}/fio/live" ;;
    esac
}

# during ROUND: the whole fio disk rewritten (untimed), then fio random
# writes on it, and a second into fio's run a snapshot of that disk through
# `.create`; notes fio's IOPS over the 500 ms intervals of its IOPS log that
# lie wholly inside the snapshot, and the snapshot's seconds.
during() {
    local n=$1 fio_pid t0 t_end rc=0
    local id="during-$n" dir="${MNT[on]}/fio"
    change "$dir/live" "$FIO_BYTES" "$MIB" 0
    drop_caches
    log "fio $id: randwrite 4k libaio qd16, a snapshot d$n beside it"
    fio --name="$id" --filename="$dir/live" --rw=randwrite --bs=4k --ioengine=libaio \
        --iodepth=16 --direct=1 --size="$BENCH_FIO_SIZE" --runtime="$BENCH_FIO_RUNTIME" \
        --time_based --output-format=json --output="$LOG_DIR/$id.fio.json" \
        --write_iops_log="$LOG_DIR/$id" --log_avg_msec="$FIO_LOG_MS" >>"$LOG_DIR/fio.log" 2>&1 &
    fio_pid=$!
    push_undo pid "$fio_pid"
    sleep 1
    t0=$(now_ms)
    echo "d$n" >"$dir/.create" || die "$id: the snapshot failed"
    wait_stored "$dir" "d$n"
    t_end=$(now_ms)
    wait "$fio_pid" || rc=$?
    release pid "$fio_pid"
    ((rc == 0)) || die "fio $id failed (exit $rc)"
    local out iops overlap secs
    out=$("$PYTHON" - "$LOG_DIR/$id.fio.json" "$LOG_DIR/${id}_iops.1.log" "$t0" "$t_end" "$FIO_LOG_MS" <<'EOF'
import json, sys
jpath, lpath = sys.argv[1], sys.argv[2]
snap_start, snap_end, step = (int(a) for a in sys.argv[3:6])
text = open(jpath).read()
d = json.loads(text[text.index("{"):])
job = d["jobs"][0]
start = d["timestamp_ms"] - job["job_runtime"]
during = []
for line in open(lpath):
    f = line.split(",")
    if len(f) < 2:
        continue
    t = start + int(f[0])  # the end of the interval
    if t - step >= snap_start and t <= snap_end:
        during.append(float(f[1]))
# IOPS over the intervals inside the snapshot; their seconds
print("%s %.1f" % ("%.0f" % (sum(during) / len(during)) if during else "-", len(during) * step / 1000))
EOF
    ) || die "$id: cannot read fio's results"
    read -r iops overlap <<<"$out"
    secs=$(awk -v ms=$((t_end - t0)) 'BEGIN { printf "%.2f", ms / 1000 }')
    log "$id: snapshot took $secs s; fio IOPS over the $overlap s inside it: $iops"
    [[ $iops == - ]] || note busy on "$iops"
    note busysnap on "$secs"
    note busyoverlap on "$overlap"
}

part_c() {
    local side n w rw bs engine depth v
    FIO_BYTES=$(numfmt --from=iec "$BENCH_FIO_SIZE")
    log "writing the $BENCH_FIO_SIZE fio files"
    head -c "$FIO_BYTES" /dev/urandom >"$RUN/fio-raw.img"
    for side in on off; do
        cp "$RUN/fio-raw.img" "$RUN/fio-$side.img"
        add_live "$side" fio "$RUN/fio-$side.img"
        # The first snapshot starts the change record (untimed).
        snap "$side" fio s0 fiofirst
    done
    for ((n = 1; n <= BENCH_ROUNDS; n++)); do
        for w in "read 1M psync 1" "write 1M psync 1" "randread 4k libaio 16" "randwrite 4k libaio 16"; do
            read -r rw bs engine depth <<<"$w"
            for side in $(rotate $((n - 1)) raw on off); do
                v=$(fio_run "$rw-$side-$n" "$(fio_file "$side")" "$rw" "$bs" "$engine" "$depth")
                note "$rw" "$side" "$v"
            done
        done
    done
    # Random writes beside a snapshot that stores the whole disk, against
    # the same with no snapshot (fio on the "on" mount both times).
    for ((n = 1; n <= BENCH_ROUNDS; n++)); do
        for side in $(rotate $((n - 1)) idle busy clean); do
            case $side in
                idle)
                    change "${MNT[on]}/fio/live" "$FIO_BYTES" "$MIB" 0
                    v=$(fio_run "idle-$n" "${MNT[on]}/fio/live" randwrite 4k libaio 16)
                    note idle on "$v" ;;
                busy) during "$n" ;;
                clean)
                    # Right after a snapshot every chunk is clean: the first
                    # write to each one marks the change record durably.
                    change "${MNT[on]}/fio/live" "$FIO_BYTES" "$MIB" 0
                    echo "c$n" >"${MNT[on]}/fio/.create" || die "snapshot c$n failed"
                    wait_stored "${MNT[on]}/fio" "c$n"
                    v=$(fio_run "clean-$n" "${MNT[on]}/fio/live" randwrite 4k libaio 16)
                    note clean on "$v" ;;
            esac
        done
    done
    note_hwm c
}

# ---------------------------------------------------------------- report
# rat A B: A / B, or "-" when either is missing.
rat() { if [[ $1 == - || $2 == - ]]; then echo -; else ratio "$1" "$2"; fi; }

# verdict VALUE OP LIMIT -> "yes" / "no" / "-"
verdict() {
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
        if (v == "" || v == "-" || v == "n/a") { print "-"; exit }
        ok = (op == "<=") ? (v + 0 <= l + 0) : (v + 0 >= l + 0)
        print ok ? "yes" : "**no**" }'
}

report() {
    local on off r raw rw label unit tgt r_raw r_off
    {
        echo "# snapfs: live disks"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, kernel $(uname -r), $BENCH_ROUNDS rounds (sides taking"
        echo "turns, who goes first rotating), binary \`$SNAPFS\`. Load average at start: $LOAD_START; at end:"
        echo "$(cut -d' ' -f1-3 /proc/loadavg). Cells: median (min-max). \"on\": a mount as shipped;"
        echo "\"off\": a mount of another store with SNAPFS_BENCH_NO_TRACKING=1 (every snapshot reads the whole disk)."
        echo
        if has_part a || has_part b; then
            echo "| snapshot through \`.create\`, cold cache | unit | tracking on | tracking off | off / on | target | met |"
            echo "|---|---|--:|--:|--:|---|---|"
        fi
        if has_part a; then
            echo "| a. first snapshot of the 4 GiB ext4 disk ($(mb "$ALLOC_V1") MB allocated) | s | $(stat_of first on) | $(stat_of first off) | | | |"
            on=$(median_of incr on); off=$(median_of incr off); r=$(ratio "$off" "$on")
            local met; met=$(verdict "$on" "<=" 0.5)
            [[ $(verdict "$r" ">=" 3) == yes ]] || met="**no**"
            echo "| a. next snapshot after $BENCH_LIVE_CHANGE_MB MiB changed through \`live\` (1 MiB writes, spread), until stored | s | $(stat_of incr on) | $(stat_of incr off) | $r | on <= 0.5 s, off/on >= 3 | $met |"
            echo "| a. the same, until \`.create\` returns (frozen; its file reads the snapshot) | s | $(stat_of incr_freeze on) | $(stat_of incr_freeze off) | | | |"
        fi
        if has_part a; then
            echo "| a. reference: snapshot of a plain (not live) disk of $BENCH_LIVE_CHANGE_MB MiB of fresh random data | s | $(stat_of ingest on) | | | | |"
        fi
        if has_part b; then
            echo "| b. first snapshot of the empty $BENCH_BIG_SIZE sparse disk | s | $(stat_of bigfirst on) | | | | |"
            on=$(median_of big on)
            echo "| b. next snapshot after $BENCH_BIG_CHANGE_MB MiB changed (4 MiB writes, spread) | s | $(stat_of big on) | | | follows the $BENCH_BIG_CHANGE_MB MiB: $(rate $((BENCH_BIG_CHANGE_MB * MIB)) "$on") MB/s of changed data | see text |"
        fi
        if has_part c; then
            echo
            echo "fio on a $BENCH_FIO_SIZE file of random data, direct=1, ${BENCH_FIO_RUNTIME} s time-based runs, page cache dropped before each;"
            echo "\"raw\": the file itself; \"on\"/\"off\": an identical file as a live disk, through \`MNT/fio/live\`."
            echo
            echo "| fio | unit | raw file | live, on | live, off | on / raw | on / off | target | met |"
            echo "|---|---|--:|--:|--:|--:|--:|---|---|"
            for rw in read write randread randwrite; do
                case $rw in
                    read) label="sequential read 1 MiB, psync"; unit=MB/s; tgt=0.7 ;;
                    write) label="sequential write 1 MiB, psync"; unit=MB/s; tgt=0.7 ;;
                    randread) label="random read 4 KiB, libaio qd16"; unit=IOPS; tgt=0.5 ;;
                    randwrite) label="random write 4 KiB, libaio qd16"; unit=IOPS; tgt=0.5 ;;
                esac
                raw=$(median_of "$rw" raw); on=$(median_of "$rw" on); off=$(median_of "$rw" off)
                r_raw=$(ratio "$on" "$raw"); r_off=$(ratio "$on" "$off")
                local m1 m2
                m1=$(verdict "$r_raw" ">=" "$tgt"); m2=$(verdict "$r_off" ">=" 0.9)
                echo "| $label | $unit | $(stat_of "$rw" raw) | $(stat_of "$rw" on) | $(stat_of "$rw" off) | $r_raw | $r_off | on/raw >= $tgt; tracking costs <= 10% (on/off >= 0.9) | $m1; $m2 |"
            done
            on=$(median_of busy on); off=$(median_of idle on); r=$(rat "$on" "$off")
            echo "| random write 4 KiB qd16 through \`live\` (on), idle (after the same rewrite of the disk) | IOPS | | $(stat_of idle on) | | | | | |"
            echo "| the same right after a snapshot of it (every chunk clean: first writes mark the change record) | IOPS | | $(stat_of clean on) | | clean / idle: $(rat "$(median_of clean on)" "$off") | | | |"
            echo "| the same while a snapshot stores the whole rewritten $BENCH_FIO_SIZE (snapshot $(stat_of busysnap on) s; IOPS over $(stat_of busyoverlap on) s of overlap) | IOPS | | $(stat_of busy on) | | busy / idle: $r | | >= 0.5 | $(verdict "$r" ">=" 0.5) |"
        fi
        echo
        echo "| mount's peak RSS (VmHWM), MiB | after a | after b | after c |"
        echo "|---|--:|--:|--:|"
        echo "| on | ${HWM[a|on]:--} | ${HWM[b|on]:--} | ${HWM[c|on]:--} |"
        echo "| off | ${HWM[a|off]:--} | ${HWM[b|off]:--} | ${HWM[c|off]:--} |"
    } | tee "$BENCH_LIVE_RESULTS"
    log "table written to $BENCH_LIVE_RESULTS; logs in $LOG_DIR"
}

main() {
    require_root
    install_tools fio=fio fusermount3=fuse3 getfattr=attr numfmt=coreutils
    check_bench_dir
    [[ -x $SNAPFS ]] || die "no binary at $SNAPFS (cargo build --release)"
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    build_workload
    ALLOC_V1=$(alloc_of "$WL/disk-v1.img")
    for side in on off; do
        if [[ -e $RUN/mnt-$side ]] && mountpoint -q "$RUN/mnt-$side"; then
            die "$RUN/mnt-$side is still mounted (an earlier run?): unmount it first"
        fi
    done
    rm -rf "$RUN"
    mkdir -p "$LOG_DIR"
    # A copy: others may rebuild the binary while this runs.
    BIN="$RUN/snapfs"
    cp "$SNAPFS" "$BIN"
    start_mount on
    start_mount off
    local t0=$SECONDS
    has_part a && part_a
    has_part b && part_b
    has_part c && part_c
    log "measured in $((SECONDS - t0)) s"
    report
}

main "$@"
