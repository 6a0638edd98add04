"""Loading the user's model: `path/to/file.py:factory`, `package.module:factory`, or a `.pt2` file.

The factory contract (also in the README): a callable taking no arguments that returns
``(model, example_inputs)`` or ``(model, example_inputs, data)``:

- `model`: an `nn.Module` (put in eval mode by the build);
- `example_inputs`: a tuple of tensors with the deployment shapes (the graph is static);
- `data` (optional): a dict with ``"calib"`` (tuple of arrays, one per input, samples stacked on
  axis 0) for calibration and fine-tuning, ``"eval"`` (same form) held back for verification, and
  ``"labels"`` (integer array for ``eval``) to measure accuracy; ``"outputs"`` (one kind per model
  output, in the order torch flattens them: ``"logits"``, ``"embedding"``, ``"probability"``,
  ``"regression"``, ``"detection"``, ``"state"`` or ``"auto"``, or a dict ``{"kind", "threshold"}``;
  see `fidelity`); ``"metric"`` (a callable ``(ref_outputs, bundle_outputs) -> {"name", "value",
  "threshold"}`` or a list of such dicts: the factory's own checks); ``"stream_metric"`` (a callable
  ``(run) -> {"name", "value", "threshold"}`` or a list: checks that drive the compiled model
  itself, ``run(*inputs) -> outputs`` on one batch, e.g. a recurrent model streaming on its own
  state, which per-sample comparisons with the reference state cannot see);
  ``"batch_axes"`` (one integer per input: where its batch axis is, e.g. 1 for an LSTM state
  ``[layers, B, hidden]``; samples are still stacked on axis 0, and the bundle takes and returns
  batch-first tensors, see `batch_first`).

A `.pt2` file is a saved `torch.export` program; its module is the reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ..errors import InputError

DEFAULT_MODEL = "edgecompile.data.digits:model"


class ModelSpecError(InputError, ValueError):
    """The model spec cannot be resolved or the factory broke its contract."""


@dataclass
class LoadedModel:
    name: str
    module: torch.nn.Module
    example_inputs: tuple
    data: dict = field(default_factory=dict)
    exported: object | None = None  # torch.export.ExportedProgram for .pt2 inputs


def _import_file(path: Path):
    name = f"_edgecompile_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot import {path}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except (Exception, SystemExit) as e:     # sys.exit() in a model file: its code is not ours to end with
        raise ModelSpecError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    return mod


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise ModelSpecError(f"cannot import module {name!r}: {e}; give path/to/file.py:factory or "
                             "package.module:factory") from e
    except (Exception, SystemExit) as e:
        raise ModelSpecError(f"importing {name} failed: {type(e).__name__}: {e}") from e


def _as_inputs(obj, what: str) -> tuple:
    if isinstance(obj, torch.Tensor):
        obj = (obj,)
    if not isinstance(obj, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in obj):
        raise ModelSpecError(f"{what}: example inputs must be a tensor or a tuple of tensors")
    return tuple(obj)


def _check_data(data, n_inputs: int, what: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModelSpecError(f"{what}: the third returned value must be a dict with calib/eval/labels")
    out = {}
    for key in ("calib", "eval", "train"):      # train (+ train_labels): `analyze --intrinsic-dim`
        if key in data:
            arrs = data[key]
            arrs = (arrs,) if isinstance(arrs, (np.ndarray, torch.Tensor)) else tuple(arrs)
            if len(arrs) != n_inputs:
                raise ModelSpecError(f"{what}: data[{key!r}] has {len(arrs)} arrays, the model takes {n_inputs}")
            out[key] = tuple(np.asarray(a) for a in arrs)
    for key in ("labels", "train_labels"):
        if key in data:
            out[key] = np.asarray(data[key])
    if "outputs" in data:
        kinds = data["outputs"]
        if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)):
            raise ModelSpecError(f"{what}: data['outputs'] must be a list with one kind per model output")
        out["outputs"] = list(kinds)
    if "metric" in data:
        if not callable(data["metric"]):
            raise ModelSpecError(f"{what}: data['metric'] must be a callable (ref_outputs, bundle_outputs) -> dict")
        out["metric"] = data["metric"]
    if "batch_axes" in data:
        axes = data["batch_axes"]
        if not isinstance(axes, (list, tuple)) or len(axes) != n_inputs or not all(isinstance(a, int) for a in axes):
            raise ModelSpecError(f"{what}: data['batch_axes'] must list one integer axis per model input "
                                 f"({n_inputs})")
        out["batch_axes"] = [int(a) for a in axes]
    if "stream_metric" in data:
        if not callable(data["stream_metric"]):
            raise ModelSpecError(f"{what}: data['stream_metric'] must be a callable (run) -> dict")
        out["stream_metric"] = data["stream_metric"]
    unknown = sorted(set(data) - {"calib", "eval", "labels", "outputs", "metric", "stream_metric", "batch_axes",
                                  "train", "train_labels"})
    if unknown:
        raise ModelSpecError(f"{what}: unknown data key(s) {unknown}; use calib, eval, labels, outputs, metric, "
                             "stream_metric, batch_axes, train, train_labels")
    return out


def tensor_leaves(y) -> list[torch.Tensor]:
    """Every tensor a model returned, in the order torch.export flattens outputs (pytree leaves:
    tuples, lists, dicts and transformers' ModelOutput alike; non-tensor leaves dropped)."""
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(y) if isinstance(t, torch.Tensor)]


