"""Names and meta: state_dict constants, forward-argument inputs, module-path nodes, source lines."""

from __future__ import annotations

import inspect

import torch

import tests.models as zoo


def test_constants_are_named_by_state_dict(imported):
    model, _, graph = imported("mobilenet_block")
    sd = model.state_dict()
    params = [v for v in graph.consts.values() if v.name in sd]
    assert len(params) >= 30
    for v in params:
        assert v.shape == tuple(sd[v.name].shape)
    assert "stem.0.weight" in graph.consts and "block1.depthwise.0.weight" in graph.consts
    assert not any("num_batches_tracked" in n for n in graph.consts)


def test_inputs_are_named_after_forward_arguments(imported):
    assert [v.name for v in imported("cnn")[2].inputs] == ["x"]
    assert [v.name for v in imported("encoder_layer_classifier")[2].inputs] == ["x", "padding_mask"]
    assert [(v.name, v.dtype) for v in imported("tiny_transformer")[2].inputs] == [("ids", "int64")]


def test_nodes_are_named_after_modules_with_meta(imported):
    _, _, graph = imported("cnn")
    names = [n.name for n in graph.nodes]
    assert names[:4] == ["features.0", "features.1", "features.2", "features.3"]
    conv = graph.node("features.0")
    assert conv.op == "conv" and conv.input(1).name == "features.0.weight"
    assert conv.meta["module"] == "features.0" and conv.meta["aten"] == "aten.convolution.default"
    assert graph.node("classifier").op == "linear"


def test_source_points_at_the_user_line(imported):
    _, _, graph = imported("cnn")
    lines, start = inspect.getsourcelines(zoo.SmallCNN.forward)
    line = start + next(i for i, text in enumerate(lines) if "self.classifier(" in text)
    assert graph.node("classifier").meta["source"] == f"tests/models.py:{line}"
    # the flatten before it is on the same line; the convs are inside nn.Sequential (torch code),
    # so their innermost user frame is the same line too
    assert all(n.meta["source"] == f"tests/models.py:{line}" for n in graph.nodes)


def test_transformers_nodes_point_into_modeling_file(imported):
    _, _, graph = imported("bert_encoder")
    q = graph.node("bert.encoder.layer.0.attention.self.query")
    assert q.meta["source"].startswith("transformers/models/bert/modeling_bert.py:")
    softmax = [n for n in graph.nodes if n.op == "softmax"][0]
    assert softmax.meta["module"] == "bert.encoder.layer.0.attention.self"
    assert softmax.name == "bert.encoder.layer.0.attention.self.softmax"


def test_values_carry_static_shapes_and_int64_indices(imported):
    _, (ids, mask), graph = imported("bert_encoder")
    gather = graph.node("bert.embeddings.word_embeddings")
    assert gather.op == "gather" and gather.input(1).dtype == "int64"
    assert gather.output.shape == (*ids.shape, 64)
    assert all(v.shape is not None for v in graph.values())
    assert torch.Size(graph.outputs[0].shape) == torch.Size([ids.shape[0], 3])
