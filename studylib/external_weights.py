"""Weights from outside (timm, MAE, MAWS checkpoints) mapped onto our encoder, `models.vit(size)`.

Where each layout comes from:
- timm: huggingface/pytorch-image-models, timm/models/vision_transformer.py. A model with global
  average pooling keeps its final norm in `fc_norm` (and `norm` is Identity); we load it as `norm`.
- mae: facebookresearch/mae, models_mae.py / models_vit.py: timm encoder keys plus `decoder_*` and
  `mask_token`, which are dropped; fine-tuned checkpoints pool globally, so they have `fc_norm` and
  `head` instead of `norm`.
- maws: facebookresearch/maws, maws/model_builder.py builds a timm `VisionTransformer` and loads the
  released `.pt` straight into it, so its ViT weights are timm keys; the CLIP checkpoints wrap it as
  `CLIP.vision_encoder` (maws/model.py), i.e. `vision_encoder.*` beside `text_encoder.*`,
  `*_projection` and `logit_scale`. Under this name we also accept the torchvision / ClassyVision
  ViT layout (pytorch/vision torchvision/models/vision_transformer.py, facebookresearch/ClassyVision
  classy_vision/models/vision_transformer.py): `conv_proj`, `class_token`, `encoder.pos_embedding`
  (ClassyVision: shape (1+N, 1, D)), `encoder.layers.encoder_layer_{i}` (ClassyVision: `layer_{i}`)
  with `ln_1`, `self_attention.in_proj_*` (q, k, v stacked as in timm's qkv),
  `self_attention.out_proj`, `ln_2`, `mlp.0` / `mlp.3` (older: `mlp.linear_1` / `mlp.linear_2`),
  then `encoder.ln` and `heads.*`.
Any prefix in front of the class token's key (`module.`, `trunk.`, `vision_encoder.`, ...) is
stripped, and only the keys under it are kept.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed

from studylib.errors import ConfigError
from studylib.models import VIT_SIZES, vit

LAYOUTS = ("timm", "mae", "maws")
_WRAPPERS = ("state_dict", "model", "module", "trunk")  # {"model": state, "args": ...} and the like
_DROP = ("head.", "heads.", "head_drop.", "decoder_", "mask_token")
_TORCHVISION = [  # applied in order: the block prefix first, then the parts inside a block
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^encoder\.layers\.(?:encoder_)?layer_(\d+)\.", r"blocks.\1."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.self_attention\.in_proj_(weight|bias)$", r".attn.qkv.\1"),
    (r"\.self_attention\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.(?:0|linear_1)\.", ".mlp.fc1."),
    (r"\.mlp\.(?:3|linear_2)\.", ".mlp.fc2."),
]


def _unwrap(state: dict) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside {"state_dict": ...}, {"model": ...} and similar wrappers."""
    while isinstance(state, dict):
        inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        state = inner
    raise ConfigError(f"checkpoint holds a {type(state).__name__}, not a dict of tensors")


def _prefix(state: dict[str, torch.Tensor]) -> tuple[str, bool]:
    """The prefix in front of the ViT's keys, and whether they follow torchvision (class_token)
    rather than timm."""
    tokens = [k for k in state if k.split(".")[-1] in ("cls_token", "class_token")]
    if len(tokens) != 1:
        raise ConfigError(
            "expected one ViT class token (cls_token or class_token) among the keys, found "
            f"{tokens} (first keys: {list(state)[:5]}); layouts understood: {', '.join(LAYOUTS)}"
        )
    key = tokens[0]
    return key[: key.rindex(".") + 1] if "." in key else "", key.endswith("class_token")


def detect_layout(state: dict) -> str:
    """Guess the layout of a (possibly wrapped) state dict: 'maws', 'mae' or 'timm'."""
    state = _unwrap(state)
    try:
        prefix, torchvision = _prefix(state)
    except ConfigError as exc:
        raise ConfigError(
            f"cannot tell the checkpoint layout; pass one of {', '.join(LAYOUTS)}. {exc}"
        ) from None
    if torchvision or prefix.endswith("vision_encoder."):
        return "maws"
    if any("decoder_" in k or k.endswith("mask_token") for k in state):
        return "mae"
    return "timm"


