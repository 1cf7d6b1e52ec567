"""The pretraining arms of studylib.registry.ARMS: each returns the chain of runs it trains (or
reuses), the last holding the encoder that probes and transfer tasks take; with train=False, the
same chain's run folders, nothing trained (`studylib config` prints their names)."""

from __future__ import annotations

from studylib.config import Experiment
from studylib.runs import Run
from studylib.stages import init, mae, wsp


def random_init(exp: Experiment, train: bool = True) -> list[Run]:
    return [init.random_encoder(exp) if train else init.run_for(exp)]


def mae_only(exp: Experiment, train: bool = True) -> list[Run]:
    return [mae.pretrain(exp) if train else mae.run_for(exp)]


def wsp_from_scratch(exp: Experiment, train: bool = True) -> list[Run]:
    return [wsp.pretrain(exp) if train else wsp.run_for(exp)]


def mae_then_wsp(exp: Experiment, train: bool = True) -> list[Run]:
    mae_run = mae.pretrain(exp) if train else mae.run_for(exp)
    return [mae_run, wsp.pretrain(exp, init=mae_run) if train else wsp.run_for(exp, mae_run)]
