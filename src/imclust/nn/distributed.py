"""Distributed training through PyTorch DDP, driven by ``torchrun``'s environment.

``torchrun --nproc_per_node=N -m imclust run ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`init_from_env` turns that into a process
group (gloo on CPU, nccl on CUDA) the first time a :class:`~imclust.nn.train.Trainer` is built; a plain
``python`` or ``imclust`` process has no such variables and stays single-process (every helper here is
then the identity).

What the pieces do, and who uses them:

- the Trainer wraps its modules in ``DistributedDataParallel`` (gradients are averaged across ranks),
  splits every batch of the epoch into one slice per rank (:func:`shard_batches`), averages the logged
  loss across ranks, and writes checkpoints and logs on rank 0 only;
- an encoder computes features on its own share of the batches (:func:`rank_batches`) and gathers them
  (:func:`gather_rows` to rank 0 or :func:`all_gather_rows` to every rank); the pretrained encoder does the
  same even when nothing trains, so ``torchrun`` shares feature extraction across processes and nodes;
- values decided on rank 0 (DeepCluster's k-means pseudo-labels) reach the others through
  :func:`broadcast_array`; :func:`broadcast_module` makes freshly initialised weights identical.

Non-zero ranks set ``IMCLUST_QUIET=1`` so that progress bars and status lines come from rank 0 only.
A multi-node run needs the checkpoint folder on a file system every node can read.
"""

from __future__ import annotations

import atexit
import json
import os
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UserError
from .launch import barrier, env_world_size, is_distributed, is_main  # noqa: F401  (re-exported)

_BACKEND: str | None = None


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group described by torchrun's environment; returns whether we are distributed.

    gloo serves CPU tensors, nccl CUDA ones. Idempotent. Without ``WORLD_SIZE`` > 1 nothing happens.
    """
    global _BACKEND
    if env_world_size() <= 1:
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if not dist.is_available():
        raise UserError("WORLD_SIZE is set but this torch build has no torch.distributed; run without torchrun")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is set but {', '.join(missing)} is not; start distributed runs with torchrun")
    use_cuda = device is not None and device.type == "cuda"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    _BACKEND = backend
    atexit.register(shutdown)
    if dist.get_rank() != 0:
        os.environ["IMCLUST_QUIET"] = "1"  # one progress bar and one log: rank 0's
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for_rank(device: torch.device) -> torch.device:
    """Under torchrun every process takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and env_world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if _BACKEND == "nccl" else torch.device("cpu")


def mean_scalar(value: float) -> float:
    """The mean of a float over all ranks (the value itself when single-process)."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def any_flag(flag: bool) -> bool:
    """True on every rank when it is true on any rank."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t)
    return bool(t.item())


