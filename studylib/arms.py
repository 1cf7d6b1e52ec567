"""The pretraining arms of studylib.registry.ARMS: each returns the chain of runs it trains (or
reuses), the last holding the encoder that probes and transfer tasks take."""

from __future__ import annotations

from studylib.config import Experiment
from studylib.runs import Run
from studylib.stages import init, mae, wsp


def random_init(exp: Experiment) -> list[Run]:
    return [init.random_encoder(exp)]


def mae_only(exp: Experiment) -> list[Run]:
    return [mae.pretrain(exp)]


def wsp_from_scratch(exp: Experiment) -> list[Run]:
    return [wsp.pretrain(exp)]


def mae_then_wsp(exp: Experiment) -> list[Run]:
    mae_run = mae.pretrain(exp)
    return [mae_run, wsp.pretrain(exp, init=mae_run)]
