"""MAE pre-pretraining: reconstruct 75% masked patches from the rest, no labels."""

from __future__ import annotations

import numpy as np
import torch

from studylib import distributed
from studylib.batches import MEAN, STD, ImageTransform
from studylib.distributed import device_and_dtype, is_main
from studylib.engine import tensorboard_writer, train
from studylib.errors import RunFolderError
from studylib.experiment import Experiment
from studylib.models import MAE, VIT_SIZES, count_flops, patchify, train_flops
from studylib.pool import Pool, open_pool
from studylib.runs import Run, save_encoder, train_once


def build(exp: Experiment) -> MAE:
    c = exp.mae
    model = MAE(
        exp.model, c.mask_ratio, c.decoder_dim, c.decoder_depth, c.decoder_heads, c.norm_pix_loss
    )
    model.ranks = (distributed.rank(), distributed.world_size())
    return model


def mae_loss(model: MAE, images: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    return model(images)[0]


def image_source(exp: Experiment) -> tuple[str | None, float]:
    """MAE's dataset (None: the pool) and fraction."""
    return (None if exp.mae.data == "pretrain" else exp.mae.data), exp.mae.data_fraction


def image_pool(exp: Experiment) -> Pool:
    """MAE's images: mae.data_fraction of the pool (mae.data pretrain) or of another dataset."""
    return open_pool(exp, *image_source(exp))


def run_for(exp: Experiment) -> Run:
    """The run folder of MAE pre-pretraining under `exp`."""
    return Run(exp, "mae", {"data": image_pool(exp).identity()})


def pretrain(exp: Experiment) -> Run:
    """Pre-pretrain the encoder with MAE; the run's encoder.pth holds the encoder weights."""
    run = run_for(exp)

    def make_results() -> dict:
        device, dtype = device_and_dtype(exp)
        img_size = VIT_SIZES[exp.model]["img_size"]
        images = image_pool(exp)
        batches = images.batches(exp.mae, device)
        torch.manual_seed(exp.seed)
        model = build(exp)
        forward = count_flops(model, img_size)  # before training: FSDP2 shards the model in place
        summary = train(run, model, mae_loss, batches, exp.mae, device, dtype, exp.seed)
        save_encoder(run, model.encoder)
        # TensorBoard: originals, masked, reconstructed (a streamed pool has no test images)
        test_images = images.test_images()
        if is_main() and test_images is not None and len(test_images):
            shown = reconstruct(model.cpu(), test_images[:8], exp)
            with tensorboard_writer(run) as writer:
                writer.add_images(
                    "mae/original, masked, reconstruction",
                    np.concatenate(list(shown.values())),
                    summary["epochs"],
                    dataformats="NHWC",
                )
        return {**summary, "train_flops": train_flops(forward, summary["images_seen"])}

    return train_once(run, make_results)


def reconstructions(exp: Experiment, mae_run: Run, count: int = 8) -> dict[str, np.ndarray]:
    """`count` test images of MAE's data, masked and reconstructed by the finished `mae_run` (see
    reconstruct)."""
    model = build(exp)
    state = mae_run.load(mae_run.checkpoint.name)
    if state is None:
        raise RunFolderError(
            f"{mae_run.checkpoint}: missing (a run with sharded checkpoints has checkpoint.dcp/ "
            "instead); allowed for the reconstructions: mae.checkpoint_format whole"
        )
    model.load_state_dict(state["model"])
    return reconstruct(model, image_pool(exp).images.test_images[:count], exp)


@torch.no_grad()
def reconstruct(model: MAE, test_images: torch.Tensor, exp: Experiment) -> dict[str, np.ndarray]:
    """uint8 `test_images`, their masked versions and MAE's reconstructions (visible patches pasted
    back), as uint8 (count, H, W, 3) arrays; the mask is drawn from exp.seed."""
    model.eval()
    x = ImageTransform(VIT_SIZES[exp.model]["img_size"])(test_images)
    torch.manual_seed(exp.seed)
    _, pred, mask = model(x)
    target = patchify(x, model.patch)
    # predictions are per-patch normalised: give them each patch's own statistics
    if model.norm_pix_loss:
        pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
    hidden = mask.unsqueeze(-1).bool()
    out = {
        "original": x,
        "masked": _unpatches(torch.where(hidden, 0.0, target), model.patch, x),
        "reconstruction": _unpatches(torch.where(hidden, pred, target), model.patch, x),
    }
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return {
        k: ((v * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for k, v in out.items()
    }


def _unpatches(patches: torch.Tensor, patch: int, like: torch.Tensor) -> torch.Tensor:
    b, c, h, w = like.shape
    x = patches.reshape(b, h // patch, w // patch, patch, patch, c)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, h, w)
