"""Common corruptions of the CIFAR-10-C kind, computed on the fly in torch, for robustness
evaluation.

Re-implements Hendrycks & Dietterich (2019), "Benchmarking Neural Network Robustness to Common
Corruptions", with the CIFAR severity parameters of github.com/hendrycks/robustness,
`ImageNet-C/create_c/make_cifar_c.py`. Images are uint8 (N, 3, H, W); work is vectorised over the
batch; noise comes from a local `torch.Generator` seeded by `seed` (other corruptions ignore it). As
in the original (`np.uint8`), float results are truncated to uint8. Blurs are the original's filters
(scipy gaussian, cv2 disk, scipy-zoom average) written as matrix products; HSV edits are the exact
closed form of skimage's rgb->hsv->rgb round trip; pixelate and jpeg (torchcodec's libjpeg) match
PIL, which the original used, bit for bit."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchcodec.decoders import decode_jpeg
from torchcodec.encoders import JpegEncoder

from studylib.errors import ConfigError
from studylib.registry import CORRUPTIONS

SEVERITIES = (1, 2, 3, 4, 5)


def _filter_matrix(n: int, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """(n, n) matrix of 1-D correlation with `kernel` along an axis of length n, border padded by
    `mode`."""
    r = len(kernel) // 2
    eye = F.pad(torch.eye(n, dtype=torch.float64)[:, None], (r, r), mode=mode)
    return F.conv1d(eye, kernel.view(1, 1, -1))[:, 0].T


def _separable(x: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum of a @ x @ b.T over (a, b) pairs: a acts on the height axis, b on the width axis."""
    h, w = x.shape[2:]
    # many terms on small images: one dense (HW, HW) operator is cheaper
    if len(pairs) * (h + w) > h * w / 4:
        op = sum(torch.kron(a, b) for a, b in pairs).float()
        return (x.reshape(-1, h * w) @ op.T).view_as(x)
    return sum(a.float() @ x @ b.float().T for a, b in pairs)


def _gauss1d(sigma: float, radius: int) -> torch.Tensor:
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    k = _gauss1d(sigma, int(4 * sigma + 0.5))  # scipy.ndimage.gaussian_filter, mode "nearest"
    return _separable(
        x,
        [(_filter_matrix(x.shape[2], k, "replicate"), _filter_matrix(x.shape[3], k, "replicate"))],
    )


