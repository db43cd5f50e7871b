"""SCAN on one GPU, end to end, plus the cuda paths of DeepCluster and (with two GPUs) of torchrun/nccl.

1. SCAN (``scan`` recipe, ``budget = "gpu"``: CIFAR-stem ResNet-18, SimCLR, SCAN with the backbone training,
   self-labelling) fitted on the CIFAR-10 training images without labels, timed from the first decoded image
   to the last prediction; ACC/NMI/ARI on the training images (the encoder's own clusters) and on the test
   images (placed by ``predict``, never fitted on). Target: ACC >= 0.85 within 10 minutes on one H200.
   Unless ``--pretext-epochs`` is given, a probe first times two epochs of each stage on ``--probe-n`` images,
   and the pretext gets as many epochs as fit ``--minutes`` after the scan and self-labelling epochs.
2. DeepCluster on the CIFAR-10 test images for a few epochs (the cuda path of the other deep clusterer).
3. With two or more GPUs: ``torchrun --nproc_per_node=2 -m imclust run`` with the scan recipe for a few
   epochs (DDP over nccl), so that path has run once.

Each part writes a JSON record to ``--out`` (default ``$OUT`` when set, else ``benchmarks/.scan_gpu``), and
``--write`` puts the table into the ``scan-gpu`` block of RESULTS.md.

    python benchmarks/scan_gpu.py                                   # a GPU machine (SCAN about 10 minutes)
    python benchmarks/scan_gpu.py --tiny --device cpu               # the same code on a CPU, a few hundred images
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("IMCLUST_QUIET", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402
from _common import DATA, command, machine, table, today, update_section  # noqa: E402

from imclust import components  # noqa: E402,F401
from imclust.api import build_pipeline  # noqa: E402
from imclust.data import load_source  # noqa: E402
from imclust.metrics import evaluate  # noqa: E402

CIFAR = DATA / "cifar10"


def scores(labels, truth) -> dict:
    m = evaluate(labels, truth)
    return {k: round(float(m[k]), 4) for k in ("acc", "nmi", "ari")}


def subset(ds, n: int, seed: int = 0):
    if n <= 0 or n >= len(ds):
        return ds
    return ds.subset(np.sort(np.random.RandomState(seed).choice(len(ds), n, replace=False)))


STAGES = ("pretext", "scan", "selflabel")


def scan_overrides(args, epochs: dict) -> list[str]:
    """The scan recipe's settings for this run: the preset's, with each stage's epochs set exactly."""
    overrides = [f"encoder.budget=\"{args.budget}\"", f"encoder.device=\"{args.device}\"", "encoder.cache=false"]
    for stage in STAGES:
        if epochs.get(stage) is not None:
            overrides += [f"encoder.{stage}.epochs={epochs[stage]}", f"encoder.{stage}.min_steps=0"]
    if args.tiny:
        overrides += ["encoder.pretext.width=8"] + [f"encoder.{s}.batch_size=64" for s in STAGES]
    return overrides


def probe_seconds_per_image(train, args) -> dict:
    """Seconds per image of one epoch of each stage at this run's settings: the second of two epochs of a
    SCAN fit on ``--probe-n`` images (the first carries the warm-up)."""
    pipe, _ = build_pipeline("scan", scan_overrides(args, dict.fromkeys(STAGES, 2)), seed=args.seed)
    pipe.set_k(10)
    probe = subset(train, args.probe_n, seed=args.seed + 1)
    pipe.fit(probe)
    enc = pipe.encoder
    return {s: getattr(enc, f"{s}_history_")[-1]["seconds"] / len(probe) for s in STAGES}


