"""ImageSet: ids, lazily decoded images and optional labels.

Every source (builtin, arrays, IDX, folders) becomes one ``ImageSet``. Images come out as float32 arrays
``(C, H, W)`` in ``[0, 1]``; decoding, resizing and channel handling live here and in :mod:`.decode`, so
encoders never see file formats. Labels are carried for evaluation (and for the supervised embedding mode
that asks for them); clustering code never reads them while it fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import UserError
from ..progress import progress


@dataclass
class Skipped:
    """A file that could not be read: where it is and why."""

    id: str
    reason: str


class ImageSet:
    """A collection of images with ids and optional labels.

    Parameters
    ----------
    ids : sequence of str
        One id per image (a folder's relative path, or an index for arrays).
    loader : callable
        ``loader(indices) -> ndarray (B, C, H, W) float32 in [0, 1]`` at the set's native shape.
    shape : (C, H, W)
        Shape of one decoded image.
    labels : optional int array
        Ground truth, for evaluation only.
    """

    def __init__(
        self,
        ids: Sequence[str],
        loader: Callable[[np.ndarray], np.ndarray],
        shape: tuple[int, int, int],
        labels: np.ndarray | None = None,
        class_names: list[str] | None = None,
        skipped: list[Skipped] | None = None,
        source: str = "",
        kind: str = "",
        paths: Sequence[str] | None = None,
        pil_loader: Callable[[int], "object"] | None = None,
    ):
        self.ids = list(ids)
        self._loader = loader
        self.shape = tuple(int(s) for s in shape)
        if any(s <= 0 for s in self.shape):
            raise UserError(f"{source or 'images'}: image size {self.shape[1]}x{self.shape[2]} has a zero dimension; every image needs at least one pixel")
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and len(self.labels) != len(self.ids):
            raise UserError(
                f"{source or 'images'}: {len(self.labels)} labels for {len(self.ids)} images; give exactly one label per image"
            )
        self.class_names = class_names
        self.skipped: list[Skipped] = list(skipped or [])
        self.source = source
        self.kind = kind
        self.paths = list(paths) if paths is not None else None
        self._pil_loader = pil_loader
        self.failed: dict[int, str] = {}  # index -> reason, for files that fail only when decoded in full
        self.n_seen: int | None = None  # a folder's entries: images + skipped (the run's file accounting)

    # -- basic protocol -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        lab = "with labels" if self.labels is not None else "no labels"
        return f"ImageSet({self.source!r}, n={len(self)}, shape={self.shape}, {lab})"

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    @property
    def n_features(self) -> int:
        c, h, w = self.shape
        return c * h * w

    def load(self, indices) -> np.ndarray:
        """Decode images ``indices`` into a ``(B, C, H, W)`` float32 batch in [0, 1]."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = self._loader(idx)
        return np.ascontiguousarray(out, dtype=np.float32)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.load([i])[0]

    def pil(self, i: int):
        """The image as a PIL image at its original size (folders), or rendered from the array."""
        if self._pil_loader is not None:
            return self._pil_loader(i)
        from PIL import Image

        arr = self[i]
        arr8 = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if arr8.shape[0] == 1:
            return Image.fromarray(arr8[0], mode="L")
        return Image.fromarray(np.moveaxis(arr8[:3], 0, -1), mode="RGB")

    def iter_batches(self, batch_size: int = 256, desc: str | None = None, indices=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices, batch)`` pairs, with a progress bar when ``desc`` is given."""
        order = np.arange(len(self)) if indices is None else np.asarray(indices)
        bar = progress(total=len(order), desc=desc, unit="img") if desc else None
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                yield idx, self.load(idx)
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()

    def to_array(self, batch_size: int = 512, desc: str | None = "decode") -> np.ndarray:
        """All images as one ``(N, C, H, W)`` array (for sets that fit in memory; checked before allocating)."""
        from ..resources import check_memory

        c, h, w = self.shape
        check_memory(4.0 * len(self) * c * h * w, f"decoding {len(self)} images of {c}x{h}x{w}",
                     "pass a smaller --size, or use fewer images")
        out = np.empty((len(self), *self.shape), dtype=np.float32)
        for idx, batch in self.iter_batches(batch_size, desc=desc if len(self) > 2000 else None):
            out[idx] = batch
        return out

    # -- derived sets ---------------------------------------------------------------------------------
    def subset(self, indices) -> "ImageSet":
        idx = np.asarray(indices, dtype=np.int64)
        parent = self

        def loader(sub_idx):
            return parent.load(idx[np.asarray(sub_idx)])

        pil_loader = (lambda i: parent.pil(int(idx[i]))) if parent._pil_loader is not None else None
        return ImageSet(
            [self.ids[i] for i in idx],
            loader,
            self.shape,
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            skipped=self.skipped,
            source=self.source,
            kind=self.kind,
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            pil_loader=pil_loader,
        )

    def resized(self, size: tuple[int, int] | int | None = None, channels: int | None = None) -> "ImageSet":
        """A view of this set whose images are resized to ``size`` and converted to ``channels``.

        Resizing uses antialiased bilinear interpolation; 1→3 channels repeats grey, 3→1 takes luma.
        """
        if isinstance(size, int):
            size = (size, size)
        c, h, w = self.shape
        th, tw = size if size is not None else (h, w)
        tc = channels or c
        if (tc, th, tw) == (c, h, w):
            return self
        if th <= 0 or tw <= 0:
            raise UserError(f"image size {th}x{tw} is not valid; give a positive size such as --size 32")
        parent = self

        def loader(idx):
            return convert_batch(parent.load(idx), tc, (th, tw))

        view = ImageSet(
            self.ids, loader, (tc, th, tw), labels=self.labels, class_names=self.class_names,
            skipped=self.skipped, source=self.source, kind=self.kind, paths=self.paths,
            pil_loader=self._pil_loader,
        )
        view.failed, view.n_seen = self.failed, self.n_seen
        return view

    def with_labels(self, labels, class_names=None) -> "ImageSet":
        view = ImageSet(
            self.ids, self._loader, self.shape, labels=labels, class_names=class_names,
            skipped=self.skipped, source=self.source, kind=self.kind, paths=self.paths,
            pil_loader=self._pil_loader,
        )
        view.failed, view.n_seen = self.failed, self.n_seen
        return view


def shrink_to_max_side(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """``(h, w)`` scaled down, aspect kept, so that the longer side is ``max_side``; unchanged when the longer
    side is at most ``max_side`` already, or when ``max_side`` is ``None`` or 0."""
    if not max_side or max(h, w) <= int(max_side):
        return int(h), int(w)
    scale = int(max_side) / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def convert_batch(batch: np.ndarray, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Convert a ``(B, C, H, W)`` batch to ``channels`` and ``size`` (antialiased bilinear)."""
    b, c, h, w = batch.shape
    if c != channels:
        if channels == 1 and c >= 3:
            batch = (0.299 * batch[:, 0] + 0.587 * batch[:, 1] + 0.114 * batch[:, 2])[:, None]
        elif channels == 3 and c == 1:
            batch = np.repeat(batch, 3, axis=1)
        elif channels == 3 and c == 4:
            batch = batch[:, :3]
        else:
            raise UserError(f"cannot convert images with {c} channels to {channels}")
    if (h, w) != tuple(size):
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        batch = t.clamp_(0, 1).numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)
