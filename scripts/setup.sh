#!/usr/bin/env bash
# Installs everything quantd needs to build and test on Debian 12 (bookworm).
# Idempotent: packages already present are skipped, so re-running is cheap.
# Run as root (or with sudo available). Python test packages go into a local venv
# under build/venv, created by tests/python/requirements.txt's consumer (see README).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache git curl ca-certificates
  libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev googletest libbenchmark-dev
  zlib1g-dev libssl-dev libc-ares-dev libre2-dev
  prometheus
  python3 python3-venv python3-pip
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  # prometheus (for promtool) would start a daemon under systemd; policy-rc.d is not needed in
  # containers, and on hosts the service is harmless but we only want the binary.
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "setup: all ${#packages[@]} packages present"
