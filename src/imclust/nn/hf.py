"""DINOv2, CLIP and SigLIP image features through Hugging Face ``transformers`` (``pip install "imclust[hf]"``).

Backbones (``encoder.backbone``) and what each gives per image:

- ``dinov2-small`` (384-d), ``dinov2-base`` (768-d): the final layer-normed CLS token (``pooler_output``);
- ``clip-b32``, ``clip-b16``: CLIP's image embedding (the vision tower's pooled output through its
  projection, 512-d; the text tower is not loaded);
- ``siglip-b16``: SigLIP's attention-pooled image embedding (768-d).

Each name is pinned to one model id and one commit (:data:`HF_MODELS`). Online, ``transformers`` downloads
that commit once into the Hugging Face cache (``$HF_HOME``, default ``~/.cache/huggingface``). Offline and
not cached, one line says so and gives the ``hf download`` command that pre-fetches it. ``--weights DIR``
takes a local folder written by ``save_pretrained`` (``config.json``, the weights and
``preprocessor_config.json``) instead.

The preprocessing is the model's own, read from its ``preprocessor_config.json`` (resize, centre crop,
resampling filter, mean and std; :meth:`imclust.data.transforms.Preprocess.from_processor`), and runs in
imclust's own loader, so the feature cache and the worker processes work as for the CNNs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import NotInstalledError, UserError


@dataclass(frozen=True)
class HFSpec:
    repo: str
    revision: str
    family: str  # dinov2, clip or siglip

    def fetch_command(self) -> str:
        return f"hf download {self.repo} --revision {self.revision}"


# Commits on the Hugging Face hub (the CLIP ones are the hub's safetensors conversions of OpenAI's files).
HF_MODELS = {
    "dinov2-small": HFSpec("facebook/dinov2-small", "ed25f3a31f01632728cabb09d1542f84ab7b0056", "dinov2"),
    "dinov2-base": HFSpec("facebook/dinov2-base", "f9e44c814b77203eaa57a6bdbbd535f21ede1415", "dinov2"),
    "clip-b32": HFSpec("openai/clip-vit-base-patch32", "c237dc49a33fc61debc9276459120b7eac67e7ef", "clip"),
    "clip-b16": HFSpec("openai/clip-vit-base-patch16", "5ef227a78de3f75873f373246dac80def63b0003", "clip"),
    "siglip-b16": HFSpec("google/siglip-base-patch16-224", "7fd15f0689c79d79e38b1c2e2e2370a7bf2761ed", "siglip"),
}

_MODEL_TYPES = {"dinov2": ("dinov2",), "clip": ("clip", "clip_vision_model"), "siglip": ("siglip", "siglip_vision_model")}


def is_hf(name: str) -> bool:
    return str(name).lower() in HF_MODELS


def _transformers(name: str):
    try:
        import transformers
    except ImportError:
        raise NotInstalledError("transformers", f"backbone {name}", "hf") from None
    return transformers


class HFImageFeatures(nn.Module):
    """A transformers vision model → one feature vector per image (see the module docstring)."""

    def __init__(self, model: nn.Module, family: str, native: int):
        super().__init__()
        self.model = model
        self.family = family
        self.native = int(native)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "dinov2":  # position embeddings are always interpolated to the input
            return self.model(pixel_values=x).pooler_output
        other = tuple(x.shape[-2:]) != (self.native, self.native)
        out = self.model(pixel_values=x, interpolate_pos_encoding=other)
        return out.image_embeds if self.family == "clip" else out.pooler_output


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the {what} ({e})") from None


def load(name: str, weights: str | None = None) -> tuple[HFImageFeatures, dict, str]:
    """(feature module in eval mode, the processor config dict, a description of where the weights came from)."""
    key = str(name).lower()
    spec = HF_MODELS[key]
    tf = _transformers(name)
    tf.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    if weights:
        src = Path(weights).expanduser()
        if not (src.is_dir() and (src / "config.json").is_file()):
            raise UserError(f"--weights {weights}: backbone {name} takes a folder written by save_pretrained "
                            "(with config.json, the weights and preprocessor_config.json)")
        if not (src / "preprocessor_config.json").is_file():
            raise UserError(f"{src}: no preprocessor_config.json; save the model's image processor into the folder too "
                            "(processor.save_pretrained(DIR))")
        kw: dict = {}
        where = f"folder {src}"
        prep_cfg = _read_json(src / "preprocessor_config.json", "processor config")
    else:
        src = spec.repo
        kw = {"revision": spec.revision}
        where = f"{spec.repo}@{spec.revision[:12]}"
        try:
            from huggingface_hub import hf_hub_download

            prep_path = hf_hub_download(spec.repo, "preprocessor_config.json", revision=spec.revision)
        except Exception as e:  # offline (LocalEntryNotFoundError, connection errors), or the hub refused
            raise UserError(
                f"cannot get {spec.repo} (revision {spec.revision[:12]}) from the Hugging Face hub and it is not in the "
                f"local cache ({type(e).__name__}: no network?); on a machine with internet run: {spec.fetch_command()} "
                "(and copy ~/.cache/huggingface here), or pass a local save_pretrained folder with --weights DIR") from None
        prep_cfg = _read_json(Path(prep_path), "processor config")
    try:
        cfg = tf.AutoConfig.from_pretrained(str(src), **kw)
        if cfg.model_type not in _MODEL_TYPES[spec.family]:
            raise UserError(f"{where} holds a {cfg.model_type!r} model, not the {spec.family} that backbone {name} expects; "
                            f"choose the matching backbone ({', '.join(HF_MODELS)})")
        if spec.family == "clip":
            vcfg = cfg.vision_config if cfg.model_type == "clip" else cfg
            if cfg.model_type == "clip":
                vcfg.projection_dim = cfg.projection_dim  # the vision config alone does not carry it
            model = tf.CLIPVisionModelWithProjection.from_pretrained(str(src), config=vcfg, **kw)
        elif spec.family == "siglip":
            model = tf.SiglipVisionModel.from_pretrained(str(src), **kw)
        else:
            model = tf.Dinov2Model.from_pretrained(str(src), **kw)
    except UserError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = (f"on a machine with internet run: {spec.fetch_command()}" if not weights
                else "pass a folder written by save_pretrained for this backbone")
        raise UserError(f"cannot load backbone {name} from {where} ({first}); {hint}") from None
    vision = getattr(model.config, "vision_config", model.config)
    native = int(getattr(vision, "image_size", 224))
    module = HFImageFeatures(model, spec.family, native).eval()
    return module, prep_cfg, where
