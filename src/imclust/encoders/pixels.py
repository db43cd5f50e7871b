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
    """

    def __init__(self, size=None, channels: int | None = None):
        self.size = size
        self.channels = channels

    def fit(self, ds: ImageSet, y=None):
        view = ds.resized(self.size, self.channels)
        self.input_shape_ = list(view.shape)
        return self

    def transform(self, ds: ImageSet) -> np.ndarray:
        view = self.input_view(ds)
        return view.to_array(desc="pixels").reshape(len(view), -1)
