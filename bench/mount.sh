#!/usr/bin/env bash
# bench/mount.sh: benchmark the read path through a snapfs mount.
#
# Takes snapshot s1 of the engine benchmark's v1 image through a snapfs mount
# (echo s1 > MNT/vm1/.create) and reads it back through the mount: cold
# sequential reads (cat, dd), 4 KiB random reads (fio, 1 and 4 jobs), tar of
# the ext4 inside it loop-mounted read-only, against the raw image file and
# the same image inside `restic mount` and `borg mount`. Also times `ls -l` of
# a folder of 1000 snapshots and watches the mount's peak memory against its
# --cache-size. Every timed step starts with a freshly started FUSE server and
# a dropped page cache. Prints a Markdown table and writes it to
# bench/results-mount-latest.md. See bench/README.md for the knobs.
#
# Needs root (FUSE, loop mounts, drop_caches, apt-get).
set -euo pipefail

# ---------------------------------------------------------------- settings
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_SUBDIR=run-mount       # stores, repos, logs of this run: $BENCH_DIR/run-mount
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"   # settings shared with engine.sh, cleanup, timing, workload

BENCH_CACHE_SIZE=${BENCH_CACHE_SIZE:-256M}            # snapfs mount --cache-size
BENCH_FIO_RUNTIME=${BENCH_FIO_RUNTIME:-20}            # seconds per fio run
BENCH_READ_TIMEOUT=${BENCH_READ_TIMEOUT:-600}         # cap of one sequential read / tar
BENCH_SNAPSHOTS=${BENCH_SNAPSHOTS:-1000}              # snapshots in the ls -l folder
BENCH_MOUNT_TOOLS=${BENCH_MOUNT_TOOLS:-"raw snapfs restic borg"}  # subset to run
BENCH_VERIFY=${BENCH_VERIFY:-1}                       # 1: cmp the snapshot with the image
BENCH_MOUNT_RESULTS=${BENCH_MOUNT_RESULTS:-$SCRIPT_DIR/results-mount-latest.md}

IMG="$WL/disk-v1.img"        # the disk every tool serves back
SMALL="$RUN/small.img"       # the small disk with many snapshots
STORE="$RUN/snapfs-store"
RESTIC_REPO="$RUN/restic-repo"
BORG_REPO="$RUN/borg-repo"
MNT="$RUN/mnt-snapfs"
RMNT="$RUN/mnt-restic"
BMNT="$RUN/mnt-borg"
LMNT="$RUN/mnt-loop"
# Also for `snapfs umount` in the cleanup: without the store it cannot find
# the mount's process and returns before that process has ended.
export SNAPFS_STORE="$STORE"

has_tool() { [[ " $BENCH_MOUNT_TOOLS " == *" $1 "* ]]; }

# size_bytes 256M -> 268435456 (K, M, G are powers of 1024, as snapfs reads them)
size_bytes() {
    awk -v s="$1" 'BEGIN {
        n = s + 0; u = toupper(substr(s, length(s)))
        if (u == "K") n *= 1024; else if (u == "M") n *= 1048576; else if (u == "G") n *= 1073741824
        printf "%d", n }'
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# ---------------------------------------------------------------- FUSE servers
# One FUSE server at a time, started fresh before every timed step so no step
# profits from chunks an earlier step left in a server's own cache.
SRV_KIND="" SRV_PID="" SRV_MNT=""
declare -A PEAK_KB=()        # kind -> largest VmHWM (KiB) of its server processes
declare -A PEAK_AT=()        # kind -> step of that largest VmHWM
SRV_STEP=""                  # step the running server serves (for PEAK_AT)