def _defocus_blur(x: torch.Tensor, c: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    radius, alias = c
    r = torch.arange(-8, 9, dtype=torch.float64)
    disk = ((r[:, None] ** 2 + r[None] ** 2) <= radius**2).double()
    g = _gauss1d(alias, 1)  # cv2.GaussianBlur(ksize=3) of the disk
    kernel = F.conv2d(
        (disk / disk.sum())[None, None], (g[:, None] * g[None])[None, None], padding=1
    )[0, 0]
    # the kernel's support; cv2.filter2D (BORDER_REFLECT_101) as a sum of separable filters:
    e = int(radius) + 1
    u, s, vh = torch.linalg.svd(kernel[8 - e : 9 + e, 8 - e : 9 + e])
    return _separable(
        x,
        [
            (
                _filter_matrix(x.shape[2], u[:, i] * s[i], "reflect"),
                _filter_matrix(x.shape[3], vh[i], "reflect"),
            )
            for i in range(len(s))
            if s[i] > 1e-9 * s[0]
        ],
    )


def _zoom_matrix(n: int, z: float) -> torch.Tensor:
    """(n, n) linear map of clipped_zoom: scipy zoom (order 1) of the centre crop, trimmed to n."""
    ch = math.ceil(n / z)
    top, m = (n - ch) // 2, round(ch * z)
    q = torch.arange((m - n) // 2, (m - n) // 2 + n, dtype=torch.float64) * (ch - 1) / max(m - 1, 1)
    lo = q.floor().long().clamp(max=ch - 2)
    a = torch.zeros(n, n, dtype=torch.float64)
    a[torch.arange(n), top + lo] = 1 - (q - lo)
    a[torch.arange(n), top + lo + 1] += q - lo
    return a


def _zoom_blur(x: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    # the image itself, then np.arange(1, ..., 0.01)
    zooms = [1.0] + [1 + 0.01 * i for i in range(count)]
    return _separable(
        x, [(_zoom_matrix(x.shape[2], z), _zoom_matrix(x.shape[3], z)) for z in zooms]
    ) / len(zooms)


def _box_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of PIL's BOX resampling along one axis."""
    scale = n_in / n_out
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    d = (torch.arange(n_in, dtype=torch.float64)[None] + 0.5 - centre[:, None]) / max(scale, 1.0)
    w = ((d > -0.5) & (d <= 0.5)).double()
    return (w / w.sum(1, keepdim=True)).float()


def _pixelate(images: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    x = images.float()
    h, w = x.shape[2:]
    # PIL: horizontal pass, then vertical, 8-bit between
    for size_h, size_w in (
        (int(h * c), int(w * c)),
        (h, w),
    ):
        x = (x @ _box_matrix(x.shape[3], size_w).T + 0.5).floor()
        x = (_box_matrix(x.shape[2], size_h) @ x + 0.5).floor()
    return x.clamp(0, 255).byte()


def _jpeg(images: torch.Tensor, quality: int, gen: torch.Generator) -> torch.Tensor:
    encoded = [JpegEncoder(image).to_tensor(quality=quality) for image in images]
    return torch.stack([decode_jpeg(blob) for blob in encoded])


def _hsv_edit(x: torch.Tensor, c: float | tuple[float, float], value: bool) -> torch.Tensor:
    """Closed form of skimage rgb2hsv, then V + c (value) or S * c[0] + c[1], clipped, then
    hsv2rgb."""
    v, mn = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    if value:
        v2 = (v + c).clamp(max=1)
        return torch.where(v > 0, x * v2 / v.clamp(min=1e-12), v2)
    delta = v - mn
    s2 = ((delta / v.clamp(min=1e-12)) * c[0] + c[1]).clamp(0, 1)
    # skimage puts hue 0 (red) on grey pixels
    grey = v * torch.tensor([0.0, 1.0, 1.0]).view(1, 3, 1, 1)
    # offset from V at saturation 1
    unit = torch.where(delta > 0, (v - x) * v / delta.clamp(min=1e-12), grey)
    return v - s2 * unit


_FUNCS: dict[str, Callable[[torch.Tensor, object, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": lambda x, c, g: x + c * torch.randn(x.shape, generator=g),
    "shot_noise": lambda x, c, g: torch.poisson(x * c, generator=g) / c,
    "impulse_noise": lambda x, c, g: torch.where(
        torch.rand(x.shape, generator=g) < c, (torch.rand(x.shape, generator=g) < 0.5).float(), x
    ),
    "speckle_noise": lambda x, c, g: x + x * c * torch.randn(x.shape, generator=g),
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "zoom_blur": _zoom_blur,
    "contrast": lambda x, c, g: (
        (x - x.mean((2, 3), keepdim=True)) * c + x.mean((2, 3), keepdim=True)
    ),
    "brightness": lambda x, c, g: _hsv_edit(x, c, value=True),
    "saturate": lambda x, c, g: _hsv_edit(x, c, value=False),
}
_UINT8_FUNCS = {"jpeg_compression": _jpeg, "pixelate": _pixelate}  # these take and return uint8


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt uint8 images (N, 3, H, W) with `name` at `severity` (1-5); deterministic given
    `seed`."""
    if name not in CORRUPTIONS:
        raise ConfigError(f"corruption {name!r} is unknown; allowed: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ConfigError(
            f"severity {severity!r} is not allowed; allowed: {', '.join(map(str, SEVERITIES))}"
        )
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if len(images) == 0:
        return images.clone()
    c, gen, device = (
        CORRUPTIONS[name][severity - 1],
        torch.Generator().manual_seed(seed),
        images.device,
    )
    images = images.cpu().contiguous()
    if name in _UINT8_FUNCS:
        return _UINT8_FUNCS[name](images, c, gen).to(device)
    out = _FUNCS[name](images.float() / 255, c, gen)  # a new tensor, so it may be changed in place
    # truncate like np.uint8 (+float slack)
    return out.clamp_(0, 1).mul_(255).add_(1e-3).to(torch.uint8).to(device)
