"""Encoders, imported here so that each registers its name."""

from .base import Encoder
from .pixels import PixelEncoder
from .autoencoder import AutoencoderEncoder

__all__ = ["Encoder", "PixelEncoder", "AutoencoderEncoder"]
