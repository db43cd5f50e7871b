"""Import every module that registers components, so recipes and saved models can name them."""

from . import cluster, reduce, temi  # noqa: F401
from . import encoders  # noqa: F401
from . import export  # noqa: F401  (registers the submission writer)
from . import tutorial_outputs  # noqa: F401  (output writers named by recipes)
