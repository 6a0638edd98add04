import numpy as np
import pytest

from edgecompile.container import encode_container
from edgecompile.ir import Graph, QuantParams, infer_shapes, run_graph, verify
from edgecompile.passes.base import PassError
from edgecompile.passes.cluster import ClusterConfig, WeightClusterPass, cluster_int8


def quantized_linear(sparsity=0.5):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    w[rng.random(w.shape) < sparsity] = 0
    q = QuantParams(np.abs(w).max(1) / 127, np.zeros(64), axis=0)
    g = Graph("lin")
    x = g.add_input("x", (4, 128))
    wv = g.add_const("fc.weight", q.quantize(w), quant=q)
    g.outputs = [g.add_node("linear", [x, wv, None], name="fc").output]
    infer_shapes(g)
    return g


def test_cluster_keeps_zeros_and_bounds_levels():
    q = np.random.default_rng(1).integers(-127, 128, 5000).astype(np.int8)
    q[::3] = 0
    c = cluster_int8(q, 3)
    assert np.all(c[q == 0] == 0)
    assert len(np.unique(c)) <= 2 ** 3 + 1
    assert np.abs(c.astype(int) - q).max() <= 255 // 8  # within half a (roughly uniform) cluster width


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_cluster_on_the_histogram_is_lloyd_on_every_weight(bits):
    """cluster_int8 runs k-means on the histogram of the int8 values: the same levels as
    `kmeans_cluster` run on every non-zero weight, whatever the distribution and sparsity."""
    from edgecompile.container import kmeans_cluster

    rng = np.random.default_rng(bits)
    for t in range(40):
        w = [rng.normal, rng.laplace, lambda a, b, n: rng.uniform(-b, b, n)][t % 3](0, 1, int(rng.integers(2, 3000)))
        q = np.clip(np.rint(w / np.abs(w).max() * 127 * rng.uniform(0.05, 1)), -127, 127).astype(np.int8)
        q[rng.random(q.size) < (0.5 if t % 4 == 0 else 0)] = 0
        want = q.copy()
        nz = q != 0
        if nz.sum() > 1 << bits:
            want[nz] = np.clip(np.rint(kmeans_cluster(q[nz].astype(np.float32), bits)), -127, 127)
        assert np.array_equal(cluster_int8(q, bits), want)


def test_pass_structure_numerics_and_lut_codec():
    g = quantized_linear()
    x = np.random.default_rng(2).standard_normal((4, 128)).astype(np.float32)
    before = run_graph(g, x)
    res = WeightClusterPass(ClusterConfig(bits=4))(g)
    verify(g)
    assert res.modified and res.records[0]["levels"] <= 17
    after = run_graph(g, x)
    # 4-bit Lloyd-Max levels on Gaussian weights: ~20 dB SQNR, i.e. ~10% relative RMS error
    rel = np.sqrt(np.mean((after - before) ** 2) / np.mean(before ** 2))
    assert rel < 0.12, rel
    w = g.consts["fc.weight"]
    _, records = encode_container({"w": w.data}, codecs=("raw", "rans", "lut"))
    assert records[0].codec == "lut" and records[0].encoded_size < w.data.size * 0.5


def test_negative_float_graph_is_rejected_and_unchanged():
    g = quantized_linear()
    v = g.consts["fc.weight"]
    v.data, v.quant = v.real(), None
    before = g.dump()
    with pytest.raises(PassError, match="quantize first"):
        WeightClusterPass(ClusterConfig())(g)
    assert g.dump() == before
