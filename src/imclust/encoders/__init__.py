"""Encoders, imported here so that each registers its name."""

from .base import Encoder
from .embedding import EmbeddingEncoder, SelfLabelEncoder
from .pixels import PixelEncoder
from .hog import HOGEncoder
from .pretrained import PretrainedEncoder
from .deepcluster import DeepClusterEncoder
from .autoencoder import AutoencoderEncoder
from .dec import DECEncoder, IDECEncoder

__all__ = ["Encoder", "AutoencoderEncoder", "DECEncoder", "IDECEncoder", "DeepClusterEncoder", "EmbeddingEncoder", "HOGEncoder", "PixelEncoder",
           "PretrainedEncoder", "SelfLabelEncoder"]
