"""Put a benchmark's result block at the end of its own ``## heading`` section of RESULTS.md."""

from __future__ import annotations

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
