"""The conversion zoo: architectures nobody here wrote, from torchvision, timm, `transformers`
(built from configs, no download) and plain `torch.nn`, with seeded random weights and real inputs.

Conversion is judged on any weights (a converter that is exact on random weights is exact on
trained ones); what int8 does to a model is judged on trained weights elsewhere (bench_pretrained,
bench_int8_pretrained). So each architecture here is built at its real layer structure and, where a
full-size model would make a 2-core bench take hours, at a reduced size named in its note (fewer
layers, a smaller input); the ops and patterns it exercises are those of the full model.

Inputs are real where they can be: crops of the bundled photographs (bench/zoo/images.py) for
images, espeak-ng speech for audio (and Whisper's own log-mel front end on it), written sentences
for text, whose words are hashed to token ids (no tokenizer files ship offline; the ids keep the
sentences' repetitions). Sequence models of plain `torch.nn` get smooth random features.

``python -m bench.zoo.archs`` lists the zoo; `ARCHS[name].loaded(n_calib, n_eval)` gives a
`LoadedModel` for `edgecompile.build.build`.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import nn

from . import torchvision_shim

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Arch:
    name: str
    family: str                       # torchvision | timm | transformers | torch.nn | ours
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]            # one sample's input shape (batch 1 is prepended)
    data: str                         # image | tokens | audio | mel | features
    output: str = "logits"            # the fidelity kind of the (first) output
    vocab: int = 0                    # tokens: the vocabulary size
    note: str = ""

    def module(self) -> nn.Module:
        torchvision_shim.install()
        torch.manual_seed(0)
        return self.make().eval()

    def example(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(a[:1]) for a in self.inputs(1, seed=99))

    def inputs(self, n: int, seed: int) -> list[np.ndarray]:
        return [_DATA[self.data](self, n, seed)]

    def loaded(self, n_calib: int = 32, n_eval: int = 32):
        from edgecompile.inputs.model import LoadedModel

        data = {"calib": self.inputs(n_calib, seed=0), "eval": self.inputs(n_eval, seed=1),
                "outputs": [self.output]}
        return LoadedModel(self.name, self.module(), self.example(), data)


# -- inputs ----------------------------------------------------------------------------------------

@cache
def _photos() -> tuple[np.ndarray, ...]:
    from .images import photos
    return tuple(photos().values())


def _images(arch: Arch, n: int, seed: int) -> np.ndarray:
    from .images import random_crops

    c, h, w = arch.shape
    rng = np.random.default_rng(seed)
    pics = _photos()
    crops = [random_crops(pics[int(rng.integers(len(pics)))], 1, h, rng)[0] for _ in range(n)]
    x = (np.stack(crops).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    x = x.transpose(0, 3, 1, 2)
    if c == 1:
        x = x.mean(1, keepdims=True)
    return np.ascontiguousarray(x[..., :h, :w])


@cache
def _sentences() -> tuple[str, ...]:
    from pathlib import Path
    text = (Path(__file__).parent / "data" / "sentences.txt").read_text()
    return tuple(s.strip() for s in text.splitlines() if s.strip())


def _tokens(arch: Arch, n: int, seed: int) -> np.ndarray:
    """Sentences of the bundled text as ids: each word hashed (crc32) into [2, vocab)."""
    (t,) = arch.shape
    rng = np.random.default_rng(seed)
    words = " ".join(_sentences()).lower().split()
    out = np.zeros((n, t), np.int64)
    for i in range(n):
        start = int(rng.integers(0, len(words) - t))
        out[i] = [2 + zlib.crc32(w.encode()) % (arch.vocab - 2) for w in words[start:start + t]]
    return out


@cache
def _speech() -> np.ndarray:
    """~1 min of espeak-ng speech with pauses, noise and hum (silero_vad.make_stream), 16 kHz."""
    from .silero_vad import make_stream
    audio, _ = make_stream(list(_sentences()[:12]), seed=3)
    return audio


def _windows(t: int, n: int, seed: int) -> np.ndarray:
    audio = _speech()
    starts = np.random.default_rng(seed).integers(0, len(audio) - t, n)
    return np.stack([audio[s:s + t] for s in starts]).astype(np.float32)


def _audio(arch: Arch, n: int, seed: int) -> np.ndarray:
    return _windows(arch.shape[0], n, seed)


def _mel(arch: Arch, n: int, seed: int) -> np.ndarray:
    """Whisper's log-mel features (its own feature extractor) of speech windows, cut to shape."""
    from transformers import WhisperFeatureExtractor

    bins, frames = arch.shape
    fe = WhisperFeatureExtractor(feature_size=bins)
    wav = _windows(frames * 160, n, seed)
    feats = fe(list(wav), sampling_rate=16000, return_tensors="np")["input_features"]
    return np.ascontiguousarray(feats[:, :, :frames]).astype(np.float32)


