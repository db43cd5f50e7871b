"""Pipeline: encoder → reducers → clusterer, with ``fit``, ``predict`` on new images and no-pickle ``save``/``load``.

A saved model is a folder: ``pipeline.json`` (the recipe's components with their parameters and their
JSON-able fitted values) and ``state.safetensors`` (every fitted array and torch weight, keyed
``<part>.<attribute>``). Loading rebuilds each component from the registry by name; nothing is unpickled.

Encoder-owned clusters: when the recipe says ``[clusterer] type = "encoder"``, the encoder must be a
:class:`~imclust.encoders.base.ClusteringEncoder`; its ``labels_`` are the run's labels, ``predict`` asks the
encoder (``encoder.predict(images)``), k goes to the encoder's ``n_clusters``, and the reducers (if any)
only make the embedding the report draws. Everything else (save, load, metrics, report) is the same.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import __version__
from .base import Clusterer, build, component_class
from .data import ImageSet
from .errors import UserError
from .io import load_tensors, save_tensors, sha256_file, write_json
from .kselect import is_auto
from .progress import log

FORMAT = "imclust-pipeline/1"

#: the clusterer type that takes the encoder's own clusters
ENCODER_CLUSTERS = "encoder"


class EncoderClusters(Clusterer):
    """Stands in the clusterer's place when the encoder owns the clusters (``[clusterer] type = "encoder"``).

    It has no parameters and no state of its own; the pipeline asks the encoder for labels and predictions.
    """

    component_name = ENCODER_CLUSTERS

    def fit(self, X, y=None):
        raise UserError('the "encoder" clusterer takes the clusters the encoder learned; use it in a pipeline '
                        'whose encoder clusters (e.g. dec, idec)')

    predict = fit_predict = fit


def _build_clusterer(spec: dict, encoder):
    if spec.get("type") != ENCODER_CLUSTERS:
        return build(spec, kind="clusterer")
    from .encoders.base import ClusteringEncoder

    extra = sorted(k for k in spec if k != "type")
    if extra:
        raise UserError(f'[clusterer] type = "encoder" takes no options (got {", ".join(extra)}); '
                        "set the number of clusters with --k or encoder.n_clusters")
    if not isinstance(encoder, ClusteringEncoder):
        raise UserError(f'[clusterer] type = "encoder" needs an encoder that learns its own clusters, but '
                        f"{encoder.component_name!r} does not; name a clusterer (e.g. kmeans) or a clustering encoder")
    return EncoderClusters()


class Pipeline:
    """An encoder, a chain of reducers and a clusterer, fitted together.

    After ``fit``: ``features_`` (encoder output), ``embedding_`` (what the clusterer saw, or the reduced
    features when the encoder owns the clusters), ``labels_`` and ``timings_`` (seconds per stage). When k
    was chosen (``n_clusters`` ``"auto"`` or ``"auto:MIN-MAX"``), ``k_selection_`` holds the evidence
    (:mod:`imclust.kselect`) and ``timings_["choose_k"]`` its seconds; where a reducer compared graphs (at the
    middle of the k range, since k was not known yet), they are compared again at the chosen k
    (:meth:`_graph_at_chosen_k`, ``timings_["graph_at_k"]``).
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
        enc = build(spec["encoder"], kind="encoder")
        reds = [build(r, kind="reducer") for r in spec.get("reducers", [])]
        clu = _build_clusterer(spec["clusterer"], enc)
        pipe = cls(enc, reds, clu, name=name, seed=seed)
        pipe.set_seed(seed)
        return pipe

    @property
    def encoder_owns_clusters(self) -> bool:
        return isinstance(self.clusterer, EncoderClusters)

    @property
    def cluster_part(self):
        """The part that makes the clusters: the clusterer, or the encoder when it owns them."""
        return self.encoder if self.encoder_owns_clusters else self.clusterer

    def set_k(self, k) -> None:
        """Ask for ``k`` clusters (a whole number, "auto" or "auto:MIN-MAX") from the part that makes them, if it
        takes a k."""
        part = self.cluster_part
        if "n_clusters" in part.get_params(deep=False):
            part.set_params(n_clusters=k if is_auto(k) else int(k))

    @property
    def k_selection_(self):
        """How k was chosen (a :class:`imclust.kselect.KSelection`) when the part that makes the clusters was
        asked for ``"auto"`` or ``"auto:MIN-MAX"``; else None."""
        return getattr(self.cluster_part, "k_selection_", None)

    @property
    def n_clusters_(self) -> int | None:
        """The number of clusters used: the fitted ``n_clusters_``, else a whole-number ``n_clusters``."""
        part = self.cluster_part
        k = getattr(part, "n_clusters_", None)
        if k is None:
            k = part.get_params(deep=False).get("n_clusters")
        return int(k) if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else None

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
        self.stage_ = "encoder"  # the part at work, so an error can be traced to the options that caused it
        X = self.encoder.fit_transform(ds)
        self.timings_["encode"] = time.perf_counter() - t
        return self._fit_encoded(check_finite(X, f"encode ({self.encoder.component_name})"))

    def refit_encoded(self, features, k) -> "Pipeline":
        """Fit the reducers and the clusterer again at another ``k`` (a whole number, "auto" or "auto:MIN-MAX") on
        ``features``, the output of this pipeline's already fitted encoder (``features_``), without encoding again.

        The same as a fresh ``fit`` with that k where the encoder's output does not depend on k: every random part
        after the encoder takes its seed from its own ``random_state``, not from a global generator."""
        self.set_k(k)
        self.timings_ = {"encode": 0.0}
        return self._fit_encoded(check_finite(features, f"encode ({self.encoder.component_name})"))

    def _fit_encoded(self, X) -> "Pipeline":
        self.features_ = X
        if self.reducers and hasattr(self.reducers[0], "set_views"):
            # the column blocks of an encoder with several views (multi-view reducers build a graph per view)
            self.reducers[0].set_views(getattr(self.encoder, "view_dims_", None), getattr(self.encoder, "view_names_", None))
        for r in self.reducers:
            if hasattr(r, "set_n_clusters"):  # a reducer that compares graphs at the run's k
                r.set_n_clusters(self.cluster_part.get_params(deep=False).get("n_clusters"))
        for i, r in enumerate(self.reducers):
            t = time.perf_counter()
            log(f"[{self.name}] reduce with {r.component_name}")
            self.stage_ = f"reducers.{i}"
            X = check_finite(r.fit_transform(X), f"reduce.{i} ({r.component_name})")
            self.timings_[f"reduce.{i}.{r.component_name}"] = time.perf_counter() - t
        self.embedding_ = X
        if not self.reducers and hasattr(self.clusterer, "set_views"):
            # a clusterer that treats each view's columns as its own feature space (TURTLE)
            self.clusterer.set_views(getattr(self.encoder, "view_dims_", None), getattr(self.encoder, "view_names_", None))
        if self.encoder_owns_clusters:
            self.labels_ = np.asarray(self.encoder.labels_, dtype=np.int64)
            log(f"[{self.name}] clusters learned by the encoder ({self.n_clusters_} of them)")
            self._release_graphs()
            return self
        t = time.perf_counter()
        self.stage_ = "clusterer"
        if is_auto(self.clusterer.get_params(deep=False).get("n_clusters")):
            distinct = n_distinct_rows(self.features_, limit=3)
            if distinct < 3:  # a reducer may spread identical points apart; scoring that layout would be a fiction
                self.clusterer.set_params(n_clusters=distinct)
                log(f"[{self.name}] the images give only {distinct} distinct feature vector(s): k={distinct}")
        log(f"[{self.name}] cluster with {self.clusterer.component_name}")
        self.labels_ = np.asarray(self.clusterer.fit_predict(X), dtype=np.int64)
        self.timings_["cluster"] = time.perf_counter() - t
        if self.k_selection_ is not None:  # the clusterer chose k first: its own line in the timings
            self.timings_["choose_k"] = self.k_selection_.seconds
            self.timings_["cluster"] -= self.k_selection_.seconds
            t = time.perf_counter()
            if self._graph_at_chosen_k():
                self.timings_["graph_at_k"] = time.perf_counter() - t
        self._release_graphs()
        self.stage_ = None
        return self

    def _release_graphs(self) -> None:
        """Drop what reducers kept of the graphs they compared (their layouts), once the run has settled."""
        for r in self.reducers:
            if hasattr(r, "release_graphs"):
                r.release_graphs()

    def _graph_at_chosen_k(self) -> bool:
        """Under ``--k auto``, where a reducer compared graphs: it compared them at the middle of the k range, k not
        being known yet. Compare them again at the chosen k; where another graph is the cleanest there, keep its
        layout, fit the later stages on it and cluster it at that k. The clusters are then those of a run with
        that k given, which is what a user who reruns with the chosen k expects; the evidence for k stays the one
        read on the first layout. True where the graphs were compared again."""
        index = next((i for i, r in enumerate(self.reducers) if getattr(r, "graph_choice_", None)), None)
        if index is None or not hasattr(self.reducers[index], "graph_scores"):
            return False
        reducer, k = self.reducers[index], self.n_clusters_
        first = reducer.graph_choice_["chosen"]
        scores = reducer.graph_scores(k)
        if not scores:
            return False
        cleanest = min(scores, key=scores.get)  # a tie keeps the first, as the first comparison does
        X = reducer.keep_graph(cleanest, k, scores)
        if cleanest == first:
            return True  # the same graph: its layout, and the clusters already fitted on it, stand
        for i, r in enumerate(self.reducers[index + 1:], start=index + 1):
            self.stage_ = f"reducers.{i}"
            X = check_finite(r.fit_transform(X), f"reduce.{i} ({r.component_name})")
        self.embedding_ = X
        self.stage_ = "clusterer"
        log(f"[{self.name}] cluster the {cleanest} graph's layout with {self.clusterer.component_name} at the "
            f"chosen k={k}")
        selection, asked = self.k_selection_, self.clusterer.get_params(deep=False)["n_clusters"]
        self.clusterer.set_params(n_clusters=k)
        self.labels_ = np.asarray(self.clusterer.fit_predict(X), dtype=np.int64)
        self.clusterer.set_params(n_clusters=asked)  # the run asked for auto: its record says so
        self.clusterer.k_selection_ = selection
        return True

    def transform(self, ds: ImageSet) -> np.ndarray:
        """The embedding of new images (encoder, then each reducer's ``transform``)."""
        X = check_finite(self.encoder.transform(ds), f"encode ({self.encoder.component_name})")
        for i, r in enumerate(self.reducers):
            if not hasattr(r, "transform"):
                raise UserError(
                    f"reducer {r.component_name} cannot place new points; use a recipe whose reducers support transform"
                )
            X = check_finite(r.transform(X), f"reduce.{i} ({r.component_name})")
        return X

    def predict(self, ds: ImageSet) -> np.ndarray:
        """Assign new images to the clusters already learned, without refitting."""
        return self.assign(ds)[0]

    def assign(self, ds: ImageSet) -> tuple[np.ndarray, np.ndarray]:
        """The clusters of new images and their embedding (what ``predict`` and ``imclust predict`` use)."""
        emb = self.transform(ds)
        if self.encoder_owns_clusters:
            return np.asarray(self.encoder.predict(ds), dtype=np.int64), emb
        if not hasattr(self.clusterer, "predict"):
            raise UserError(f"the {self.clusterer.component_name} clusterer cannot assign new points (it has no model "
                            "of the clusters beyond the fitted set); refit on all images, or use a recipe with kmeans "
                            "or gmm for 'imclust predict'")
        return np.asarray(self.clusterer.predict(emb), dtype=np.int64), emb

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
        state = save_tensors(directory / "state.safetensors", tensors)
        meta["state_sha256"] = sha256_file(state)  # a pipeline.json that meets another state file is refused
        meta["checksum"] = _meta_checksum(meta)  # and one that was damaged or edited
        write_json(directory / "pipeline.json", meta)
        return directory

    @classmethod
    def load(cls, directory) -> "Pipeline":
        """Rebuild a saved model; a missing, damaged or mismatched file is one UserError naming it."""
        from . import components  # noqa: F401  (registers every component a model may name)

        directory = Path(directory)
        cfg_path = directory / "pipeline.json"
        if not directory.is_dir():
            raise UserError(f"{directory}: no such model folder; pass a run folder or its model/ folder")
        if not cfg_path.is_file():
            raise UserError(f"{directory}: not a saved imclust model (no pipeline.json); pass the run's model/ folder")
        from .data.labels import read_text

        try:
            meta = json.loads(read_text(cfg_path, "model file"))
        except json.JSONDecodeError as e:
            raise UserError(f"{cfg_path}: not valid JSON ({e.msg} at line {e.lineno}); the model folder is damaged") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            fmt = meta.get("format") if isinstance(meta, dict) else None
            raise UserError(f"{cfg_path}: unknown model format {fmt!r}; expected {FORMAT}")
        if "checksum" in meta and meta["checksum"] != _meta_checksum(meta):
            raise UserError(f"{cfg_path}: changed after it was written (checksum mismatch); the model folder is "
                            "damaged: use it as the run wrote it")
        state_path = directory / "state.safetensors"
        if "state_sha256" in meta:
            if not state_path.is_file():
                raise UserError(f"{state_path}: missing; the model folder is incomplete")
            if sha256_file(state_path) != meta["state_sha256"]:
                raise UserError(f"{state_path}: does not match {cfg_path.name} (a damaged or mixed model folder); "
                                "use the folder as the run wrote it")
        tensors = load_tensors(state_path, "model state") if state_path.exists() else {}
        try:
            return cls._from_meta(meta, tensors, directory)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
            raise UserError(f"{directory}: the model folder is damaged ({type(e).__name__}: {str(e)[:200]})") from None

    @classmethod
    def _from_meta(cls, meta: dict, tensors: dict, directory: Path) -> "Pipeline":
        cfg_path = directory / "pipeline.json"
        parts = {}
        for key, info in meta["parts"].items():
            spec = dict(info["spec"])
            kind = "reducer" if key.startswith("reducers.") else key
            if key == "clusterer" and spec.get("type") == ENCODER_CLUSTERS:
                continue  # made below, once the encoder is loaded
            if component_class(spec.get("type")) is None:
                raise UserError(f"{cfg_path}: component {spec.get('type')!r} is not known to this imclust version")
            part = build(spec, kind=kind)
            arrays = {a: tensors[f"{key}.{a}"] for a in info.get("arrays", []) if f"{key}.{a}" in tensors}
            missing = [a for a in info.get("arrays", []) if f"{key}.{a}" not in tensors]
            if missing:
                raise UserError(f"{directory}: state.safetensors lacks {key}.{missing[0]}; the model folder is incomplete")
            prefix = f"{key}."
            extra_tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and k[len(prefix):] not in arrays}
            part.set_state({**arrays, **extra_tensors}, info.get("state", {}))
            parts[key] = part
        if "encoder" not in parts:
            raise UserError(f"{cfg_path}: no encoder in the model; the model folder is damaged")
        if meta["parts"].get("clusterer", {}).get("spec", {}).get("type") == ENCODER_CLUSTERS:
            parts["clusterer"] = _build_clusterer(meta["parts"]["clusterer"]["spec"], parts["encoder"])
        if "clusterer" not in parts:
            raise UserError(f"{cfg_path}: no clusterer in the model; the model folder is damaged")
        reducers = [parts[f"reducers.{i}"] for i in range(sum(k.startswith("reducers.") for k in parts))]
        pipe = cls(parts["encoder"], reducers, parts["clusterer"], name=meta.get("name", "custom"), seed=meta.get("seed"))
        return pipe