# serve KIND STEP: stop any running server, start KIND (snapfs|restic|borg),
# wait until it serves.
serve() {
    local kind=$1 step=$2 cmd ready i
    stop_server
    case $kind in
        snapfs)
            SRV_MNT=$MNT; ready="$MNT/vm1"
            cmd=("$SNAPFS" --store "$STORE" mount "$MNT" --cache-size "$BENCH_CACHE_SIZE") ;;
        restic)
            SRV_MNT=$RMNT; ready="$RMNT/snapshots/latest"
            cmd=(restic -r "$RESTIC_REPO" mount "$RMNT") ;;
        borg)
            SRV_MNT=$BMNT; ready="$BMNT/disk-v1.img"
            cmd=(borg mount -f "$BORG_REPO::s1" "$BMNT") ;;
        *) die "serve: unknown server $kind" ;;
    esac
    mkdir -p "$SRV_MNT"
    echo "### $step: ${cmd[*]}" >>"$LOG_DIR/$kind-server.log"
    "${cmd[@]}" >>"$LOG_DIR/$kind-server.log" 2>&1 &
    SRV_PID=$! SRV_KIND=$kind SRV_STEP=$step
    push_undo pid "$SRV_PID"
    if [[ $kind == snapfs ]]; then push_undo snapfs "$SRV_MNT"; else push_undo fuse "$SRV_MNT"; fi
    for ((i = 0; i < 600; i++)); do
        mountpoint -q "$SRV_MNT" && [[ -e $ready ]] && return 0
        kill -0 "$SRV_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$LOG_DIR/$kind-server.log" >&2
    die "$kind mount on $SRV_MNT did not come up (log: $LOG_DIR/$kind-server.log)"
}

# stop_server: note the server's peak RSS (VmHWM), unmount, wait for its end.
stop_server() {
    [[ -n $SRV_PID ]] || return 0
    local hwm kind=$SRV_KIND
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$SRV_PID/status" 2>/dev/null || true)
    if [[ -n $hwm ]]; then
        echo "$SRV_STEP VmHWM ${hwm} kB" >>"$LOG_DIR/$kind-rss.log"
        if ((hwm > ${PEAK_KB[$kind]:-0})); then PEAK_KB[$kind]=$hwm; PEAK_AT[$kind]=$SRV_STEP; fi
    fi
    if [[ $kind == snapfs ]]; then release snapfs "$SRV_MNT"; else release fuse "$SRV_MNT"; fi
    release pid "$SRV_PID"
    SRV_KIND="" SRV_PID="" SRV_MNT=""
}

# file_of KIND: path of the v1 image as KIND serves it.
file_of() {
    case $1 in
        raw) echo "$IMG" ;;
        snapfs) echo "$MNT/vm1/s1" ;;
        restic) echo "$RMNT/snapshots/latest$IMG" ;;   # restic keeps the absolute path
        borg) echo "$BMNT/disk-v1.img" ;;
    esac
}

# ---------------------------------------------------------------- timing
# run_timed ID TIMEOUT CMD...: cold cache, run CMD (stdout to ID.out, stderr
# to ID.log), capped at TIMEOUT seconds. Sets M_S (wall seconds, 3 decimals)
# and M_OK (1 ok, 0 failed or timed out; then M_S says which).
run_timed() {
    local id=$1 to=$2; shift 2
    local out="$LOG_DIR/$id.out" lg="$LOG_DIR/$id.log" t0 t1 rc=0
    drop_caches
    log "run $id: $*"
    echo "### $id: $*" >>"$lg"
    t0=$(date +%s%N)
    # In the background and waited for, so Ctrl-C/SIGTERM cleans up at once
    # (the cleanup kills the command first) instead of after the step.
    timeout "$to" "$@" >"$out" 2>>"$lg" &
    local cmd_pid=$!
    push_undo pid "$cmd_pid"
    wait "$cmd_pid" || rc=$?
    t1=$(date +%s%N)
    release pid "$cmd_pid"
    M_OK=1
    M_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    if ((rc == 124)); then
        M_OK=0; M_S=">$to s"
        log "warning: $id timed out after $to s"
    elif ((rc != 0)); then
        M_OK=0; M_S="failed"
        tail -n 5 "$lg" >&2
        log "warning: $id failed (exit $rc, log: $lg)"
    fi
}

# Results: R[key] = cell text; V[key] = number used for the ratios.
declare -A R=() V=()
cell() { echo "${R[$1]:--}"; }

