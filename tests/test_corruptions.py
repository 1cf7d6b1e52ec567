"""CIFAR-10-C style corruptions: shapes, determinism, severity ordering, bad input, parity with
PIL."""

import colorsys
import io

import numpy as np
import pytest
import torch

from studylib.corruptions import SEVERITIES, corrupt
from studylib.data import synthetic
from studylib.errors import ConfigError
from studylib.registry import CORRUPTIONS

NOISE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
# Runs of severities over which the original's parameter strengthens the corruption. saturate's does
# not: severities 1-2 desaturate (x0.3, x0.1), 3-5 oversaturate (x1.5, x2 + .1, x2.5 + .2).
MONOTONE_RUNS = {"saturate": ((1, 2), (3, 4, 5))}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic(num_train=64, num_test=32).train_images


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def test_names_and_severities():
    assert len(CORRUPTIONS) >= 10 and SEVERITIES == (1, 2, 3, 4, 5)
    assert {
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "defocus_blur",
        "gaussian_blur",
        "contrast",
        "brightness",
        "saturate",
        "jpeg_compression",
        "pixelate",
    } <= set(CORRUPTIONS)
    assert all(len(CORRUPTIONS[name]) == len(SEVERITIES) for name in CORRUPTIONS)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_dtype_and_severity_order(images, name):
    outs = {s: corrupt(images, name, s) for s in SEVERITIES}
    for out in outs.values():
        assert out.dtype == torch.uint8 and out.shape == images.shape
    assert not torch.equal(outs[5], images)
    dist = {s: mad(out, images) for s, out in outs.items()}
    for run in MONOTONE_RUNS.get(name, (SEVERITIES,)):
        for lo, hi in zip(run, run[1:], strict=False):
            params_differ = CORRUPTIONS[name][lo - 1] != CORRUPTIONS[name][hi - 1]
            assert dist[hi] > dist[lo] if params_differ else dist[hi] >= dist[lo], (name, dist)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_deterministic_per_seed(images, name):
    a = corrupt(images, name, 3, seed=1)
    assert torch.equal(a, corrupt(images, name, 3, seed=1))
    other = corrupt(images, name, 3, seed=2)
    assert torch.equal(a, other) != (name in NOISE)  # only the noises depend on the seed
    if name in NOISE:
        state = torch.get_rng_state()
        corrupt(images, name, 3)
        assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def test_empty_batch_and_bad_images(images):
    assert corrupt(images[:0], "jpeg_compression", 1).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.float(), "contrast", 1)


@pytest.mark.parametrize("name", ["fog", "Gaussian Noise", ""])
def test_bad_name(images, name):
    with pytest.raises(ConfigError) as err:
        corrupt(images, name, 1)
    assert all(allowed in str(err.value) for allowed in CORRUPTIONS)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3"])
def test_bad_severity(images, severity):
    with pytest.raises(ConfigError, match="1, 2, 3, 4, 5"):
        corrupt(images, "contrast", severity)


def test_pixelate_and_jpeg_match_pil(images):
    pil = pytest.importorskip("PIL.Image")
    for sev in SEVERITIES:
        pix, jpg = corrupt(images, "pixelate", sev), corrupt(images, "jpeg_compression", sev)
        for i in range(0, len(images), 8):
            img = pil.fromarray(images[i].permute(1, 2, 0).numpy())
            side = int(32 * CORRUPTIONS["pixelate"][sev - 1])
            ref = img.resize((side, side), pil.BOX).resize((32, 32), pil.BOX)
            assert np.array_equal(np.asarray(ref), pix[i].permute(1, 2, 0).numpy())
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=CORRUPTIONS["jpeg_compression"][sev - 1])
            assert np.array_equal(np.asarray(pil.open(buf)), jpg[i].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_hsv_edits_match_colorsys(name):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8, generator=gen)
    x[0, :, 0, :4] = torch.tensor([0, 0, 0])[:, None]  # black and grey pixels: hue 0, saturation 0
    x[0, :, 1, :4] = torch.tensor([128, 128, 128])[:, None]
    for sev in SEVERITIES:
        c = CORRUPTIONS[name][sev - 1]
        ref = []
        for r, g, b in (x[0].reshape(3, -1).T.double() / 255).tolist():
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            v, s = (
                (min(v + c, 1.0), s)
                if name == "brightness"
                else (v, min(max(s * c[0] + c[1], 0.0), 1.0))
            )
            ref.append(colorsys.hsv_to_rgb(h, s, v))
        ref = (
            torch.tensor(ref).T.reshape(1, 3, 8, 8) * 255 + 1e-6
        ).floor()  # truncated like np.uint8
        assert (corrupt(x, name, sev).double() - ref).abs().max() <= 1
