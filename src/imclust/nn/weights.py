"""Weights for the backbones: local files, torchvision's published ImageNet files, and checks.

- A local file: ``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)``
  (never unpickled in full). A checkpoint that wraps the state_dict under ``state_dict`` or ``model`` and
  ``module.`` prefixes (DataParallel) are accepted.
- ``pretrained``: the published file is downloaded once into the cache (``$IMCLUST_CACHE_DIR/weights``,
  default ``~/.cache/imclust/weights``) and its sha256 must start with the 8 hex digits in its name.
  Offline, one line says so and how to pass a local file instead.
- Loading checks the keys against the architecture and names any that do not fit.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..progress import log, progress
from .backbones import WEIGHT_URLS, canonical_name

# patched in tests to simulate being offline or to serve a local file
_urlopen = urllib.request.urlopen


def cache_root() -> Path:
    """``$IMCLUST_CACHE_DIR``, else ``$XDG_CACHE_HOME/imclust``, else ``~/.cache/imclust``."""
    env = os.environ.get("IMCLUST_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "imclust"


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _hash_prefix(url: str) -> str | None:
    stem = url.rsplit("/", 1)[-1].split(".")[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else None


def download_weights(name: str, timeout: float = 60.0) -> Path:
    """The published ImageNet weights for backbone ``name``: from the cache, or downloaded and hash-checked."""
    key = canonical_name(name)
    url = WEIGHT_URLS[key]
    fname = url.rsplit("/", 1)[-1]
    dest = cache_root() / "weights" / fname
    prefix = _hash_prefix(url)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{fname}.{os.getpid()}.part")
    h = hashlib.sha256()
    log(f"downloading ImageNet weights for {key} from {url}")
    try:
        with _urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = resp.headers.get("Content-Length") if getattr(resp, "headers", None) is not None else None
            bar = progress(total=int(total) if total else None, desc=f"download {fname}", unit="B", unit_scale=True)
            try:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"cannot download the ImageNet weights for {key} from {url} (no network? {reason}); "
            f"download that file on a machine with internet access and pass it with --weights PATH "
            f"(or copy it to {dest})"
        ) from None
    digest = h.hexdigest()
    if prefix is not None and not digest.startswith(prefix):
        tmp.unlink(missing_ok=True)
        raise UserError(f"the file downloaded from {url} has sha256 {digest[:16]}…, not {prefix}…; "
                        "the download is corrupt or was tampered with. Try again, or pass a checked file with --weights PATH")
    os.replace(tmp, dest)
    return dest


def read_state_file(path) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors`` or a ``.pth`` file (``weights_only=True``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"weights file {path} does not exist; check the path given to --weights")
    if path.is_dir():
        raise UserError(f"weights {path} is a folder; give a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on bad files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: cannot be read as PyTorch weights with weights_only=True ({first}); "
                            "give a plain state_dict (.pth) or a .safetensors file") from None
    if isinstance(sd, dict):
        for wrap in ("state_dict", "model", "model_state_dict"):
            if wrap in sd and isinstance(sd[wrap], dict):
                sd = sd[wrap]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path}: does not hold a state_dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _short(keys, n=5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def apply_state(model: nn.Module, sd: dict[str, torch.Tensor], full_shapes: dict[str, tuple], source: str,
                arch: str) -> None:
    """Load ``sd`` into the (truncated) ``model``; ``full_shapes`` are the untruncated model's keys.

    Keys the architecture does not have, keys the kept layers need but the file lacks, and shapes that
    differ on the kept layers are errors that name the keys. Layers after the cut are not checked for
    shape (a fine-tuned head with another class count is fine).
    """
    needed = model.state_dict()
    unexpected = [k for k in sd if k not in full_shapes]
    missing = [k for k in needed if k not in sd]
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_short(unexpected)}")
        raise UserError(f"{source}: these weights do not fit the {arch} architecture ({'; '.join(parts)}); "
                        f"pass weights saved from a {arch}, or choose the matching --backbone")
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in needed.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise UserError(f"{source}: these weights do not fit the {arch} architecture (shape mismatch: "
                        f"{_short(bad, 3)}); pass weights saved from a {arch}")
    model.load_state_dict({k: sd[k].to(needed[k].dtype) for k in needed}, strict=True)


def state_fingerprint(model: nn.Module) -> str:
    """sha256 over a module's state (names, shapes and float32 values): identifies the weights exactly."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu")
        t = t.float() if t.is_floating_point() else t
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(memoryview(np.ascontiguousarray(t.numpy())).cast("B"))
    return h.hexdigest()
