"""studylib: a reproducible study of MAE pre-pretraining for vision transformers."""

from studylib.config import load_experiment
from studylib.errors import ConfigError
from studylib.experiment import Experiment

__all__ = ["ConfigError", "Experiment", "load_experiment"]
