"""The one training loop every trainable encoder uses.

It owns: device choice (cuda, mps, cpu), precision (fp32 by default; bf16 autocast plus channels_last on
request), seeding, a progress bar showing the loss, checkpoints (safetensors + JSON state) every N epochs
and at the end, resume, NaN detection, and the loss history.

Determinism and exact resume: every epoch begins by seeding python, numpy and torch from ``(seed, epoch)``
and the batch order comes from a generator seeded the same way. An epoch therefore depends only on the
state at its start (the weights and optimizer state saved in the checkpoint), so a run resumed from the
checkpoint of epoch E reaches the same result as one never interrupted.

The caller supplies a ``train_step(batch, trainer) -> loss`` and a ``make_batches(epoch, generator)``
iterable; hooks before and after each epoch let DeepCluster recompute pseudo-labels, and so on.

Distributed (``torchrun``): when the environment names a world of more than one process, the Trainer joins
the process group (gloo on CPU, nccl on CUDA, each rank on the GPU of its LOCAL_RANK), wraps every module
with trainable parameters in DistributedDataParallel, gives each rank one slice of every batch (so the
global batch keeps its configured size), averages the loss across ranks, and writes checkpoints, history
and logs on rank 0 only. ``trainer.modules`` then holds the DDP wrappers (call them in ``train_step``
as usual); ``trainer.raw(name)`` is the plain module. Single-process behaviour is unchanged. See
:mod:`imclust.nn.distributed` for the gather/broadcast helpers that hooks use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..io import read_tensors, remove_stale_temps, save_tensors, write_json
from ..progress import log, progress
from . import distributed as ddp


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # fp32 | bf16
    channels_last: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 10
    resume: bool = False
    grad_clip: float | None = None
    extra: dict = field(default_factory=dict)  # caller-specific settings that must match on resume

    # settings that may change between an interrupted run and its resumption
    _RESUMABLE = ("epochs", "checkpoint_dir", "checkpoint_every", "resume", "device")

    def fingerprint(self) -> dict:
        d = asdict(self)
        for k in self._RESUMABLE:
            d.pop(k, None)
        return d


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return dev


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**31 - 1)


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
                  drop_last: bool = False) -> list[np.ndarray]:
    """Index batches over ``range(n)``; the order comes from ``generator`` (so it is reproducible)."""
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    out = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    if drop_last and out and len(out[-1]) < batch_size and len(out) > 1:
        out = out[:-1]
    return out


def _to_numpy_state(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{k}": v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().numpy()
            for k, v in sd.items()}


def module_arrays(module: nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """A module's state_dict as numpy arrays (floating tensors as float32)."""
    return _to_numpy_state(module.state_dict(), prefix)