# ---------------------------------------------------------------- setup
setup_snapfs() {
    logged snapfs "$SNAPFS" --store "$STORE" init
    logged snapfs "$SNAPFS" --store "$STORE" disk add vm1 "$IMG"
    logged snapfs "$SNAPFS" --store "$STORE" disk add many "$SMALL"
}

setup_restic() {
    local t0
    logged restic restic -r "$RESTIC_REPO" init --repository-version 2
    t0=$SECONDS
    logged restic restic -r "$RESTIC_REPO" backup "$IMG"
    log "restic backup of v1: $((SECONDS - t0)) s"
}

setup_borg() {
    local t0
    logged borg borg init --encryption none "$BORG_REPO"
    t0=$SECONDS
    pushd "$WL" >/dev/null
    logged borg borg create "$BORG_REPO::s1" disk-v1.img
    popd >/dev/null
    log "borg create of v1: $((SECONDS - t0)) s"
    # borg mount needs llfuse or pyfuse3 for the system python.
    if ! /usr/bin/python3 -c 'import llfuse' 2>/dev/null &&
        ! /usr/bin/python3 -c 'import pyfuse3' 2>/dev/null; then
        log "installing python3-llfuse for borg mount"
        apt-get install -y -qq python3-llfuse >/dev/null 2>&1 || apt-get install -y -qq python3-pyfuse3 >/dev/null
    fi
}

# ---------------------------------------------------------------- steps
# Snapshots through the mount: s1 of the big disk, then many of the small one.
step_create() {
    local n
    serve snapfs create
    # shellcheck disable=SC2016
    run_timed create-s1 "$BENCH_READ_TIMEOUT" sh -c 'echo s1 >"$1"' _ "$MNT/vm1/.create"
    ((M_OK)) || die "snapshot s1 through .create failed: $(tail -n 3 "$LOG_DIR/create-s1.log")"
    R[create_s1]="$M_S s ($(rate "$ALLOC_V1" "$M_S") MB/s of data)"
    [[ -f $(file_of snapfs) ]] || die "$(file_of snapfs) missing after .create"
    # shellcheck disable=SC2016
    run_timed create-many "$BENCH_READ_TIMEOUT" bash -c '
        for ((i = 1; i <= $1; i++)); do
            printf -v n "snap-%04d" "$i"
            echo "$n" >"$2/.create" || { echo "write of $n failed" >&2; exit 1; }
        done' _ "$BENCH_SNAPSHOTS" "$MNT/many"
    ((M_OK)) || die "taking $BENCH_SNAPSHOTS snapshots through .create failed"
    n=$(find "$MNT/many" -mindepth 1 -maxdepth 1 ! -name '.*' | wc -l)
    ((n == BENCH_SNAPSHOTS)) || die "$MNT/many lists $n snapshots, expected $BENCH_SNAPSHOTS"
    R[create_many]="$M_S s ($(awk -v s="$M_S" -v n="$BENCH_SNAPSHOTS" 'BEGIN { printf "%.1f", s * 1000 / n }') ms each)"
    stop_server
    PEAK_KB[snapfs-create]=${PEAK_KB[snapfs]:-0}
    PEAK_KB[snapfs]=0
}

# ls -l of the folder with many snapshots, on a fresh mount, cold then warm.
step_ls() {
    local lines
    serve snapfs ls
    run_timed ls-cold 60 ls -l "$MNT/many"
    R[ls_cold]=$(awk -v s="$M_S" 'BEGIN { printf "%.0f", s * 1000 }')
    lines=$(wc -l <"$LOG_DIR/ls-cold.out")
    ((lines == BENCH_SNAPSHOTS + 1)) || log "warning: ls -l printed $lines lines, expected $((BENCH_SNAPSHOTS + 1))"
    # warm: the same listing again, page cache and server as they are
    local t0 t1
    t0=$(date +%s%N); ls -l "$MNT/many" >/dev/null; t1=$(date +%s%N)
    R[ls_warm]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (b - a) / 1e6 }')
    stop_server
}

