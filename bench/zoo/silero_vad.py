"""silero-vad 6.2.3 (MIT): a streaming voice activity detector, as an exportable nn.Module.

The wheel ships TorchScript (``silero_vad/data/silero_vad.jit``), which torch.export cannot take,
so `SileroVAD16k` re-implements the 16 kHz branch of its forward, read from the scripted code:

  x [B, 64 + 512]  (the previous chunk's last 64 samples, then the new chunk)
  -> reflect-pad 64 on the right -> conv1d with the fixed STFT basis (258 x 256, hop 128): 4 frames
  -> magnitude sqrt(re^2 + im^2) of 129 bins
  -> 4 x (conv1d k3 + ReLU), strides 1, 2, 2, 1 -> [B, 128]
  -> LSTM cell (h, c from the state) -> ReLU -> conv1d 1x1 -> sigmoid = speech probability [B, 1]

The jit keeps its state as ``[2, B, 128]``; here it is ``[B, 2, 128]`` (h, c) so that the batch axis
of every input and output is 0 and calibration data can be stacked per sample.

Data: English sentences spoken offline by espeak-ng (several voices, speeds, pitches), resampled
to 16 kHz, laid between stretches of silence with low noise so that about half of the chunks are
speech. The reference jit model streams the audio; each chunk is paired with the state the jit
held when it arrived, so calibration and evaluation see the states of real streaming.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # loadable by path: bench/zoo/silero_vad.py:model
from bench.zoo.wheels import read  # noqa: E402

PKG = "silero-vad"
JIT = "silero_vad/data/silero_vad.jit"
SR = 16_000
CHUNK = 512
CONTEXT = 64
HIDDEN = 128
OUTPUTS = ["probability", "state"]

# Sentences spoken for the calibration and evaluation streams (written for this bench).
SENTENCES = [
    "The morning train to the coast was late again, so we walked along the harbour.",
    "Please set the thermostat two degrees lower before you leave the office tonight.",
    "Seven small boats drifted past the lighthouse while the gulls circled overhead.",
    "She measured the voltage across the resistor and wrote the value in her notebook.",
    "If the battery drops below ten percent, the sensor stops sending its readings.",
    "A quiet voice in a noisy room is still a voice, and the detector should hear it.",
    "We planted tomatoes, beans and three rows of lettuce behind the old garage.",
    "Turn left at the bakery, then follow the river until you reach the stone bridge.",
    "The committee will publish its decision on Thursday afternoon at four o'clock.",
    "Every microcontroller on this board wakes up when the microphone hears speech.",
    "My grandmother kept a jar of buttons that we sorted by colour on rainy days.",
    "Numbers like forty two and nineteen eighty four are easy to say but hard to hear.",
]
VOICES = ["en", "en-us", "en-gb-x-rp", "en+f3", "en+m7", "en-us+f2"]


class SileroVAD16k(nn.Module):
    """The 16 kHz silero-vad network with explicit state: (x [B, 576], state [B, 2, 128]) ->
    (speech probability [B, 1], new state [B, 2, 128])."""

    def __init__(self):
        super().__init__()
        self.register_buffer("forward_basis", torch.zeros(258, 1, 256))
        # Reflect padding as a gather: sample 576 + j of the padded signal is x[574 - j] (the edge
        # sample is not repeated), for j < 64. index_select keeps the pad a plain graph op.
        self.register_buffer("reflect_index", torch.arange(CONTEXT + CHUNK - 2, CONTEXT + CHUNK - 2 - 64, -1),
                             persistent=False)
        chans = [(129, 128, 1), (128, 64, 2), (64, 64, 2), (64, 128, 1)]
        self.encoder = nn.ModuleList(nn.Conv1d(i, o, 3, stride=s, padding=1) for i, o, s in chans)
        self.rnn = nn.LSTMCell(HIDDEN, HIDDEN)
        self.head = nn.Conv1d(HIDDEN, 1, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, 576] float audio in [-1, 1]; state: [B, 2, 128] (h, c)."""
        padded = torch.cat([x, torch.index_select(x, 1, self.reflect_index)], dim=1)
        spec = nn.functional.conv1d(padded.unsqueeze(1), self.forward_basis, stride=128)
        re, im = spec[:, :129], spec[:, 129:]
        y = torch.sqrt(re * re + im * im)
        for conv in self.encoder:
            y = torch.relu(conv(y))
        y = y.squeeze(-1)
        h, c = state[:, 0], state[:, 1]
        # the LSTM cell written out (torch.export would keep aten.lstm_cell whole otherwise);
        # gate order i, f, g, o as in torch.nn.LSTMCell
        gates = nn.functional.linear(y, self.rnn.weight_ih, self.rnn.bias_ih) \
            + nn.functional.linear(h, self.rnn.weight_hh, self.rnn.bias_hh)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        p = torch.sigmoid(self.head(torch.relu(h).unsqueeze(-1))).squeeze(-1)
        return p, torch.stack([h, c], dim=1)


