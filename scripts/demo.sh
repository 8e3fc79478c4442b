#!/usr/bin/env bash
# Quick start: install the build dependencies, build fzfs, and finalize the bundled
# example training run (examples/tiny-run) with `fzfs plan` and `fzfs materialize`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
FZFS_NO_PYTHON=1 bash "$here/scripts/install-deps.sh"
bash "$here/scripts/build.sh"
out=${1:-$(mktemp -d)/tiny-run-final}
echo "== fzfs plan examples/tiny-run"
"$here/build/fzfs" plan "$here/examples/tiny-run"
echo
echo "== fzfs materialize examples/tiny-run $out --dtype bfloat16"
"$here/build/fzfs" materialize "$here/examples/tiny-run" "$out" --dtype bfloat16
echo
find "$out" | sort