# seq KIND TOOL: one cold sequential read of the image through KIND.
seq_read() {
    local kind=$1 how=$2 f id size
    id="seq-$how-$kind"
    [[ $kind == raw ]] || serve "$kind" "$id"
    f=$(file_of "$kind")
    size=$(stat -c %s "$f")
    # shellcheck disable=SC2016  # $1 is for the inner sh
    case $how in
        cat) run_timed "$id" "$BENCH_READ_TIMEOUT" sh -c 'cat "$1" >/dev/null' _ "$f" ;;
        dd) run_timed "$id" "$BENCH_READ_TIMEOUT" dd if="$f" of=/dev/null bs=1M ;;
        data) run_timed "$id" "$BENCH_READ_TIMEOUT" "$PYTHON" "$SCRIPT_DIR/read-data.py" "$f" ;;
    esac
    stop_server
    if ((M_OK)); then
        if [[ $how == data ]]; then
            R["$how|$kind"]="$M_S s, $(rate "$(cat "$LOG_DIR/$id.out")" "$M_S") MB/s"
        else
            R["$how|$kind"]="$M_S s, $(rate "$size" "$M_S") MB/s"
        fi
        V["$how|$kind"]=$M_S
    else
        R["$how|$kind"]=$M_S
    fi
}

# fio_read KIND JOBS: 4 KiB random reads through KIND for BENCH_FIO_RUNTIME s.
fio_read() {
    local kind=$1 jobs=$2 f id="fio-$2j-$1" iops
    [[ $kind == raw ]] || serve "$kind" "$id"
    f=$(file_of "$kind")
    run_timed "$id" $((BENCH_FIO_RUNTIME + 120)) fio --name=randread --filename="$f" --readonly \
        --rw=randread --bs=4k --ioengine=psync --direct=0 --size="$(stat -c %s "$f")" \
        --runtime="$BENCH_FIO_RUNTIME" --time_based --numjobs="$jobs" --group_reporting \
        --output-format=json
    stop_server
    if ((M_OK)) && iops=$("$PYTHON" -c '
import json, sys
t = open(sys.argv[1]).read()
print("%.0f" % json.loads(t[t.index("{"):])["jobs"][0]["read"]["iops"])' "$LOG_DIR/$id.out" 2>>"$LOG_DIR/$id.log"); then
        R["fio$jobs|$kind"]=$iops
        V["fio$jobs|$kind"]=$iops
    elif ((M_OK)); then
        R["fio$jobs|$kind"]="no result"
    else
        R["fio$jobs|$kind"]=$M_S
    fi
}

# tar_fs KIND: tar of the ext4 inside the image, loop-mounted read-only.
tar_fs() {
    local kind=$1 id="tar-$1" f bytes
    [[ $kind == raw ]] || serve "$kind" "$id"
    f=$(file_of "$kind")
    mount_img_ro "$f" "$LMNT"
    # tar -f /dev/null would skip reading file data; wc -c makes it read all.
    # shellcheck disable=SC2016
    run_timed "$id" "$BENCH_READ_TIMEOUT" sh -c 'tar -C "$1" -cf - . | wc -c' _ "$LMNT"
    release mount "$LMNT"
    release loop "$LAST_LOOP"
    stop_server
    if ((M_OK)); then
        bytes=$(tr -d ' ' <"$LOG_DIR/$id.out")
        R["tar|$kind"]="$M_S s, $(rate "$bytes" "$M_S") MB/s ($(mb "$bytes") MB)"
        V["tar|$kind"]=$M_S
    else
        R["tar|$kind"]=$M_S
    fi
}

verify_snapshot() {
    serve snapfs verify
    log "verify: cmp $(file_of snapfs) $IMG"
    if cmp "$(file_of snapfs)" "$IMG" >>"$LOG_DIR/verify.log" 2>&1; then
        VERIFIED="the snapshot read through the mount equals v1 (cmp)"
    else
        VERIFIED="MISMATCH: the snapshot read through the mount differs from v1 (log: $LOG_DIR/verify.log)"
        MISMATCH=1
    fi
    log "$VERIFIED"
    stop_server
}

# ---------------------------------------------------------------- report
print_table() {
    local k kinds=(raw snapfs restic borg)
    local -A label=(
        [cat]="cold sequential read, \`cat\`"
        [dd]="cold sequential read, \`dd bs=1M\`"
        [data]="cold read of data regions only (SEEK_DATA)"
        [fio1]="fio 4 KiB random read, 1 job, IOPS"
        [fio4]="fio 4 KiB random read, 4 jobs, IOPS"
        [tar]="\`tar -cf - . | wc -c\` of the ext4, loop-mounted ro"
    )
    echo "| step | raw file | snapfs mount | restic mount | borg mount |"
    echo "|---|--:|--:|--:|--:|"
    for k in cat dd data fio1 fio4 tar; do
        local line="| ${label[$k]} |" kind
        for kind in "${kinds[@]}"; do line+=" $(cell "$k|$kind") |"; done
        echo "$line"
    done
    local line="| peak RSS of the FUSE server (VmHWM), MB |" kind
    line+=" - |"
    for kind in snapfs restic borg; do
        if [[ -n ${PEAK_KB[$kind]:-} && ${PEAK_KB[$kind]} != 0 ]]; then
            line+=" $(mb $((PEAK_KB[$kind] * 1024))) (${PEAK_AT[$kind]}) |"
        else
            line+=" - |"
        fi
    done
    echo "$line"
    echo
    echo "| snapfs only | |"
    echo "|---|--:|"
    echo "| snapshot s1 of v1 via \`.create\` | $(cell create_s1) |"
    echo "| $BENCH_SNAPSHOTS snapshots of a 4 MiB disk via \`.create\` | $(cell create_many) |"
    echo "| \`ls -l\` of the folder with $BENCH_SNAPSHOTS snapshots, cold (fresh mount) | $(cell ls_cold) ms |"
    echo "| the same \`ls -l\` again, warm | $(cell ls_warm) ms |"
    echo "| peak RSS of the mount that took the snapshots | $(mb $((${PEAK_KB[snapfs-create]:-0} * 1024))) MB |"
}

# verdict VALUE OP TARGET -> "PASS"/"FAIL"/"n/a"
verdict() {
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        if (v == "n/a" || v == "") { print "n/a"; exit }
        ok = (op == ">=") ? (v + 0 >= t + 0) : (v + 0 <= t + 0)
        print ok ? "PASS" : "FAIL" }'
}

