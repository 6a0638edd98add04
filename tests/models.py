"""Tiny test models shared by the frontend, pass and backend tests.

Each builder returns ``(model, example_inputs)``: an `nn.Module` in eval mode with seeded random
weights (batch-norm statistics randomized too, so folding them is not a no-op) and a tuple of
seeded example tensors. Models are small so that import + execution take milliseconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def mlp(batch: int = 4):
    """Linear-ReLU-Linear-ReLU-Linear on 16 features, 10 classes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    return model.eval(), (torch.randn(batch, 16),)


class SmallCNN(nn.Module):
    """A digits-sized CNN: conv-BN-ReLU-maxpool, strided conv-BN-ReLU6, global pool, linear."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(16, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def cnn(batch: int = 2):
    """`SmallCNN` on [batch, 1, 8, 8] inputs (the shape of scikit-learn's digits)."""
    torch.manual_seed(0)
    return _randomize_bn(SmallCNN(), 1), (torch.randn(batch, 1, 8, 8),)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3-style block: 1x1 expand, depthwise 3x3, squeeze-excite, 1x1 project, residual."""

    def __init__(self, c: int, expand: int = 2, dilation: int = 1):
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(h, h, 3, padding=dilation, dilation=dilation, groups=h, bias=False),
                                       nn.BatchNorm2d(h), nn.SiLU())
        self.se_reduce = nn.Conv2d(h, h // 4, 1)
        self.se_expand = nn.Conv2d(h // 4, h, 1)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.depthwise(self.expand(x))
        s = F.hardsigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        return x + self.project(y * s)


class MobileNetish(nn.Module):
    """Stem conv, two inverted-residual blocks, a grouped conv after explicit padding, pooling, head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.Hardswish())
        self.block1 = InvertedResidual(16)
        self.block2 = InvertedResidual(16, dilation=2)
        self.pad = nn.ZeroPad2d((1, 2, 0, 1))
        self.grouped = nn.Conv2d(16, 32, 3, groups=4)
        self.pool = nn.AvgPool2d(2, ceil_mode=True)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        y = self.block2(self.block1(self.stem(x)))
        y = F.relu6(self.grouped(self.pad(y)))
        y = F.max_pool2d(F.pad(y, (1, 1, 1, 1)), 3, stride=2)
        y = self.pool(y)
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


def mobilenet_block(batch: int = 2):
    """`MobileNetish` on [batch, 3, 16, 16]: depthwise, grouped, dilated, residual, SE gating."""
    torch.manual_seed(0)
    return _randomize_bn(MobileNetish(), 2), (torch.randn(batch, 3, 16, 16),)


class Conv1dNet(nn.Module):
    """1-D convolutions with stride, dilation, padding and groups; 1-D pooling."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, 5, stride=2, padding=2)
        self.bn1 = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.pool = nn.MaxPool1d(2)
        self.avg = nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        y = self.pool(F.silu(self.bn1(self.conv1(x))))
        y = self.avg(F.leaky_relu(self.conv2(y), 0.1))
        return self.fc(self.gap(y).squeeze(-1))


def conv1d_net(batch: int = 2):
    """`Conv1dNet` on [batch, 4, 32]."""
    torch.manual_seed(0)
    return _randomize_bn(Conv1dNet(), 3), (torch.randn(batch, 4, 32),)


def bert_encoder(hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int = 128,
                 vocab: int = 1000, seq: int = 16, batch: int = 2, classify: bool = True):
    """A BERT-style encoder from a `transformers` config (no download), inputs (input_ids, attention_mask).

    The second sequence's mask has zeros (padding), so masked softmax matters.
    """
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, max_position_embeddings=max(64, seq), num_labels=3)
    model = (BertForSequenceClassification if classify else BertModel)(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq * 5 // 8:] = 0
    return model, (ids, mask)


class EncoderLayerClassifier(nn.Module):
    """`nn.TransformerEncoderLayer` (batch_first) with a key-padding mask, mean pooling, linear head."""

    def __init__(self, d: int = 32, heads: int = 4, classes: int = 3):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(d, heads, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x, padding_mask):
        return self.head(self.encoder(x, src_key_padding_mask=padding_mask).mean(1))


def encoder_layer_classifier(batch: int = 2, seq: int = 10):
    """`EncoderLayerClassifier` on x [batch, seq, 32] and a bool padding mask [batch, seq]."""
    torch.manual_seed(0)
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask[-1, seq - 3:] = True
    return EncoderLayerClassifier().eval(), (torch.randn(batch, seq, 32), mask)


class TinyBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x, keep):
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        attn = scores.softmax(-1) @ v
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformerClassifier(nn.Module):
    """Hand-written transformer classifier: token embedding, CLS token, learned positions, masked
    softmax attention from the padding in the token ids, GELU MLP, CLS slicing, linear head."""

    def __init__(self, vocab: int = 100, d: int = 32, heads: int = 4, depth: int = 2, seq: int = 12,
                 classes: int = 4, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, seq + 1, d) * 0.02)
        self.blocks = nn.ModuleList(TinyBlock(d, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        x = self.embed(ids)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        keep = torch.cat([torch.ones_like(ids[:, :1], dtype=torch.bool), ids != self.pad_id], dim=1)
        for block in self.blocks:
            x = block(x, keep)
        return self.head(self.norm(x)[:, 0])


def tiny_transformer(batch: int = 2, seq: int = 12):
    """`TinyTransformerClassifier` on token ids [batch, seq]; the last sequence ends in padding."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (batch, seq), generator=g)
    ids[-1, seq - 4:] = 0
    return TinyTransformerClassifier(seq=seq).eval(), (ids,)