class BatchFirst(torch.nn.Module):
    """Wraps a model whose inputs/outputs carry the batch on another axis (an LSTM state laid out
    ``[layers, B, hidden]``) so that every input and output has it on axis 0: samples stack on
    axis 0 everywhere in the build, and the bundle takes and returns batch-first tensors."""

    def __init__(self, module: torch.nn.Module, in_axes: list[int], out_axes: list[int]):
        super().__init__()
        self.module, self.in_axes, self.out_axes = module, list(in_axes), list(out_axes)

    def forward(self, *xs):
        ys = tensor_leaves(self.module(*[x.movedim(0, a) for x, a in zip(xs, self.in_axes)]))
        out = tuple(y.movedim(a, 0) for y, a in zip(ys, self.out_axes))
        return out[0] if len(out) == 1 else out


def batch_first(loaded: LoadedModel) -> LoadedModel:
    """`loaded` with every input and output batch-first (`BatchFirst`), when the factory declared
    ``data["batch_axes"]`` other than 0. Each output's batch axis is found by a second trace at
    twice the batch size: the axis whose size doubles."""
    axes = loaded.data.get("batch_axes")
    if not axes or all(a == 0 for a in axes):
        return loaded
    ex = loaded.example_inputs
    for i, (x, a) in enumerate(zip(ex, axes)):
        if not -x.dim() <= a < x.dim():
            raise ModelSpecError(f"batch axis {a} of input {i} is outside its shape {list(x.shape)}")
    axes = [a % x.dim() for x, a in zip(ex, axes)]
    sizes = sorted({int(x.shape[a]) for x, a in zip(ex, axes)})
    if len(sizes) != 1:
        raise ModelSpecError(f"the example inputs' batch axes {axes} have different sizes {sizes}")

    with torch.no_grad():
        y1 = tensor_leaves(loaded.module(*ex))
        y2 = tensor_leaves(loaded.module(*[torch.cat([x, x], a) for x, a in zip(ex, axes)]))
    out_axes = []
    for k, (a, b) in enumerate(zip(y1, y2)):
        grown = [d for d in range(a.dim()) if a.dim() == b.dim() and b.shape[d] == 2 * a.shape[d] > 0]
        if len(grown) != 1:
            raise ModelSpecError(f"cannot tell the batch axis of output {k}: shape {list(a.shape)} at batch "
                                 f"{sizes[0]}, {list(b.shape)} at twice that")
        out_axes.append(grown[0])
    module = BatchFirst(loaded.module, axes, out_axes).eval()
    example = tuple(x.movedim(a, 0).contiguous() for x, a in zip(ex, axes))
    return LoadedModel(loaded.name, module, example, loaded.data, None)