def load_module_arrays(module: nn.Module, arrays: dict[str, np.ndarray], prefix: str = "", strict: bool = True) -> None:
    sd = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(sd, strict=False)
    if strict and (missing or unexpected):
        raise UserError(
            f"weights do not fit the architecture: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )


class Trainer:
    """Runs epochs of ``train_step`` over ``make_batches`` for a dict of modules.

    ``modules`` holds every module with trainable state (the network, a loss with learnable centres, a
    head); all are checkpointed. ``optimizer_factory(modules, config)`` may build a custom optimizer (for
    example a separate learning rate for Center-Loss centres); by default one optimizer of
    ``config.optimizer`` covers every parameter.
    """

    def __init__(self, modules: dict[str, nn.Module], config: TrainConfig,
                 optimizer_factory: Callable[[dict, TrainConfig], torch.optim.Optimizer] | None = None,
                 fingerprint: dict | None = None, desc: str = "train"):
        self.config = config
        self.device = ddp.device_for_rank(pick_device(config.device))
        if config.precision not in ("fp32", "bf16"):
            raise UserError(f"unknown precision {config.precision!r}; use fp32 or bf16")
        self.distributed = ddp.init_from_env(self.device)
        self.rank, self.world_size = ddp.rank(), ddp.world_size()
        seed_all(config.seed)
        for m in modules.values():
            m.to(self.device)
            if config.channels_last:
                m.to(memory_format=torch.channels_last)
        self.modules = {k: ddp.wrap_module(m) for k, m in modules.items()}
        self.optimizer_factory = optimizer_factory
        self.optimizer = self._make_optimizer()
        self.fingerprint = {"train": config.fingerprint(), **(fingerprint or {})}
        self.history: list[dict] = []
        self.epoch = 0  # epochs completed
        self.desc = desc
        self.step_in_epoch = 0
        self.postfix: dict = {}  # extra fields for the progress bar (hooks may set them, e.g. NMI(t, t-1))

    # -- helpers for train_step ----------------------------------------------------------------------
    def raw(self, name: str) -> nn.Module:
        """The plain module ``name`` (without its DistributedDataParallel wrapper, if any)."""
        return ddp.unwrap(self.modules[name])

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self.modules, c)
        params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        raise UserError(f"unknown optimizer {c.optimizer!r}; use adam, adamw or sgd")

    def reset_optimizer(self) -> None:
        """Rebuild the optimizer (after replacing a module, e.g. DeepCluster's fresh head)."""
        for m in self.modules.values():
            m.to(self.device)
        self.optimizer = self._make_optimizer()

    def to_device(self, x):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if isinstance(x, torch.Tensor):
            x = x.to(self.device, non_blocking=True)
            if self.config.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def generator(self, epoch: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(epoch_seed(self.config.seed, epoch) + 1)
        return g

    # -- checkpoints ----------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path | None:
        return Path(self.config.checkpoint_dir) if self.config.checkpoint_dir else None

    def _fp_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def save_checkpoint(self, tag: str = "last", extra_arrays: dict[str, np.ndarray] | None = None) -> Path | None:
        d = self.ckpt_dir
        if d is None:
            return None
        arrays: dict[str, np.ndarray] = {}
        for name, m in self.modules.items():
            arrays.update(_to_numpy_state(ddp.unwrap(m).state_dict(), f"module.{name}."))
        opt = self.optimizer.state_dict()
        scalars: dict[str, Any] = {}
        for pid, st in opt["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    arrays[f"optim.{pid}.{k}"] = v.detach().cpu().float().numpy()
                else:
                    scalars[f"{pid}.{k}"] = float(v.item() if isinstance(v, torch.Tensor) else v)
        for k, v in (extra_arrays or {}).items():
            arrays[f"extra.{k}"] = np.asarray(v)
        state = {
            "epoch": self.epoch,
            "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
            "fingerprint": self.fingerprint,
            "fingerprint_hash": self._fp_hash(),
            "history": self.history,
        }
        # one file holds the weights and the state, written atomically: a kill can never pair one epoch's
        # weights with another epoch's optimizer state
        save_tensors(d / f"{tag}.safetensors", arrays,
                     metadata={CKPT_META: json.dumps(state, sort_keys=True, default=_json_scalar)})
        return d / f"{tag}.safetensors"

    def load_checkpoint(self, tag: str = "last") -> dict[str, np.ndarray]:
        """Restore modules, optimizer, epoch and history. Returns the checkpoint's extra arrays."""
        d = self.ckpt_dir
        arrays, meta = read_tensors(d / f"{tag}.safetensors", "checkpoint")
        try:
            state = json.loads(meta[CKPT_META]) if CKPT_META in meta else json.loads((d / f"{tag}.json").read_text())
            if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict):
                raise ValueError("no optimizer state")
        except (OSError, ValueError) as e:
            raise UserError(f"{d / (tag + '.safetensors')}: a damaged checkpoint ({e}); start in a fresh "
                            "checkpoint folder") from None
        if state.get("fingerprint_hash") != self._fp_hash():
            old, new = state.get("fingerprint", {}), self.fingerprint
            diff = _first_difference(old, new)
            raise UserError(f"cannot resume from {d}: the configuration changed ({diff}); "
                            "resume with the original settings or start a fresh run in another folder")
        for name, m in self.modules.items():
            load_module_arrays(ddp.unwrap(m), arrays, f"module.{name}.")
            m.to(self.device)
        opt_sd = self.optimizer.state_dict()
        new_state: dict = {}
        for key, v in arrays.items():
            if key.startswith("optim."):
                _, pid, k = key.split(".", 2)
                new_state.setdefault(int(pid), {})[k] = torch.from_numpy(np.array(v)).to(self.device)
        for key, v in state["optimizer"]["scalars"].items():
            pid, k = key.split(".", 1)
            new_state.setdefault(int(pid), {})[k] = torch.tensor(v) if k == "step" else v
        opt_sd["state"] = new_state
        opt_sd["param_groups"] = [{**g, "params": og["params"]} for g, og in zip(state["optimizer"]["param_groups"], opt_sd["param_groups"])]
        self.optimizer.load_state_dict(opt_sd)
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        return {k[len("extra."):]: v for k, v in arrays.items() if k.startswith("extra.")}

    def has_checkpoint(self, tag: str = "last") -> bool:
        d = self.ckpt_dir
        return d is not None and (d / f"{tag}.safetensors").exists()

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self, train_step: Callable[[Any, "Trainer"], torch.Tensor],
            make_batches: Callable[[int, torch.Generator], Iterable],
            on_epoch_start: Callable[["Trainer", int], dict | None] | None = None,
            on_epoch_end: Callable[["Trainer", int], dict | None] | None = None,
            extra_state: Callable[[], dict[str, np.ndarray]] | None = None) -> list[dict]:
        """Train until ``config.epochs`` epochs are complete; returns the history (one dict per epoch)."""
        c = self.config
        self.resumed_extra: dict[str, np.ndarray] = {}
        if self.ckpt_dir is not None and self.is_main:
            remove_stale_temps(self.ckpt_dir)  # what a killed run was writing
        if c.resume:
            if self.has_checkpoint():
                self.resumed_extra = self.load_checkpoint()
                log(f"resumed from {self.ckpt_dir} at epoch {self.epoch}")
            else:
                log(f"no checkpoint in {self.ckpt_dir}; starting from scratch")
        elif self.has_checkpoint():
            raise UserError(f"{self.ckpt_dir} already holds a checkpoint; pass resume to continue it, or use a new folder")
        for m in self.modules.values():
            m.train()
        while self.epoch < c.epochs:
            e = self.epoch
            seed_all(epoch_seed(c.seed, e))
            t0 = time.perf_counter()
            record: dict = {"epoch": e + 1}
            if on_epoch_start is not None:
                record.update(on_epoch_start(self, e) or {})
            for m in self.modules.values():
                m.train()
            total, count = 0.0, 0
            batches = make_batches(e, self.generator(e))
            if self.distributed:
                batches = ddp.shard_batches(batches, self.rank, self.world_size)
            n_batches = len(batches) if hasattr(batches, "__len__") else None
            bar = progress(batches, total=n_batches, desc=f"{self.desc} {e + 1}/{c.epochs}", unit="batch")
            for self.step_in_epoch, batch in enumerate(bar):
                self.optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    loss = train_step(batch, self)
                lv = float(loss.detach().float().item())
                if self.distributed:  # every rank sees the same (mean) loss, so all stop together on NaN
                    lv = ddp.mean_scalar(lv)
                if not math.isfinite(lv):
                    where = f"epoch {e + 1}, batch {self.step_in_epoch + 1}"
                    kept = f"; the last good checkpoint (epoch {self.epoch}) is in {self.ckpt_dir}" if self.has_checkpoint() else ""
                    raise TrainingDiverged(f"the training loss became {lv} at {where}{kept}; lower the learning rate or check the input")
                loss.backward()
                if c.grad_clip:
                    nn.utils.clip_grad_norm_([p for m in self.modules.values() for p in m.parameters()], c.grad_clip)
                self.optimizer.step()
                total += lv
                count += 1
                bar.set_postfix(loss=f"{total / count:.4g}", **self.postfix)
            bar.close()
            record["loss"] = total / max(count, 1)
            if on_epoch_end is not None:
                record.update(on_epoch_end(self, e) or {})
            record["seconds"] = time.perf_counter() - t0
            self.history.append(record)
            self.epoch = e + 1
            log(f"{self.desc} epoch {self.epoch}/{c.epochs} " + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "epoch"))
            if self.ckpt_dir is not None:
                extra = extra_state() if extra_state else None
                if self.is_main:
                    if self.epoch % max(1, c.checkpoint_every) == 0 or self.epoch == c.epochs:
                        self.save_checkpoint(f"epoch_{self.epoch:04d}", extra)
                    self.save_checkpoint("last", extra)
                ddp.barrier()
        for m in self.modules.values():
            m.eval()
        if self.ckpt_dir is not None and self.is_main:
            write_json(self.ckpt_dir / "history.json", self.history)
        return self.history


CKPT_META = "imclust_checkpoint"  # the safetensors metadata key that holds a checkpoint's JSON state


def _json_scalar(o):
    if isinstance(o, (np.generic, torch.Tensor)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _first_difference(a, b, path="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path or 'value'}: was {a!r}, now {b!r}"


@torch.no_grad()
def predict_batches(module: Callable, X: np.ndarray, batch_size: int = 512, device=None, precision: str = "fp32",
                    channels_last: bool = False, desc: str | None = None) -> np.ndarray:
    """Run ``module`` over an in-memory array in batches, returning float32 numpy output."""
    device = device or torch.device("cpu")
    outs = []
    rng = range(0, len(X), batch_size)
    for s in progress(rng, desc=desc, unit="batch") if desc else rng:
        xb = torch.from_numpy(np.ascontiguousarray(X[s : s + batch_size])).to(device)
        if channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with ctx:
            y = module(xb)
        outs.append(y.float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)
