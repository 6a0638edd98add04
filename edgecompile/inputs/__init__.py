"""What the user brings: the model (`model`: a factory spec or a ``.pt2`` file), the sample sets
for calibration, fine-tuning and verification (`samples`), and the PyTorch model's outputs on them
that every bundle is judged against (`reference`).

The example model and its data set live in ``edgecompile/data/`` (``edgecompile.data.digits:model``).
"""
