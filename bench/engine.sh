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
RUN_SUBDIR=run             # stores, repos, logs of this run: $BENCH_DIR/run
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"   # settings shared with mount.sh, cleanup, timing, workload

BENCH_CHUNK_SIZES=${BENCH_CHUNK_SIZES:-"64K 256K 1M 4M"}
BENCH_DEFAULT_CHUNK=${BENCH_DEFAULT_CHUNK:-64K}     # row used for the ratios
BENCH_COMPRESSION=${BENCH_COMPRESSION:-lz4}   # the store's default
BENCH_TOOLS=${BENCH_TOOLS:-"read snapfs borg restic"} # subset to run
BENCH_RESULTS=${BENCH_RESULTS:-$SCRIPT_DIR/results-latest.md}

WORK_IMG="$RUN/vm1.img"    # the "live" disk every tool snapshots: v1, then v2

has_tool() { [[ " $BENCH_TOOLS " == *" $1 "* ]]; }

# Results: R[row|metric] = value; ROWS keeps the print order.
declare -A R=()
ROWS=()
add_row() { ROWS+=("$1"); R["$1|tool"]=$2; R["$1|chunk"]=$3; }
set_r() { R["$1|$2"]=$3; }
get_r() { echo "${R["$1|$2"]:--}"; }
max() { (($1 > $2)) && echo "$1" || echo "$2"; }

# ---------------------------------------------------------------- tools
bench_read() {
    local img="$WL/disk-v1.img"
    add_row cat "cat (read limit)" -
    timed read-cat sh -c "cat '$img' >/dev/null"
    set_r cat first_s "$T_S"; set_r cat first_rate "$(rate "$ALLOC_V1" "$T_S")"
    # cat reads the holes of the sparse image too (as zeros); snapfs skips
    # them. The fair limit reads only the data regions (SEEK_DATA/SEEK_HOLE).
    add_row data "read data regions only (read limit)" -
    timed read-data "$PYTHON" "$SCRIPT_DIR/read-data.py" "$img"
    set_r data first_s "$T_S"; set_r data first_rate "$(rate "$ALLOC_V1" "$T_S")"
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
        echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg) (shared machine: treat the numbers as rough)."
        echo
        print_table
        print_ratios
    } | tee "$BENCH_RESULTS"
    log "table written to $BENCH_RESULTS; logs in $LOG_DIR"
}

# ---------------------------------------------------------------- main
main() {
    require_root
    # shellcheck disable=SC2119  # no extra tools
    install_tools
    check_bench_dir
    if has_tool snapfs; then
        [[ -x $SNAPFS ]] || die "no snapfs binary at $SNAPFS (cargo build --release, or set SNAPFS)"
    fi
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

    build_workload
    ALLOC_V1=$(alloc_of "$WL/disk-v1.img")
    ALLOC_V2=$(alloc_of "$WL/disk-v2.img")

    rm -rf "$RUN"
    mkdir -p "$LOG_DIR"
    MISMATCH=0
    # Run a copy: others may rebuild target/release while this runs.
    if has_tool snapfs; then
        cp "$SNAPFS" "$RUN/snapfs"
        SNAPFS="$RUN/snapfs"
    fi

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
