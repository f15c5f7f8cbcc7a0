#!/usr/bin/env bash
# The service benchmark in one step: starts a quantd on a free port of 127.0.0.1 (metrics off),
# waits until it is healthy, runs `quantctl bench` against it (the op next to an Echo of the
# same bytes, per size and concurrency), prints the markdown table on stdout (progress and the
# server's start line on stderr) and stops the server. Bash and the two binaries only: it runs
# on a bare GPU node from a release tree (scripts/package.sh).
#
#   scripts/service_bench.sh                                 # this checkout's build/
#   scripts/service_bench.sh --backend=cuda --workers=8      # arguments go to quantd
#   QUANTD_BENCH_ARGS="--format=int4-g128 --sizes=4K,1M --concurrency=1,8" scripts/service_bench.sh
#   quantd-0.1.0-x86_64/scripts/service_bench.sh --backend=cuda   # from a release tree
#
# QUANTD_BIN_DIR: where quantd and quantctl are: a release tree's bin/, or a build directory
#   (with server/quantd and client/quantctl). Default: the release tree this script is in,
#   else build/ of this checkout.
# QUANTD_BENCH_ARGS: the arguments of `quantctl bench` (default: none, its own defaults).
set -euo pipefail
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -n ${QUANTD_BIN_DIR:-} ]]; then
  bin_dir=$QUANTD_BIN_DIR
elif [[ -x $script_dir/../bin/quantd ]]; then
  bin_dir=$script_dir/../bin
else
  bin_dir=$script_dir/../build
fi

# $1 in bin_dir itself (release tree) or in its subdirectory $2 (build directory).
find_binary() {
  local candidate
  for candidate in "$bin_dir/$1" "$bin_dir/$2/$1"; do
    if [[ -f $candidate && -x $candidate ]]; then
      echo "$candidate"
      return 0
    fi
  done
  echo "service_bench: no $1 in $bin_dir or $bin_dir/$2; build it or set QUANTD_BIN_DIR" >&2
  return 1
}
quantd=$(find_binary quantd server)
quantctl=$(find_binary quantctl client)

log=$(mktemp "${TMPDIR:-/tmp}/quantd_service_bench.XXXXXX")
"$quantd" --listen=127.0.0.1:0 --metrics-listen= "$@" 2>"$log" &
server_pid=$!
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  rm -f "$log"
}
trap stop_server EXIT

# Port 0 lets quantd pick a free port, which its start line names: "... (port N), ...".
port=
for _ in $(seq 600); do
  port=$(sed -n 's/.*(port \([0-9][0-9]*\)).*/\1/p' "$log" | head -n 1)
  [[ -n $port ]] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    cat "$log" >&2
    echo "service_bench: quantd exited before serving (its log is above)" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z $port ]]; then
  cat "$log" >&2
  echo "service_bench: quantd did not start serving within 60 s" >&2
  exit 1
fi
head -n 1 "$log" >&2
server=127.0.0.1:$port
for _ in $(seq 100); do
  "$quantctl" --server="$server" health >/dev/null 2>&1 && break
  sleep 0.1
done
"$quantctl" --server="$server" health >&2

read -r -a bench_args <<<"${QUANTD_BENCH_ARGS:-}"
"$quantctl" --server="$server" bench ${bench_args[@]+"${bench_args[@]}"}
