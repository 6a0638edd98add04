"""A slice of bench/bench_cli_matrix.py (the hostile-user CLI matrix of issue 14): one or two cases
of each group through the real CLI, each in its own process. The bench runs all ~170."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

SUBSET = {
    "wrong shape", "NaN buffer (BN running_var)", "factory calls sys.exit(5)",        # model
    "epochs -1", "calib header claims 10^12 samples", "json: bad model",              # option
    "--out a name too long", "file-size limit 16 KiB (RLIMIT_FSIZE)",                 # folder
    "SIGTERM at verify", "SIGKILL at swap",                                           # signal
    "two builds into one existing --out",                                             # concurrent
    "weights zstd frame header", "manifest not UTF-8 --json",                          # inspect
}


@pytest.mark.slow
def test_cli_matrix_subset():
    from bench_cli_matrix import KINDS, run_matrix

    summary = run_matrix(lambda c: c.name in SUBSET or c.group == "loop", loop=3, verbose=False)
    assert summary["cases"] == len(SUBSET) + 3
    assert {k: summary["total"].get(k, 0) for k in KINDS} == dict.fromkeys(KINDS, 0), summary["failures"]
    assert summary["crash_logs"] == 0
