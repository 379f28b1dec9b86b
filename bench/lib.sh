# shellcheck shell=bash disable=SC2034  # sourced; globals are used by the scripts
# bench/lib.sh: shared parts of the benchmarks (sourced, not run).
#
# Settings, logging, cleanup of mounts/loop devices/processes, cold-cache
# timing and the workload (ext4 images with real files) that engine.sh and
# mount.sh both use. A script sets RUN_SUBDIR (its run folder under
# $BENCH_DIR) before sourcing this file.

# ---------------------------------------------------------------- settings
BENCH_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_LIB_DIR/.." && pwd)

BENCH_DIR=${BENCH_DIR:-/var/tmp/snapfs-bench}        # workload + stores; not tmpfs
BENCH_DATA_MB=${BENCH_DATA_MB:-1500}                 # real files copied into v1
BENCH_DISK_SIZE=${BENCH_DISK_SIZE:-4G}               # virtual size of the sparse image
BENCH_REBUILD=${BENCH_REBUILD:-0}                    # 1: rebuild the workload
SNAPFS=${SNAPFS:-$REPO_DIR/target/release/snapfs}

# disk-v1.img, disk-v2.img, clone.img: kept between runs, one set per data size
# so a quick run does not throw away the full workload.
WL="$BENCH_DIR/workload-${BENCH_DATA_MB}mb"
RUN="$BENCH_DIR/${RUN_SUBDIR:-run}"   # stores, repos, logs of this run (wiped at start)
LOG_DIR="$RUN/logs"

# Tools never ask questions; caches of borg/restic live in the run dir so each
# run starts from nothing (a warm ~/.cache would favour the baselines).
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR="$RUN/borg-home"
export RESTIC_PASSWORD=snapfs-bench
export RESTIC_CACHE_DIR="$RUN/restic-cache"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
# Everything a run sets up that must be undone (loop devices, mounts, FUSE
# servers, background processes) is pushed on one stack and undone in reverse
# order on any exit (success, failure, Ctrl-C), so a failed run never leaves
# /dev/loopN busy or a mount behind. Entries are "KIND ARG":
#   loop DEV      losetup -d
#   mount DIR     umount (lazy if busy)
#   fuse DIR      fusermount3 -u (lazy umount if that fails)
#   snapfs DIR    snapfs umount (fusermount3 -u / lazy umount if that fails)
#   pid PID       kill, then kill -9 after 10 s
#   file PATH     rm -f (what a server leaves behind)
#   dir PATH      rm -rf (a run folder of its own)
UNDO=()
push_undo() { UNDO+=("$1 $2"); }

undo_one() {
    local kind=$1 arg=$2 i
    case $kind in
        loop) losetup -d "$arg" 2>/dev/null || true ;;
        mount)
            if mountpoint -q "$arg"; then
                umount "$arg" 2>/dev/null || umount -l "$arg" || true
            fi ;;
        fuse)
            if mountpoint -q "$arg"; then
                fusermount3 -u "$arg" 2>/dev/null || fusermount -u "$arg" 2>/dev/null ||
                    umount -l "$arg" || true
            fi ;;
        snapfs)
            if mountpoint -q "$arg"; then
                timeout 60 "$SNAPFS" umount "$arg" >/dev/null 2>&1 ||
                    fusermount3 -u "$arg" 2>/dev/null || umount -l "$arg" || true
            fi ;;
        file) rm -f "$arg" ;;
        dir) rm -rf "$arg" ;;
        pid)
            if kill -0 "$arg" 2>/dev/null; then
                kill "$arg" 2>/dev/null || true
                for ((i = 0; i < 100; i++)); do
                    kill -0 "$arg" 2>/dev/null || break
                    sleep 0.1
                done
                kill -9 "$arg" 2>/dev/null || true
            fi
            wait "$arg" 2>/dev/null || true ;;
    esac
}

# release KIND ARG: undo one entry now and drop it from the stack.
release() {
    local i keep=()
    undo_one "$1" "$2"
    for i in "${UNDO[@]}"; do [[ $i == "$1 $2" ]] || keep+=("$i"); done
    UNDO=("${keep[@]}")
}

