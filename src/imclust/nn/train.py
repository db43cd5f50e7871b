"""The one training loop every trainable encoder uses.

It owns: device choice (cuda, mps, cpu), precision (fp32 by default; bf16 autocast plus channels_last on
request; ``auto``: bf16 only where the device computes it natively, :func:`resolve_precision`), seeding, a
progress bar showing the loss, checkpoints (safetensors + JSON state) every N epochs and at the end, resume,
NaN detection, and the loss history.

Determinism and exact resume: every epoch begins by seeding python, numpy and torch from ``(seed, epoch)``
and the batch order comes from a generator seeded the same way. An epoch therefore depends only on the
state at its start (the weights and optimizer state saved in the checkpoint), so a run resumed from the
checkpoint of epoch E reaches the same result as one never interrupted.

The caller supplies a ``train_step(batch, trainer) -> loss`` and a ``make_batches(epoch, generator)``
iterable; hooks before and after each epoch let DeepCluster recompute pseudo-labels, and so on. An optional
``load_batch(indices)`` turns each batch of indices into tensors; with ``config.workers > 0`` that runs in
background threads ahead of the step (it must not draw random numbers, so batches stay the same). Learning-
rate schedules and warm-ups are *callbacks* (:class:`Callback`: ``on_fit_start``, ``on_epoch_start``,
``on_epoch_end``, ``on_fit_end``), given to the Trainer; :class:`LRSchedule` is one. Trainable encoders do
not drive the Trainer by hand: :class:`imclust.encoders.base.TrainableEncoder` does it from their hooks.
:func:`extract_features` is the one inference loop (eval mode, autocast, channels_last, DDP gather).

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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..base import seed_everything
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
    precision: str = "fp32"  # fp32 | bf16 | auto (resolve_precision)
    channels_last: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 10
    resume: bool = False
    grad_clip: float | None = None
    workers: int = 0  # threads running load_batch ahead of the training step (0: in the loop)
    extra: dict = field(default_factory=dict)  # caller-specific settings that must match on resume

    # settings that may change between an interrupted run and its resumption
    _RESUMABLE = ("epochs", "checkpoint_dir", "checkpoint_every", "resume", "device", "workers")

    def fingerprint(self) -> dict:
        d = asdict(self)
        for k in self._RESUMABLE:
            d.pop(k, None)
        return d


#: what a ``precision`` setting may be
PRECISIONS = ("fp32", "bf16", "auto")


def cpu_computes_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True where the CPU has bf16 instructions (AVX-512 BF16 or AMX). oneDNN's check alone also says yes on
    AVX-512 CPUs without them, where it emulates bf16 and trains slower than in fp32; so where the CPU's flags can
    be read (Linux), they must name one of those instruction sets as well."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:  # no /proc/cpuinfo (macOS, Windows): oneDNN's word stands
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``device``. ``auto``: bf16 where the device computes it natively (CUDA with bf16,
    a CPU with AVX-512 BF16 or AMX: :func:`cpu_computes_bf16`), else fp32: on a CPU without those instructions
    bf16 autocast emulates every convolution and runs several times slower than fp32."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_computes_bf16() else "fp32"
    return "fp32"


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


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The seed of random stream ``stream`` in ``epoch`` of a run seeded ``seed`` (stream 0 seeds the epoch itself;
    hooks take their own streams, e.g. the k-means, the sampler and the augmentations of that epoch)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + int(stream) * 104_729) % (2**31 - 1)


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


class Callback:
    """Something the Trainer calls around epochs: learning-rate schedules, warm-ups, logging.

    ``on_epoch_start``/``on_epoch_end`` may return a dict that goes into the epoch's history record. Callbacks
    run in the order given, before the encoder's own epoch hooks. Their state must follow from the epoch
    number and the checkpointed modules/optimizer, so that a resumed run continues exactly.
    """

    def on_fit_start(self, trainer: "Trainer") -> None:
        pass

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> dict | None:
        return None

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> dict | None:
        return None

    def on_fit_end(self, trainer: "Trainer") -> None:
        pass


class LRSchedule(Callback):
    """Sets every parameter group's learning rate at each epoch's start: base rate × warm-up × schedule.

    ``schedule``: ``constant``, or ``cosine`` (half a cosine from the base rate to 0 over the epochs after the
    warm-up). ``warmup_epochs``: the rate rises linearly over the first epochs (1/(w+1), 2/(w+1), ...). The
    factor depends on the epoch number only, so a resumed run continues on the same curve; resuming with more
    epochs stretches the cosine from there on.
    """

    SCHEDULES = ("constant", "cosine")

    def __init__(self, schedule: str = "cosine", warmup_epochs: int = 0):
        if schedule not in self.SCHEDULES:
            raise UserError(f"unknown lr_schedule {schedule!r}; use {' or '.join(self.SCHEDULES)}")
        if int(warmup_epochs) < 0:
            raise UserError(f"lr warm-up epochs must be 0 or more, got {warmup_epochs}")
        self.schedule, self.warmup_epochs = schedule, int(warmup_epochs)

    def factor(self, epoch: int, epochs: int) -> float:
        w = self.warmup_epochs
        f = min(1.0, (epoch + 1) / (w + 1)) if w else 1.0
        if self.schedule == "cosine":
            f *= 0.5 * (1.0 + math.cos(math.pi * max(0, epoch - w) / max(1, int(epochs) - w)))
        return f

    def on_epoch_start(self, trainer, epoch):
        if self.schedule == "constant" and not self.warmup_epochs:
            return None
        f = self.factor(epoch, trainer.config.epochs)
        for g in trainer.optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])
            g["lr"] = g["base_lr"] * f
        return {"lr_factor": f}


class _Loaded:
    """``load_batch`` mapped over batches, in order, optionally by background threads (a bounded look-ahead)."""

    def __init__(self, batches, load_batch, workers: int):
        self.batches, self.load_batch, self.workers = batches, load_batch, int(workers)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        if self.workers <= 0:
            for b in self.batches:
                yield self.load_batch(b)
            return
        ahead = 2 * self.workers
        with ThreadPoolExecutor(self.workers) as pool:
            pending = []
            for b in self.batches:
                pending.append(pool.submit(self.load_batch, b))
                if len(pending) > ahead:
                    yield pending.pop(0).result()
            for f in pending:
                yield f.result()


def default_optimizer(modules: dict, c: TrainConfig) -> torch.optim.Optimizer:
    """One optimizer of ``c.optimizer`` over every trainable parameter of ``modules``."""
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    if c.optimizer == "adam":
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    if c.optimizer == "sgd":
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    raise UserError(f"unknown optimizer {c.optimizer!r}; use adam, adamw or sgd")


class Trainer:
    """Runs epochs of ``train_step`` over ``make_batches`` for a dict of modules.

    ``modules`` holds every module with trainable state (the network, a loss with learnable centres, a
    head); all are checkpointed. ``optimizer_factory(modules, config)`` may build a custom optimizer (for
    example a separate learning rate for Center-Loss centres); by default one optimizer of
    ``config.optimizer`` covers every parameter. ``callbacks``: :class:`Callback` objects (schedules, warm-ups).
    """

    def __init__(self, modules: dict[str, nn.Module], config: TrainConfig,
                 optimizer_factory: Callable[[dict, TrainConfig], torch.optim.Optimizer] | None = None,
                 fingerprint: dict | None = None, desc: str = "train", callbacks=()):
        self.callbacks = list(callbacks)
        self.device = ddp.device_for_rank(pick_device(config.device))
        # the precision actually used (``auto`` resolved), so checkpoints record and match what ran
        config = replace(config, precision=resolve_precision(config.precision, self.device))
        self.config = config
        if int(config.workers) < 0:
            raise UserError(f"workers must be 0 or more, got {config.workers}")
        self.distributed = ddp.init_from_env(self.device)
        self.rank, self.world_size = ddp.rank(), ddp.world_size()
        seed_everything(config.seed)
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
        self.stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """End training before the current epoch's batches (call from an epoch-start hook, e.g. on convergence).

        The epochs completed so far stand (history, checkpoints); the epoch that asked is not run or recorded."""
        self.stop_reason = reason

    # -- helpers for train_step ----------------------------------------------------------------------
    def raw(self, name: str) -> nn.Module:
        """The plain module ``name`` (without its DistributedDataParallel wrapper, if any)."""
        return ddp.unwrap(self.modules[name])

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _make_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self.modules, self.config)
        return default_optimizer(self.modules, self.config)

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
            extra_state: Callable[[], dict[str, np.ndarray]] | None = None,
            load_batch: Callable[[Any], Any] | None = None) -> list[dict]:
        """Train until ``config.epochs`` epochs are complete; returns the history (one dict per epoch).

        ``extra_state()`` gives arrays saved with each checkpoint (back in ``trainer.resumed_extra`` on resume)."""
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
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.epoch < c.epochs:
            e = self.epoch
            seed_everything(epoch_seed(c.seed, e))
            t0 = time.perf_counter()
            record: dict = {"epoch": e + 1}
            for cb in self.callbacks:
                record.update(cb.on_epoch_start(self, e) or {})
            if on_epoch_start is not None:
                record.update(on_epoch_start(self, e) or {})
            if self.stop_reason is not None:
                log(f"{self.desc}: stopped before epoch {e + 1}: {self.stop_reason}")
                break
            for m in self.modules.values():
                m.train()
            total, count = 0.0, 0
            batches = make_batches(e, self.generator(e))
            if self.distributed:
                batches = ddp.shard_batches(batches, self.rank, self.world_size)
            if load_batch is not None:
                batches = _Loaded(list(batches), load_batch, c.workers)
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
            for cb in self.callbacks:
                record.update(cb.on_epoch_end(self, e) or {})
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
        for cb in self.callbacks:
            cb.on_fit_end(self)
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


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast, or autocast explicitly off for fp32 (so an enclosing autocast cannot change the numbers);
    ``auto`` as :func:`resolve_precision` decides for ``device``."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def _as_input(rows, device: torch.device) -> torch.Tensor:
    x = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(rows))
    return x.to(device, non_blocking=True)


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], data, *, batch_size: int = 512,
                     device=None, precision: str = "fp32", channels_last: bool = False,
                     prepare: Callable[[Any, torch.device], torch.Tensor] | None = None, modules=(),
                     desc: str | None = None, gather: str = "all") -> np.ndarray | None:
    """``fn`` over every row of ``data`` (a numpy array or tensor of images or features), batch by batch.

    The one inference loop of every encoder: ``modules`` are put in eval mode for the pass (and restored),
    ``prepare(rows, device)`` turns a slice of ``data`` into the input tensor (default: as float on
    ``device``), 4-D inputs and the modules' weights go channels_last on request, ``fn`` runs under the
    precision's autocast, and the outputs come back as float32 numpy. Under torchrun each process computes its share of the batches;
    ``gather="all"`` returns every row on every process, ``"main"`` on rank 0 only (None elsewhere).
    """
    if gather not in ("all", "main"):
        raise ValueError(f"gather must be 'all' or 'main', got {gather!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    modules = [m for m in (modules.values() if isinstance(modules, dict) else modules)]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
        if channels_last:
            # the weights in the layout training left them in (a model loaded from disk comes back contiguous,
            # and another layout takes another kernel: the features would differ in their last bits)
            m.to(memory_format=torch.channels_last)
    n, bs = len(data), max(1, int(batch_size))
    batches = ddp.rank_batches([np.arange(s, min(s + bs, n)) for s in range(0, n, bs)])
    bar = progress(batches, desc=desc, unit="batch") if desc and len(batches) > 4 else batches
    def run(rows):
        x = prepare(rows, device) if prepare is not None else _as_input(rows, device)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, precision):
            return fn(x).float().cpu().numpy()

    try:
        outs = [run(data[int(idx[0]): int(idx[-1]) + 1]) for idx in bar]
        if not outs and n:  # a process with no batch still needs the row shape for the gather
            outs = [run(data[0:1])[:0]]
    finally:
        for m, t in zip(modules, was_training):
            m.train(t)
    local = np.concatenate(outs) if outs else np.zeros((0,), np.float32)
    if gather == "main":
        return ddp.gather_rows(local, bs, n)
    return ddp.all_gather_rows(local, bs, n)
