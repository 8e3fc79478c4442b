#!/usr/bin/env bash
# Install everything fzfs needs to build and test on a fresh Debian 12 machine (as root).
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

debs="build-essential pkg-config meson ninja-build libfuse3-dev fuse3 libjansson-dev
      libyaml-dev liblmdb-dev lmdb-utils libcmocka-dev zlib1g-dev libxxhash-dev unzip time
      liburing-dev libnuma-dev clang-format valgrind
      python3 python3-venv clang libclang-rt-14-dev"
missing=""
for p in $debs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $missing
fi

if [ "${FZFS_NO_PYTHON:-0}" != 1 ]; then
  venv="$here/.venv"
  py=$(command -v python3.11 || command -v python3)
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch first and alone, so the local CPU wheel is taken and nothing pulls a CUDA build.
  "$venv/bin/python" -m pip install -q torch==2.13.0
  "$venv/bin/python" -m pip install -q -r "$here/tests/requirements.txt"
  # the Python wrapper (python/), as a user installs it from the checkout
  "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$here/python"
fi
