"""Put a benchmark's result block at the end of its own ``## heading`` section of RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def append_to_section(heading: str, block: str, path: Path = RESULTS) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    lines = text.rstrip("\n").split("\n")
    try:
        start = lines.index(heading)
    except ValueError:
        lines += ["", heading]
        start = len(lines) - 1
    end = start + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    new = lines[:end] + block.strip("\n").split("\n") + [""] + lines[end:]
    path.write_text("\n".join(new).rstrip("\n") + "\n", encoding="utf-8")


def run_header(cmd: str, load_before: float, torch_threads: int | None = None) -> str:
    """``### Run of <UTC time>``, the command, and the machine line with the load average at start and end
    (and the torch thread count, for benchmarks that train or run networks)."""
    threads = "" if torch_threads is None else f"; torch threads {torch_threads}"
    return (f"\n### Run of {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
            f"Command: `{cmd}`  \nMachine: 2-core CPU, 24 GiB, no GPU; 1-min load average {load_before:.1f} at the "
            f"start and {os.getloadavg()[0]:.1f} at the end{threads}.")
