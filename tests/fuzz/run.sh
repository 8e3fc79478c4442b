#!/usr/bin/env bash
# Build the libFuzzer harnesses (tests/fuzz/fuzz_*.c) with clang into
# build-fuzz/ and run each target: first every committed regression input
# (tests/fuzz/regressions/<target>/*), then a bounded fuzzing session seeded
# with real files of the repository (torch checkpoints, safetensors files,
# tokenizers, add-tokens YAML). Fails on any crash, leak, timeout, memory
# blow-up or broken harness check; the input is saved under
# build-fuzz/artifacts/<target>/.
#
#   tests/fuzz/run.sh [TARGET ...]        default: every target
#
# Environment:
#   FZFS_FUZZ_SECONDS   fuzzing time per target (default 30; 0 = replay only)
#   FZFS_FUZZ_BUILD_DIR build directory (default build-fuzz)
#   FZFS_FUZZ_CORPUS    keep each target's corpus in $FZFS_FUZZ_CORPUS/<target>
#                       (default: a temporary directory, removed at the end)
#   FZFS_FUZZ_TIMEOUT   seconds one input may take (default 10)
set -euo pipefail
# One compound command: bash parses it whole before running it, so editing
# this file while it runs (a long session) cannot change what runs.
{
here=$(cd "$(dirname "$0")/../.." && pwd)
fz="$here/tests/fuzz"
bdir=${FZFS_FUZZ_BUILD_DIR:-$here/build-fuzz}
secs=${FZFS_FUZZ_SECONDS:-30}
timeout=${FZFS_FUZZ_TIMEOUT:-10}

# target  max_len  dictionary
table="pickle 16384 pickle
zip 8192 pickle
torchbin 8192 pickle
safetensors 4096 safetensors
json 8192 json
addtokens 2048 yaml
tokenizer 24576 tokenizer"
all=$(echo "$table" | cut -d' ' -f1)
targets=$(echo ${*:-$all})
for t in $targets; do
  echo "$all" | grep -qx "$t" || { echo "run.sh: unknown target '$t' (one of:" $all")" >&2; exit 2; }
done

command -v clang >/dev/null || { echo "run.sh: clang is not installed (scripts/install-deps.sh)" >&2; exit 1; }
if [ -f "$bdir/build.ninja" ]; then
  CC=clang meson setup --reconfigure "$bdir" "$here" -Dfuzz=true >/dev/null
else
  CC=clang meson setup "$bdir" "$here" -Dfuzz=true >/dev/null
fi
ninja -C "$bdir" $(for t in $targets; do echo "tests/fuzz/fuzz_$t"; done) >/dev/null

work=$(mktemp -d "${TMPDIR:-/tmp}/fzfs-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Seeds: real files from the repository, each no longer than the target's max_len.
seed_files() { # target max_len dir
  local t=$1 max=$2 d=$3 f k=0
  mkdir -p "$d"
  add() { [ -f "$1" ] && [ "$(stat -c %s "$1")" -le "$max" ] && cp "$1" "$d/$(basename "$1").$k" && k=$((k + 1)) || true; }
  local weights
  weights=$(ls "$here"/tests/unit/data/*.bin "$here"/examples/tiny-run/checkpoints/*/*.bin \
               "$here"/examples/tiny-run/checkpoints/*/*.pt)
  case $t in
  pickle)
    for f in $weights; do
      unzip -p "$f" '*/data.pkl' > "$d/$(basename "$f").$k.pkl" 2>/dev/null || true; k=$((k + 1))
    done ;;
  zip | torchbin) for f in $weights; do add "$f"; done ;;
  safetensors) for f in "$here"/tests/unit/data/*.safetensors; do add "$f"; done ;;
  json)
    for f in $(find "$here/tests/unit/data" "$here/examples" -name '*.json'); do add "$f"; done ;;
  addtokens) for f in "$here"/examples/add_tokens/*.yaml "$fz"/seeds/addtokens/*.yaml; do add "$f"; done ;;
  tokenizer)
    local dir y
    for dir in "$here"/tests/unit/data/tok_* "$here"/examples/tiny-run; do
      for y in "" "$here"/examples/add_tokens/*.yaml "$fz"/seeds/addtokens/*.yaml; do
        { for f in tokenizer.json tokenizer_config.json special_tokens_map.json; do
            if [ -f "$dir/$f" ]; then cat "$dir/$f"; fi
            printf '\0'
          done
          if [ -n "$y" ]; then cat "$y"; fi; } > "$d/$(basename "$dir").$k"
        k=$((k + 1))
      done
    done
    # with config.json, generation_config.json, a preset and --stop-tokens
    dir=$here/tests/unit/data/tok_pad
    for y in "$here"/examples/generation_config/*.json; do
      { for f in tokenizer.json tokenizer_config.json special_tokens_map.json add_tokens config.json \
                 generation_config.json; do
          if [ -f "$dir/$f" ]; then cat "$dir/$f"; fi
          printf '\0'
        done
        cat "$y"; printf '\0<|EOS|>,<|PAD|>'; } > "$d/preset.$k"
      k=$((k + 1))
    done
    # a padded embedding (more rows than tokens) and one the tokenizer outgrew
    for rows in 320 296; do
      { for f in tokenizer.json tokenizer_config.json special_tokens_map.json; do
          if [ -f "$dir/$f" ]; then cat "$dir/$f"; fi
          printf '\0'
        done
        cat "$here/examples/add_tokens/chatml.yaml"; printf '\0\0\0\0\0%s' "$rows"; } > "$d/rows.$k"
      k=$((k + 1))
    done ;;
  esac
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
status=0
summary=""
while read -r t max dict; do
  echo " $targets " | grep -q " $t " || continue
  bin="$bdir/tests/fuzz/fuzz_$t"
  art="$bdir/artifacts/$t"
  mkdir -p "$art"
  opts=(-max_len="$max" -timeout="$timeout" -rss_limit_mb=2048 -malloc_limit_mb=1024
        -dict="$fz/dict/$dict.dict" -artifact_prefix="$art/")

  regs=()
  if [ -d "$fz/regressions/$t" ]; then
    while IFS= read -r -d '' f; do regs+=("$f"); done < <(find "$fz/regressions/$t" -type f -print0 | sort -z)
  fi
  if [ ${#regs[@]} -gt 0 ]; then
    if ! "$bin" "${opts[@]}" "${regs[@]}" > "$work/$t.replay.log" 2>&1; then
      echo "== fuzz $t: a regression input fails again:" >&2
      tail -n 40 "$work/$t.replay.log" >&2
      status=1
      summary="$summary$(printf '%-12s regressions FAILED' "$t")\n"
      continue
    fi
  fi
  [ "$secs" -gt 0 ] || { summary="$summary$(printf '%-12s %d regression inputs ok' "$t" ${#regs[@]})\n"; continue; }

  seeds="$work/seeds-$t"
  seed_files "$t" "$max" "$seeds"
  corpus=${FZFS_FUZZ_CORPUS:+$FZFS_FUZZ_CORPUS/$t}
  corpus=${corpus:-$work/corpus-$t}
  mkdir -p "$corpus"
  log="$work/$t.log"
  if "$bin" "${opts[@]}" -max_total_time="$secs" -print_final_stats=1 "$corpus" "$seeds" > "$log" 2>&1; then
    res=ok
  else
    res=FAILED
    status=1
    echo "== fuzz $t: finding (input saved under $art):" >&2
    grep -v '^#[0-9]' "$log" | tail -n 60 >&2
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  summary="$summary$(printf '%-12s %s: %s execs (%s/s), %d regression inputs, corpus %d' "$t" "$res" \
            "${execs:-?}" "${rate:-?}" ${#regs[@]} "$(ls "$corpus" | wc -l)")\n"
done <<< "$table"

echo "== fuzz summary (${secs}s per target)"
printf '%b' "$summary"
exit $status
}
