"""imclust: unsupervised image clustering with deep learning."""

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