class LSTMCellModel(nn.Module):
    """An `nn.LSTMCell` unrolled over the time axis, a linear head on the last hidden state."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 4):
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(features, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        c = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h)


class GRUCellModel(nn.Module):
    """An `nn.GRUCell` unrolled over the time axis, a linear head on the last hidden state."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 4):
        super().__init__()
        self.hidden = hidden
        self.cell = nn.GRUCell(features, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h)


class LSTMModel(nn.Module):
    """Single-layer `nn.LSTM` (batch_first) with a linear head on the last time step."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 4):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(y[:, -1])


def lstm_cell_model(batch: int = 2, steps: int = 4):
    torch.manual_seed(0)
    return LSTMCellModel().eval(), (torch.randn(batch, steps, 8),)


def gru_cell_model(batch: int = 2, steps: int = 4):
    torch.manual_seed(0)
    return GRUCellModel().eval(), (torch.randn(batch, steps, 8),)


def lstm_model(batch: int = 2, steps: int = 5):
    torch.manual_seed(0)
    return LSTMModel().eval(), (torch.randn(batch, steps, 8),)


class GroupNormNet(nn.Module):
    """U-Net / ConvNeXt-style pieces: GroupNorm + Mish, softplus with beta and threshold, log1p, a
    parameter-free GroupNorm (instance norm), a channels-last LayerNorm (permute, layer_norm,
    permute) feeding adaptive average pooling (whose decomposition ends in `as_strided`)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn1 = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.gn2 = nn.GroupNorm(8, 8, affine=False)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = F.mish(self.gn1(self.conv1(x)))
        h = self.gn2(self.conv2(h)) + F.softplus(h, beta=2.0, threshold=3.0) + torch.log1p(h.abs())
        h = self.ln(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


def group_norm_net(batch: int = 2):
    """`GroupNormNet` on [batch, 3, 12, 12]."""
    torch.manual_seed(0)
    return GroupNormNet().eval(), (torch.randn(batch, 3, 12, 12),)


# name -> builder, for parametrized tests in other packages
class TinyUNet(nn.Module):
    """A two-level U-Net: conv-BN-ReLU encoders, max-pool down, skip concatenations, a 1x1 head.

    ``up="transposed"`` upsamples with `nn.ConvTranspose2d` (3x3 stride 2 with output_padding, then
    4x4 stride 2 padding 1 followed by batch norm); ``up="bilinear"`` with `nn.Upsample` (bilinear,
    corner-aligned then half-pixel) and a 1x1 conv to halve the channels.
    """

    def __init__(self, up: str = "transposed", classes: int = 2):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.enc1, self.enc2, self.mid = block(3, 8), block(8, 16), block(16, 16)
        self.pool = nn.MaxPool2d(2)
        if up == "transposed":
            self.up2 = nn.ConvTranspose2d(16, 16, 3, stride=2, padding=1, output_padding=1)
            self.up1 = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.BatchNorm2d(8))
        else:
            self.up2 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(16, 8, 1))
        self.dec2, self.dec1 = block(32, 16), block(16, 8)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def _unet(up: str, batch: int):
    torch.manual_seed(0)
    model = _randomize_bn(TinyUNet(up), 1)
    return model, (torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(2)),)


def _with_data(model_inputs):
    """A factory result for `edgecompile.build` with 64 calibration and 64 held-back inputs."""
    g = torch.Generator().manual_seed(3)
    data = {"calib": (torch.randn(64, 3, 16, 16, generator=g).numpy(),),
            "eval": (torch.randn(64, 3, 16, 16, generator=g).numpy(),)}
    return (*model_inputs, data)


def unet_transposed(batch: int = 1):
    """`TinyUNet` with transposed-convolution upsampling on [batch, 3, 16, 16]."""
    return _unet("transposed", batch)


def unet_bilinear(batch: int = 1):
    """`TinyUNet` with bilinear `nn.Upsample` on [batch, 3, 16, 16]."""
    return _unet("bilinear", batch)


def unet_transposed_data():
    """`unet_transposed` with calibration / evaluation data (a build factory)."""
    return _with_data(unet_transposed())


def unet_bilinear_data():
    """`unet_bilinear` with calibration / evaluation data (a build factory)."""
    return _with_data(unet_bilinear())



class RecurrentHead(nn.Module):
    """nn.LSTM or nn.GRU (batch first) and a linear head on the last hidden state (not in `ZOO`:
    the recurrent-weight tests size it themselves)."""

    def __init__(self, kind: str, features: int, hidden: int):
        super().__init__()
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 4)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.head((h[0] if isinstance(h, tuple) else h)[-1])


ZOO = {
    "mlp": mlp,
    "cnn": cnn,
    "mobilenet_block": mobilenet_block,
    "conv1d_net": conv1d_net,
    "bert_encoder": bert_encoder,
    "encoder_layer_classifier": encoder_layer_classifier,
    "tiny_transformer": tiny_transformer,
    "lstm_cell_model": lstm_cell_model,
    "gru_cell_model": gru_cell_model,
    "lstm_model": lstm_model,
    "unet_transposed": unet_transposed,
    "unet_bilinear": unet_bilinear,
    "group_norm_net": group_norm_net,
}
