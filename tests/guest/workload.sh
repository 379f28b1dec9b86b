# Crash-consistency workload: workload.sh DIR [PAUSE]
# For n = 1, 2, ...: write DIR/f$n (content derived from n only), fsync it,
# then append "n" to DIR/log and fsync the log. So after any crash, every n
# in the log has its file complete: check_workload in tests/common/vm.rs
# checks exactly that on the host. Runs until /tmp/wl.stop exists; writes
# the last completed n to /tmp/wl.done, and a failure to /tmp/wl.err.
dir=$1
pause=${2:-0}
n=0
fail() {
    echo "$*" >/tmp/wl.err
    echo "$n" >/tmp/wl.done
    exit 1
}
rm -f /tmp/wl.stop /tmp/wl.done /tmp/wl.err
mkdir -p "$dir" || fail "mkdir $dir failed"
# Carry on after the last logged n when started again on the same disk.
if [ -s "$dir/log" ]; then
    n=$(tail -n 1 "$dir/log")
fi
touch "$dir/log" || fail "create $dir/log failed"
# The log's and the folder's entries durable before the first n is logged.
sync "$dir/log" "$dir" "$dir/.." || fail "fsync of $dir failed"
echo $$ >/tmp/wl.pid
while [ ! -e /tmp/wl.stop ]; do
    n=$((n + 1))
    size=$((4096 + (n * 7919) % 61440))
    f="$dir/f$n"
    {
        yes "snapfs workload file $n" | head -c "$size"
        echo "end n=$n size=$size"
    } >"$f" || fail "write $f failed"
    sync "$f" || fail "fsync $f failed"
    echo "$n" >>"$dir/log" || fail "append $n to $dir/log failed"
    sync "$dir/log" || fail "fsync $dir/log after $n failed"
    [ "$pause" = 0 ] || sleep "$pause"
done
echo "$n" >/tmp/wl.done