def load_model(spec: str | None) -> LoadedModel:
    """Resolves a model spec (None = the embedded digits CNN) into a `LoadedModel`."""
    spec = spec or DEFAULT_MODEL
    if spec.endswith(".pt2"):
        from ..frontend import FrontendError, load_exported_program

        path = Path(spec)
        if not path.is_file():
            raise ModelSpecError(f"model file {spec} does not exist")
        try:
            ep = load_exported_program(path)
        except FrontendError as e:
            raise ModelSpecError(str(e)) from e
        ex = ep.example_inputs[0] if ep.example_inputs else None
        if ex is None:
            raise ModelSpecError(f"{spec} was saved without example inputs; re-export it with torch.export.export")
        return LoadedModel(path.stem, ep.module(), tuple(ex), {}, ep)
    if ":" not in spec:
        raise ModelSpecError(f"model spec {spec!r} must be path/to/file.py:factory, package.module:factory, "
                             "or a .pt2 file")
    where, fn_name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ModelSpecError(f"model file {where} does not exist")
        mod, name = _import_file(path), path.stem
    else:
        mod, name = _import_module(where), where.rsplit(".", 1)[-1]
    factory = getattr(mod, fn_name, None)
    if not callable(factory):
        raise ModelSpecError(f"{where} has no callable {fn_name!r}")
    try:
        result = factory()
    except (Exception, SystemExit) as e:
        raise ModelSpecError(f"factory {spec} raised {type(e).__name__}: {e}") from e
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise ModelSpecError(f"factory {spec} must return (model, example_inputs) or (model, example_inputs, data)")
    model, inputs = result[0], _as_inputs(result[1], spec)
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    data = _check_data(result[2] if len(result) == 3 else None, len(inputs), spec)
    return LoadedModel(name, model.eval(), inputs, data)


def import_graph(loaded: LoadedModel):
    """The loaded model as an IR graph (`frontend`: torch.export, or the `.pt2` program given)."""
    from ..frontend import import_exported_program, import_model

    if loaded.exported is not None:
        return import_exported_program(loaded.exported)
    return import_model(loaded.module, loaded.example_inputs, name=loaded.name)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_example_inputs(loaded: LoadedModel) -> None:
    """After a failed import: runs the model once on its example inputs, so that a wrong shape or
    dtype is named as such (one line), not as whatever torch.export made of it."""
    if loaded.module is None:
        return
    try:
        with torch.no_grad():
            loaded.module(*loaded.example_inputs)
    except Exception as e:   # whatever forward() raises on these inputs
        given = ", ".join(f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}" if isinstance(x, torch.Tensor)
                          else type(x).__name__ for x in loaded.example_inputs)
        raise ModelSpecError(f"{loaded.name} fails on its example inputs ({given}): {first_line(e)}; give "
                             "example inputs of the shapes and dtypes its forward() expects") from None


def check_finite(loaded: LoadedModel) -> None:
    """Parameters holding inf or NaN, or buffers holding NaN (a BatchNorm's running variance), make
    every output comparison meaningless: name them and stop. (Buffers may be infinite on purpose,
    e.g. a -inf attention mask; NaN never is.) Also a dtype the IR lacks (bfloat16), named here
    rather than deep in the import."""
    from ..ir.torch_ops import NUMPY_DTYPES

    if loaded.module is None:
        return
    tensors = [*loaded.example_inputs, *loaded.module.parameters(), *loaded.module.buffers()]
    odd = sorted({str(t.dtype).replace("torch.", "") for t in tensors
                  if isinstance(t, torch.Tensor) and t.dtype not in NUMPY_DTYPES})
    if odd:
        raise ModelSpecError(f"the model or its example inputs use {', '.join(odd)}, which edgecompile does not "
                             "import; return model.float() and float32 example inputs from the factory")
    bad = [name for name, p in loaded.module.named_parameters()
           if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all())]
    bad += [name for name, b in loaded.module.named_buffers() if b.is_floating_point() and bool(b.isnan().any())]
    if bad:
        raise ModelSpecError(f"weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold inf or NaN "
                             f"({len(bad)} tensors); fix the checkpoint (e.g. reload it, or torch.nan_to_num the "
                             "weights) before compiling")