def pretext_epochs_for(seconds_left: float, n: int, per_image: dict, args) -> int:
    """The most pretext epochs that, after ``--scan-epochs`` and ``--selflabel-epochs``, fit ``seconds_left``."""
    later = n * (args.scan_epochs * per_image["scan"] + args.selflabel_epochs * per_image["selflabel"])
    fit = int((seconds_left - later) // (n * per_image["pretext"]))
    return max(1, min(fit, args.max_pretext_epochs))


def scan_cifar(args) -> dict:
    t0 = time.perf_counter()
    train = subset(load_source(str(CIFAR / "train")), args.n)
    test = subset(load_source(str(CIFAR / "test")), args.n_test)
    epochs = {"pretext": args.pretext_epochs, "scan": args.scan_epochs, "selflabel": args.selflabel_epochs}
    probe = None
    if epochs["pretext"] is None:  # as many as the wall-time target leaves room for on this device
        probe = probe_seconds_per_image(train, args)
        seconds_left = args.minutes * 60 - (time.perf_counter() - t0) - args.reserve_seconds
        epochs["pretext"] = pretext_epochs_for(seconds_left, len(train), probe, args)
        print(json.dumps({"probe_seconds_per_image": probe, "seconds_left": round(seconds_left, 1),
                          "epochs": epochs}), flush=True)
    overrides = scan_overrides(args, epochs)
    pipe, _ = build_pipeline("scan", overrides, seed=args.seed)
    pipe.set_k(10)
    pipe.fit(train)
    fit_s = time.perf_counter() - t0
    test_labels = pipe.predict(test)
    total_s = time.perf_counter() - t0
    enc = pipe.encoder
    return {"part": "scan on CIFAR-10 train", "n_train": len(train), "n_test": len(test),
            "train": scores(pipe.labels_, train.labels), "test": scores(test_labels, test.labels),
            "seconds_fit": round(fit_s, 1), "seconds_total": round(total_s, 1),
            "stage_seconds": {k: round(v, 1) for k, v in enc.summary()["seconds"].items()},
            "probe_seconds_per_image": probe, "settings": enc.settings_, "warnings": enc.warnings_,
            "overrides": overrides}


def deepcluster_cifar(args) -> dict:
    overrides = [f"encoder.epochs={args.deepcluster_epochs}", f"encoder.device=\"{args.device}\"",
                 "encoder.precision=\"bf16\"", "encoder.channels_last=true"]
    if args.tiny:
        overrides += ["encoder.k_train=20", "reducers.0.n_components=32"]
    t0 = time.perf_counter()
    ds = subset(load_source(str(CIFAR / "test")), args.n_test)
    pipe, _ = build_pipeline("deepcluster", overrides, seed=args.seed)
    pipe.set_k(10)
    pipe.fit(ds)
    return {"part": "deepcluster on CIFAR-10 test", "n": len(ds), "scores": scores(pipe.labels_, ds.labels),
            "seconds": round(time.perf_counter() - t0, 1), "overrides": overrides}


def torchrun_scan(args, out: Path) -> dict:
    n_gpus = torch.cuda.device_count()
    if n_gpus < 2:
        return {"part": "torchrun, 2 processes", "skipped": f"{n_gpus} GPU(s) on this machine"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "imclust", "run",
           str(CIFAR / "test"), "--recipe", "scan", "--k", "10", "--out", str(out / "torchrun-run"),
           "--set", "encoder.budget=\"gpu\"", "--set", "encoder.cache=false"]
    for stage, epochs in (("pretext", 2), ("scan", 1), ("selflabel", 1)):
        cmd += ["--set", f"encoder.{stage}.epochs={epochs}", "--set", f"encoder.{stage}.min_steps=0"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.torchrun_timeout)
    metrics = out / "torchrun-run" / "metrics.json"
    return {"part": "torchrun, 2 processes (nccl)", "returncode": proc.returncode,
            "seconds": round(time.perf_counter() - t0, 1),
            "scores": json.loads(metrics.read_text()) if metrics.exists() else None,
            "stderr_tail": proc.stderr[-2000:] if proc.returncode else ""}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget", default="gpu", help="the scan preset budget (gpu: ResNet-18 and the GPU epochs)")
    ap.add_argument("--minutes", type=float, default=10.0,
                    help="SCAN's wall-time target, loading and probe included: the pretext epochs are the most "
                         "that fit it at the probed speed")
    ap.add_argument("--pretext-epochs", type=int, default=None, help="set them instead of probing")
    ap.add_argument("--max-pretext-epochs", type=int, default=500, help="the most the probe may choose (SCAN's 500)")
    ap.add_argument("--scan-epochs", type=int, default=10)
    ap.add_argument("--selflabel-epochs", type=int, default=5)
    ap.add_argument("--probe-n", type=int, default=5000, help="images of the speed probe")
    ap.add_argument("--reserve-seconds", type=float, default=30.0,
                    help="kept back from the target for feature extraction, neighbour mining and prediction")
    ap.add_argument("--deepcluster-epochs", type=int, default=3)
    ap.add_argument("--n", type=int, default=0, help="training images (0: all 50,000)")
    ap.add_argument("--n-test", type=int, default=0, help="test images (0: all 10,000)")
    ap.add_argument("--tiny", action="store_true",
                    help="a check of the code path: 512 images, a narrow network, at most 2 epochs per stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", nargs="+", default=["scan", "deepcluster", "torchrun"])
    ap.add_argument("--torchrun-timeout", type=int, default=300)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE / ".scan_gpu"))
    ap.add_argument("--write", action="store_true", help="replace the scan-gpu block of benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.tiny:
        args.n, args.n_test, args.probe_n = args.n or 512, args.n_test or 256, min(args.probe_n, 256)
        args.max_pretext_epochs, args.scan_epochs, args.selflabel_epochs = 2, 1, 1
        args.deepcluster_epochs = 1
    if not (CIFAR / "train").is_dir():
        sys.exit(f"{CIFAR / 'train'}: CIFAR-10 not found; this benchmark reads ../shared/data (or $IMCLUST_SHARED_DATA)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(json.dumps({"gpus": gpus, "torch": torch.__version__}), flush=True)
    records = []
    for part, fn in (("scan", lambda: scan_cifar(args)), ("deepcluster", lambda: deepcluster_cifar(args)),
                     ("torchrun", lambda: torchrun_scan(args, out))):
        if part not in args.parts:
            continue
        try:
            rec = fn()
        except Exception as e:  # keep going: the other parts still tell us something
            rec = {"part": part, "error": f"{type(e).__name__}: {e}"}
        records.append(rec)
        print(json.dumps(rec), flush=True)
        (out / f"{part}.json").write_text(json.dumps(rec, indent=1))
    if args.write:
        rows = []
        for r in records:
            acc = r.get("test", r.get("scores")) or {}
            rows.append([r["part"], json.dumps(r.get("train", "")) if "train" in r else "", json.dumps(acc),
                         r.get("seconds_total", r.get("seconds", "")), r.get("error", r.get("skipped", ""))])
        body = (f"## SCAN on a GPU (issue 14)\n\nCommand: `{command()}`  \nMachine: {machine()}; GPUs: "
                f"{', '.join(gpus) or 'none'}; date {today()}.\n\n"
                + table(rows, ["part", "train ACC/NMI/ARI", "test (or only) ACC/NMI/ARI", "seconds", "note"]))
        update_section("scan-gpu", body)
    return records


if __name__ == "__main__":
    main()
