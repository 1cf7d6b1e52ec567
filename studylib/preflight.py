"""What can be known before anything trains, checked before a study's first run or a job's
submission: batches that fit their images, a streamed pool that reads, probe datasets with test
images."""

from __future__ import annotations

from studylib import pool
from studylib.data import load_dataset
from studylib.errors import ConfigError, DataError
from studylib.experiment import Experiment
from studylib.pool import open_pool
from studylib.stages import mae


def check_sizes(exp: Experiment) -> None:
    """What can be known before anything trains: `check_batches`, and every probe dataset has test
    images."""
    check_batches(exp)
    for name in exp.data.probe:
        data = load_dataset(name, exp.data)
        if not len(data.test_labels):
            raise DataError(
                f"{name}: no test images; a probe needs a test split ({name}/test/<class>/<image>)"
            )


def check_batches(exp: Experiment) -> None:
    """Every batch fits its images (a batch larger than the set would shrink while its lr stays
    scaled for the configured one), and a streamed pool's tars and tags are sound (its fingerprint
    and tag counts, both cached for the runs)."""
    images = open_pool(exp)
    if images.streamed:
        images.identity()
        images.tags()
    pool_images, mae_images = pool.count(exp), pool.count(exp, *mae.image_source(exp))
    for key, batch, images, what in (
        ("mae.batch_size", exp.mae.batch_size, mae_images, "MAE's images"),
        ("wsp.batch_size", exp.wsp.batch_size, pool_images, "the pool"),
    ):
        if batch > images:
            raise ConfigError(
                f"{key}: {batch} is more than the {images} images of {what}; allowed: at most "
                f"{images}"
            )
