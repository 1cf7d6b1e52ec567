import pytest
import torch

from studylib.batches import Batches, ImageTransform
from studylib.data import synthetic
from studylib.models import (
    MAE,
    VIT_SIZES,
    choose_attention,
    count_flops,
    count_params,
    encoder_state,
    patchify,
    random_masking,
    vit,
)


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
    batches = Batches(
        data.train_images, data.train_labels, 64, torch.device("cpu"), ImageTransform(32, 0.5)
    )
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


def test_decoder_puts_visible_tokens_back_in_their_places():
    model = MAE("micro", decoder_dim=16, decoder_depth=1, decoder_heads=2)
    ids_keep, _ = random_masking(2, 64, 0.75, torch.device("cpu"))
    seen = {}
    model.decoder_blocks.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    latent = torch.randn(2, 1 + 16, model.encoder.embed_dim)
    model.forward_decoder(latent, ids_keep, 64)
    # (2, 64, 16) before position embedding
    tokens = seen["x"][:, 1:] - model.decoder_pos_embed[:, 1:]
    visible = model.decoder_embed(latent)[:, 1:]
    for b in range(2):
        assert torch.allclose(tokens[b, ids_keep[b]], visible[b], atol=1e-6)
        hidden = torch.ones(64, dtype=torch.bool)
        hidden[ids_keep[b]] = False
        assert torch.allclose(
            tokens[b, hidden], model.mask_token[0].expand(int(hidden.sum()), -1), atol=1e-6
        )


def test_loss_counts_only_masked_patches():
    model = MAE("micro", norm_pix_loss=False)
    images = torch.randn(2, 3, 32, 32)
    target = patchify(images, 4)
    mask = torch.zeros(2, 64)
    mask[:, :48] = 1
    pred = target.clone()
    pred[:, 48:] += 10.0  # wrong only where patches were visible
    assert model.loss(images, pred, mask).item() == pytest.approx(0.0, abs=1e-6)
    pred[:, :48] += 1.0  # now off by 1 on every masked pixel
    assert model.loss(images, pred, mask).item() == pytest.approx(1.0, rel=1e-5)


def test_cpu_takes_the_explicit_attention_which_computes_the_same():
    torch.manual_seed(0)
    model = MAE("micro", decoder_dim=64).eval()
    images = torch.randn(4, 3, 32, 32)
    ids_keep, _ = random_masking(4, 64, 0.75, torch.device("cpu"))
    fused = model.forward_decoder(model.forward_encoder(images, ids_keep), ids_keep, 64)
    attentions = [m for m in model.modules() if hasattr(m, "fused_attn")]
    assert len(attentions) == 6 + 2  # every encoder and decoder block

    choose_attention(model, torch.device("cpu"))
    assert not any(m.fused_attn for m in attentions)
    explicit = model.forward_decoder(model.forward_encoder(images, ids_keep), ids_keep, 64)
    torch.testing.assert_close(explicit, fused, rtol=1e-4, atol=1e-5)

    choose_attention(model, torch.device("cuda"))
    assert all(m.fused_attn for m in attentions)
