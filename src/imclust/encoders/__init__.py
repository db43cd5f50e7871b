"""Encoders, imported here so that each registers its name."""

from .base import Encoder
from .embedding import EmbeddingEncoder, SelfLabelEncoder
from .pixels import PixelEncoder
from .pretrained import PretrainedEncoder

__all__ = ["Encoder", "EmbeddingEncoder", "PixelEncoder", "PretrainedEncoder", "SelfLabelEncoder"]
