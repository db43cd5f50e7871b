"""Encoders, imported here so that each registers its name."""

from .base import Encoder
from .embedding import EmbeddingEncoder, SelfLabelEncoder
from .pixels import PixelEncoder
from .pretrained import PretrainedEncoder
from .deepcluster import DeepClusterEncoder

__all__ = ["Encoder", "DeepClusterEncoder", "EmbeddingEncoder", "PixelEncoder", "PretrainedEncoder", "SelfLabelEncoder"]
