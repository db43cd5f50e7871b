"""Every module that registers components, so recipes and saved models can name them.

The modules without torch are imported here; those whose components need torch are listed in
``base.LAZY`` and imported when one of their components is first named (``base.component_class``).
"""

from . import cluster, reduce  # noqa: F401
from .base import LAZY
from .encoders import hog, pixels, views  # noqa: F401
from . import export  # noqa: F401  (registers the submission writer)
from . import tutorial_outputs  # noqa: F401  (output writers named by recipes)

LAZY.update({
    "autoencoder": "imclust.encoders.autoencoder",
    "deepcluster": "imclust.encoders.deepcluster",
    "embedding": "imclust.encoders.embedding",
    "selflabel": "imclust.encoders.embedding",
    "pretrained": "imclust.encoders.pretrained",
    "dec": "imclust.encoders.dec",
    "idec": "imclust.encoders.dec",
    "temi": "imclust.temi",
    "turtle": "imclust.turtle",
    "simclr": "imclust.encoders.contrastive",
    "scan": "imclust.encoders.scan",
})
