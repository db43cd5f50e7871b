"""Pipeline: encoder → reducers → clusterer, with ``fit``, ``predict`` on new images and no-pickle ``save``/``load``.

A saved model is a folder: ``pipeline.json`` (the recipe's components with their parameters and their
JSON-able fitted values) and ``state.safetensors`` (every fitted array and torch weight, keyed
``<part>.<attribute>``). Loading rebuilds each component from the registry by name; nothing is unpickled.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import __version__
from .base import REGISTRY, build
from .data import ImageSet
from .errors import UserError
from .io import load_tensors, save_tensors, write_json
from .kselect import is_auto, select_k
from .progress import log

FORMAT = "imclust-pipeline/1"


class Pipeline:
    """An encoder, a chain of reducers and a clusterer, fitted together.

    After ``fit``: ``features_`` (encoder output), ``embedding_`` (what the clusterer saw), ``labels_``
    and ``timings_`` (seconds per stage). When the clusterer's ``n_clusters`` is ``"auto"`` or
    ``"auto:MIN-MAX"``, k is chosen on the embedding (:mod:`imclust.kselect`): ``k_selection_`` holds the
    evidence and the clusterer's ``n_clusters_`` the chosen k, while its ``n_clusters`` stays as asked.
    """

    def __init__(self, encoder, reducers=(), clusterer=None, name: str = "custom", seed: int | None = 0):
        if clusterer is None:
            raise UserError("a pipeline needs a clusterer")
        self.encoder = encoder
        self.reducers = list(reducers)
        self.clusterer = clusterer
        self.name = name
        self.seed = seed

    # -- building ------------------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: dict, name: str = "custom", seed: int | None = 0) -> "Pipeline":
        enc = build(spec["encoder"])
        reds = [build(r) for r in spec.get("reducers", [])]
        clu = build(spec["clusterer"])
        pipe = cls(enc, reds, clu, name=name, seed=seed)
        pipe.set_seed(seed)
        return pipe

    def parts(self):
        yield "encoder", self.encoder
        for i, r in enumerate(self.reducers):
            yield f"reducers.{i}", r
        yield "clusterer", self.clusterer

    def set_seed(self, seed: int | None) -> None:
        """Give every part that takes a random_state the pipeline's seed."""
        self.seed = seed
        for _, part in self.parts():
            params = part.get_params(deep=False)
            if "random_state" in params:
                part.set_params(random_state=seed)
            if "seed" in params:
                part.set_params(seed=seed)

    def spec(self) -> dict:
        return {
            "encoder": self.encoder.to_spec(),
            "reducers": [r.to_spec() for r in self.reducers],
            "clusterer": self.clusterer.to_spec(),
        }

    # -- fitting -------------------------------------------------------------------------------------
    def fit(self, ds: ImageSet) -> "Pipeline":
        from .base import seed_everything

        seed_everything(self.seed)
        self.timings_ = {}
        t = time.perf_counter()
        log(f"[{self.name}] encode with {self.encoder.component_name}")
        X = self.encoder.fit_transform(ds)
        self.timings_["encode"] = time.perf_counter() - t
        self.features_ = np.asarray(X, dtype=np.float32)
        X = self.features_
        for i, r in enumerate(self.reducers):
            t = time.perf_counter()
            log(f"[{self.name}] reduce with {r.component_name}")
            X = np.asarray(r.fit_transform(X), dtype=np.float32)
            self.timings_[f"reduce.{i}.{r.component_name}"] = time.perf_counter() - t
        self.embedding_ = X
        asked = self.clusterer.get_params(deep=False).get("n_clusters")
        if is_auto(asked):  # choose k on the embedding, fit with it, keep the clusterer's n_clusters as asked
            t = time.perf_counter()
            self.k_selection_ = select_k(X, asked, random_state=self.seed)
            self.timings_["choose_k"] = time.perf_counter() - t
            self.clusterer.set_params(n_clusters=self.k_selection_.k)
        t = time.perf_counter()
        log(f"[{self.name}] cluster with {self.clusterer.component_name}")
        try:
            self.labels_ = np.asarray(self.clusterer.fit_predict(X), dtype=np.int64)
        finally:
            if is_auto(asked):
                self.clusterer.set_params(n_clusters=asked)
        if is_auto(asked):
            self.clusterer.n_clusters_ = int(self.k_selection_.k)
        self.timings_["cluster"] = time.perf_counter() - t
        return self

    def transform(self, ds: ImageSet) -> np.ndarray:
        """The embedding of new images (encoder, then each reducer's ``transform``)."""
        X = np.asarray(self.encoder.transform(ds), dtype=np.float32)
        for r in self.reducers:
            if not hasattr(r, "transform"):
                raise UserError(
                    f"reducer {r.component_name} cannot place new points; use a recipe whose reducers support transform"
                )
            X = np.asarray(r.transform(X), dtype=np.float32)
        return X

    def predict(self, ds: ImageSet) -> np.ndarray:
        """Assign new images to the clusters already learned, without refitting."""
        if not hasattr(self.clusterer, "predict"):
            raise UserError(f"clusterer {self.clusterer.component_name} cannot assign new points")
        return np.asarray(self.clusterer.predict(self.transform(ds)), dtype=np.int64)

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {}
        meta: dict = {"format": FORMAT, "imclust_version": __version__, "name": self.name, "seed": self.seed, "parts": {}}
        for key, part in self.parts():
            arrays, extra = part.get_state()
            for a, v in arrays.items():
                tensors[f"{key}.{a}"] = np.asarray(v)
            meta["parts"][key] = {"spec": part.to_spec(), "state": extra, "arrays": sorted(arrays)}
        save_tensors(directory / "state.safetensors", tensors)
        write_json(directory / "pipeline.json", meta)
        return directory

    @classmethod
    def load(cls, directory) -> "Pipeline":
        from . import components  # noqa: F401  (registers every component a model may name)

        directory = Path(directory)
        cfg_path = directory / "pipeline.json"
        if not cfg_path.exists():
            raise UserError(f"{directory}: not a saved imclust model (no pipeline.json); pass the run's model/ folder")
        try:
            meta = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{cfg_path}: not valid JSON ({e})") from None
        if meta.get("format") != FORMAT:
            raise UserError(f"{cfg_path}: unknown model format {meta.get('format')!r}; expected {FORMAT}")
        tensors = load_tensors(directory / "state.safetensors") if (directory / "state.safetensors").exists() else {}
        parts = {}
        for key, info in meta["parts"].items():
            spec = dict(info["spec"])
            if spec.get("type") not in REGISTRY:
                raise UserError(f"{cfg_path}: component {spec.get('type')!r} is not known to this imclust version")
            part = build(spec)
            arrays = {a: tensors[f"{key}.{a}"] for a in info.get("arrays", []) if f"{key}.{a}" in tensors}
            missing = [a for a in info.get("arrays", []) if f"{key}.{a}" not in tensors]
            if missing:
                raise UserError(f"{directory}: state.safetensors lacks {key}.{missing[0]}; the model folder is incomplete")
            prefix = f"{key}."
            extra_tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and k[len(prefix):] not in arrays}
            part.set_state({**arrays, **extra_tensors}, info.get("state", {}))
            parts[key] = part
        reducers = [parts[f"reducers.{i}"] for i in range(sum(k.startswith("reducers.") for k in parts))]
        pipe = cls(parts["encoder"], reducers, parts["clusterer"], name=meta.get("name", "custom"), seed=meta.get("seed"))
        return pipe
