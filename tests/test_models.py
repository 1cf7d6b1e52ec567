import pytest
import torch

from studylib.data import Batches, ImageTransform, synthetic
from studylib.models import MAE, VIT_SIZES, count_flops, count_params, encoder_state, patchify, random_masking, vit


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.9])
def test_mask_keeps_exactly_the_asked_ratio(ratio):
    ids_keep, mask = random_masking(8, 64, ratio, torch.device("cpu"))
    assert ids_keep.shape == (8, round(64 * (1 - ratio)))
    assert (mask.sum(1) == round(64 * ratio)).all()
    kept = torch.zeros(8, 64).scatter_(1, ids_keep, 1.0)
    assert torch.equal(kept, 1 - mask)  # the kept patches are exactly the unmasked ones


def test_mae_hides_the_asked_share_of_patches_in_forward():
    model = MAE("micro", mask_ratio=0.75)
    loss, pred, mask = model(torch.randn(4, 3, 32, 32))
    assert pred.shape == (4, 64, 4 * 4 * 3)
    assert (mask.sum(1) == 48).all() and loss.ndim == 0


def test_patchify_orders_patches_row_by_row():
    image = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(1, 3, 8, 8)
    patches = patchify(image, 4)
    assert patches.shape == (1, 4, 48)
    top_right = image[0, :, :4, 4:].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1], top_right)


def test_mae_loss_falls_on_structured_images():
    torch.manual_seed(0)
    data = synthetic(512, 64)
    model = MAE("micro", decoder_dim=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batches = Batches(data.train_images, data.train_labels, 64, torch.device("cpu"), ImageTransform(32, 0.5))
    losses = []
    for _ in range(4):
        for x, _ in batches:
            loss = model(x)[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.75 * first, (first, last)


def test_encoder_state_has_no_head():
    state = encoder_state(vit("micro", num_classes=7))
    assert state and not any(k.startswith("head") for k in state)
    assert "pos_embed" in state and "blocks.0.attn.qkv.weight" in state


def test_paper_sizes_have_the_published_parameter_and_flop_counts():
    with torch.device("meta"):
        base = vit("B/16")
    assert count_params(base) == pytest.approx(86e6, rel=0.02)
    assert count_flops(base, 224) == pytest.approx(2 * 17.6e9, rel=0.03)  # 17.6 GMACs
    assert set(VIT_SIZES) >= {"micro", "tiny", "small", "base", "B/16", "L/16", "H/14", "2B/14"}
