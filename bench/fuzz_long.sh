#!/usr/bin/env bash
# Long libFuzzer run of the C decoder (ASan + UBSan; fast and reference paths, slicing-by-8 CRC).
# Usage: bash bench/fuzz_long.sh [seconds=3600]
# New inputs go to runtime/build/fuzz/new; the kept seed corpus is runtime/fuzz/corpus. After the
# run the union is minimized (libFuzzer -merge=1, coverage-preserving) into runtime/build/fuzz/min;
# copy that over runtime/fuzz/corpus only when it stays small (the corpus lives in git).
set -euo pipefail
cd "$(dirname "$0")/../runtime"
make -s build/fuzz/ecw_fuzz
log=build/fuzz/long.log
make fuzz FUZZ_SECONDS="${1:-3600}" >"$log" 2>&1 || { tail -50 "$log"; exit 1; }
grep -E "stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|ERROR|SUMMARY|Done" "$log"
echo "crash files: $(ls build/fuzz/new/../crash-* build/crash-* crash-* 2>/dev/null | wc -l)"
rm -rf build/fuzz/min && mkdir -p build/fuzz/min
build/fuzz/ecw_fuzz -merge=1 -max_len=16384 build/fuzz/min fuzz/corpus build/fuzz/new >build/fuzz/merge.log 2>&1
echo "minimized corpus: $(ls build/fuzz/min | wc -l) files, $(du -sk build/fuzz/min | cut -f1) KiB (kept: $(ls fuzz/corpus | wc -l) files)"
