#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: install dependencies,
# build (plain and ASan/UBSan), run the cmocka unit tests in both builds, the
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
"$here/.venv/bin/python" -m pytest -q -p no:cacheprovider tests/integration "$@"
