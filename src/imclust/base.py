"""Shared machinery for pipeline components: a name registry and safe (no-pickle) state.

Every encoder, reducer and clusterer is a scikit-learn style estimator (``__init__`` stores parameters,
``fit`` returns self, fitted attributes end in ``_``). Their fitted state is saved as arrays (safetensors)
plus JSON; nothing is ever pickled. A component registers a short name (``"pca"``, ``"kmeans"``) so that
recipes and saved models can refer to it.
"""

from __future__ import annotations

import numbers
import random
import sys

import numpy as np
from sklearn.base import BaseEstimator

from .errors import UserError

REGISTRY: dict[str, type] = {}
#: components registered by a module that is imported only when one of them is first named (name -> module);
#: their modules import torch, which takes seconds, and most runs never need it
LAZY: dict[str, str] = {}


def component_class(name) -> type | None:
    """The registered class called ``name`` (importing its module on first use), or None."""
    if name not in REGISTRY and name in LAZY:
        import importlib

        importlib.import_module(LAZY[name])
    return REGISTRY.get(name)


def all_components() -> dict[str, type]:
    """Every registered component, lazily registered ones included (their modules are imported)."""
    for name in list(LAZY):
        component_class(name)
    return REGISTRY


def register(name: str):
    """Class decorator: make a component available to recipes and to ``Pipeline.load`` under ``name``."""

    def deco(cls):
        cls.component_name = name
        REGISTRY[name] = cls
        return cls

    return deco


def build(spec: dict, **overrides):
    """Instantiate a component from ``{"type": name, **params}``."""
    spec = dict(spec)
    name = spec.pop("type", None)
    cls = component_class(name)
    if cls is None:
        raise UserError(f"unknown component type {name!r}; known: {', '.join(sorted(all_components()))}")
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


def seed_everything(seed: int | None) -> None:
    """Fix python, numpy and torch random sources (faiss and sklearn take the seed as a parameter)."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % (2**32))
    # torch only when loaded: a component that uses torch imports it when it is built, before any fit
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
