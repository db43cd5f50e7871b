"""Progress bars: one place, so every long step looks the same and can be silenced (IMCLUST_QUIET=1)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def quiet() -> bool:
    return os.environ.get("IMCLUST_QUIET", "") not in ("", "0")


def progress(iterable=None, total=None, desc=None, unit="it", leave=False, **kw):
    """A tqdm bar on stderr; disabled when IMCLUST_QUIET is set."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=quiet(),
                file=sys.stderr, dynamic_ncols=True, **kw)


def log(msg: str) -> None:
    """A status line on stderr (silenced by IMCLUST_QUIET)."""
    if not quiet():
        print(msg, file=sys.stderr, flush=True)
