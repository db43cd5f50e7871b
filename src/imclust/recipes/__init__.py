"""Recipes: named, declarative pipelines shipped as TOML files in this folder.

A recipe file holds ``description``, ``[encoder]``, ``[[reducers]]`` and ``[clusterer]`` tables (each with
a ``type`` naming a registered component and its options), and optionally ``default = true`` (the recipe
``imclust run`` uses when none is named), ``default_for = "colour"`` (the one it uses instead when the images
are in colour) and ``outputs`` (names of extra writers registered in :mod:`imclust.outputs`). Any field can
be overridden with ``--set part.option=value`` on the command line (``reducers.0.n_components=30``).
"""

from __future__ import annotations

import copy
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from ..errors import UserError

DEFAULT_RECIPE = "baseline"


def available() -> dict[str, dict]:
    out = {}
    for f in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if f.name.endswith(".toml"):
            out[f.name[:-5]] = tomllib.loads(f.read_text(encoding="utf-8"))
    return out


def default_recipe(channels: int | None = None) -> str:
    """The recipe `imclust run` uses when none is named.

    For colour images (``channels == 3``) the one marked ``default_for = "colour"``; otherwise, and when no
    recipe is so marked, the one marked ``default = true``.
    """
    recipes = available()
    if channels == 3:
        colour = [name for name, r in recipes.items() if r.get("default_for") == "colour"]
        if colour:
            return colour[0]
    marked = [name for name, r in recipes.items() if r.get("default")]
    return marked[0] if marked else DEFAULT_RECIPE


def load_recipe(name: str | None) -> dict:
    name = name or default_recipe()
    recipes = available()
    if name not in recipes:
        raise UserError(f"unknown recipe {name!r}; run 'imclust recipes' to list them ({', '.join(recipes)})")
    r = copy.deepcopy(recipes[name])
    r["name"] = name
    return r


def parse_value(text: str):
    """A --set value: TOML syntax when it parses (numbers, booleans, lists, quoted strings), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(recipe: dict, assignment: str) -> None:
    """Apply ``part.option=value`` (``encoder.epochs=5``, ``reducers.0.n_components=30``) to a recipe dict."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected PART.OPTION=VALUE, for example clusterer.n_init=5")
    key, text = assignment.split("=", 1)
    path = key.strip().split(".")
    node = recipe
    try:
        for p in path[:-1]:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    except (IndexError, ValueError, KeyError, TypeError):
        raise UserError(f"--set {key}: no such place in the recipe") from None
    if not isinstance(node, dict):
        raise UserError(f"--set {key}: no such place in the recipe")
    node[path[-1]] = parse_value(text.strip())
