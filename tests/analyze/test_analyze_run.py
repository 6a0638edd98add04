"""`analyze()` and `edgecompile analyze` on the embedded digits CNN: every layer measured, the
recommendation passes the gate jointly, rank rules meet their budgets, the files are written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecompile.analyze import AnalyzeConfig, analyze
from edgecompile.analyze.render import render_html

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    return analyze(None, AnalyzeConfig(max_samples=128, budgets=(0.5,)))


def test_spectra_and_sensitivity(report):
    names = [r["layer"] for r in report["layers"]]
    assert names == list(report["sensitivity"])
    for r in report["layers"]:
        assert 1 <= r["erank"] <= r["full_rank"]
        assert r["energy95"] <= r["energy99"] <= r["full_rank"]
    for opts in report["sensitivity"].values():
        by = {o["setting"]: o for o in opts}
        assert by["int8"]["score"] >= 0             # int8 weights alone pass on the trained CNN
        # harsher settings of one family store fewer bytes
        bits = [by[f"bits:{b}"]["est_bytes"] for b in (5, 4, 3, 2)]
        assert bits == sorted(bits, reverse=True)
        assert by["sparsity:0.9"]["score"] <= by["sparsity:0.5"]["score"]


def test_recommendation_passes_jointly(report):
    rec = report["recommendation"]
    assert rec["joint_score"] >= 0
    assert rec["est_bytes"] < rec["int8_bytes"] < rec["fp32_bytes"]
    assert {r["layer"] for r in rec["layers"]} == set(report["sensitivity"])


def test_rank_rules_at_equal_size(report):
    rows = [r for r in report["rank_rules"] if "params" in r]
    assert {r["method"] for r in rows} == {"erank", "energy", "l1", "greedy"}
    for r in rows:
        assert r["params"] <= r["budget"] * r["dense_params"]
        assert 0 <= r["accuracy"] <= 1
    assert 0.97 < report["float_accuracy"] <= 1
    assert "<img" in render_html(report)


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "edgecompile.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_json_and_files(tmp_path):
    r = run_cli("analyze", "--out", str(tmp_path / "a"), "--target", "nrf52840", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and res["analysis"]["recommendation"]["joint_score"] >= 0
    assert res["analysis"]["recommendation"]["target"]["weights_fit"]
    assert (tmp_path / "a" / "analysis.html").read_text().count("<img") >= 3
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["model"] == "digits"


def test_cli_bad_input_is_one_line(tmp_path):
    r = run_cli("analyze", "--calib", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "a"))
    assert r.returncode == 3
    assert r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((8, 1, 8, 8), np.float32))
    r = run_cli("analyze", "--intrinsic-dim", "--train", str(tmp_path / "nolabels.npz"), "--out", str(tmp_path / "b"))
    assert r.returncode == 3 and "labels" in r.stderr


def test_options_are_checked_before_the_model_loads(tmp_path):
    from edgecompile.analyze import AnalyzeError
    from edgecompile.errors import InputError

    with pytest.raises(InputError, match="board|target"):
        analyze("no/such/model.py:f", AnalyzeConfig(target="no-such-board"))
    with pytest.raises(AnalyzeError, match="--intrinsic-dim"):
        np.savez(tmp_path / "t.npz", x=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(4, np.int64))
        analyze("no/such/model.py:f", AnalyzeConfig(train=tmp_path / "t.npz"))
