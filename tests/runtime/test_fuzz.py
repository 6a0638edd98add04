"""Bounded libFuzzer run of the C decoder under ASan + UBSan (the long run: bench/fuzz_long.sh)."""
from __future__ import annotations

import re
import subprocess

import pytest

from ecw_harness import RUNTIME, have


@pytest.mark.slow
@pytest.mark.skipif(not have("clang"), reason="clang (libFuzzer) missing: scripts/install_toolchains.sh")
def test_libfuzzer_finds_no_crash_in_60s(tmp_path):
    p = subprocess.run(["make", "-s", "-C", str(RUNTIME), "fuzz", f"BUILD={tmp_path}", "FUZZ_SECONDS=50"],
                       capture_output=True, text=True, timeout=400)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-3000:]
    runs = int(re.search(r"stat::number_of_executed_units:\s*(\d+)", log).group(1))
    assert runs > 10_000 and "ERROR: AddressSanitizer" not in log and "runtime error" not in log
