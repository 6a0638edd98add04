"""Hugging Face transformers built from small configs (no download), through `build()`.

Their attention masks are bool constants: a [1, 1, 1, 1] all-true mask when no attention mask is
given (the cleanup pass drops it with its ``where``), GPT-2's causal mask (stored in the container
as bool, dtype code 10). The bundle must match PyTorch. A float64 constant is storable too (ONNX), and TFLite, which
has no float64 kernels, refuses it in one line naming the node and the source line.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecompile.backends.tflite import TFLiteUnsupportedError, emit_tflite
from edgecompile.build import BuildConfig, build
from edgecompile.container import read_container
from edgecompile.frontend import import_model
from edgecompile.inputs.model import LoadedModel

transformers = pytest.importorskip("transformers")

SEQ, VOCAB = 8, 100


class LastHidden(torch.nn.Module):
    """`model(input_ids[, attention_mask]).last_hidden_state`: one tensor out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        names = ("input_ids", "attention_mask") if inputs[0].dtype == torch.int64 else ("pixel_values",)
        return self.model(**dict(zip(names, inputs))).last_hidden_state


def _ids(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(0))


def bert_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    return LastHidden(transformers.BertModel(cfg, add_pooling_layer=False).eval())


def gpt2_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return LastHidden(transformers.GPT2Model(cfg).eval())


def _build(tmp_path, name: str, model: torch.nn.Module, inputs: tuple, **cfg):
    cfg = {"target": "rpi4", "quant": "none", "rank": "none", "optimize": "none", "out": tmp_path / name, **cfg}
    return build(LoadedModel(name, model, inputs), BuildConfig(**cfg))


def _bool_tensors(out) -> dict[str, np.ndarray]:
    tensors = read_container(out / "weights.ecw").read_all()
    return {k: v for k, v in tensors.items() if v.dtype == np.bool_}


@pytest.mark.parametrize("backend", ["onnx", "tflite"])
def test_bert_tiny_converts_and_matches_pytorch(tmp_path, backend):
    res = _build(tmp_path, f"bert_{backend}", bert_tiny(), (_ids(),), backend=backend)
    assert res.fidelity.cosine >= 0.9999 and res.fidelity.primary.min_cosine >= 0.9999
    # without padding the mask is an all-true constant: the cleanup pass drops it with its where
    assert not _bool_tensors(res.out_dir)


def test_bert_with_a_padding_mask_input_matches_pytorch(tmp_path):
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    mask[1, 5:] = 0
    res = _build(tmp_path, "bert_mask", bert_tiny(), (_ids(), mask))
    assert res.fidelity.cosine >= 0.9999


def test_gpt2_causal_mask_converts_and_matches_pytorch(tmp_path):
    res = _build(tmp_path, "gpt2", gpt2_tiny(), (_ids(),))
    assert res.fidelity.cosine >= 0.9999 and res.fidelity.primary.min_cosine >= 0.9999
    masks = _bool_tensors(res.out_dir)
    assert masks, "the causal mask should be a bool tensor in the container"


def test_bert_tiny_int8_build_passes_the_gate(tmp_path):
    res = _build(tmp_path, "bert_int8", bert_tiny(), (_ids(),), quant="int8")
    assert res.report["chosen"].startswith("int8")
    assert res.fidelity.cosine >= 0.999


class Double(torch.nn.Module):
    """A linear layer whose output is scaled in float64 by a float64 buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 16, dtype=torch.float64))
        self.lin = torch.nn.Linear(16, 16)

    def forward(self, x):
        return (self.lin(x).double() * self.scale).float()


def test_float64_constant_is_stored_and_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    res = _build(tmp_path, "double", Double().eval(), (torch.randn(2, 16),))
    assert res.fidelity.cosine >= 0.9999
    tensors = read_container(res.out_dir / "weights.ecw").read_all()
    assert any(v.dtype == np.float64 for v in tensors.values())


def test_float64_on_tflite_is_one_line_naming_node_and_source():
    torch.manual_seed(0)
    g = import_model(Double().eval(), (torch.randn(2, 16),))
    with pytest.raises(TFLiteUnsupportedError) as e:
        emit_tflite(g)
    msg = str(e.value)
    assert "\n" not in msg and "float64" in msg and "test_hf_transformers.py:" in msg and "--backend onnx" in msg
