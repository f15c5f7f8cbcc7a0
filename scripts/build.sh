#!/usr/bin/env bash
# Configures and builds quantd into build/ (CUDA backend when nvcc is present: AUTO).
# Extra arguments go to `cmake --build` (e.g. --target quantd).
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${QUANTD_BUILD_DIR:-$repo_root/build}
jobs=${QUANTD_JOBS:-$(nproc)}
if [[ ! -f $build_dir/build.ninja ]]; then
  cmake -S "$repo_root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DQUANTD_ENABLE_CUDA="${QUANTD_ENABLE_CUDA:-AUTO}" ${QUANTD_CMAKE_ARGS:-}
fi
cmake --build "$build_dir" -j "$jobs" "$@"
