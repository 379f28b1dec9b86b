#!/usr/bin/env bash
# bench/engine.sh: benchmark the snapfs snapshot engine against borg and restic.
#
# Builds a real ext4 disk image workload (v1, a changed v2, an identical clone),
# then for each chunk size takes three snapshots with snapfs (first, second
# after the disk changed, a second disk with identical content) and exports
# one back, doing the same steps with borg and restic as baselines. Every
# timed step starts with a cold page cache. Prints a Markdown table and writes
# it to bench/results-latest.md. See bench/README.md for the knobs.
#
# Needs root (loop mounts, drop_caches, apt-get).
set -euo pipefail

# ---------------------------------------------------------------- settings
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

BENCH_DIR=${BENCH_DIR:-/var/tmp/snapfs-bench}        # workload + stores; not tmpfs
BENCH_DATA_MB=${BENCH_DATA_MB:-1500}                 # real files copied into v1
BENCH_DISK_SIZE=${BENCH_DISK_SIZE:-4G}               # virtual size of the sparse image
BENCH_CHUNK_SIZES=${BENCH_CHUNK_SIZES:-"64K 256K 1M 4M"}
BENCH_DEFAULT_CHUNK=${BENCH_DEFAULT_CHUNK:-256K}     # row used for the ratios
BENCH_COMPRESSION=${BENCH_COMPRESSION:-zstd}
BENCH_TOOLS=${BENCH_TOOLS:-"read snapfs borg restic"} # subset to run
BENCH_REBUILD=${BENCH_REBUILD:-0}                    # 1: rebuild the workload
BENCH_RESULTS=${BENCH_RESULTS:-$SCRIPT_DIR/results-latest.md}
SNAPFS=${SNAPFS:-$REPO_DIR/target/release/snapfs}

