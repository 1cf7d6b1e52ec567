"""studylib: a reproducible study of MAE pre-pretraining for vision transformers."""

from studylib.config import ConfigError, Experiment, load_experiment

__all__ = ["ConfigError", "Experiment", "load_experiment"]
