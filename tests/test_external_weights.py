import argparse
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from studylib.errors import ConfigError
from studylib.external_weights import LAYOUTS, detect_layout, load_external, to_encoder_state
from studylib.models import MAE, encoder_state, load_encoder, vit

MICRO = dict(patch_size=4, embed_dim=128, depth=6, num_heads=4)


def _perturbed(model: nn.Module) -> nn.Module:
    """Random weights everywhere (fresh LayerNorms are all ones and zeros, which would hide swapped
    keys)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _loaded(state: dict[str, torch.Tensor]) -> nn.Module:
    model = vit("micro").eval()
    load_encoder(model, state)
    return model


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _features(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def test_timm_wrapped_with_head(images):
    src = _perturbed(vit("micro", num_classes=10))
    state = {"state_dict": src.state_dict()}
    assert detect_layout(state) == "timm"
    out = to_encoder_state(state, "timm", "micro")
    assert set(out) == set(encoder_state(vit("micro")))
    with torch.no_grad():
        torch.testing.assert_close(_loaded(out)(images), _features(src, images))


def test_timm_other_grid_resamples_pos_embed(images):
    # Built for 48 px; with dynamic_img_size it resamples its own pos_embed at 32 px, as
    # the conversion must.
    src = _perturbed(VisionTransformer(img_size=48, num_classes=10, dynamic_img_size=True, **MICRO))
    out = to_encoder_state({"model": src.state_dict()}, "auto", "micro")
    assert src.pos_embed.shape[1] == 1 + 144 and out["pos_embed"].shape == (1, 1 + 64, 128)
    torch.testing.assert_close(out["pos_embed"][:, 0], src.pos_embed[:, 0])
    with torch.no_grad():
        torch.testing.assert_close(_loaded(out)(images), _features(src, images))


def test_mae_pretrain_drops_decoder(images):
    mae = _perturbed(MAE("micro"))
    full = mae.state_dict()
    assert any(k.startswith("decoder_") for k in full) and "mask_token" in full
    # flat, as in mae_pretrain_*.pth
    official = {"model": {k.removeprefix("encoder."): v for k, v in full.items()}}
    for state in (official, full):  # the official layout, and our own MAE's
        assert detect_layout(state) == "mae"
        out = to_encoder_state(state, "mae", "micro")
        assert set(out) == set(encoder_state(vit("micro")))
        with torch.no_grad():
            torch.testing.assert_close(_loaded(out)(images), _features(mae.encoder, images))


def test_fc_norm_becomes_norm(images):
    # A fine-tuned MAE / global-pool timm model: the final norm is fc_norm and `norm` is Identity.
    src = _perturbed(VisionTransformer(img_size=32, num_classes=10, global_pool="avg", **MICRO))
    state = src.state_dict()
    assert "fc_norm.weight" in state and "norm.weight" not in state
    out = to_encoder_state(state, "mae", "micro")
    with torch.no_grad():
        torch.testing.assert_close(
            _loaded(out)(images), src.fc_norm(src.forward_features(images)[:, 0])
        )


def _torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    tv = TorchvisionViT(
        image_size=32, patch_size=4, num_layers=6, num_heads=4, hidden_dim=128, mlp_dim=512
    )
    tv = _perturbed(tv)
    tv.heads = nn.Identity()  # its forward then returns the class token after encoder.ln
    return tv


def test_torchvision_layout(images):
    tv = _torchvision_vit()
    state = {
        **tv.state_dict(),
        "heads.head.weight": torch.zeros(10, 128),
        "heads.head.bias": torch.zeros(10),
    }
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in state
    assert detect_layout(state) == "maws"
    out = to_encoder_state(state, "maws", "micro")
    with torch.no_grad():
        torch.testing.assert_close(_loaded(out)(images), tv(images), atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="maws"):
        to_encoder_state(state, "timm", "micro")


def test_classy_vision_layout(images):
    # ClassyVision names: trunk prefix, layer_{i}, mlp.linear_1/2, pos_embedding of shape
    # (1+N, 1, D).
    tv = _torchvision_vit()
    state = {}
    for k, v in tv.state_dict().items():
        k = (
            k.replace("encoder_layer_", "layer_")
            .replace("mlp.0.", "mlp.linear_1.")
            .replace("mlp.3.", "mlp.linear_2.")
        )
        state["trunk." + k] = v.permute(1, 0, 2) if k == "encoder.pos_embedding" else v
    out = to_encoder_state({"model": state}, "auto", "micro")
    with torch.no_grad():
        torch.testing.assert_close(_loaded(out)(images), tv(images), atol=1e-5, rtol=1e-4)


def test_maws_clip_vision_encoder(images):
    # maws/model.py: CLIP(vision_encoder=timm ViT, text_encoder=...,
    # vision_projection, text_projection, logit_scale)
    src = _perturbed(vit("micro"))
    state = {"vision_encoder." + k: v for k, v in src.state_dict().items()}
    state |= {
        "text_encoder.encoder.layers.0.weight": torch.ones(4),
        "vision_projection": torch.ones(128, 8),
        "text_projection": torch.ones(16, 8),
        "logit_scale": torch.ones(()),
    }
    assert detect_layout(state) == "maws"
    with torch.no_grad():
        torch.testing.assert_close(
            _loaded(to_encoder_state(state, "maws", "micro"))(images), src(images)
        )


def test_detect_layout_unknown():
    with pytest.raises(ConfigError, match="timm, mae, maws"):
        detect_layout({"weight": torch.ones(2)})
    assert LAYOUTS == ("timm", "mae", "maws")


def test_wrong_size_names_dimensions():
    state = vit("micro").state_dict()
    with pytest.raises(
        ConfigError, match=r"embed dim 128 and depth 6.*'tiny'.*embed dim 192 and depth 12.*micro"
    ):
        to_encoder_state(state, "timm", "tiny")
    # same width and depth, patch 16 not 4
    with pytest.raises(ConfigError, match="patch_embed.proj.weight"):
        to_encoder_state(
            VisionTransformer(
                img_size=128, patch_size=16, embed_dim=128, depth=6, num_heads=4
            ).state_dict(),
            "timm",
            "micro",
        )
    with pytest.raises(ConfigError, match="layout"):
        to_encoder_state(state, "jax", "micro")


def test_file_round_trip(tmp_path: Path, images):
    src = _perturbed(VisionTransformer(img_size=32, num_classes=10, global_pool="avg", **MICRO))
    path = tmp_path / "mae_finetuned.pth"
    torch.save({"model": src.state_dict(), "epoch": 3, "args": argparse.Namespace(lr=1e-3)}, path)
    out = load_external(path, size="micro")
    with torch.no_grad():
        torch.testing.assert_close(
            _loaded(out)(images), src.fc_norm(src.forward_features(images)[:, 0])
        )
    with pytest.raises(ConfigError, match=str(path)):
        load_external(path, "timm", size="tiny")


def test_unreadable_file(tmp_path: Path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    for path in (garbage, tmp_path / "missing.pth"):
        with pytest.raises(ConfigError, match=str(path)):
            load_external(path, size="micro")