# speedup A B: time B / time A (how many times faster A is), or n/a
speedup() {
    local a=${V[$1]:-} b=${V[$2]:-}
    [[ -n $a && -n $b ]] && ratio "$b" "$a" || echo n/a
}
iops_ratio() {
    local a=${V[$1]:-} b=${V[$2]:-}
    [[ -n $a && -n $b ]] && ratio "$a" "$b" || echo n/a
}

print_ratios() {
    local r cache_b peak_kb limit_b peak_b
    echo
    echo "Ratios (targets in brackets):"
    echo
    r=$(speedup cat\|snapfs cat\|raw)
    echo "- snapfs cold sequential read / raw file (\`cat\`): $r [>= 0.5] $(verdict "$r" '>=' 0.5)"
    r=$(speedup dd\|snapfs dd\|raw)
    echo "- the same with \`dd bs=1M\`: $r"
    r=$(speedup data\|snapfs data\|raw)
    echo "- the same reading data regions only (SEEK_DATA): $r"
    r=$(speedup cat\|snapfs cat\|borg)
    echo "- snapfs sequential read / borg mount (\`cat\`): $r [>= 4] $(verdict "$r" '>=' 4)"
    r=$(speedup cat\|snapfs cat\|restic)
    echo "- snapfs sequential read / restic mount (\`cat\`): $r"
    r=$(iops_ratio fio1\|snapfs fio1\|restic)
    echo "- snapfs 4K random read IOPS / restic mount, 1 job: $r [>= 20] $(verdict "$r" '>=' 20)"
    r=$(iops_ratio fio4\|snapfs fio4\|restic)
    echo "- snapfs 4K random read IOPS / restic mount, 4 jobs: $r [>= 20] $(verdict "$r" '>=' 20)"
    r=$(iops_ratio fio1\|snapfs fio1\|borg)
    echo "- snapfs 4K random read IOPS / borg mount, 1 job: $r; 4 jobs: $(iops_ratio fio4\|snapfs fio4\|borg)"
    r=$(speedup tar\|snapfs tar\|raw)
    echo "- snapfs tar of the loop-mounted snapshot / loop-mounted source: $r"
    cache_b=$(size_bytes "$BENCH_CACHE_SIZE")
    limit_b=$((cache_b + 64 * 1048576))
    peak_kb=$(max "${PEAK_KB[snapfs]:-0}" "${PEAK_KB[snapfs-create]:-0}")
    peak_b=$((peak_kb * 1024))
    if ((peak_kb > 0)); then
        echo "- snapfs peak RSS $(mib "$peak_b") MiB vs --cache-size $BENCH_CACHE_SIZE + 64 MiB = $(mib "$limit_b") MiB [RSS <= cache + 64 MiB] $(verdict "$peak_b" '<=' "$limit_b")"
    fi
}