def to_encoder_state(state: dict, layout: str, size: str) -> dict[str, torch.Tensor]:
    """Map a checkpoint in `layout` onto the encoder of `vit(size)`: drop heads and decoders,
    resample pos_embed."""
    if layout == "auto":
        layout = detect_layout(state)
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)} or auto")
    if size not in VIT_SIZES:
        raise ConfigError(f"model size {size!r}: expected one of {', '.join(VIT_SIZES)}")
    state = _unwrap(state)
    prefix, torchvision = _prefix(state)
    if torchvision and layout != "maws":
        raise ConfigError(
            "these are torchvision-style ViT keys (class_token, encoder.layers...), layout "
            f"'maws', not {layout!r}"
        )
    return _fitted(_renamed(state, prefix, torchvision), layout, size)


def _renamed(state: dict, prefix: str, torchvision: bool) -> dict[str, torch.Tensor]:
    """The encoder's tensors under `prefix`, in timm's names, heads and decoders dropped."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        for pattern, repl in _TORCHVISION if torchvision else []:
            key = re.sub(pattern, repl, key)
        if not key.startswith(_DROP):
            out[key] = value
    if (
        out.get("pos_embed") is not None
        and out["pos_embed"].dim() == 3
        and out["pos_embed"].shape[1] == 1
    ):
        out["pos_embed"] = out["pos_embed"].permute(1, 0, 2)  # ClassyVision's (1+N, 1, D)
    fc_norm = {k: out.pop(k) for k in [k for k in out if k.startswith("fc_norm.")]}
    if not any(k.startswith("norm.") for k in out):
        out.update({"norm." + k.removeprefix("fc_norm."): v for k, v in fc_norm.items()})
    return out


def _fitted(out: dict, layout: str, size: str) -> dict[str, torch.Tensor]:
    """`out` checked against `vit(size)`'s encoder, its pos_embed resampled to the size's grid."""
    with torch.device("meta"):
        target = vit(size).state_dict()
    spec = VIT_SIZES[size]
    dim, depth = (
        out["cls_token"].shape[-1],
        len({k.split(".")[1] for k in out if k.startswith("blocks.")}),
    )
    if (dim, depth) != (spec["embed_dim"], spec["depth"]):
        like = [n for n, s in VIT_SIZES.items() if (s["embed_dim"], s["depth"]) == (dim, depth)]
        raise ConfigError(
            f"weights have embed dim {dim} and depth {depth}, but size {size!r} needs embed dim "
            f"{spec['embed_dim']} and depth {spec['depth']}"
            + (f"; they fit {like}" if like else "")
        )
    if "pos_embed" in out and out["pos_embed"].shape != target["pos_embed"].shape:
        grid = spec["img_size"] // spec["patch_size"]
        pos = out["pos_embed"]
        out["pos_embed"] = resample_abs_pos_embed(
            pos.float(), new_size=[grid, grid], num_prefix_tokens=1
        ).to(pos.dtype)
    missing, unexpected = sorted(set(target) - set(out)), sorted(set(out) - set(target))
    shapes = [
        f"{k} {tuple(out[k].shape)} != {tuple(target[k].shape)}"
        for k in target
        if k in out and out[k].shape != target[k].shape
    ]
    if missing or unexpected or shapes:
        raise ConfigError(
            f"{layout} weights do not fit size {size!r}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {shapes[:3]}"
        )
    return out


def load_external(path: Path, layout: str = "auto", *, size: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (tensors only, never arbitrary pickles) and map it onto `vit(size)`'s
    encoder."""
    try:
        # MAE's own checkpoints also hold the training arguments, an argparse.Namespace.
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"{path}: cannot read the checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    try:
        return to_encoder_state(state, layout, size)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
