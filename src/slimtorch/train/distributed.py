"""torch.distributed helpers: the trainer works unchanged under ``torchrun`` (DDP, gloo on CPU)."""

from __future__ import annotations

import os

import torch.distributed as dist


def maybe_init() -> bool:
    """Initialise the default process group when launched by ``torchrun`` (WORLD_SIZE > 1).

    Returns:
        Whether training is distributed.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available():
        dist.init_process_group(backend="gloo")  # gloo: works on CPU; NCCL would need GPUs
        return True
    return False


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if world_size() > 1:
        dist.barrier()
