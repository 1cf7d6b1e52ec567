"""A randomly initialised encoder (timm's ViT init, seeded by `seed`), saved as it is: the
random-init arm, the floor every pretraining should clear."""

from __future__ import annotations

import torch

from studylib.checkpoint import check_free_disk
from studylib.experiment import Experiment
from studylib.models import vit
from studylib.runs import Run, save_encoder, train_once


def run_for(exp: Experiment) -> Run:
    return Run(exp, "init", {})


def random_encoder(exp: Experiment) -> Run:
    run = run_for(exp)

    def make_results() -> dict:
        torch.manual_seed(exp.seed)
        model = vit(exp.model)
        check_free_disk(run, model)
        save_encoder(run, model)
        return {"train_flops": 0.0}

    return train_once(run, make_results)
