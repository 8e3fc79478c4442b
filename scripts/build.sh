#!/usr/bin/env bash
# Configure and build fzfs into build/ (or $FZFS_BUILD_DIR). Extra arguments go to meson setup.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bdir=${FZFS_BUILD_DIR:-$here/build}
if [ -f "$bdir/build.ninja" ]; then
  meson setup --reconfigure "$bdir" "$here" "$@" >/dev/null
else
  meson setup "$bdir" "$here" "$@" >/dev/null
fi
ninja -C "$bdir"
