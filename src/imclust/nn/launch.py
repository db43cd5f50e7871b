"""Which process writes: rank 0 of a torchrun launch, without importing torch when nothing has.

A process group exists only where torch was imported and :func:`imclust.nn.distributed.init_from_env`
ran, so a run whose recipe needs no torch (HOG, UMAP, GMM) answers from the environment alone.
"""

from __future__ import annotations

import os
import sys

from ..errors import UserError


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a whole number; launch with torchrun") from None


def _group():
    """torch.distributed when a process group of more than one rank is up, else None."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def is_distributed() -> bool:
    return _group() is not None


def is_main() -> bool:
    """Rank 0 of the process group; before (or without) one, the process torchrun started as RANK 0, so that
    a torchrun launch of a recipe with nothing to train still writes its outputs once."""
    dist = _group()
    if dist is not None:
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0" if env_world_size() > 1 else True


def barrier() -> None:
    dist = _group()
    if dist is not None:
        dist.barrier()
