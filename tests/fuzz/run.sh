#!/bin/sh
# Builds the libFuzzer target with clang (ASan + UBSan) and fuzzes for a
# time budget, starting from the seed corpus. Usage:
#   tests/fuzz/run.sh [seconds] [build dir]        (defaults: 60 build-fuzz)
set -eu
seconds=${1:-60}
build=${2:-build-fuzz}
src=$(cd "$(dirname "$0")/../.." && pwd)
CC=clang cmake -S "$src" -B "$build" -DCANCEL_BUILD_FUZZ=ON -DCANCEL_SANITIZE=address,undefined \
    -DCANCEL_DEBUG=ON -DCANCEL_BUILD_EXAMPLES=OFF -DCANCEL_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" --target api_fuzz -j "$(nproc)" >/dev/null
corpus=$build/fuzz-corpus
mkdir -p "$corpus"
cp "$src"/tests/fuzz/corpus/* "$corpus"/
# The library thread lives for the whole process: detect_leaks stays on for
# everything the inputs allocate and free.
"$build/tests/api_fuzz" -max_total_time="$seconds" -print_final_stats=1 -max_len=512 \
    "$corpus" 2>&1 | grep -E "^#|stat::|ERROR|SUMMARY|api_fuzz" | tail -n 25
echo "corpus now holds $(ls "$corpus" | wc -l) inputs"
