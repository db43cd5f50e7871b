"""Shared machinery for pipeline components: a registry by kind, declared parameters, and safe (no-pickle) state.

Every encoder, reducer and clusterer is a scikit-learn style estimator (``__init__`` stores parameters,
``fit`` returns self, fitted attributes end in ``_``). Their fitted state is saved as arrays (safetensors)
plus JSON; nothing is ever pickled. A component registers a short name (``"pca"``, ``"kmeans"``) so that
recipes and saved models can refer to it; its *kind* (``encoder``, ``reducer`` or ``clusterer``) comes from
its base class (:class:`~imclust.encoders.base.Encoder`, :class:`Reducer`, :class:`Clusterer`), so a recipe
that puts a component in the wrong place fails when it is built, with one line.

Parameters may be written as an explicit ``__init__`` (scikit-learn's convention) or *declared*: a class
that derives from :class:`Declared` lists them as annotated class attributes, and ``__init__`` (keyword
only, with a real signature, so ``get_params``/``clone`` work) is generated from them and from those of its
bases. Redeclaring a name in a subclass changes its default.
"""

from __future__ import annotations

import inspect
import numbers
import typing

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin

from .errors import InvalidInputError, UserError

KINDS = ("encoder", "reducer", "clusterer")

#: every registered component by name (names are unique across kinds, so a saved model names its parts)
REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a component available to recipes and to ``Pipeline.load`` under ``name``."""

    def deco(cls):
        kind = getattr(cls, "kind", None)
        if kind not in KINDS:
            raise TypeError(f"{cls.__name__}: a registered component derives from Encoder, Reducer or Clusterer "
                            f"(its kind is {kind!r}, not one of {', '.join(KINDS)})")
        old = REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise TypeError(f"component name {name!r} is taken by {old.__module__}.{old.__qualname__}")
        cls.component_name = name
        REGISTRY[name] = cls
        return cls

    return deco


def registered(kind: str) -> dict[str, type]:
    """The registered components of one kind, by name."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; use one of {', '.join(KINDS)}")
    return {n: c for n, c in sorted(REGISTRY.items()) if c.kind == kind}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def build(spec: dict, kind: str | None = None, **overrides):
    """Instantiate a component from ``{"type": name, **params}``; with ``kind``, refuse a component of another kind."""
    spec = dict(spec)
    name = spec.pop("type", None)
    what = kind or "component"
    if name not in REGISTRY:
        known = registered(kind) if kind else REGISTRY
        raise UserError(f"unknown {what} type {name!r}; known {what}s: {', '.join(sorted(known))}")
    cls = REGISTRY[name]
    if kind is not None and cls.kind != kind:
        raise UserError(f"{name!r} is {_article(cls.kind)} {cls.kind}, not {_article(kind)} {kind}: it cannot stand "
                        f"in the {kind}'s place; name {_article(kind)} {kind} there "
                        f"({', '.join(sorted(registered(kind)))})")
    params = {**spec, **{k: v for k, v in overrides.items() if v is not None}}
    valid = cls._get_param_names()
    bad = [k for k in params if k not in valid]
    if bad:
        raise UserError(f"{name}: unknown option(s) {', '.join(bad)}; valid options are {', '.join(valid)}")
    return cls(**params)


