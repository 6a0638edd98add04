#!/usr/bin/env bash
# Long libFuzzer run of the C decoder (ASan + UBSan; fast and reference paths, slicing-by-8 CRC).
# Usage: bash bench/fuzz_long.sh [seconds=3600]
# New inputs go to runtime/build/fuzz/new; the kept corpus is runtime/fuzz/corpus (the named seeds
# of fuzz/make_corpus.py plus minimized finds). After the run, the finds that add coverage to the
# kept corpus, at most 1 KiB each (libFuzzer -merge=1), go to runtime/build/fuzz/keep: a small
# copy of fuzz/corpus plus them, to copy over fuzz/corpus (it lives in git).
set -euo pipefail
cd "$(dirname "$0")/../runtime"
make -s build/fuzz/ecw_fuzz
log=build/fuzz/long.log
make fuzz FUZZ_SECONDS="${1:-3600}" >"$log" 2>&1 || { tail -50 "$log"; exit 1; }
grep -E "stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|ERROR|SUMMARY|Done" "$log"
echo "crash files: $(ls crash-* 2>/dev/null | wc -l)"
rm -rf build/fuzz/keep && cp -r fuzz/corpus build/fuzz/keep
build/fuzz/ecw_fuzz -merge=1 -max_len=1024 build/fuzz/keep build/fuzz/new >build/fuzz/merge.log 2>&1
grep -E "MERGE-OUTER: [0-9]+ new files" build/fuzz/merge.log || true
echo "build/fuzz/keep: $(ls build/fuzz/keep | wc -l) files, $(cat build/fuzz/keep/* | wc -c) bytes (fuzz/corpus: $(ls fuzz/corpus | wc -l) files)"