max() { (($1 > $2)) && echo "$1" || echo "$2"; }

report() {
    local snapfs_v
    snapfs_v=$("$SNAPFS" --version 2>/dev/null | head -n 1 || true)
    {
        echo "# snapfs mount benchmark (read path)"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r); ${snapfs_v:-snapfs}, default store settings, \`--cache-size $BENCH_CACHE_SIZE\`;"
        echo "$(restic version | awk '{print "restic", $2}'), $(borg --version), $(fio --version)."
        echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg). The machine is shared"
        echo "and noisy (2 cores, other jobs compile and run tests next to the benchmark): treat the numbers as rough."
        echo
        echo "Workload: the engine benchmark's v1 image (ext4 in a $BENCH_DISK_SIZE sparse file, $(mb "$ALLOC_V1") MB allocated,"
        echo "BENCH_DATA_MB=$BENCH_DATA_MB). Every timed step starts with a freshly started FUSE server and a dropped page"
        echo "cache. MB = 10^6 bytes. Sequential rates are the file size ($(mb "$SIZE_V1") MB, holes included) / wall time,"
        echo "except the data-regions row (bytes read / time). fio: psync, direct=0, size = the image, ${BENCH_FIO_RUNTIME} s time-based."
        echo
        print_table
        print_ratios
        echo
        echo "Verification: ${VERIFIED:-not run (BENCH_VERIFY=0)}."
    } | tee "$BENCH_MOUNT_RESULTS"
    log "table written to $BENCH_MOUNT_RESULTS; logs in $LOG_DIR"
}

# ---------------------------------------------------------------- main
main() {
    local kind how
    require_root
    install_tools fio=fio fusermount3=fuse3 python3=python3
    check_bench_dir
    [[ -e /dev/fuse ]] || die "/dev/fuse missing: no FUSE here"
    [[ -x $SNAPFS ]] || die "no snapfs binary at $SNAPFS (cargo build --release, or set SNAPFS)"
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

    build_workload
    ALLOC_V1=$(alloc_of "$IMG")
    SIZE_V1=$(stat -c %s "$IMG")

    rm -rf "$RUN"
    mkdir -p "$LOG_DIR"
    MISMATCH=0
    # Run a copy: others may rebuild target/release while this runs.
    cp "$SNAPFS" "$RUN/snapfs"
    SNAPFS="$RUN/snapfs"

    truncate -s 4M "$SMALL"
    head -c 1048576 /dev/urandom | dd of="$SMALL" conv=notrunc status=none
    setup_snapfs
    has_tool restic && setup_restic
    has_tool borg && setup_borg

    step_create
    step_ls
    for how in cat dd; do
        for kind in raw snapfs restic borg; do
            has_tool "$kind" && seq_read "$kind" "$how"
        done
    done
    for kind in raw snapfs; do has_tool "$kind" && seq_read "$kind" data; done
    for how in 1 4; do
        for kind in raw snapfs restic borg; do
            has_tool "$kind" && fio_read "$kind" "$how"
        done
    done
    for kind in raw snapfs; do has_tool "$kind" && tar_fs "$kind"; done
    [[ $BENCH_VERIFY == 1 ]] && verify_snapshot
    report
    ((MISMATCH == 0)) || die "the snapshot read through the mount differs from its source"
}

main "$@"