def _meta_checksum(meta: dict) -> str:
    """SHA-256 of pipeline.json's content as it reads back (so NumPy scalars hash as the numbers JSON holds)."""
    import hashlib

    from .io import _json_default

    body = {k: v for k, v in meta.items() if k != "checksum"}
    canon = json.dumps(json.loads(json.dumps(body, default=_json_default)), sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


MAX_ABS_FEATURE = 1e15  # squared distances of larger values overflow float32 inside k-means and faiss


def check_finite(X, stage: str) -> np.ndarray:
    """``X`` as float32, or a UserError naming the stage when it holds NaN, inf or values too large to cluster
    (faiss aborts the process on them rather than raising)."""
    X = np.asarray(X, dtype=np.float32)
    finite = np.isfinite(X)
    if not finite.all():
        bad_rows = int((~finite.reshape(len(X), -1)).any(axis=1).sum()) if X.ndim else 1
        raise UserError(f"stage {stage}: the output holds NaN or infinite values (in {bad_rows} of {len(X)} images); "
                        "a trained encoder probably diverged: lower its learning rate (--set encoder.lr=...), or use "
                        "another recipe")
    if X.size and float(np.abs(X).max()) > MAX_ABS_FEATURE:
        raise UserError(f"stage {stage}: the output holds values up to {float(np.abs(X).max()):.3g}, too large to "
                        "cluster; a trained encoder probably diverged: lower its learning rate, or use another recipe")
    return X


def n_distinct_rows(X, limit: int) -> int:
    """How many different rows ``X`` has, counted up to ``limit``."""
    X = np.asarray(X).reshape(len(X), -1)
    found = [X[0]] if len(X) else []
    for row in X[1:]:
        if len(found) >= limit:
            break
        if not any(np.array_equal(row, f) for f in found):
            found.append(row)
    return len(found)
