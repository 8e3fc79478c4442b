#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: install dependencies,
# build (plain, ASan/UBSan and a ThreadSanitizer fzfs), run the cmocka unit tests in both builds, the
# libFuzzer targets for a bounded time (tests/fuzz/run.sh), then the
# pytest integration tests with real torch / transformers / safetensors / tokenizers.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/install-deps.sh
echo "== format"
bash scripts/check-format.sh
# warnings are errors here (CI), not a project default, so a newer compiler cannot break a user's build
bash scripts/build.sh -Dwerror=true
FZFS_BUILD_DIR="$here/build-asan" bash scripts/build.sh -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false
# ThreadSanitizer: the fzfs binary only (no unit tests), for the mount daemon's threads
FZFS_BUILD_DIR="$here/build-tsan" bash scripts/build.sh -Dwerror=true -Db_sanitize=thread -Db_lundef=false -Dtests=false
tsan_bin="$here/build-tsan/fzfs"
# TSan's shadow memory sits at fixed addresses: where the kernel randomizes mmap with
# more bits than the runtime expects (vm.mmap_rnd_bits 32 on some kernels) it dies
# with "unexpected memory mapping". Then the build runs without address
# randomization (setarch -R, inherited by the forked daemon), through a wrapper.
if ! "$tsan_bin" --version >/dev/null 2>&1; then
  printf '#!/bin/sh\nexec setarch "$(uname -m)" -R "%s" "$@"\n' "$tsan_bin" >"$here/build-tsan/fzfs-no-aslr"
  chmod +x "$here/build-tsan/fzfs-no-aslr"
  tsan_bin="$here/build-tsan/fzfs-no-aslr"
  "$tsan_bin" --version >/dev/null
fi

export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
echo "== unit tests (release build)"
meson test -C build --print-errorlogs
echo "== unit tests (ASan + UBSan build)"
meson test -C build-asan --print-errorlogs

echo "== fuzzing (libFuzzer: regression inputs, then ${FZFS_FUZZ_SECONDS:-20}s per target)"
FZFS_FUZZ_SECONDS=${FZFS_FUZZ_SECONDS:-20} bash tests/fuzz/run.sh

echo "== integration tests"
export FZFS_BIN="$here/build/fzfs"
export FZFS_ASAN_BIN="$here/build-asan/fzfs"
export FZFS_TSAN_BIN="$tsan_bin"
"$here/.venv/bin/python" -m pytest -q -p no:cacheprovider tests/integration "$@"
