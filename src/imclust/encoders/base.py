"""Encoder interface: ``fit(imageset)``, ``transform(imageset) -> (n, d) float32``.

Encoders that hold torch modules override ``get_state``/``set_state`` to save the module's ``state_dict``
(as safetensors through the pipeline); everything else is stored like any component.
"""

from __future__ import annotations

import numpy as np

from ..base import Component
from ..data import ImageSet


class Encoder(Component):
    """Base encoder. Subclasses implement ``fit`` and ``transform`` on ImageSets."""

    trainable = False

    def fit(self, ds: ImageSet, y=None):
        return self

    def transform(self, ds: ImageSet) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit_transform(self, ds: ImageSet, y=None) -> np.ndarray:
        return self.fit(ds).transform(ds)

    def input_view(self, ds: ImageSet) -> ImageSet:
        """The set resized to the shape the encoder was fitted on (new images of other sizes are resized)."""
        shape = getattr(self, "input_shape_", None)
        if shape is None:
            return ds
        return ds.resized((int(shape[1]), int(shape[2])), int(shape[0]))
