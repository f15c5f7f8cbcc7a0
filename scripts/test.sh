#!/usr/bin/env bash
# Builds everything and runs every test: unit, service, end-to-end, Python, metrics lint.
# GPU tests register everywhere and skip themselves when no GPU is visible.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${QUANTD_BUILD_DIR:-$repo_root/build}
"$repo_root/scripts/build.sh"
cd "$build_dir"
ctest --output-on-failure --timeout 900 -j "${QUANTD_JOBS:-$(nproc)}"
