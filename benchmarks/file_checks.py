"""What the full file check before a fit catches, and what it costs (issue 17).

1. Detection: random JPEGs (baseline and progressive, grey and colour, several sizes and qualities) cut at
   every STEP-th byte and closed with an end marker (FFD9), the case that decodes without complaint as a
   grey-filled picture. Counted: cuts that ``probe`` refuses, and cuts it lets through that really decode
   differently from the whole file. Peer: the previous check (an end marker among the last bytes).
2. Cost: seconds for ``load_source`` (scan + check of every file) against decoding the same images once
   (``to_array``), for small JPEGs, small PNGs and 500x500 JPEGs. Peer: the same folder under the previous
   check, where possible (``--old-src`` pointing at a checkout without this change).

    python benchmarks/file_checks.py [--step 5] [--old-src ../main/src]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
os.environ.setdefault("IMCLUST_QUIET", "1")

from PIL import Image  # noqa: E402

from _common import load_average, results_head, update_section  # noqa: E402


def old_tail_check(data: bytes) -> bool:
    """The check before this change: an end marker among the last 16 bytes (True = accepted)."""
    return b"\xff\xd9" in data[-64:].rstrip(b"\x00")[-16:]


def detection(step: int) -> dict:
    from imclust.data.decode import UnreadableImage, probe

    rng = np.random.RandomState(0)
    stats = {"cuts": 0, "refused": 0, "passed_damaged": 0, "old_passed_damaged": 0}
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "x.jpg"
        for trial in range(12):
            h, w = rng.randint(8, 90, 2)
            grey, progressive = trial % 3 == 0, trial % 4 >= 2
            arr = (rng.rand(h, w) * 255 if grey else rng.rand(h, w, 3) * 255).astype(np.uint8)
            if trial % 2:
                arr[: h // 2] = 128
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=int(rng.randint(30, 98)), progressive=progressive,
                                      subsampling=int(rng.choice([0, 1, 2])))
            data = buf.getvalue()
            whole = np.asarray(Image.open(io.BytesIO(data)))
            for cut in range(2, len(data) - 2, step):
                cut_data = data[:cut] + b"\xff\xd9"
                p.write_bytes(cut_data)
                stats["cuts"] += 1
                try:
                    probe(p)
                except UnreadableImage:
                    stats["refused"] += 1
                    damaged = True
                else:
                    try:
                        got = np.asarray(Image.open(p))
                        damaged = got.shape != whole.shape or not np.array_equal(got, whole)
                    except Exception:
                        damaged = True
                    stats["passed_damaged"] += damaged
                if old_tail_check(cut_data):
                    try:
                        got = np.asarray(Image.open(io.BytesIO(cut_data)))
                        stats["old_passed_damaged"] += got.shape != whole.shape or not np.array_equal(got, whole)
                    except Exception:
                        pass
    return stats


def make_folders(root: Path) -> dict[str, Path]:
    rng = np.random.RandomState(0)
    out = {}
    for name, ext, side, n in (("jpeg-32px", "jpg", 32, 2000), ("png-32px", "png", 32, 2000),
                               ("jpeg-500px", "jpg", 500, 200)):
        d = root / name
        d.mkdir()
        for i in range(n):
            y, x = np.mgrid[0:side, 0:side]
            arr = np.stack([(x * 3 + i) % 256, (y * 5) % 256, ((x + y) * 2) % 256], -1)
            arr = np.clip(arr + rng.randint(0, 30, arr.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i:05d}.{ext}")
        out[name] = d
    return out


TIMER = """
import os, sys, time
os.environ['IMCLUST_QUIET'] = '1'
from imclust.data import load_source
t = time.perf_counter(); ds = load_source(sys.argv[1]); scan = time.perf_counter() - t
t = time.perf_counter(); ds.to_array(); decode = time.perf_counter() - t
print(scan, decode)
"""


def timed(folder: Path, src: Path) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", TIMER, str(folder)], capture_output=True, text=True, env=env, check=True)
    scan, decode = map(float, out.stdout.split())
    return scan, decode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=5, help="cut every STEP-th byte (default 5)")
    ap.add_argument("--old-src", help="src/ folder of a checkout without this change, for the cost peer")
    args = ap.parse_args()
    load0 = load_average()
    det = detection(args.step)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in make_folders(Path(tmp)).items():
            scan, decode = timed(folder, HERE.parent / "src")
            old = timed(folder, Path(args.old_src).resolve())[0] if args.old_src else None
            rows.append((name, len(os.listdir(folder)), scan, decode, old))
    body = ["## File checks before a fit: JPEGs cut short and closed with an end marker (issue 17)", "",
            results_head(load0).rstrip(), "",
            "| JPEG cuts (every %d bytes, + FFD9) | refused | let through but damaged | previous check: let through but damaged |"
            % args.step, "|---|---|---|---|",
            f"| {det['cuts']} | {det['refused']} | {det['passed_damaged']} | {det['old_passed_damaged']} |", "",
            "| folder | files | scan + check (s) | one decode of all (s) | check / decode | previous scan (s) |",
            "|---|---|---|---|---|---|"]
    for name, n, scan, decode, old in rows:
        body.append(f"| {name} | {n} | {scan:.2f} | {decode:.2f} | {scan / decode:.2f} | "
                    f"{'—' if old is None else f'{old:.2f}'} |")
    body += ["", "The check decodes every file once before the fit (JPEGs twice, with two filler patterns before "
             "the end marker; above 512x512 at 1/8 scale), so a cut file never enters the fit as grey. "
             "Damaged cuts it lets through lie in the last few dozen bytes of a file."]
    text = "\n".join(body)
    print(text)
    update_section("file-checks", text)


if __name__ == "__main__":
    main()
