"""A persistent cache of CNN features, so a rerun (or a folder with a few new images) computes only what is new.

Layout: ``<root>/<config>/`` holds ``config.json`` (what the features are: backbone, layer, weights
fingerprint, preprocessing, precision) and shards ``shard-*.safetensors``, each with ``keys`` (``(n, 32)``
uint8: the sha256 of each image file's bytes, or of the decoded pixels for array sources) and
``features`` (``(n, d)`` float32). ``<config>`` is the start of the sha256 of ``config.json``, so a change
of model, layer, weights or preprocessing uses another folder and never mixes features.

Nothing is pickled; shards are written atomically and never rewritten, so two processes may share a cache.
A shard that cannot be read is reported and ignored. The root is ``$IMCLUST_CACHE_DIR/features`` (default
``~/.cache/imclust/features``), or the folder given to the encoder (``--feature-cache DIR``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from ..io import save_tensors, write_json
from ..progress import log, progress

FORMAT = "imclust-features/1"


def default_root() -> Path:
    from ..nn.weights import cache_root

    return cache_root() / "features"


def content_keys(ds, desc: str = "hash") -> np.ndarray:
    """``(n, 32)`` uint8: sha256 of each file's bytes (folders) or of each decoded image (arrays)."""
    n = len(ds)
    keys = np.zeros((n, 32), dtype=np.uint8)
    paths = getattr(ds, "paths", None)
    bar = progress(total=n, desc=desc, unit="img") if n > 2000 else None
    try:
        if paths is not None:
            for i, p in enumerate(paths):
                h = hashlib.sha256()
                try:
                    with open(p, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            h.update(chunk)
                except OSError:
                    h.update(f"unreadable:{p}".encode())
                keys[i] = np.frombuffer(h.digest(), dtype=np.uint8)
                if bar is not None:
                    bar.update(1)
        else:
            for idx, batch in ds.iter_batches(256):
                for j, i in enumerate(idx):
                    h = hashlib.sha256(str(batch[j].shape).encode())
                    h.update(memoryview(np.ascontiguousarray(batch[j])).cast("B"))
                    keys[int(i)] = np.frombuffer(h.digest(), dtype=np.uint8)
                if bar is not None:
                    bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return keys


class FeatureCache:
    """Features for one configuration, keyed by content hash."""

    def __init__(self, root, config: dict):
        self.config = {"format": FORMAT, **config}
        text = json.dumps(self.config, sort_keys=True, default=str)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:32]
        self.dir = Path(root).expanduser() / self.key

    def _shards(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("shard-*.safetensors"))

    def lookup(self, keys: np.ndarray, dim: int | None = None) -> tuple[np.ndarray | None, np.ndarray]:
        """``(features or None, found mask)`` for ``keys``; rows not found are zero."""
        from safetensors import safe_open

        n = len(keys)
        found = np.zeros(n, dtype=bool)
        if n == 0:
            return None, found
        want: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            want.setdefault(k.tobytes(), []).append(i)
        out = None
        for shard in self._shards():
            if found.all():
                break
            try:
                with safe_open(str(shard), framework="numpy") as fh:
                    skeys = fh.get_tensor("keys")
                    rows, targets = [], []
                    for r, k in enumerate(skeys):
                        hit = want.get(k.tobytes())
                        if hit is not None and not found[hit[0]]:
                            rows.append(r)
                            targets.append(hit)
                    if not rows:
                        continue
                    feats = fh.get_tensor("features")
            except Exception as e:  # a damaged shard: say so and ignore it
                log(f"feature cache: ignoring unreadable shard {shard} ({e})")
                continue
            if out is None:
                out = np.zeros((n, feats.shape[1]), dtype=np.float32)
            if feats.shape[1] != out.shape[1]:
                log(f"feature cache: ignoring shard {shard} (dimension {feats.shape[1]}, expected {out.shape[1]})")
                continue
            for r, hit in zip(rows, targets):
                out[hit] = feats[r]
                found[hit] = True
        return out, found

    def store(self, keys: np.ndarray, feats: np.ndarray, max_rows: int = 4096) -> None:
        if len(keys) == 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "config.json"
        if not cfg.exists():
            write_json(cfg, self.config)
        stamp = f"{time.time_ns():x}-{os.getpid():x}"
        for s in range(0, len(keys), max_rows):
            save_tensors(self.dir / f"shard-{stamp}-{s // max_rows:04d}.safetensors",
                         {"keys": np.ascontiguousarray(keys[s:s + max_rows], dtype=np.uint8),
                          "features": np.ascontiguousarray(feats[s:s + max_rows], dtype=np.float32)})
