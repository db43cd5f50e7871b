"""Memory checks made before a large allocation, so a size mistake is one line instead of a crash.

A 100 000-pixel ``--size`` or an array header that claims a terabyte would otherwise be found by the kernel's
out-of-memory killer, or by NumPy in the middle of a run. :func:`check_memory` compares a planned allocation
with the memory this process can still get (MemAvailable, and the cgroup limit when one is set).
"""

from __future__ import annotations

import os

from .errors import UserError


def available_memory() -> int | None:
    """Bytes this process can still allocate, or None when the system does not say."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            avail = None
    for path, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                       ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(path) as fh:
                limit = fh.read().strip()
            with open(used) as fh:
                current = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            left = max(0, int(limit) - current)
            avail = left if avail is None else min(avail, left)
        break
    return avail


def fmt_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_memory(nbytes: float, what: str, hint: str) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when the machine cannot hold it; ``hint`` says what to do."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise UserError(f"{what} needs {fmt_bytes(nbytes)} of memory but only {fmt_bytes(avail)} are available; {hint}")
