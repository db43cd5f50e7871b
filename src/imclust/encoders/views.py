"""Several views of the same images, side by side, for reducers that fuse them (multi-view UMAP).

A ``views`` encoder fits one encoder per view (a hand-made descriptor and a network trained on the images,
say), shrinks each view wider than ``pca`` columns to that many principal components, centres each view
and scales it to unit root-mean-square norm, and returns the views as consecutive column blocks. Its
``view_dims_`` gives the block widths (``view_names_`` their names): a ``umap`` reducer with
``views = "intersect"`` right after it builds one neighbour graph per view and keeps the neighbours the views
agree on (:func:`imclust.manifold.intersect_graphs`); its ``subspace`` option lays out one view's
self-expressive graph instead where that view's groups come out cleaner. Any other reducer sees the plain
concatenation.
"""

from __future__ import annotations

import numpy as np

from ..base import build, register
from ..data import ImageSet
from ..errors import UserError
from ..progress import log
from .base import Encoder


@register("views")
class ViewsEncoder(Encoder):
    """One encoder per view; the views' features, each reduced, centred and scaled, side by side.

    ``views``: a table of named encoder specs, ``{name: {"type": ..., **options}}`` (in a recipe,
    ``[encoder.views.NAME]`` tables), fitted and laid out in the order of their names (a saved model's
    JSON keeps no other order). ``pca``: a view wider than this many columns is
    reduced to its leading principal components (0 keeps every view whole). ``unreduced``: names of views
    kept whole whatever their width (pixels for a self-expressive graph, whose subspaces PCA would merge).
    ``seed`` reaches every view that takes a seed and the PCAs.
    """

    def __init__(self, views: dict | None = None, pca: int = 50, unreduced: list | None = None,
                 seed: int | None = 0):
        self.views = views
        self.pca = pca
        self.unreduced = unreduced
        self.seed = seed

    # -- building -------------------------------------------------------------------------------------
    def _check(self) -> None:
        if not isinstance(self.views, dict) or len(self.views) < 1:
            raise UserError("the views encoder needs at least one view: [encoder.views.NAME] tables, each with "
                            "an encoder type and its options")
        for name, spec in self.views.items():
            if not name or "." in name:
                raise UserError(f"views encoder: view name {name!r} must be non-empty and have no dots")
            if not isinstance(spec, dict) or "type" not in spec:
                raise UserError(f"views encoder: view {name!r} must be a table with an encoder type, "
                                "e.g. [encoder.views.shape] type = \"hog\"")
            if spec["type"] == "views":
                raise UserError(f"views encoder: view {name!r} is itself a views encoder; list its views here instead")
        if isinstance(self.pca, bool) or not isinstance(self.pca, (int, np.integer)) or self.pca < 0:
            raise UserError(f"views encoder: pca must be a whole number of at least 0 (0: no PCA), got {self.pca!r}")
        unknown = sorted(set(self.unreduced or []) - set(self.views))
        if not isinstance(self.unreduced, (list, tuple, type(None))) or unknown:
            raise UserError(f"views encoder: unreduced must list view names (views: {', '.join(sorted(self.views))}), "
                            f"got {self.unreduced!r}")

    @property
    def view_names_(self) -> list[str]:
        """The views' names in the order of their column blocks (``view_dims_``)."""
        return list(self.encoders_)

    def _build_view(self, name: str):
        """The view's encoder, with the encoder's seed where the view takes one."""
        try:
            enc = build(self.views[name], kind="encoder")
        except UserError as e:
            raise UserError(f"views encoder, view {name!r}: {e}") from None
        params = enc.get_params(deep=False)
        for key in ("seed", "random_state"):
            if key in params:
                enc.set_params(**{key: self.seed})
        return enc

    def _new_pca(self):
        return build({"type": "pca", "n_components": int(self.pca), "random_state": self.seed}, kind="reducer")

    # -- fitting ---------------------------------------------------------------------------------------
    def fit(self, ds: ImageSet, y=None):
        self.fit_transform(ds)
        return self

    def fit_transform(self, ds: ImageSet, y=None) -> np.ndarray:
        self._check()
        self.encoders_ = {name: self._build_view(name) for name in sorted(self.views)}  # all checked before any fits
        for enc in self.encoders_.values():  # and missing pretrained weights reported before another view trains
            if hasattr(enc, "check_weights"):
                enc.check_weights()
        self.pcas_, self.centres_, self.scales_ = {}, {}, {}
        blocks = []
        for name, enc in self.encoders_.items():
            log(f"[views] view {name!r}: {enc.component_name}")
            F = np.asarray(enc.fit_transform(ds), dtype=np.float32)
            if self.pca and F.shape[1] > self.pca and name not in (self.unreduced or []):
                self.pcas_[name] = self._new_pca()
                F = self.pcas_[name].fit_transform(F)
            centre = F.mean(0)
            F = F - centre
            # unit root-mean-square norm: no view outweighs another in a joint distance by its scale alone
            scale = float(np.sqrt((F.astype(np.float64) ** 2).sum(1).mean()))
            self.centres_[name], self.scales_[name] = centre, scale if scale > 0 else 1.0
            blocks.append(F / self.scales_[name])
        self.view_dims_ = [int(B.shape[1]) for B in blocks]
        return np.hstack(blocks).astype(np.float32)

    def transform(self, ds: ImageSet) -> np.ndarray:
        if not hasattr(self, "encoders_"):
            raise UserError("the views encoder is not fitted; fit it (or load a fitted model) before transform")
        blocks = []
        for name, enc in self.encoders_.items():
            F = np.asarray(enc.transform(ds), dtype=np.float32)
            if name in self.pcas_:
                F = self.pcas_[name].transform(F)
            blocks.append((F - self.centres_[name]) / self.scales_[name])
        return np.hstack(blocks).astype(np.float32)

    def write_figures(self, result, out) -> dict:
        """The figures of the views that draw any (an autoencoder's loss curve and reconstructions): in the
        run folder itself when one view draws, in ``view-NAME/`` folders when several do (so none overwrites
        another's)."""
        from pathlib import Path

        drawing = [name for name, enc in self.encoders_.items() if hasattr(enc, "write_figures")]
        figs = {}
        for name in drawing:
            where = Path(out) if len(drawing) == 1 else Path(out) / f"view-{name}"
            where.mkdir(parents=True, exist_ok=True)
            made = self.encoders_[name].write_figures(result, where) or {}
            figs.update(made if len(drawing) == 1 else {f"{name}.{k}": v for k, v in made.items()})
        return figs

    # -- persistence: each view's state under "view.NAME.", its PCA's under "pca.NAME." --------------------
    def get_state(self):
        arrays: dict[str, np.ndarray] = {}
        extra: dict = {"view_dims_": self.view_dims_, "scales_": self.scales_, "views_state_": {}}
        for name, enc in self.encoders_.items():
            enc_arrays, enc_extra = enc.get_state()
            arrays.update({f"view.{name}.{k}": v for k, v in enc_arrays.items()})
            arrays[f"centre.{name}"] = self.centres_[name]
            entry = {"encoder": enc_extra, "encoder_arrays": sorted(enc_arrays)}
            if name in self.pcas_:
                pca_arrays, pca_extra = self.pcas_[name].get_state()
                arrays.update({f"pca.{name}.{k}": v for k, v in pca_arrays.items()})
                entry["pca"] = pca_extra
                entry["pca_arrays"] = sorted(pca_arrays)
            extra["views_state_"][name] = entry
        return arrays, extra

    def set_state(self, arrays, extra):
        self._check()
        self.view_dims_ = [int(d) for d in extra["view_dims_"]]
        self.scales_ = {k: float(v) for k, v in extra["scales_"].items()}
        self.encoders_, self.pcas_, self.centres_ = {}, {}, {}
        for name in sorted(self.views):
            entry = extra["views_state_"][name]
            enc = self._build_view(name)
            enc.set_state({k: arrays[f"view.{name}.{k}"] for k in entry["encoder_arrays"]}, entry["encoder"])
            self.encoders_[name] = enc
            self.centres_[name] = np.asarray(arrays[f"centre.{name}"], dtype=np.float32)
            if "pca" in entry:
                pca = self._new_pca()
                pca.set_state({k: arrays[f"pca.{name}.{k}"] for k in entry["pca_arrays"]}, entry["pca"])
                self.pcas_[name] = pca
