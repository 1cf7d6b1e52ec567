"""studylib: a reproducible study of MAE pre-pretraining for vision transformers."""

from studylib.config import Experiment, load_experiment
from studylib.errors import ConfigError

__all__ = ["ConfigError", "Experiment", "load_experiment"]
