"""Every decode path gives an image's upright 8-bit pixels: EXIF orientation applied as PIL's
exif_transpose does, 16-bit images scaled (not clipped to white), 32-bit and float ones refused."""

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from studylib import decode, pixels
from studylib.errors import DataError
from studylib.image_folder import read_images


def _photo(width: int = 40, height: int = 24) -> Image.Image:
    """An asymmetric picture: every turn and flip of it differs."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([x * 6, y * 10, (x * y) % 256], -1).astype(np.uint8))


def _with_orientation(image: Image.Image, turn: int, form: str = "PNG") -> bytes:
    exif = Image.Exif()
    exif[pixels.ORIENTATION] = turn
    buffer = io.BytesIO()
    image.save(buffer, form, exif=exif.tobytes(), **({"quality": 100} if form == "JPEG" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("turn", range(1, 9))
def test_each_orientation_is_what_pils_exif_transpose_shows(turn):
    blob = _with_orientation(_photo(), turn)
    with Image.open(io.BytesIO(blob)) as opened:
        assert pixels.orientation(opened) == turn
        expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    with Image.open(io.BytesIO(blob)) as opened:
        assert np.array_equal(pixels.rgb(opened), expected)


def _sample(blob: bytes) -> dict:
    return {"__key__": "k", "jpg": blob, "json": json.dumps({"tags": ["a"]})}


@pytest.mark.parametrize("form", ["JPEG", "PNG"])
def test_the_stream_decodes_a_turned_photo_upright(form):
    blob = _with_orientation(_photo(), 6, form)
    image, _, tags = decode.decode_sample(_sample(blob), 24)
    with Image.open(io.BytesIO(blob)) as opened:
        upright = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    assert upright.shape == (40, 24, 3) and tags == ["a"]
    box = decode.crop_box(24, 40, None, None)
    assert np.array_equal(image.numpy(), decode.crop_resized(upright, box, 24).numpy())
    deferred, _, _ = decode.decode_sample(_sample(blob), 24, defer=True)
    assert not isinstance(deferred, decode.Encoded)  # a turned JPEG is decoded by the worker


def test_sixteen_bit_images_keep_their_top_bits_and_deeper_ones_are_refused(tmp_path):
    ramp = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    (in_memory,) = read_images([path]).numpy()  # (3, H, W)
    assert np.array_equal(in_memory[0], (ramp >> 8).astype(np.uint8))
    streamed, _, _ = decode.decode_sample(_sample(path.read_bytes()), 32)
    assert streamed is not None and int(streamed.float().mean()) == int((ramp >> 8).mean())
    floats = tmp_path / "float.tif"
    Image.fromarray(np.ones((8, 8), np.float32)).save(floats)
    image, _, why = decode.decode_sample(_sample(floats.read_bytes()), 8)
    assert image is None and "HighDepthError" in why and "float" in why
    with pytest.raises(DataError, match="float.tif: not a readable image .*HighDepthError"):
        read_images([floats])