# disk-v1.img, disk-v2.img, clone.img: kept between runs, one set per data size
# so a quick run does not throw away the full workload.
WL="$BENCH_DIR/workload-${BENCH_DATA_MB}mb"
RUN="$BENCH_DIR/run"       # stores, repos, logs of this run (wiped at start)
WORK_IMG="$RUN/vm1.img"    # the "live" disk every tool snapshots: v1, then v2
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
has_tool() { [[ " $BENCH_TOOLS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- cleanup
# Every mount and loop device we make is recorded here, and undone on any exit
# (success, failure, Ctrl-C) so a failed run never leaves /dev/loopN busy.
MOUNTS=()
LOOPS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        if mountpoint -q "${MOUNTS[i]}"; then
            umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" || true
        fi
    done
    for ((i = ${#LOOPS[@]} - 1; i >= 0; i--)); do
        losetup -d "${LOOPS[i]}" 2>/dev/null || true
    done
    MOUNTS=()
    LOOPS=()
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
    LOOPS+=("$dev")
    mount -o noinit_itable "$dev" "$dir"
    MOUNTS+=("$dir")
}
umount_all() { sync; cleanup; }

# ---------------------------------------------------------------- helpers
require_root() { [[ $(id -u) -eq 0 ]] || die "run as root (loop mounts, drop_caches)"; }

# Install whatever is missing, with one apt-get update at most.
install_tools() {
    local -A want=(
        [borg]=borgbackup [restic]=restic [b3sum]=b3sum [mkfs.ext4]=e2fsprogs
        [/usr/bin/time]=time [losetup]=mount [cmp]=diffutils [tar]=tar
    )
    local missing=() cmd
    for cmd in "${!want[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
    done
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
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
# to the log. Sets T_S (wall seconds) and T_RSS (peak RSS in KiB).
timed() {
    local name=$1; shift
    local tf="$LOG_DIR/$name.time"
    drop_caches
    log "run $name: $*"
    echo "### $name: $*" >>"$LOG_DIR/$name.log"
    if ! /usr/bin/time -f '%e %M' -o "$tf" "$@" >>"$LOG_DIR/$name.log" 2>&1; then
        tail -n 20 "$LOG_DIR/$name.log" >&2
        die "$name failed (log: $LOG_DIR/$name.log)"
    fi
    read -r T_S T_RSS <"$tf"
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

# Results: R[row|metric] = value; ROWS keeps the print order.
declare -A R=()
ROWS=()
add_row() { ROWS+=("$1"); R["$1|tool"]=$2; R["$1|chunk"]=$3; }
set_r() { R["$1|$2"]=$3; }
get_r() { echo "${R["$1|$2"]:--}"; }
max() { (($1 > $2)) && echo "$1" || echo "$2"; }

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

# ---------------------------------------------------------------- tools
bench_read() {
    local img="$WL/disk-v1.img"
    add_row cat "cat (read limit)" -
    timed read-cat sh -c "cat '$img' >/dev/null"
    set_r cat first_s "$T_S"; set_r cat first_rate "$(rate "$ALLOC_V1" "$T_S")"
    add_row b3sum "b3sum (read+hash limit)" -
    timed read-b3sum b3sum "$img"
    set_r b3sum first_s "$T_S"; set_r b3sum first_rate "$(rate "$ALLOC_V1" "$T_S")"
    set_r b3sum rss "$(mb $((T_RSS * 1024)))"
}

# record_store ROW KEY STORE: remember the store's size after a step.
record_store() { set_r "$1" "$2" "$(bytes_of "$3")"; }

finish_row() {  # turn raw byte counts of a row into MB columns
    local row=$1 a b c
    a=$(get_r "$row" store1); b=$(get_r "$row" store2); c=$(get_r "$row" store3)
    set_r "$row" growth "$(mb $((b - a)))"
    set_r "$row" clone_growth "$(mb $((c - b)))"
    set_r "$row" store1_mb "$(mb "$a")"
    set_r "$row" store2_mb "$(mb "$b")"
    set_r "$row" store3_mb "$(mb "$c")"
    set_r "$row" first_rate "$(rate "$ALLOC_V1" "$(get_r "$row" first_s)")"
    set_r "$row" rss "$(mb $(($(get_r "$row" rss_kb) * 1024)))"
}

# step ROW KEY NAME CMD...: one timed snapshot step; keeps time and peak RSS.
step() {
    local row=$1 key=$2 name=$3; shift 3
    timed "$name" "$@"
    set_r "$row" "${key}_s" "$T_S"
    set_r "$row" rss_kb "$(max "$T_RSS" "${R["$row|rss_kb"]:-0}")"
}

bench_snapfs() {
    local cs=$1
    local row="snapfs-$cs" store="$RUN/snapfs-$cs"
    local sf=("$SNAPFS" --store "$store")
    add_row "$row" snapfs "$cs"
    rm -rf "$store"
    cp --sparse=always "$WL/disk-v1.img" "$WORK_IMG"
    logged "$row" "${sf[@]}" init --chunk-size "$cs" --compression "$BENCH_COMPRESSION"
    logged "$row" "${sf[@]}" disk add vm1 "$WORK_IMG"

    step "$row" first "$row-first" "${sf[@]}" snapshot create vm1 s1
    record_store "$row" store1 "$store"
    # Same file, new content: the whole disk is re-read (no change tracking yet).
    cp --sparse=always "$WL/disk-v2.img" "$WORK_IMG"
    step "$row" second "$row-second" "${sf[@]}" snapshot create vm1 s2
    record_store "$row" store2 "$store"
    logged "$row" "${sf[@]}" disk add vm2 "$WL/clone.img"
    step "$row" clone "$row-clone" "${sf[@]}" snapshot create vm2 s1
    record_store "$row" store3 "$store"
    # stored_bytes (pack bytes) next to du of the whole store (plus index, catalog).
    if "${sf[@]}" stats --json >"$LOG_DIR/$row.stats.json" 2>>"$LOG_DIR/$row.log"; then
        log "stats $cs: stored_bytes=$(sed -n 's/.*"stored_bytes": *\([0-9]*\).*/\1/p' "$LOG_DIR/$row.stats.json" | head -n 1), du -sb=$(get_r "$row" store3)"
    else
        log "warning: '${sf[*]} stats --json' failed (log: $LOG_DIR/$row.log)"
    fi

    # Export, timed up to the data being on disk (fsync of the output file).
    local out="$RUN/export-$cs.img"
    rm -f "$out"
    # shellcheck disable=SC2016  # $0/$@ are for the inner sh
    timed "$row-export" sh -c '"$@" && sync "$0"' "$out" "${sf[@]}" export vm1 s2 -o "$out"
    set_r "$row" export_rate "$(rate "$ALLOC_V2" "$T_S")"
    if cmp -s "$out" "$WL/disk-v2.img"; then
        log "export of s2 ($cs) matches disk-v2.img"
    else
        set_r "$row" export_rate "MISMATCH"
        MISMATCH=1
        log "ERROR: export of s2 ($cs) differs from disk-v2.img"
    fi
    rm -f "$out"
    finish_row "$row"
}

bench_borg() {
    local row=borg repo="$RUN/borg-repo"
    add_row "$row" "borg $(borg --version | awk '{print $2}') (defaults, lz4)" -
    rm -rf "$repo" "$BORG_BASE_DIR"
    cp --sparse=always "$WL/disk-v1.img" "$WORK_IMG"
    logged "$row" borg init --encryption none "$repo"
    # cd so archived paths are short and the same for every step.
    pushd "$RUN" >/dev/null
    step "$row" first borg-first borg create "$repo::s1" vm1.img
    record_store "$row" store1 "$repo"
    # Files cache keys on mtime/size/inode: the rewritten image is re-read anyway.
    cp --sparse=always "$WL/disk-v2.img" "$WORK_IMG"
    step "$row" second borg-second borg create "$repo::s2" vm1.img
    record_store "$row" store2 "$repo"
    popd >/dev/null
    pushd "$WL" >/dev/null
    step "$row" clone borg-clone borg create "$repo::clone" clone.img
    record_store "$row" store3 "$repo"
    popd >/dev/null
    finish_row "$row"
}

bench_restic() {
    local row=restic repo="$RUN/restic-repo"
    add_row "$row" "restic $(restic version | awk '{print $2}') (repo v2, zstd auto)" -
    rm -rf "$repo" "$RESTIC_CACHE_DIR"
    cp --sparse=always "$WL/disk-v1.img" "$WORK_IMG"
    logged "$row" restic -r "$repo" init --repository-version 2
    pushd "$RUN" >/dev/null
    step "$row" first restic-first restic -r "$repo" backup vm1.img
    record_store "$row" store1 "$repo"
    cp --sparse=always "$WL/disk-v2.img" "$WORK_IMG"
    # --force: never trust the parent snapshot's metadata, re-read the file.
    step "$row" second restic-second restic -r "$repo" backup --force vm1.img
    record_store "$row" store2 "$repo"
    popd >/dev/null
    pushd "$WL" >/dev/null
    step "$row" clone restic-clone restic -r "$repo" backup clone.img
    record_store "$row" store3 "$repo"
    popd >/dev/null
    finish_row "$row"
}

# ---------------------------------------------------------------- report
print_table() {
    local row cols=(tool chunk first_s first_rate second_s clone_s store1_mb store2_mb growth store3_mb clone_growth export_rate rss) c line
    echo "| tool | chunk | first s | first MB/s | second s | clone s | store after first MB | store after second MB | growth MB | after clone MB | clone growth MB | export MB/s | peak RSS MB |"
    echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    for row in "${ROWS[@]}"; do
        line="|"
        for c in "${cols[@]}"; do line+=" $(get_r "$row" "$c") |"; done
        echo "$line"
    done
}

print_ratios() {
    local s="snapfs-$BENCH_DEFAULT_CHUNK"
    echo
    if [[ -z ${R["$s|first_s"]:-} ]]; then
        echo "Ratios: chunk size $BENCH_DEFAULT_CHUNK was not run."
        return
    fi
    if [[ -z ${R["borg|first_s"]:-}${R["restic|first_s"]:-} ]]; then
        echo "Ratios: neither borg nor restic was run."
        return
    fi
    echo "Ratios at the default chunk size $BENCH_DEFAULT_CHUNK:"
    echo
    if [[ -n ${R["borg|first_s"]:-} ]]; then
        echo "- borg first / snapfs first time: $(ratio "$(get_r borg first_s)" "$(get_r "$s" first_s)") (above 1: snapfs faster)"
        echo "- borg second / snapfs second time: $(ratio "$(get_r borg second_s)" "$(get_r "$s" second_s)")"
    fi
    if [[ -n ${R["restic|first_s"]:-} ]]; then
        echo "- restic first / snapfs first time: $(ratio "$(get_r restic first_s)" "$(get_r "$s" first_s)")"
        echo "- snapfs store / restic store after second: $(ratio "$(get_r "$s" store2)" "$(get_r restic store2)") (below 1: snapfs smaller)"
        echo "- snapfs store / restic store after clone: $(ratio "$(get_r "$s" store3)" "$(get_r restic store3)")"
    fi
}

report() {
    local snapfs_v
    snapfs_v=$("$SNAPFS" --version 2>/dev/null | head -n 1 || true)
    [[ -n $snapfs_v ]] || snapfs_v="snapfs (version n/a)"
    {
        echo "# snapfs engine benchmark"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r); $snapfs_v, compression $BENCH_COMPRESSION."
        echo "Workload: ext4 in a $BENCH_DISK_SIZE sparse image, $(mb "$ALLOC_V1") MB allocated in v1, $(mb "$ALLOC_V2") MB in v2"
        echo "(BENCH_DATA_MB=$BENCH_DATA_MB). MB = 10^6 bytes; rates are allocated image data / wall time;"
        echo "every timed step starts with a dropped page cache. Store sizes are \`du -sb\` of the store/repository."
        echo
        print_table
        print_ratios
    } | tee "$BENCH_RESULTS"
    log "table written to $BENCH_RESULTS; logs in $LOG_DIR"
}

# ---------------------------------------------------------------- main
main() {
    require_root
    install_tools
    [[ -w /proc/sys/vm/drop_caches ]] || die "/proc/sys/vm/drop_caches not writable: cold-cache timings impossible"
    mkdir -p "$BENCH_DIR"
    if [[ $(findmnt -n -o FSTYPE -T "$BENCH_DIR") == tmpfs ]]; then
        die "BENCH_DIR=$BENCH_DIR is on tmpfs (reads would come from RAM); pick a disk-backed dir"
    fi
    if has_tool snapfs; then
        [[ -x $SNAPFS ]] || die "no snapfs binary at $SNAPFS (cargo build --release, or set SNAPFS)"
    fi

    build_workload
    ALLOC_V1=$(alloc_of "$WL/disk-v1.img")
    ALLOC_V2=$(alloc_of "$WL/disk-v2.img")

    rm -rf "$RUN"
    mkdir -p "$LOG_DIR"
    MISMATCH=0

    has_tool read && bench_read
    if has_tool snapfs; then
        local cs
        for cs in $BENCH_CHUNK_SIZES; do bench_snapfs "$cs"; done
    fi
    has_tool borg && bench_borg
    has_tool restic && bench_restic
    report
    ((MISMATCH == 0)) || die "an exported image differs from its source"
}

main "$@"
