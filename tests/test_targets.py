import pytest

from edgecompile.targets import TargetError, all_targets, load_target


def test_all_targets_load_and_facts_are_sane():
    ts = {t.name: t for t in all_targets()}
    assert ts["rpi4"].cpu == "cortex-a72" and "neon" in ts["rpi4"].features
    assert ts["nrf52840"].kind == "mcu" and ts["nrf52840"].ram_kib == 256
    for t in ts.values():
        assert t.peak_macs_int8 >= t.peak_macs_fp32 > 0
        if t.kind == "mcu":
            assert "zstd" not in t.codecs


def test_unknown_target_lists_known():
    with pytest.raises(TargetError, match="known targets: host, nrf52840"):
        load_target("esp32")


def test_invalid_target_file(tmp_path):
    (tmp_path / "bad.toml").write_text('name = "bad"\nkind = "toaster"\n')
    with pytest.raises(TargetError, match="missing field"):
        load_target("bad", tmp_path)


def test_estimate_is_roofline():
    t = load_target("rpi4")
    compute_bound = t.estimate_latency_s(0, 1e9, 0, 0)
    assert compute_bound == pytest.approx(1e9 / t.peak_macs_int8 / t.efficiency)
    memory_bound = t.estimate_latency_s(0, 0, 5_000_000_000, 0)
    assert memory_bound == pytest.approx(1.0)