def wrap_module(module: torch.nn.Module) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` when distributed and the module has trainable parameters."""
    if not is_distributed() or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = next(module.parameters()).device
    ids = None
    if dev.type == "cuda":
        # batch statistics over the global batch, as one process would compute them (nccl only)
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        ids = [dev.index]
    return DDP(module, device_ids=ids, broadcast_buffers=True)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return module.module if isinstance(module, DDP) else module


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's module (in place)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(unwrap(module).parameters()) + list(unwrap(module).buffers()):
            buf = t.data.to(_comm_device())
            dist.broadcast(buf, src)
            if buf.data_ptr() != t.data.data_ptr():
                t.data.copy_(buf)


def broadcast_array(arr: np.ndarray | None, src: int = 0) -> np.ndarray:
    """Send rank ``src``'s array (any shape, numeric dtype) to every rank; others may pass None."""
    if not is_distributed():
        return arr
    dev = _comm_device()
    if rank() == src:
        a = np.ascontiguousarray(arr)
        kind = {np.dtype(np.int64): 0, np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3}.get(a.dtype)
        if kind is None:
            a = a.astype(np.float64)
            kind = 2
        head = torch.tensor([kind, a.ndim, *a.shape] + [0] * (8 - a.ndim), dtype=torch.int64, device=dev)
    else:
        head = torch.zeros(10, dtype=torch.int64, device=dev)
    dist.broadcast(head, src)
    kind, ndim = int(head[0]), int(head[1])
    shape = tuple(int(s) for s in head[2 : 2 + ndim])
    dtype = [torch.int64, torch.float32, torch.float64, torch.int32][kind]
    t = torch.from_numpy(a).to(dev) if rank() == src else torch.empty(shape, dtype=dtype, device=dev)
    dist.broadcast(t, src)
    return t.cpu().numpy()


def rank_batches(batches: Sequence, rank_: int | None = None, world: int | None = None) -> list:
    """This rank's share of a list of batches for an inference pass: batches ``rank, rank+W, ...``.

    Each batch is computed whole, exactly as in a single process, so gathered results are bitwise the same.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(batches)[r::w]


def _gather_parts(local: np.ndarray, dst: int | None) -> list[np.ndarray] | None:
    dev = _comm_device()
    local = np.ascontiguousarray(local, dtype=np.float32)
    n = torch.tensor([len(local)], dtype=torch.int64, device=dev)
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    rest = local.shape[1:]
    m = max(sizes)
    pad = np.zeros((m, *rest), np.float32)
    pad[: len(local)] = local
    t = torch.from_numpy(pad).to(dev)
    if dst is None:
        bufs = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(bufs, t)
    else:
        # gather is not implemented by every backend (nccl); all_gather is, and costs the same here
        bufs = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(bufs, t)
        if rank() != dst:
            return None
    return [b.cpu().numpy()[:s] for b, s in zip(bufs, sizes)]


def _interleave(parts: list[np.ndarray], batch_size: int, n: int) -> np.ndarray:
    """Undo :func:`rank_batches`: rank r holds batches r, r+W, ... of ``batch_size`` rows each."""
    w = len(parts)
    out = np.empty((n, *parts[0].shape[1:]), np.float32)
    offs = [0] * w
    for b, s in enumerate(range(0, n, batch_size)):
        r = b % w
        size = min(batch_size, n - s)
        out[s : s + size] = parts[r][offs[r] : offs[r] + size]
        offs[r] += size
    return out


def gather_rows(local: np.ndarray, batch_size: int, n: int, dst: int = 0) -> np.ndarray | None:
    """Reassemble rows computed with :func:`rank_batches` on rank ``dst`` (None on the others)."""
    if not is_distributed():
        return local
    parts = _gather_parts(local, dst)
    return None if parts is None else _interleave(parts, batch_size, n)


def all_gather_rows(local: np.ndarray, batch_size: int, n: int) -> np.ndarray:
    """Reassemble rows computed with :func:`rank_batches` on every rank."""
    if not is_distributed():
        return local
    return _interleave(_gather_parts(local, None), batch_size, n)


def all_gather_json(value) -> list:
    """Every rank's ``value`` (anything JSON can hold), in rank order; ``[value]`` when single-process.

    JSON rather than ``all_gather_object``: nothing is unpickled, even between our own processes.
    """
    if not is_distributed():
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    parts = _gather_parts(data[:, None].astype(np.float32), None)
    return [json.loads(bytes(part[:, 0].astype(np.uint8)).decode()) for part in parts]


def shard_batches(batches: Sequence, rank_: int | None = None, world: int | None = None) -> list:
    """Split each training batch into one slice per rank, so the global batch stays the configured size.

    Index batches (1-D integer arrays or tensors) are split with ``array_split``; a batch too small to give
    every rank at least one item is dropped on all ranks (every rank must take the same number of steps).
    Other batch objects go round-robin, truncated to a multiple of the world size.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if w <= 1:
        return batches
    batches = list(batches)
    out = []
    def index_like(b):
        return (isinstance(b, (np.ndarray, torch.Tensor)) and b.ndim == 1
                and not (b.dtype.is_floating_point if isinstance(b, torch.Tensor) else b.dtype.kind == "f"))

    if batches and all(index_like(b) for b in batches):
        for b in batches:
            arr = b.cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
            if len(arr) < w:
                continue
            out.append(np.array_split(arr, w)[r])
        return out
    keep = len(batches) - len(batches) % w
    return batches[:keep][r::w]
