"""Extra output writers that tutorial recipes name in their ``outputs = [...]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .outputs import register_output, write_predictions
from .progress import log


def invert_labels(labels, k: int | None = None) -> np.ndarray:
    """Tutorial 1's inverted copy: ``1 - label`` for two clusters. For k clusters the ids are reversed
    (``k - 1 - label``), which is the same thing when k = 2."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if k is None else int(k)
    return np.where(labels >= 0, k - 1 - labels, labels)


@register_output("hw9_prediction")
def write_hw9_prediction(result, out) -> dict[str, Path]:
    """``prediction.csv`` (id,label) and ``prediction_invert.csv`` (the labels inverted), as tutorial 1 writes them."""
    out = Path(out)
    k = int(result.k)
    if k != 2:
        log(f"prediction_invert.csv: k={k}, so the inverted copy reverses the cluster ids (k-1-label)")
    return {
        "prediction": write_predictions(out / "prediction.csv", result.ids, result.labels),
        "prediction_invert": write_predictions(out / "prediction_invert.csv", result.ids, invert_labels(result.labels, k)),
    }