cleanup() {
    local i
    for ((i = ${#UNDO[@]} - 1; i >= 0; i--)); do
        undo_one "${UNDO[i]%% *}" "${UNDO[i]#* }"
    done
    UNDO=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # turn signals into an exit so the EXIT trap runs
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR

# mount_img IMG DIR: loop-mount an image read-write.
# noinit_itable stops ext4's background thread from zeroing inode tables,
# which would otherwise allocate blocks at random moments and make the
# image's allocated size depend on how long it stayed mounted.
mount_img() {
    local img=$1 dir=$2 dev
    mkdir -p "$dir"
    dev=$(losetup --find --show "$img")
    push_undo loop "$dev"
    mount -o noinit_itable "$dev" "$dir"
    push_undo mount "$dir"
}

# mount_img_ro IMG DIR: loop-mount an image read-only (read-only loop device,
# so nothing can write to the image, not even journal recovery).
mount_img_ro() {
    local img=$1 dir=$2 dev
    mkdir -p "$dir"
    dev=$(losetup --find --show --read-only "$img")
    push_undo loop "$dev"
    mount -o ro "$dev" "$dir"
    push_undo mount "$dir"
    LAST_LOOP=$dev
}
umount_all() { sync; cleanup; }

# ---------------------------------------------------------------- helpers
require_root() { [[ $(id -u) -eq 0 ]] || die "run as root (loop mounts, drop_caches)"; }

# install_tools [CMD=PACKAGE...]: install whatever is missing (the engine's
# tools plus the extra ones given), with one apt-get update at most.
install_tools() {
    local -A want=(
        [borg]=borgbackup [restic]=restic [b3sum]=b3sum [mkfs.ext4]=e2fsprogs
        [/usr/bin/time]=time [losetup]=mount [cmp]=diffutils [tar]=tar
    )
    local missing=() cmd kv
    for kv in "$@"; do want[${kv%%=*}]=${kv#*=}; done
    for cmd in "${!want[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
    done
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# check_bench_dir: drop_caches must work and BENCH_DIR must be on a disk.
check_bench_dir() {
    [[ -w /proc/sys/vm/drop_caches ]] || die "/proc/sys/vm/drop_caches not writable: cold-cache timings impossible"
    mkdir -p "$BENCH_DIR"
    if [[ $(findmnt -n -o FSTYPE -T "$BENCH_DIR") == tmpfs ]]; then
        die "BENCH_DIR=$BENCH_DIR is on tmpfs (reads would come from RAM); pick a disk-backed dir"
    fi
}

# Cold cache before every timed step, the same for every tool.
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

bytes_of() { du -sb "$1" | cut -f1; }        # apparent bytes (store/repo size)
alloc_of() { du -B1 "$1" | cut -f1; }        # allocated bytes (data in a sparse image)
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
rate() {  # rate BYTES SECONDS -> MB/s
    awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", b / 1e6 / s; else print "inf" }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# timed NAME CMD...: cold cache, run CMD under /usr/bin/time, append its output
# to the log. Sets T_S (wall seconds), T_RSS (peak RSS in KiB), T_USER and
# T_SYS (CPU seconds); NAME.time in the log folder keeps them in that order.
timed() {
    local name=$1; shift
    local tf="$LOG_DIR/$name.time"
    drop_caches
    log "run $name: $*"
    echo "### $name: $*" >>"$LOG_DIR/$name.log"
    if ! /usr/bin/time -f '%e %M %U %S' -o "$tf" "$@" >>"$LOG_DIR/$name.log" 2>&1; then
        tail -n 20 "$LOG_DIR/$name.log" >&2
        die "$name failed (log: $LOG_DIR/$name.log)"
    fi
    read -r T_S T_RSS T_USER T_SYS <"$tf"
}

# logged NAME CMD...: an untimed setup command; on failure show its log.
logged() {
    local name=$1; shift
    echo "### $*" >>"$LOG_DIR/$name.log"
    if ! "$@" >>"$LOG_DIR/$name.log" 2>&1; then
        tail -n 20 "$LOG_DIR/$name.log" >&2
        die "$name: '$*' failed (log: $LOG_DIR/$name.log)"
    fi
}

# PYTHON: the system python3 when there is one (a pyenv shim adds start-up
# time to every timed run).
PYTHON=python3
[[ -x /usr/bin/python3 ]] && PYTHON=/usr/bin/python3
# read_data FILE: read only the data regions (SEEK_DATA/SEEK_HOLE) of FILE,
# print the bytes read (see read-data.py).
read_data() { "$PYTHON" "$BENCH_LIB_DIR/read-data.py" "$1"; }

# ---------------------------------------------------------------- workload
# pick_files SRC CAP_BYTES: print paths (relative to /, NUL-separated) of
# regular files under SRC, in sorted order, until CAP_BYTES is reached.
# Total picked bytes go to the file $PICKED.
pick_files() {
    local src=$1 cap=$2
    # awk reads to the end (no early exit) so nothing upstream dies of SIGPIPE.
    { find "$src" -xdev -type f ! -name $'*\n*' -printf '%s\t%p\n' 2>/dev/null || true; } |
        sort -t $'\t' -k2 |
        awk -F'\t' -v cap="$cap" -v out="$PICKED" '
            sum + $1 > cap { next }
            { sum += $1; p = $0; sub(/^[0-9]+\t\//, "", p); print p }
            END { print sum + 0 > out }' |
        tr '\n' '\0'
}

# One rust toolchain only: several toolchains repeat files, which would make
# in-disk dedup look better than on a typical VM disk.
pick_toolchain() {
    local d
    for d in "$HOME"/.rustup/toolchains/stable-* "$HOME"/.rustup/toolchains/*; do
        [[ -d $d && ! -L $d ]] && { echo "$d"; return; }
    done
}

build_v1() {
    local img="$WL/disk-v1.img" mnt="$WL/mnt" budget=$((BENCH_DATA_MB * 1000000))
    local total=0 src share cap got list="$WL/files.list"
    PICKED="$WL/picked.bytes"
    rm -f "$img"
    truncate -s "$BENCH_DISK_SIZE" "$img"
    mkfs.ext4 -q -F -L benchdisk "$img"
    mount_img "$img" "$mnt"
    mkdir -p "$mnt/data"

    # A mix like a VM's system disk: libraries and binaries, text and docs,
    # a toolchain, source archives. Shares are of the budget; /usr/lib, last,
    # fills what the others left.
    local tc; tc=$(pick_toolchain || true)
    local -a srcs=("$HOME/.cargo/registry:10" "/usr/share:25")
    [[ -n $tc ]] && srcs+=("$tc:30")
    srcs+=("/usr/lib:100")
    : >"$list"
    for src in "${srcs[@]}"; do
        share=${src##*:}; src=${src%:*}
        [[ -d $src ]] || { log "skip missing $src"; continue; }
        cap=$((budget * share / 100)); (((budget - total) < cap)) && cap=$((budget - total))
        ((cap > 0)) || break
        pick_files "$src" "$cap" >>"$list"
        got=$(cat "$PICKED"); total=$((total + got))
        log "picked $(mb "$got") MB from $src"
    done
    ((total >= budget * 9 / 10)) || log "warning: only $(mb $total) MB of files found (wanted $BENCH_DATA_MB)"
    # tar keeps paths, modes and hard content; -C / because the list is relative to /.
    tar -C / --null -T "$list" -cf - 2>/dev/null | tar -C "$mnt/data" -xf -
    umount_all
    # Punch holes where blocks are all zero (journal, freed blocks), as the
    # cp --sparse=always copies below do: then v1, v2, clone and the working
    # copy all count "allocated" the same way, as non-zero data.
    cp --sparse=always "$img" "$img.tmp"
    mv "$img.tmp" "$img"
    log "disk-v1.img: $(mb "$(alloc_of "$img")") MB allocated"
}

# v2 = v1 after some use: ~5% of files changed (half overwritten in the
# middle, half appended to), ~1% deleted, new files worth ~3% of the data
# (half random, half base64 text so both compress differently).
build_v2() {
    local img="$WL/disk-v2.img" mnt="$WL/mnt" i=0 f size
    cp --sparse=always "$WL/disk-v1.img" "$img"
    mount_img "$img" "$mnt"
    local changed=0 deleted=0
    while IFS= read -r -d '' f; do
        if ((i % 20 == 0)); then
            size=$(stat -c %s "$f")
            if ((i % 40 == 0)); then
                head -c 4096 /dev/urandom |
                    dd of="$f" bs=4096 seek=$((size / 2 / 4096)) conv=notrunc status=none
            else
                head -c 16384 /dev/urandom >>"$f"
            fi
            changed=$((changed + 1))
        elif ((i % 100 == 7)); then
            rm -f "$f"
            deleted=$((deleted + 1))
        fi
        i=$((i + 1))
    done < <(find "$mnt/data" -type f -print0 | sort -z)

    local new_mb=$((BENCH_DATA_MB * 50 / 1500)) n
    ((new_mb > 0)) || new_mb=1
    mkdir -p "$mnt/data/new"
    for ((n = 0; n < new_mb; n++)); do
        if ((n % 2 == 0)); then
            head -c 1000000 /dev/urandom >"$mnt/data/new/blob-$n.bin"
        else
            head -c 750000 /dev/urandom | base64 >"$mnt/data/new/text-$n.txt"
        fi
    done
    umount_all
    log "disk-v2.img: $changed files changed, $deleted deleted, $new_mb MB added"
}

build_workload() {
    local spec="data_mb=$BENCH_DATA_MB disk_size=$BENCH_DISK_SIZE format=1"
    if [[ $BENCH_REBUILD != 1 && -f $WL/READY && "$(cat "$WL/READY")" == "$spec" ]]; then
        log "reusing workload in $WL ($spec)"
        return
    fi
    log "building workload in $WL ($spec)"
    rm -rf "$WL"
    mkdir -p "$WL"
    build_v1
    build_v2
    # A second disk with identical content: measures cross-disk dedup.
    cp --sparse=always "$WL/disk-v1.img" "$WL/clone.img"
    echo "$spec" >"$WL/READY"   # written last: a half-built workload is rebuilt
}

# ---------------------------------------------------------------- rounds
# Shared by the scripts that time steps over rounds (compare.sh, restore.sh).

# T[tag|step] = space-separated seconds (or IOPS) of every round.
declare -A T=()
note() { T["$1|$2"]="${T["$1|$2"]:-} $3"; }

# measure TAG STEP NAME CMD...: cold cache, run CMD, note its wall seconds.
measure() {
    local tag=$1 step=$2; shift 2
    timed "$@"
    note "$tag" "$step" "$T_S"
}

# mount_with BIN STORE MNT: start a mount in the background, wait until it
# serves. MOUNT_PREFIX (an array, empty by default) goes before BIN, e.g.
# `env AWS_...=...` for a store in a bucket.
MOUNT_PREFIX=()
mount_with() {
    local bin=$1 store=$2 mnt=$3 i
    mkdir -p "$mnt"
    "${MOUNT_PREFIX[@]}" "$bin" --store "$store" mount "$mnt" >>"$LOG_DIR/mount.log" 2>&1 &
    MOUNT_PID=$!
    push_undo pid "$MOUNT_PID"
    push_undo snapfs "$mnt"
    for ((i = 0; i < 600; i++)); do
        [[ -e $mnt/vm1 ]] && return 0
        kill -0 "$MOUNT_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "the mount of $store on $mnt did not come up (log: $LOG_DIR/mount.log)"
}

unmount_with() {
    local mnt=$1
    SNAPFS_STORE=$2 release snapfs "$mnt"
    release pid "$MOUNT_PID"
}

# stat_of TAG STEP -> "median (min-max)"
stat_of() {
    [[ -n ${T["$1|$2"]:-} ]] || { echo -; return; }
    # shellcheck disable=SC2086
    printf '%s\n' ${T["$1|$2"]:-} | sort -g | awk '
        { v[NR] = $1 }
        END { if (NR == 0) { print "-"; exit }
              m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%g (%g-%g)", m, v[1], v[NR] }'
}
median_of() { stat_of "$1" "$2" | cut -d' ' -f1; }

# fio_randread_iops FILE JOBS NAME: cold cache, fio 4 KiB random reads
# (psync) of FILE for BENCH_FIO_RUNTIME seconds; prints the IOPS.
fio_randread_iops() {
    local f=$1 jobs=$2 name=$3
    drop_caches
    fio --name=randread --filename="$f" --readonly --rw=randread --bs=4k --ioengine=psync \
        --direct=0 --size="$(stat -c %s "$f")" --runtime="${BENCH_FIO_RUNTIME:-10}" --time_based \
        --numjobs="$jobs" --group_reporting --output-format=json >"$LOG_DIR/$name.json" 2>>"$LOG_DIR/fio.log"
    "$PYTHON" -c '
import json, sys
t = open(sys.argv[1]).read()
print("%.0f" % json.loads(t[t.index("{"):])["jobs"][0]["read"]["iops"])' "$LOG_DIR/$name.json"
}
