#!/usr/bin/env bash
# Builds quantd and bundles a relocatable release tree for GPU nodes that lack our Debian
# packages:
#   dist/quantd-<version>-<arch>/bin/   quantd, quantctl, and the test / benchmark binaries
#   dist/quantd-<version>-<arch>/lib/   every shared library they need beyond glibc, the C++
#                                       runtime, the CUDA driver and cuBLAS
#   dist/quantd-<version>-<arch>/scripts/service_bench.sh   the service benchmark
# The binaries carry an $ORIGIN/../lib rpath, so the tree runs from wherever it is unpacked:
#   tar xzf quantd-*.tar.gz && quantd-*/bin/quantd --backend=cuda
# Usage: scripts/package.sh [OUT_DIR]   (default dist/)
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${QUANTD_BUILD_DIR:-$repo_root/build}
out_dir=${1:-$repo_root/dist}
"$repo_root/scripts/build.sh"
version=$(sed -n 's/^project(quantd VERSION \([0-9.]*\).*/\1/p' "$repo_root/CMakeLists.txt")
name="quantd-$version-$(uname -m)"
tree="$out_dir/$name"
rm -rf "$tree"
cmake --install "$build_dir" --prefix "$tree" --strip >/dev/null
cmake --install "$build_dir" --prefix "$tree" --component tests --strip >/dev/null
mkdir -p "$tree/lib"

# Libraries every Linux GPU node has in a compatible version, or that must come from the node
# itself (the driver, and cuBLAS matching it): never bundled.
system_lib='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|libgcc_s|libcuda|libnvidia|libcublas|libcublasLt)\.so'
for binary in "$tree"/bin/*; do
  ldd "$binary" | awk '/=> \// {print $1, $3}' | while read -r soname path; do
    [[ $soname =~ $system_lib ]] && continue
    [[ -e $tree/lib/$soname ]] || cp -L "$path" "$tree/lib/$soname"
  done
done
# The bundled libraries find each other through the same rpath-less lookup: lib/ first.
for binary in "$tree"/bin/*; do
  if readelf -d "$binary" | grep -qE 'R(UN)?PATH.*\$ORIGIN/\.\./lib'; then continue; fi
  echo "package: $binary lacks the \$ORIGIN/../lib rpath" >&2
  exit 1
done
cp "$repo_root/README.md" "$repo_root/docs/FORMATS.md" "$tree/"
# The service benchmark needs only bash and bin/: scripts/service_bench.sh finds ../bin.
mkdir -p "$tree/scripts"
cp "$repo_root/scripts/service_bench.sh" "$tree/scripts/"
tar -C "$out_dir" -czf "$out_dir/$name.tar.gz" "$name"
echo "$tree ($(du -sh "$tree" | cut -f1)), $out_dir/$name.tar.gz"
