#!/usr/bin/env bash
# Every C file of the project is formatted as .clang-format says (upstream code in
# subprojects/ and generated test data are not ours to format). Fix with:
#   git ls-files '*.c' '*.h' | grep -v '^subprojects/\|^tests/unit/data/' | xargs clang-format -i
set -euo pipefail
cd "$(dirname "$0")/.."
files=$(git ls-files '*.c' '*.h' | grep -v '^subprojects/\|^tests/unit/data/')
clang-format --dry-run --Werror $files
echo "clang-format: $(echo "$files" | wc -l) files formatted as .clang-format says"