def load_jit(cache: Path | None = None) -> torch.jit.ScriptModule:
    """The original TorchScript model from the cached wheel."""
    return torch.jit.load(io.BytesIO(read(PKG, JIT, cache)), map_location="cpu").eval()


def from_jit(jit: torch.jit.ScriptModule) -> SileroVAD16k:
    """`SileroVAD16k` with the 16 kHz weights of the jit model (every tensor mapped, none left over)."""
    sd = {k.removeprefix("_model."): v for k, v in jit.state_dict().items() if k.startswith("_model.")}
    mapped = {"forward_basis": sd.pop("stft.forward_basis_buffer")}
    for i in range(4):
        for p in ("weight", "bias"):
            mapped[f"encoder.{i}.{p}"] = sd.pop(f"encoder.{i}.reparam_conv.{p}")
    for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        mapped[f"rnn.{p}"] = sd.pop(f"decoder.rnn.{p}")
    mapped["head.weight"] = sd.pop("decoder.decoder.2.weight")
    mapped["head.bias"] = sd.pop("decoder.decoder.2.bias")
    if sd:
        raise ValueError(f"silero-vad tensors not mapped: {sorted(sd)}")
    m = SileroVAD16k()
    m.load_state_dict(mapped, strict=True)
    return m.eval()


# -- audio ------------------------------------------------------------------------------------