def _jsonable(v) -> bool:
    if v is None or isinstance(v, (bool, str, numbers.Number)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_jsonable(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _jsonable(x) for k, x in v.items())
    return False


class Component(BaseEstimator):
    """Base for all pipeline parts. Subclasses with non-array state override the state hooks."""

    component_name = "component"
    kind: str | None = None

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Fitted state as (arrays, JSON-able extras). Default: public attributes ending in ``_``."""
        arrays, extra = {}, {}
        for k, v in vars(self).items():
            if not k.endswith("_") or k.startswith("_"):
                continue
            if isinstance(v, np.ndarray) and v.dtype != object:
                arrays[k] = v
            elif isinstance(v, np.generic):
                extra[k] = v.item()
            elif _jsonable(v):
                extra[k] = v
        return arrays, extra

    def set_state(self, arrays: dict[str, np.ndarray], extra: dict) -> None:
        for k, v in {**extra, **arrays}.items():
            setattr(self, k, v)

    def to_spec(self) -> dict:
        params = {k: v for k, v in self.get_params(deep=False).items() if _jsonable(v)}
        return {"type": self.component_name, **params}


class Reducer(TransformerMixin, Component):
    """Features → embedding: ``fit(X)``, ``transform(X)``, ``fit_transform(X)``; float32 out for any input."""

    kind = "reducer"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class Clusterer(ClusterMixin, Component):
    """Embedding → cluster ids: ``fit(X)`` sets ``labels_``; ``fit_predict(X)``; ``predict(X)`` where possible."""

    kind = "clusterer"


def check_input(est, X, *, reset: bool, min_samples: int = 1) -> np.ndarray:
    """``X`` as a C-contiguous float32 (samples × features) array, checked the way scikit-learn checks input.

    Refused, as :class:`~imclust.errors.InvalidInputError` (a UserError and a ValueError) in one line: a
    1-D or 3-D array (nothing is reshaped silently), NaN or infinite values, fewer than ``min_samples`` rows,
    no features, complex numbers, and after fitting (``reset=False``) a number of features other than
    ``n_features_in_``. With ``reset=True`` it records ``n_features_in_``. Sparse matrices and objects that are
    not numbers raise scikit-learn's TypeError.
    """
    from scipy import sparse
    from sklearn.utils.validation import check_array

    name = type(est).__name__
    if not sparse.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise InvalidInputError(
                f"{name}: expected a 2-D array (samples × features), got {X.ndim}-D data of shape {X.shape}; "
                "Reshape your data: X.reshape(-1, 1) for a single feature, X.reshape(1, -1) for a single sample")
    try:
        X = check_array(X, dtype=np.float32, order="C", ensure_min_samples=int(min_samples), estimator=name)
    except ValueError as err:
        msg = " ".join(str(err).split())
        if "NaN" in msg or "infinity" in msg:
            msg += " Check the encoder's output (NaN or infinite values cannot be clustered)."
        raise InvalidInputError(f"{name}: {msg}") from None
    expected = getattr(est, "n_features_in_", None)
    if reset:
        est.n_features_in_ = int(X.shape[1])
    elif expected is not None and X.shape[1] != expected:
        raise InvalidInputError(f"X has {X.shape[1]} features, but {name} is expecting {expected} features as input "
                                "(the data does not match what the model was fitted on)")
    return X


# -- declared parameters ---------------------------------------------------------------------------------------
_NO_DEFAULT = inspect.Parameter.empty


def _is_classvar(annotation) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return typing.get_origin(annotation) is typing.ClassVar


class Declared:
    """Mixin: parameters are the annotated class attributes of the class and its bases (see the module doc).

    ``_param_defaults`` maps each declared name to its default, in declaration order (bases first). A class
    that writes its own ``__init__`` keeps it.
    """

    _param_defaults: typing.ClassVar[dict] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        defaults: dict = {}
        for klass in reversed(cls.__mro__):
            if not (isinstance(klass, type) and issubclass(klass, Declared)):
                continue
            for name, ann in vars(klass).get("__annotations__", {}).items():
                if name.startswith("_") or _is_classvar(ann):
                    continue
                defaults[name] = vars(klass).get(name, _NO_DEFAULT)  # a redeclared name keeps its place
        cls._param_defaults = defaults
        if "__init__" in vars(cls):
            return

        def __init__(self, **params):
            unknown = [k for k in params if k not in defaults]
            if unknown:
                raise TypeError(f"{type(self).__name__}() got unexpected parameter(s) {', '.join(unknown)}")
            for name, default in defaults.items():
                if name in params:
                    setattr(self, name, params[name])
                elif default is _NO_DEFAULT:
                    raise TypeError(f"{type(self).__name__}() missing parameter {name!r}")
                else:
                    setattr(self, name, default)

        __init__.__signature__ = inspect.Signature(
            [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in defaults.items()])
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        __init__.__doc__ = f"Parameters: {', '.join(defaults)} (keyword only; see the class docstring)."
        cls.__init__ = __init__


def seed_everything(seed: int | None) -> None:
    """Fix python, numpy and torch random sources (faiss and sklearn take the seed as a parameter)."""
    if seed is None:
        return
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
