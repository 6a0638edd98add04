"""Explicit per-sample-gradient references for the FNGD tests (torch.func)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: [N, *param.shape]}``: gradients of each sample's cross-entropy loss."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)


def layer_matrix(grads: dict[str, torch.Tensor], module_name: str) -> torch.Tensor:
    """``U`` of one layer as ``[N, D]`` (weight then bias, flattened)."""
    parts = [grads[f"{module_name}.weight"].flatten(1)]
    if f"{module_name}.bias" in grads:
        parts.append(grads[f"{module_name}.bias"].flatten(1))
    return torch.cat(parts, dim=1)


def exact_ngd(U: torch.Tensor, damping: float) -> torch.Tensor:
    """``(UᵀU/N + λI)⁻¹ ḡ`` with ``U`` given as ``[N, D]`` rows (explicit D×D solve) and the
    relative damping ``λ = damping · ‖U‖²_F / N²`` (``damping`` times the mean non-zero
    eigenvalue of the empirical Fisher)."""
    n, d = U.shape
    lam = damping * float(U.square().sum()) / n ** 2
    fisher = U.T @ U / n + lam * torch.eye(d, dtype=U.dtype)
    return torch.linalg.solve(fisher, U.mean(0))


def network_matrix(grads: dict[str, torch.Tensor], module_names: list[str]) -> torch.Tensor:
    """``U`` of several layers stacked: ``[N, Σ D_l]`` in the order of ``module_names``."""
    return torch.cat([layer_matrix(grads, m) for m in module_names], dim=1)


def split_network(vec: torch.Tensor, model: nn.Module,
                  module_names: list[str]) -> dict[str, torch.Tensor]:
    """Undo :func:`network_matrix` for one vector: ``{param name: tensor}``."""
    out, start = {}, 0
    for m in module_names:
        size = sum(p.numel() for p in model.get_submodule(m).parameters(recurse=False))
        out.update(split_like(vec[start:start + size], model, m))
        start += size
    return out


def split_like(vec: torch.Tensor, model: nn.Module, module_name: str) -> dict[str, torch.Tensor]:
    mod = model.get_submodule(module_name)
    out, start = {}, 0
    for key in ("weight", "bias"):
        p = getattr(mod, key, None)
        if p is None:
            continue
        out[f"{module_name}.{key}"] = vec[start:start + p.numel()].view(p.shape)
        start += p.numel()
    return out
