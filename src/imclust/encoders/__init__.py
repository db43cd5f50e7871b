"""Encoders. The torch-free ones are imported here; the others on first use (``imclust.components``)."""

from .base import Encoder
from .hog import HOGEncoder
from .pixels import PixelEncoder

_TORCH_ENCODERS = {"AutoencoderEncoder": "autoencoder", "DeepClusterEncoder": "deepcluster",
                   "EmbeddingEncoder": "embedding", "SelfLabelEncoder": "embedding", "PretrainedEncoder": "pretrained",
                   "DECEncoder": "dec", "IDECEncoder": "dec", "SimCLREncoder": "contrastive", "ScanEncoder": "scan"}

__all__ = ["Encoder", "HOGEncoder", "PixelEncoder", *_TORCH_ENCODERS]


def __getattr__(name):  # imports torch only when a torch encoder is asked for
    if name in _TORCH_ENCODERS:
        import importlib

        return getattr(importlib.import_module(f".{_TORCH_ENCODERS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
