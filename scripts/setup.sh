#!/usr/bin/env bash
# Installs everything quantd needs to build and test on Debian 12 (bookworm).
# Idempotent: packages already present are skipped, so re-running is cheap.
# Run as root (or with sudo available). Python test packages go into .venv beside the checkout.
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
echo "setup: all ${#packages[@]} Debian packages present"

# Python packages for the tests, in a venv beside the checkout (no system pip changes).
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo_root/.venv"
requirements="$repo_root/tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
  echo "$want" >"$stamp"
fi
echo "setup: Python test packages present in $venv"

# The Python client (client/python, `import quantd`), editable: .venv always runs the checkout's
# code, and the e2e tests' stubs generated at test time (a `quantd` namespace on sys.path) are
# not shadowed by an installed copy. Reinstalled when its dependencies change.
package="$repo_root/client/python"
package_stamp="$venv/.quantd-client.sha256"
package_want=$(sha256sum "$package/pyproject.toml" | cut -d' ' -f1)
if [[ ! -f $package_stamp || $(cat "$package_stamp") != "$package_want" ]] ||
   ! "$venv/bin/python" -c "import quantd" 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$package"
  echo "$package_want" >"$package_stamp"
fi
echo "setup: Python client (quantd) installed in $venv"
