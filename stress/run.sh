#!/usr/bin/env bash
# The long version of the fault suite (issue 5): every fault class that CI
# runs briefly, with many rounds. Needs root, /dev/fuse and loop devices.
#
#   sudo stress/run.sh            # everything, about 20 minutes on 2 cores
#   sudo stress/run.sh kill soak  # only some classes (names below)
#
# Round counts can be raised or lowered through the variables below, e.g.
# SNAPFS_KILL_ROUNDS=1000 stress/run.sh kill. Every randomised class prints its seed;
# the class's log (in $LOG_DIR) says how to replay a failing round.
set -uo pipefail
cd "$(dirname "$0")/.."

export SNAPFS_REQUIRE_FUSE=1
export SNAPFS_KILL_ROUNDS=${SNAPFS_KILL_ROUNDS:-200}
export SNAPFS_CRASH_ROUNDS=${SNAPFS_CRASH_ROUNDS:-200}
export SNAPFS_FUZZ_ROUNDS=${SNAPFS_FUZZ_ROUNDS:-500}
export SNAPFS_FUZZ_CASES=${SNAPFS_FUZZ_CASES:-2000}
export SNAPFS_FAULT_ROUNDS=${SNAPFS_FAULT_ROUNDS:-5}
export SNAPFS_SOAK_SECS=${SNAPFS_SOAK_SECS:-300}
LOG_DIR=${LOG_DIR:-$(mktemp -d /tmp/snapfs-stress.XXXXXX)}
mkdir -p "$LOG_DIR"

# class : what it runs : the rounds it is given
classes=(
    "kill|--test kill|$SNAPFS_KILL_ROUNDS rounds each of CLI and mount kills"
    "crash|--test crash|$SNAPFS_CRASH_ROUNDS rounds of snapshot and gc kills"
    "faults|--test faults|$SNAPFS_FAULT_ROUNDS rounds of ENOSPC, failing source, mount taken away"
    "soak|--test soak|$SNAPFS_SOAK_SECS s of everything at once on one mount"
    "corruption|--test corruption --test healing --test hostile|fixed cases"
    "store-fuzz|--test store_fuzz|$SNAPFS_FUZZ_ROUNDS mutation rounds per store"
    "input-fuzz|--test hostile_input --test hostile_cli --test permissions|$SNAPFS_FUZZ_CASES cases per property"
)

wanted=("$@")
selected() {
    ((${#wanted[@]} == 0)) && return 0
    local w
    for w in "${wanted[@]}"; do [[ $w == "$1" ]] && return 0; done
    return 1
}

cargo build --release --tests -q || exit 1
echo "logs in $LOG_DIR"
rows=()
failed=0
for entry in "${classes[@]}"; do
    IFS='|' read -r name tests size <<<"$entry"
    selected "$name" || continue
    echo "== $name: $size"
    start=$SECONDS
    # shellcheck disable=SC2086 # $tests is a list of cargo arguments
    if cargo test --release $tests -- --nocapture >"$LOG_DIR/$name.log" 2>&1; then
        result=passed
    else
        result=FAILED
        failed=1
    fi
    rows+=("$(printf '| %-10s | %-60s | %7d | %-6s |' "$name" "$size" $((SECONDS - start)) "$result")")
    echo "   $result in $((SECONDS - start)) s"
done

echo
printf '| %-10s | %-60s | %7s | %-6s |\n' class size seconds result
printf '|%s|%s|%s|%s|\n' ------------ "$(printf -- '-%.0s' {1..62})" --------- --------
printf '%s\n' "${rows[@]}"
exit "$failed"
