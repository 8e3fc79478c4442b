#!/usr/bin/env bash
# Quick start: install the build dependencies, build fzfs, install it on PATH
# (meson install, prefix /usr/local), then finalize the bundled example training run
# (examples/tiny-run): `fzfs plan`, `fzfs materialize`, and `fzfs mount` when FUSE is usable.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
FZFS_NO_PYTHON=1 bash "$here/scripts/install-deps.sh"
bash "$here/scripts/build.sh"
meson install -C "$here/build" --quiet --skip-subprojects
fzfs=$(command -v fzfs || echo /usr/local/bin/fzfs)
echo "== installed: $("$fzfs" --version) at $fzfs"

work=$(mktemp -d)
out=${1:-$work/tiny-run-final}
echo
echo "== fzfs plan examples/tiny-run"
"$fzfs" plan "$here/examples/tiny-run"
echo
echo "== fzfs materialize examples/tiny-run $out --dtype bfloat16"
"$fzfs" materialize "$here/examples/tiny-run" "$out" --dtype bfloat16
(cd "$out" && find . | sort)

echo
mnt="$work/mnt"
mkdir -p "$mnt"
if [ ! -c /dev/fuse ]; then
  echo "== skipping the mount: /dev/fuse does not exist here (in a container, start it with"
  echo "   --device /dev/fuse --cap-add SYS_ADMIN)"
elif ! "$fzfs" mount "$here/examples/tiny-run" "$mnt" --dtype bfloat16 --safetensors \
       --cache-dir "$work/cache" 2>"$work/mount.err"; then
  echo "== skipping the mount: $(cat "$work/mount.err")"
else
  echo "== fzfs mount examples/tiny-run $mnt --dtype bfloat16 --safetensors"
  ls -l "$mnt"
  echo "-- $mnt/config.json"
  cat "$mnt/config.json"
  "$fzfs" umount "$mnt"
  echo "== unmounted"
fi
