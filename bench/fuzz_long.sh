#!/usr/bin/env bash
# Long libFuzzer run of the C decoder (ASan + UBSan). Usage: bash bench/fuzz_long.sh [seconds=3600]
# New inputs go to runtime/build/fuzz/new; the kept seed corpus is runtime/fuzz/corpus.
set -euo pipefail
cd "$(dirname "$0")/../runtime"
make fuzz FUZZ_SECONDS="${1:-3600}" 2>&1 | grep -E "stat::|ERROR|SUMMARY|Done"
