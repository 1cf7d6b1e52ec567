"""Vision transformers (timm) and the masked autoencoder that pre-pretrains them.

The MAE follows He et al. (2022) and its `models_mae.py`: the encoder is a timm
`VisionTransformer` that sees only the visible 25% of patches, a light decoder of timm `Block`s
fills in the rest, and the loss is the mean squared error on masked patches against per-patch
normalised pixels.
"""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from studylib.registry import VIT_SIZES


def vit(size: str, num_classes: int = 0, drop_path: float = 0.0) -> VisionTransformer:
    """A ViT of a named size with fixed 2-D sin-cos position embeddings (as in MAE).

    num_classes=0 gives the bare encoder, whose output is the normalised class token; drop_path is
    the stochastic-depth rate (fine-tuning).
    """
    model = VisionTransformer(
        **VIT_SIZES[size], num_classes=num_classes, global_pool="token", drop_path_rate=drop_path
    )
    grid = model.patch_embed.grid_size
    sincos = build_sincos2d_pos_embed(list(grid), model.embed_dim)
    with torch.no_grad():
        model.pos_embed[:, 0].zero_()
        model.pos_embed[:, 1:].copy_(sincos.reshape(1, -1, model.embed_dim))
    model.pos_embed.requires_grad_(False)
    return model


def choose_attention(model: nn.Module, device: torch.device) -> None:
    """torch's fused attention (scaled_dot_product_attention) on GPUs; on CPUs timm's explicit
    softmax(q k^T) v, which for our short sequences trains as fast in fp32, 17% faster for the
    MAE with its narrow decoder heads and 2x faster under bf16, where torch's CPU flash-attention
    backward runs ~9x slower than in fp32 (torch 2.14), and extracts ViT-nano's features faster
    (benchmarks/RESULTS.md)."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):  # timm's Attention
            module.fused_attn = device.type != "cpu"


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s state dict with whole tensors: weights sharded by FSDP2 (DTensors) are gathered,
    which every rank must do together; other models' state dicts are returned as they are."""
    from torch.distributed.tensor import DTensor

    return {
        k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()
    }


def encoder_state(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """A ViT's weights without its classification head: what one stage hands to the next (call it on
    every rank: FSDP2's weights are gathered)."""
    return {k: v for k, v in full_state(model).items() if not k.startswith("head.")}


def load_encoder(model: VisionTransformer, state: dict[str, torch.Tensor]) -> None:
    """Load encoder weights into `model`; every encoder weight must match, only the head may
    differ."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(
            f"encoder weights do not fit this model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, patch*patch*C), patches in raster order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(
        b, (h // patch) * (w // patch), patch * patch * c
    )


def random_masking(
    n: int, length: int, mask_ratio: float, device: torch.device, rank: int = 0, world: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the kept patches (n, keep) and the mask (n, length), 1 where a patch is hidden.

    Exactly round(length * (1 - mask_ratio)) patches are kept in every sample. In a job of several
    tasks, the noise is drawn for the global batch and each rank takes its rows, as one process
    would.
    """
    keep = int(round(length * (1 - mask_ratio)))
    noise = torch.rand(n * world, length, device=device)[rank * n : (rank + 1) * n]
    ids_keep = noise.argsort(dim=1)[:, :keep]
    mask = torch.ones(n, length, device=device)
    mask.scatter_(1, ids_keep, 0.0)
    return ids_keep, mask


class MAE(nn.Module):
    """Masked autoencoder around a timm ViT encoder."""

    def __init__(
        self,
        size: str,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = vit(size)
        self.mask_ratio = mask_ratio
        # (rank, world) in a job of several tasks: its rows of the global batch's masks
        self.ranks = (
            0,
            1,
        )
        self.norm_pix_loss = norm_pix_loss
        self.patch = self.encoder.patch_embed.patch_size[0]
        grid = self.encoder.patch_embed.grid_size
        self.decoder_embed = nn.Linear(self.encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        sincos = build_sincos2d_pos_embed(list(grid), decoder_dim).reshape(1, -1, decoder_dim)
        self.register_buffer(
            "decoder_pos_embed", torch.cat([torch.zeros(1, 1, decoder_dim), sincos], 1)
        )
        self.decoder_blocks = nn.Sequential(
            *[Block(decoder_dim, decoder_heads) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch**2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = enc.blocks(torch.cat([cls, x], dim=1))
        return enc.norm(x)

    def forward_decoder(
        self, latent: torch.Tensor, ids_keep: torch.Tensor, length: int
    ) -> torch.Tensor:
        x = self.decoder_embed(latent)
        b, _, d = x.shape
        # Scatter the visible tokens back to their places; every other place gets the mask token.
        full = self.mask_token.to(x.dtype).expand(b, length, d).clone()
        full.scatter_(1, ids_keep.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = patchify(images, self.patch)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, predicted patches (B, L, p*p*3) and mask (B, L) for a batch of normalised
        images."""
        length = self.encoder.patch_embed.num_patches
        ids_keep, mask = random_masking(
            images.shape[0], length, self.mask_ratio, images.device, *self.ranks
        )
        latent = self.forward_encoder(images, ids_keep)
        pred = self.forward_decoder(latent, ids_keep, length)
        return self.loss(images, pred, mask), pred, mask


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, img_size: int, batch: int = 1) -> int:
    """Forward FLOPs (2 per multiply-add) of `model` on `batch` images, counted by torch on the meta
    device, so even the 2B model costs no memory."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = _to_meta(model)
    with FlopCounterMode(display=False) as counter:
        meta(torch.empty(batch, 3, img_size, img_size, device="meta"))
    return counter.get_total_flops()


def _to_meta(model: nn.Module) -> nn.Module:
    import copy

    if next(model.parameters()).device.type == "meta":
        return model
    clone = copy.deepcopy(model)
    return clone.to("meta")


def size_table() -> list[dict]:
    """Parameters and forward GFLOPs per image of every named ViT size (built on the meta
    device)."""
    rows = []
    for name, spec in VIT_SIZES.items():
        with torch.device("meta"):
            model = vit(name)
        rows.append(
            {
                "model": name,
                "img_size": spec["img_size"],
                "patch": spec["patch_size"],
                "params_M": count_params(model) / 1e6,
                "gflops_per_image": count_flops(model, spec["img_size"]) / 1e9,
            }
        )
    return rows


def train_flops(forward: float, images_seen: int) -> float:
    """Training FLOPs: 3x the forward FLOPs per image (forward + backward; count_flops, called
    before training, as a model sharded by FSDP2 cannot be copied) per image seen."""
    return 3.0 * forward * images_seen
