"""torch.distributed helpers: process-group setup from ``torchrun`` and batch gathers.

Launch ``torchrun --nproc_per_node=N script.py``; :func:`init_from_env` then joins the group
(NCCL when CUDA is there, gloo otherwise) and picks this rank's device.
"""
from __future__ import annotations

import atexit
import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


_AVAILABLE = dist.is_available()


class Traffic:
    """Bytes this rank received through the collectives of this module, counted as the ring
    algorithms move them: an all-reduce of ``S`` bytes ``2 S (W-1)/W``, an all-gather of ``s``
    bytes per rank ``s (W-1)``.  ``bench/bench_finetune_ddp.py`` reads it beside DDP's own
    gradient all-reduce, counted the same way."""

    def __init__(self):
        self.bytes = 0

    def reset(self) -> None:
        self.bytes = 0

    def all_reduce(self, nbytes: int, world: int) -> None:
        self.bytes += 2 * nbytes * (world - 1) // world

    def all_gather(self, nbytes: int, world: int) -> None:
        self.bytes += nbytes * (world - 1)


#: The counter of this process (reset it before the steps you measure).
traffic = Traffic()


def is_distributed() -> bool:
    """True when a process group with more than one rank is active."""
    return _AVAILABLE and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: str | None = None) -> torch.device:
    """Join the process group described by torchrun's environment, if any.

    Parameters
    ----------
    device:
        ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).

    Returns
    -------
    torch.device
        This rank's device (``cuda:LOCAL_RANK`` on GPU).
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(shutdown)  # we opened the group, so we close it (cleanly, see shutdown)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(),
                 dist.get_world_size(), backend)
    if use_cuda:
        return torch.device("cuda", local_rank if is_distributed() else torch.cuda.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    """Leave the process group: a barrier first, then destroy it.

    The barrier keeps a rank that finishes first from closing its sockets while another is still
    in its last collective. (The exit-time aborts CI once saw came from a DDP wrapper freed after
    the group was destroyed; ``recover`` frees it before returning.)
    """
    if _AVAILABLE and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` from all ranks along dim 0 (sizes may differ between ranks).

    Returns the gathered tensor and the offset of this rank's rows in it.
    """
    if not is_distributed():
        return x, 0
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    traffic.all_gather(size.element_size(), world)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = x
    if x.shape[0] < longest:
        padded = torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    traffic.all_gather(padded.numel() * padded.element_size(), world)
    me = dist.get_rank()
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sum(sizes[:me])


def all_reduce(x: torch.Tensor, op=None) -> torch.Tensor:
    """``dist.all_reduce`` in place (sum unless ``op``), counted in :data:`traffic`."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM if op is None else op)
        traffic.all_reduce(x.numel() * x.element_size(), dist.get_world_size())
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Average ``x`` over ranks (identity on one process)."""
    if is_distributed():
        all_reduce(x)
        x /= dist.get_world_size()
    return x
