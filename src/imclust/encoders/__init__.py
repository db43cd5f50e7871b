"""Encoders, imported here so that each registers its name."""

from .base import Encoder
from .embedding import EmbeddingEncoder, SelfLabelEncoder
from .pixels import PixelEncoder

__all__ = ["Encoder", "EmbeddingEncoder", "PixelEncoder", "SelfLabelEncoder"]
