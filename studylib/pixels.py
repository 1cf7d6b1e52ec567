"""An image file's 8-bit RGB pixels, the same on every path that decodes one (in-memory folders,
the streamed workers, shards written from a folder): 16-bit images scaled to 8 bits, not clipped;
deeper or float images refused; the EXIF orientation applied, so a phone photo trains upright.

PIL's own convert("RGB") clips a 16-bit greyscale PNG to white and ignores the orientation tag.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ORIENTATION = 0x0112  # the EXIF tag
# in a streamed pool's identity and an image folder's cache key: other rules give other pixels
RULE = "EXIF orientation applied, 16-bit images scaled to 8 bits"
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class HighDepthError(ValueError):
    """An image whose pixels have no faithful 8-bit form here (32-bit integer or float)."""


def orientation(opened: Image.Image) -> int:
    """The EXIF orientation (1-8; 1, as stored) of an opened image, from its header."""
    try:
        value = opened.getexif().get(ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF block: as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(pixels: np.ndarray, turn: int) -> np.ndarray:
    """(H, W, C) `pixels` as EXIF orientation `turn` says to show them (PIL's exif_transpose)."""
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }[turn](pixels)


def rgb(opened: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an opened image, upright: 16-bit greyscale keeps its top 8 bits;
    32-bit and float images are a HighDepthError."""
    if opened.mode in SIXTEEN_BIT:
        grey = (np.asarray(opened).astype(np.uint16) >> 8).astype(np.uint8)
        pixels = np.repeat(grey[..., None], 3, axis=2)
    elif opened.mode in ("I", "F", "I;32", "I;32B", "I;32L"):
        raise HighDepthError(
            f"a {opened.mode} image (32-bit or float pixels); allowed: 8-bit or 16-bit images"
        )
    else:
        pixels = np.array(opened.convert("RGB"))  # a copy torch may write to
    return np.ascontiguousarray(upright(pixels, orientation(opened)))
