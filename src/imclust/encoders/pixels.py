"""Raw pixels as features: the baseline every learned representation must beat."""

from __future__ import annotations

import numpy as np

from ..base import register
from ..data import ImageSet
from .base import Encoder


@register("pixels")
class PixelEncoder(Encoder):
    """Flatten each image to a vector of its pixel values in [0, 1].

    ``size`` (H, W or one int) and ``channels`` resize/convert first; by default the source's own shape is kept.
    Images are read in batches; when all the pixels would take more than ``in_memory_mb`` MiB they are
    written to a memory-mapped temporary file instead (``imclust.io.scratch_array``), which PCA reads in
    row blocks, so the baseline never holds every pixel in memory.
    """

    def __init__(self, size=None, channels: int | None = None, in_memory_mb: int = 512):
        self.size = size
        self.channels = channels
        self.in_memory_mb = in_memory_mb

    def fit(self, ds: ImageSet, y=None):
        view = ds.resized(self.size, self.channels)
        self.input_shape_ = list(view.shape)
        return self

    def transform(self, ds: ImageSet) -> np.ndarray:
        from ..io import scratch_array

        view = self.input_view(ds)
        n = len(view)
        out = scratch_array((n, int(np.prod(view.shape))), np.float32, int(self.in_memory_mb) * 2**20)
        for idx, batch in view.iter_batches(512, desc="pixels" if n > 2000 else None):
            out[idx] = batch.reshape(len(idx), -1)
        return out
