"""Zero-shot transfer by locked-image tuning (LiT, Zhai et al. 2022).

The pretrained image tower is frozen; a small text transformer, trained from scratch, learns to
map each pretraining image's hashtag caption next to the image's features, with a CLIP-style
symmetric contrastive loss and a learnable temperature. Zero-shot classification then embeds
class names in a few prompt templates and picks the nearest class for each test image.

On a streamed pool (shards, or an image folder with data.stream) the captions are the images' own
tags: one pass over the pool (centre crops, each rank its shards, the stream's drop policy) gives
the features and captions, and zero-shot top-1 is measured on the test set of the first probe
dataset (data.probe), whose name the run's identity then holds. In a job of several tasks each rank
contrasts its own share of the batch (no all-gather), so the negatives per image are batch_size /
tasks.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from studylib.distributed import device_and_dtype
from studylib.engine import train
from studylib.evaluation import frozen_encoder, top1
from studylib.experiment import Experiment
from studylib.features import extract_features, feature_batches
from studylib.images import ImageDataset
from studylib.pool import open_pool
from studylib.runs import Run, train_once
from studylib.schema import ZeroShotConfig

PAD, CLS, UNKNOWN = 0, 1, 2


def words(text: str) -> list[str]:
    """'#aquarium_fish #fish_daily' -> ['aquarium', 'fish', 'fish', 'daily']."""
    return re.findall(r"[a-z0-9]+", text.lower())


class Tokenizer:
    """Word-level: every word of the training captions gets an id; other words map to UNKNOWN."""

    def __init__(self, captions: list[str]) -> None:
        self.vocab = sorted({w for caption in captions for w in words(caption)})
        self.ids = {w: i + 3 for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab) + 3

    def __call__(self, texts: list[str], max_tokens: int) -> torch.Tensor:
        """(len(texts), max_tokens + 1) ids: CLS, the words, then PAD."""
        out = torch.full((len(texts), max_tokens + 1), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [CLS] + [self.ids.get(w, UNKNOWN) for w in words(text)][:max_tokens]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


class TextTower(nn.Module):
    """Token and position embeddings, a pre-norm transformer, the CLS token projected to the image
    feature space; plus the contrastive temperature (log of CLIP's 1/0.07 at start)."""

    def __init__(self, vocab_size: int, config: ZeroShotConfig, out_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, config.text_dim, padding_idx=PAD)
        self.pos_embed = nn.Parameter(torch.randn(1, config.max_tokens + 1, config.text_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.text_dim,
            config.text_heads,
            4 * config.text_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.text_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.text_dim)
        self.proj = nn.Linear(config.text_dim, out_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos_embed[:, : tokens.shape[1]]
        x = self.blocks(x, src_key_padding_mask=tokens == PAD)
        return nn.functional.normalize(self.proj(self.norm(x[:, 0])).float(), dim=-1)


def contrastive_loss(
    tower: nn.Module, image_features: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Symmetric cross-entropy over the batch's image-caption similarities (CLIP)."""
    text = tower(tokens)
    image = nn.functional.normalize(image_features.float(), dim=-1)
    scale = (tower.module if hasattr(tower, "module") else tower).logit_scale.exp().clamp(max=100)
    logits = scale * image @ text.T
    target = torch.arange(len(logits), device=logits.device)
    return (
        nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)
    ) / 2


def class_names(data: ImageDataset, level: str) -> list[str]:
    names = data.classes if level == "fine" else data.coarse_classes or []
    return [name.replace("_", " ") for name in names]


@torch.no_grad()
def zeroshot_weights(
    tower: TextTower,
    tokenizer: Tokenizer,
    names: list[str],
    config: ZeroShotConfig,
    device: torch.device,
) -> torch.Tensor:
    """(classes, dim) text embeddings, averaged over the prompt templates (CLIP's prompt
    ensemble)."""
    tower.eval()
    per_template = [
        tower(tokenizer([t.format(n) for n in names], config.max_tokens).to(device))
        for t in config.templates
    ]
    return nn.functional.normalize(torch.stack(per_template).mean(0), dim=-1)


def run_for(exp: Experiment, encoder_run: Run) -> Run:
    images = open_pool(exp)
    identity = {"encoder": encoder_run.name, "data": images.identity()}
    return Run(exp, "zeroshot", {**identity, **images.test_identity()})


def rows(exp: Experiment, encoder_run: Run, _dataset: None = None) -> list[dict]:
    """Top-1 and chance with fine and (where there are) coarse class names, on the pool's test
    set."""
    run = zeroshot(exp, encoder_run)
    result = run.results()
    return [
        {
            "dataset": result["dataset"],
            "variant": level,
            "metric": metric,
            "value": result[f"{metric}_{level}"],
            "run": run.name,
        }
        for level in ("fine", "coarse")
        if f"top1_{level}" in result
        for metric in ("top1", "chance")
    ]


def zeroshot(exp: Experiment, encoder_run: Run) -> Run:
    """Train a text tower against `encoder_run`'s frozen image features on the pool's hashtag
    captions, then zero-shot top-1 on the pool dataset's test set (a streamed pool: the first probe
    dataset's) with fine and (where it has them) coarse names."""
    config = exp.transfer.zeroshot
    run = run_for(exp, encoder_run)

    def make_results() -> dict:
        device, dtype = device_and_dtype(exp)
        encoder = frozen_encoder(exp, encoder_run)
        images = open_pool(exp)
        image_features, captions = images.captioned_features(encoder, device, dtype)
        data = images.test_set()
        tokenizer = Tokenizer(captions)
        torch.manual_seed(exp.seed)
        tower = TextTower(len(tokenizer), config, encoder.embed_dim)
        tokens = tokenizer(captions, config.max_tokens)
        batches = feature_batches(image_features, tokens, config.batch_size, device)
        summary = train(run, tower, contrastive_loss, batches, config, device, dtype, exp.seed)
        test = nn.functional.normalize(
            extract_features(encoder, data.test_images, device, dtype), dim=-1
        )
        results = {
            **summary,
            "dataset": data.name,
            "encoder": encoder_run.name,
            "text_vocab": len(tokenizer),
            "temperature": 1 / tower.logit_scale.exp().item(),
        }
        for level in ("fine", "coarse"):
            names = class_names(data, level)
            if not names:
                continue
            labels = data.test_labels if level == "fine" else data.fine_to_coarse[data.test_labels]
            weights = zeroshot_weights(tower, tokenizer, names, config, device)
            results[f"top1_{level}"] = top1(test @ weights.T, labels)
            results[f"chance_{level}"] = 100 / len(names)
        return results

    return train_once(run, make_results)
