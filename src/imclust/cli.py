"""The ``imclust`` command: a thin layer over :mod:`imclust.api`.

A user mistake (:class:`~imclust.errors.UserError`) prints one line, ``imclust: error: ...``, and exits 2.
Set ``IMCLUST_DEBUG=1`` to see the traceback of an error instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError

COMMANDS: dict[str, tuple] = {}


def command(name: str, help: str):
    """Register a subcommand: the decorated function adds its arguments and returns the handler."""

    def deco(fn):
        COMMANDS[name] = (help, fn)
        return fn

    return deco


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", metavar="FILE", help="labels for evaluation: .npy, IDX, or CSV (file,label or one per line)")
    p.add_argument("--size", type=int, nargs="+", metavar="PX", help="resize images to PX (or H W) pixels")
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert images to 1 (grey) or 3 (RGB) channels")
    p.add_argument("--image-key", help="key of the images in an .npz file (default: x, images, ...)")
    p.add_argument("--label-key", help="key of the labels in an .npz file (default: y, labels, ...)")
    p.add_argument("--layout", default="auto", choices=("auto", "nhwc", "nchw"), help="channel layout of 4-D arrays")


def _cnn_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="PATH", help="CNN recipes: backbone weights, .safetensors or .pth (torchvision layout)")
    p.add_argument("--export", choices=("copy", "symlink", "move"),
                   help="put a folder's image files into OUT/clusters/<label>/ (keeps names, never overwrites)")


def _abs(path):
    """A path given on the command line, made absolute so a saved model still finds it from elsewhere."""
    from pathlib import Path

    return None if path is None else str(Path(path).expanduser().absolute())


def _size(args):
    if not args.size:
        return None
    if len(args.size) > 2:
        raise UserError("--size takes one number (square) or two (height width)")
    return tuple(args.size) if len(args.size) == 2 else args.size[0]


def _print_metrics(metrics: dict) -> None:
    keys = [k for k in ("acc", "nmi", "ari", "purity", "silhouette", "calinski_harabasz", "davies_bouldin") if metrics.get(k) is not None]
    print("  ".join(f"{k.upper() if k in ('acc', 'nmi', 'ari') else k}={metrics[k]:.4f}" for k in keys))


@command("run", "cluster a source (folder, .npy/.npz, IDX file, or 'digits') and write the results")
def _run_cmd(p: argparse.ArgumentParser):
    p.add_argument("source", help="a folder of images, an .npy/.npz array, an IDX file, or a builtin: digits")
    p.add_argument("--recipe", help="recipe name (see 'imclust recipes'); default: the recipe marked default")
    p.add_argument("--k", help="number of clusters, or 'auto' (default: the recipe's k if it sets one, else the number of classes when labels exist, else auto)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<source name>)")
    p.add_argument("--seed", type=int, default=None, help="seed for every random source (default: the recipe's, else 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PART.OPTION=VALUE",
                   help="override a recipe field, e.g. --set reducers.0.n_components=30 (repeatable)")
    p.add_argument("--nmi", default="arithmetic", choices=("arithmetic", "geometric", "min", "max"), help="NMI normalisation")
    _source_args(p)
    _cnn_args(p)
    p.add_argument("--pretrained", action="store_true", default=None,
                   help="CNN recipes: download torchvision's ImageNet weights (cached under ~/.cache/imclust)")
    p.add_argument("--feature-cache", metavar="DIR|off",
                   help="CNN recipes: folder of the feature cache (default ~/.cache/imclust/features), or 'off'")

    def handler(args):
        from pathlib import Path

        from .api import run

        out = args.out or str(Path("runs") / (Path(args.source.rstrip("/")).name.split(".")[0] or "run"))
        enc = {"weights": _abs(args.weights), "pretrained": args.pretrained}
        if args.feature_cache is not None:
            enc.update({"cache": False} if args.feature_cache.lower() == "off" else {"cache_dir": args.feature_cache})
        res = run(args.source, recipe=args.recipe, k=args.k, out=out, seed=args.seed, labels=args.labels,
                  overrides=args.overrides, size=_size(args), channels=args.channels, image_key=args.image_key,
                  label_key=args.label_key, layout=args.layout, nmi_average=args.nmi, encoder_options=enc,
                  export=args.export)
        from .nn.distributed import is_main

        if not is_main():  # under torchrun, rank 0 reports
            return
        print(f"{res.recipe_name}: {len(res.ids)} images, k={res.k}, {res.metrics['seconds']:.1f}s")
        if res.skipped:
            print(f"skipped {len(res.skipped)} unreadable file(s): listed in {Path(out) / 'skipped.csv'}")
        _print_metrics(res.metrics)
        print(f"outputs in {out}")

    return handler


@command("recipes", "list the recipes")
def _recipes_cmd(p):
    def handler(args):
        from .recipes import available, default_recipe

        d = default_recipe()
        for name, r in available().items():
            mark = " (default)" if name == d else ""
            print(f"{name}{mark}: {r.get('description', '')}")

    return handler


@command("predict", "assign new images to the clusters of a saved model, without refitting")
def _predict_cmd(p):
    p.add_argument("model", help="a model folder written by 'imclust run' (its model/ subfolder, or the run folder)")
    p.add_argument("source", help="the new images: folder, .npy/.npz, IDX file or builtin")
    p.add_argument("--out", default=None, help="output folder (default: runs/predict-<source name>)")
    _source_args(p)
    _cnn_args(p)

    def handler(args):
        from pathlib import Path

        from .api import predict

        model = Path(args.model)
        if not (model / "pipeline.json").exists() and (model / "model" / "pipeline.json").exists():
            model = model / "model"
        out = args.out or str(Path("runs") / ("predict-" + (Path(args.source.rstrip("/")).name.split(".")[0] or "run")))
        res = predict(model, args.source, out=out, size=_size(args), channels=args.channels, labels=args.labels,
                      image_key=args.image_key, label_key=args.label_key, layout=args.layout, weights=_abs(args.weights),
                      export=args.export)
        print(f"predicted {len(res.ids)} images into {res.k} clusters")
        _print_metrics(res.metrics)
        print(f"outputs in {out}")

    return handler


@command("evaluate", "score a predictions CSV against true labels")
def _evaluate_cmd(p):
    p.add_argument("predictions", help="predictions.csv (id,label)")
    p.add_argument("labels", help="true labels: .npy, IDX, CSV file,label, or one label per line")
    p.add_argument("--nmi", default="arithmetic", choices=("arithmetic", "geometric", "min", "max"))
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    def handler(args):
        import json

        from .api import evaluate_files

        m = evaluate_files(args.predictions, args.labels, nmi_average=args.nmi)
        if args.json:
            print(json.dumps(m, indent=2))
        else:
            _print_metrics(m)

    return handler


@command("report", "rebuild a run's self-contained HTML report (report.html) from its saved outputs")
def _report_cmd(p):
    p.add_argument("run_dir", help="an output folder written by 'imclust run' or 'imclust predict'")
    p.add_argument("--out", default=None, help="where to write the page (default: RUN_DIR/report.html)")

    def handler(args):
        from .api import report

        print(f"report in {report(args.run_dir, args.out)}")

    return handler


def make_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="imclust", description="Unsupervised image clustering with deep learning.")
    parser.add_argument("--version", action="version", version=f"imclust {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, fn) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(handler=fn(sp))
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        args.handler(args)
    except UserError as e:
        if os.environ.get("IMCLUST_DEBUG"):
            raise
        print(f"imclust: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("imclust: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
