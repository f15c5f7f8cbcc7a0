#!/usr/bin/env bash
# The main job: builds quantd, starts it on the best backend present (CUDA when a GPU is
# visible, else CPU), and shows a client quantizing a tensor with its error metrics.
# The server keeps serving afterwards (Ctrl-C stops it); QUANTD_DEMO_EXIT=1 stops it at once.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${QUANTD_BUILD_DIR:-$repo_root/build}
port=${QUANTD_PORT:-50051}
metrics_port=${QUANTD_METRICS_PORT:-9090}
"$repo_root/scripts/build.sh" --target quantd quantctl

quantd="$build_dir/server/quantd"
quantctl="$build_dir/client/quantctl"
server="127.0.0.1:$port"
work=$(mktemp -d)

"$quantd" --listen="$server" --metrics-listen="127.0.0.1:$metrics_port" --backend=auto &
server_pid=$!
cleanup() { kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do
  "$quantctl" --server="$server" health >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== capabilities"
# The first lines only; written to a file first, so that `head` closing the pipe early cannot
# stop quantctl with SIGPIPE (the list of formats is long).
"$quantctl" --server="$server" capabilities >"$work/capabilities.json"
head -20 "$work/capabilities.json"
echo "== a [512, 4096] float32 activation tensor"
"$quantctl" random --shape=512,4096 --seed=7 "$work/x.npy"
for format in int8 fp8-e4m3; do
  echo "== quantize --format=$format --granularity=token (metrics on the last line)"
  "$quantctl" --server="$server" quantize --format="$format" --granularity=token \
    "$work/x.npy" "$work/q_$format.npz"
done
echo "== int4, groups of 128 along the last axis"
"$quantctl" --server="$server" quantize --format=int4 --granularity=group --group-size=128 \
  "$work/x.npy" "$work/q_int4.npz"
echo "== dequantize the int8 result"
"$quantctl" --server="$server" dequantize "$work/q_int8.npz" "$work/x_hat.npy"
echo "== Prometheus metrics at http://127.0.0.1:$metrics_port/metrics (excerpt)"
curl -fsS "http://127.0.0.1:$metrics_port/metrics" | grep -E '^quantd_(requests_total|sqnr_db_count)' | head -8 || true

if [[ ${QUANTD_DEMO_EXIT:-0} == 1 ]]; then exit 0; fi
echo "== quantd is serving on $server (metrics on :$metrics_port); Ctrl-C stops it"
wait "$server_pid"