def _espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """float32 mono audio of `text` spoken by espeak-ng, resampled to 16 kHz."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (scripts/install_toolchains.sh installs it)")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                       check=True, capture_output=True)
        with wave.open(str(path)) as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
    audio = np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0
    g = np.gcd(rate, SR)
    return resample_poly(audio, SR // g, rate // g).astype(np.float32)


def make_stream(sentences: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An audio stream: each sentence (random voice, speed, pitch, loudness) after 1.5-5 s of
    silence (about half the stream), all under low white noise, plus a mains hum in some gaps. Returns (audio, is_speech per
    sample), where is_speech marks espeak's non-silent samples."""
    rng = np.random.default_rng(seed)
    parts, marks = [], []
    for text in sentences:
        gap = int(rng.uniform(1.5, 5.0) * SR)
        parts.append(np.zeros(gap, np.float32))
        marks.append(np.zeros(gap, bool))
        voice = VOICES[rng.integers(len(VOICES))]
        speech = _espeak(text, voice, int(rng.integers(130, 200)), int(rng.integers(30, 70)))
        speech *= rng.uniform(0.25, 0.9) / max(float(np.abs(speech).max()), 1e-6)
        parts.append(speech)
        marks.append(np.abs(speech) > 1e-3)
    audio = np.concatenate(parts)
    t = np.arange(len(audio)) / SR
    audio += rng.normal(0, 10 ** rng.uniform(-3.3, -2.5), len(audio)).astype(np.float32)
    audio += (0.003 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    return np.clip(audio, -1, 1).astype(np.float32), np.concatenate(marks)


def stream_chunks(jit: torch.jit.ScriptModule, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs the jit model over the stream the way silero's own iterator does (512-sample chunks,
    its internal 64-sample context and state) and records, per chunk: the 576-sample input with
    context, the state it arrived with (as [2, 128]) and the probability the jit gave."""
    jit.reset_states()
    n = len(audio) // CHUNK
    xs = np.zeros((n, CONTEXT + CHUNK), np.float32)
    states = np.zeros((n, 2, HIDDEN), np.float32)
    probs = np.zeros(n, np.float32)
    context = np.zeros(CONTEXT, np.float32)
    with torch.no_grad():
        for k in range(n):
            chunk = audio[k * CHUNK:(k + 1) * CHUNK]
            xs[k] = np.concatenate([context, chunk])
            st = jit._state
            states[k] = st[:, 0].numpy() if st.numel() else 0.0
            probs[k] = float(jit(torch.from_numpy(chunk)[None], SR))
            context = chunk[-CONTEXT:]
    return xs, states, probs


def streams(jit: torch.jit.ScriptModule, calib_sentences: int = 6, seed: int = 0) -> dict:
    """Calibration and evaluation streams: {split: (xs [N, 576], states [N, 2, 128])} for "calib"
    and "eval", plus "<split>_jit_probs" (the jit's own probability per chunk) and "speech"
    (whether each eval chunk is mostly speech, from espeak's marks). The first `calib_sentences`
    sentences make the calibration stream, the rest the evaluation stream (other sentences, voices,
    noise)."""
    out: dict = {}
    for split, sents, s in (("calib", SENTENCES[:calib_sentences], seed),
                            ("eval", SENTENCES[calib_sentences:], seed + 1)):
        audio, marks = make_stream(sents, s)
        xs, states, probs = stream_chunks(jit, audio)
        out[split] = (xs, states)
        out[f"{split}_jit_probs"] = probs
        if split == "eval":
            out["speech"] = marks[:len(xs) * CHUNK].reshape(len(xs), CHUNK).mean(1) > 0.5
    return out


def state_halves_metric(ref: list[np.ndarray], got: list[np.ndarray]) -> list[dict]:
    """The factory's own gate checks (data["metric"]): the LSTM state's h and c judged apart.

    One cosine over the whole [2, 128] state is dominated by c (mean norm ~43 against ~4 for h on
    our streams), so a bundle whose h is off (cosine 0.86, measured) still scores 0.99; h is what
    the next chunk's gates and the output head read."""
    checks = []
    for i, name in ((0, "h"), (1, "c")):
        r, g = ref[1][:, i].astype(np.float64), got[1][:, i].astype(np.float64)
        cos = (r * g).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-30)
        checks.append({"name": f"LSTM {name} mean per-sample cosine", "value": float(cos.mean()), "threshold": 0.97})
    return checks


def model(seed: int = 0):
    """Factory: (SileroVAD16k, (x [1, 576], state [1, 2, 128]), data): ~1,500 calibration and
    ~1,300 evaluation chunks of espeak-ng speech and silence, each with its streaming state;
    outputs: speech probability ("probability"), new state ("state"); data["metric"] adds the
    state's h and c checked apart."""
    torch.manual_seed(seed)
    jit = load_jit()
    net = from_jit(jit)
    s = streams(jit, seed=seed)
    example = (torch.from_numpy(s["calib"][0][:1]), torch.from_numpy(s["calib"][1][:1]))
    return net, example, {"calib": s["calib"], "eval": s["eval"], "outputs": list(OUTPUTS),
                          "metric": state_halves_metric, "stream_metric": stream_metric(net, s["eval"][0])}


def stream_metric(net: nn.Module, xs: np.ndarray):
    """The factory's closed-loop check (data["stream_metric"]): the compiled model streams the eval
    chunks on its own state, as a device does, and its speech decisions (p > 0.5) must agree with
    the original's own closed-loop stream. Per-chunk checks feed every chunk the reference state,
    so an error that builds up through the state is invisible to them (measured: a bundle at chunk
    agreement 0.986 streamed at 0.51)."""
    cache: dict[str, np.ndarray] = {}

    def torch_run(x, state):
        with torch.no_grad():
            p, st = net(torch.from_numpy(x), torch.from_numpy(state))
        return p.numpy(), st.numpy()

    def check(run) -> dict:
        if "ref" not in cache:
            cache["ref"] = closed_loop(torch_run, xs) > 0.5
        got = closed_loop(run, xs) > 0.5
        return {"name": "closed-loop stream decision agreement", "value": float((got == cache["ref"]).mean()),
                "threshold": 0.97}

    return check


def closed_loop(run, xs: np.ndarray) -> np.ndarray:
    """Speech probability per chunk when a model streams on its own state: `run(x [1, 576],
    state [1, 2, 128]) -> (p [1, 1], new state)` is called chunk after chunk from a zero state,
    each call fed the state the previous one returned. The factory's data pairs every chunk with
    the reference model's state (an error cannot build up there); this is how a device runs it."""
    state = np.zeros((1, 2, HIDDEN), np.float32)
    probs = np.zeros(len(xs), np.float32)
    for k in range(len(xs)):
        p, state = run(xs[k:k + 1], state)
        probs[k] = float(np.asarray(p).reshape(-1)[0])
        state = np.asarray(state, dtype=np.float32)
    return probs
