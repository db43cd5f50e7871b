"""Shared fixtures. Unit tests make their own small data; integration tests read ../shared/data and skip
cleanly when it is absent (as on a user's machine)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("IMCLUST_QUIET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMCLUST_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"integration data not found at {SHARED_DATA}")
    return SHARED_DATA


def blobs_images(n_per=30, k=3, size=8, channels=1, seed=0):
    """k well-separated synthetic image classes: each class is a different bright square position."""
    rng = np.random.RandomState(seed)
    xs, ys = [], []
    for c in range(k):
        base = np.zeros((channels, size, size), np.float32)
        q = size // k
        base[:, :, c * q:(c + 1) * q] = 1.0
        for _ in range(n_per):
            xs.append(np.clip(base + 0.1 * rng.randn(channels, size, size), 0, 1))
            ys.append(c)
    return np.stack(xs).astype(np.float32), np.array(ys)


@pytest.fixture
def blobs():
    return blobs_images()


def write_image_folder(root: Path, k=3, n_per=6, size=16, mode="RGB", fmt="png", seed=0) -> Path:
    """Write a small class-subfolder image tree (class_i/img_j.fmt) and return its root."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for c in range(k):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(n_per):
            arr = np.zeros((size, size, 3), np.uint8) + np.array(colors[c % len(colors)], np.uint8)
            arr = np.clip(arr.astype(int) + rng.randint(-20, 20, arr.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).convert(mode).save(d / f"img{j}.{fmt}")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "imgs")


@pytest.fixture
def one_torch_thread():
    """Tiny networks: one intra-op thread (two contended threads make each tiny op many times slower), set
    through the project's thread policy so that faiss, which shares torch's OpenMP runtime, agrees."""
    import torch

    from imclust.threads import set_threads

    n = torch.get_num_threads()
    set_threads(1)
    yield
    set_threads(n)