def _features(arch: Arch, n: int, seed: int) -> np.ndarray:
    """Smooth random sequences [n, (1,) T, F]: a random walk along T per feature, its spread kept
    near 0.3 (a spectrogram-like [1, T, F] for shapes of 3 axes)."""
    shape = arch.shape[-2:]
    x = np.random.default_rng(seed).normal(0, 0.3, (n, *shape)).astype(np.float32)
    x = np.cumsum(x, axis=1) / np.sqrt(np.arange(1, shape[0] + 1, dtype=np.float32))[:, None]
    return x.reshape(n, *arch.shape)


_DATA = {"image": _images, "tokens": _tokens, "audio": _audio, "mel": _mel, "features": _features}


# -- model builders --------------------------------------------------------------------------------

def _tv(name: str, **kw) -> Callable[[], nn.Module]:
    def make():
        import torchvision
        return getattr(torchvision.models, name)(weights=None, **kw)
    return make


def _tv_seg(name: str) -> Callable[[], nn.Module]:
    def make():
        import torchvision
        return _FirstOutput(getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                                         num_classes=8), "out")
    return make


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    def make():
        import timm
        return timm.create_model(name, pretrained=False, **kw)
    return make


class _FirstOutput(nn.Module):
    """A model returning a dict / ModelOutput / tuple, cut to one tensor."""

    def __init__(self, inner: nn.Module, key: str | int = 0):
        super().__init__()
        self.inner, self.key = inner, key

    def forward(self, x):
        return self.inner(x)[self.key]


def _hf(config: str, model: str, **kw) -> Callable[[], nn.Module]:
    def make():
        import transformers
        cfg = getattr(transformers, config)(**kw)
        return _FirstOutput(getattr(transformers, model)(cfg), "last_hidden_state")
    return make


def _whisper_encoder() -> nn.Module:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    cfg = WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                        num_mel_bins=80, max_source_positions=100)
    return _FirstOutput(WhisperEncoder(cfg), "last_hidden_state")


class UNetTransposed(nn.Module):
    """A two-level U-Net whose decoder upsamples with transposed convolutions."""

    def __init__(self, c: int = 16):
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
        self.e1, self.e2, self.mid = block(3, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.d2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2), block(4 * c, 2 * c)
        self.up1, self.d1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2), block(2 * c, c)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        s1 = self.e1(x)
        s2 = self.e2(self.pool(s1))
        m = self.mid(self.pool(s2))
        y = self.d2(torch.cat([self.up2(m), s2], 1))
        y = self.d1(torch.cat([self.up1(y), s1], 1))
        return self.head(y)


class UNetUpsample(UNetTransposed):
    """The same U-Net upsampling bilinearly (then a 1x1 conv to halve the channels)."""

    def __init__(self, c: int = 16):
        super().__init__(c)
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                 nn.Conv2d(4 * c, 2 * c, 1))
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * c, c, 1))


class DSCNN(nn.Module):
    """The MLPerf Tiny keyword spotter's shape: conv 10x4 then 4 depthwise-separable blocks."""

    def __init__(self, classes: int = 12, c: int = 64):
        super().__init__()
        layers = [nn.Conv2d(1, c, (10, 4), stride=2, padding=(5, 1)), nn.BatchNorm2d(c), nn.ReLU()]
        for _ in range(4):
            layers += [nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class Recurrent(nn.Module):
    """nn.LSTM / nn.GRU over a sequence, then a classifier on the last step."""

    def __init__(self, cell: type, features: int = 40, hidden: int = 128, layers: int = 2):
        super().__init__()
        self.rnn = cell(features, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, 12)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


class SelfAttention(nn.Module):
    def __init__(self, d: int = 64, heads: int = 4):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def _encoder_layer() -> nn.Module:
    return nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)


class ActBlock(nn.Module):
    """conv -> norm -> activation, twice, then a pooled classifier: the activation / norm under test."""

    def __init__(self, act: Callable[[], nn.Module], norm: Callable[[int], nn.Module], c: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), norm(c), act(),
                                  nn.Conv2d(c, c, 3, padding=1), norm(c), act())
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


IMG = (3, 96, 96)
IMG64 = (3, 64, 64)
BERT = dict(vocab_size=8000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
            max_position_embeddings=128)

ARCHS: dict[str, Arch] = {a.name: a for a in [
    # -- transformers (configs, no download)
    Arch("bert-tiny", "transformers", _hf("BertConfig", "BertModel", **BERT), (32,), "tokens", "embedding", 8000,
         "BERT-tiny's sizes (2 layers, 128 wide), vocab 8000"),
    Arch("distilbert", "transformers", _hf("DistilBertConfig", "DistilBertModel", vocab_size=8000, dim=256,
                                           n_layers=2, n_heads=4, hidden_dim=1024),
         (32,), "tokens", "embedding", 8000, "2 of 6 layers, 256 wide"),
    Arch("mobilebert", "transformers", _hf("MobileBertConfig", "MobileBertModel", vocab_size=8000,
                                           num_hidden_layers=2), (32,), "tokens", "embedding", 8000,
         "2 of 24 layers, real widths"),
    Arch("albert", "transformers", _hf("AlbertConfig", "AlbertModel", vocab_size=8000, hidden_size=256,
                                       num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
         (32,), "tokens", "embedding", 8000, "4 layers sharing one layer's weights, 256 wide"),
    Arch("roberta", "transformers", _hf("RobertaConfig", "RobertaModel", **BERT), (32,), "tokens", "embedding",
         8000, "2 layers, 128 wide"),
    Arch("gpt2", "transformers", _hf("GPT2Config", "GPT2Model", vocab_size=8000, n_embd=128, n_layer=2, n_head=4,
                                     n_positions=128, bos_token_id=1, eos_token_id=1), (32,), "tokens", "embedding", 8000,
         "causal mask; 2 layers, 128 wide"),
    Arch("t5-encoder", "transformers", _hf("T5Config", "T5EncoderModel", vocab_size=32128, d_model=256, d_kv=32,
                                           d_ff=1024, num_layers=4, num_heads=8), (32,), "tokens", "embedding",
         32128, "~11M parameters (t5-small's vocabulary, 4 layers, 256 wide)"),
    Arch("vit", "transformers", _hf("ViTConfig", "ViTModel", image_size=64, patch_size=16, hidden_size=128,
                                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
         IMG64, "image", "embedding", note="2 layers, 128 wide, 64x64 images"),
    Arch("whisper-tiny-encoder", "transformers", _whisper_encoder, (80, 200), "mel", "embedding",
         note="whisper-tiny's encoder, 2 s of audio (100 positions)"),
    Arch("wav2vec2", "transformers", _hf("Wav2Vec2Config", "Wav2Vec2Model", hidden_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=512,
                                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
         (8000,), "audio", "embedding", note="group-norm feature extractor, 2 layers, 128 wide, 0.5 s"),
    # -- timm
    Arch("mobilevit-xxs", "timm", _timm("mobilevit_xxs"), IMG64, "image"),
    Arch("efficientvit-b0", "timm", _timm("efficientvit_b0"), IMG64, "image"),
    Arch("fastvit-t8", "timm", _timm("fastvit_t8"), IMG64, "image"),
    Arch("repvit-m0.9", "timm", _timm("repvit_m0_9"), IMG64, "image"),
    Arch("mobilenetv4-small", "timm", _timm("mobilenetv4_conv_small"), IMG, "image"),
    Arch("ghostnet", "timm", _timm("ghostnet_100"), IMG, "image"),
    Arch("lcnet-050", "timm", _timm("lcnet_050"), IMG, "image"),
    Arch("convnext-atto", "timm", _timm("convnext_atto"), IMG64, "image"),
    Arch("deit-tiny", "timm", _timm("deit_tiny_patch16_224", img_size=64), IMG64, "image", note="64x64 images"),
    Arch("levit-128s", "timm", _timm("levit_128s"), (3, 224, 224), "image"),
    Arch("mobileone-s0", "timm", _timm("mobileone_s0"), IMG, "image"),
    Arch("efficientformerv2-s0", "timm", _timm("efficientformerv2_s0"), (3, 224, 224), "image"),
    # -- torchvision
    Arch("mobilenet-v2", "torchvision", _tv("mobilenet_v2"), IMG, "image"),
    Arch("mobilenet-v3-small", "torchvision", _tv("mobilenet_v3_small"), IMG, "image"),
    Arch("mobilenet-v3-large", "torchvision", _tv("mobilenet_v3_large"), IMG, "image"),
    Arch("efficientnet-b0", "torchvision", _tv("efficientnet_b0"), IMG, "image"),
    Arch("resnet18", "torchvision", _tv("resnet18"), IMG, "image"),
    Arch("resnet50", "torchvision", _tv("resnet50"), IMG, "image"),
    Arch("regnet-y-400mf", "torchvision", _tv("regnet_y_400mf"), IMG, "image"),
    Arch("shufflenet-v2", "torchvision", _tv("shufflenet_v2_x0_5"), IMG, "image"),
    Arch("squeezenet", "torchvision", _tv("squeezenet1_0"), IMG, "image"),
    Arch("mnasnet", "torchvision", _tv("mnasnet0_5"), IMG, "image"),
    Arch("densenet121", "torchvision", _tv("densenet121"), IMG64, "image"),
    Arch("googlenet", "torchvision", _tv("googlenet", aux_logits=False, init_weights=True), IMG, "image"),
    Arch("convnext-tiny", "torchvision", _tv("convnext_tiny"), IMG64, "image", note="64x64 images"),
    Arch("swin-t", "torchvision", _tv("swin_t"), (3, 224, 224), "image"),
    Arch("lraspp-mobilenet-v3", "torchvision", _tv_seg("lraspp_mobilenet_v3_large"), IMG, "image", "embedding",
         "segmentation, bilinear upsampling, 8 classes"),
    # -- torch.nn and our own blocks
    Arch("unet-transposed", "ours", UNetTransposed, IMG64, "image", "embedding"),
    Arch("unet-upsample", "ours", UNetUpsample, IMG64, "image", "embedding"),
    Arch("ds-cnn-kws", "ours", DSCNN, (1, 49, 10), "features", note="MLPerf Tiny KWS shape"),
    Arch("lstm", "torch.nn", lambda: Recurrent(nn.LSTM), (49, 40), "features"),
    Arch("gru", "torch.nn", lambda: Recurrent(nn.GRU), (49, 40), "features"),
    Arch("multihead-attention", "torch.nn", SelfAttention, (32, 64), "features", "embedding"),
    Arch("transformer-encoder-layer", "torch.nn", _encoder_layer, (32, 64), "features", "embedding"),
    Arch("mish-block", "torch.nn", lambda: ActBlock(nn.Mish, nn.BatchNorm2d), IMG64, "image"),
    Arch("softplus-block", "torch.nn", lambda: ActBlock(nn.Softplus, nn.BatchNorm2d), IMG64, "image"),
    Arch("groupnorm-block", "torch.nn", lambda: ActBlock(nn.SiLU, lambda c: nn.GroupNorm(8, c)), IMG64, "image"),
]}


if __name__ == "__main__":
    for a in ARCHS.values():
        print(f"{a.name:28s} {a.family:12s} {str(a.shape):16s} {a.data:8s} {a.output:10s} {a.note}")
    print(len(ARCHS), "architectures")
