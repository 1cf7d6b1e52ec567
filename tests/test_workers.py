"""launch.seed_workers: a study's seeds as concurrent processes give the table one process gives."""

import os

import pytest
import torch

from studylib import errors, workers
from studylib.config import load_experiment
from studylib.study import default_study

TWO_SEEDS = ["studies.seeds=[0,1]", "model=pico"]


@pytest.fixture
def one_thread():
    """Both sides at one thread a process: a thread count may change a float's last bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_workers_give_the_table_of_one_process(one_thread, tmp_path, monkeypatch, capsys):
    def table(count: int):
        monkeypatch.setenv("STUDYLIB_RUNS", str(tmp_path / f"runs{count}"))
        exp = load_experiment("smoke", [*TWO_SEEDS, f"launch.seed_workers={count}"])
        result = default_study(exp).query("metric in ['top1', 'final_loss']")
        return result[["seed", "arm", "stage", "dataset", "metric", "value"]].reset_index(drop=True)

    alone, together = table(1), table(2)
    assert "2 seeds, 2 at a time, 1 thread(s) each" in capsys.readouterr().out
    assert len(alone.query("metric == 'top1'")) == 2 * 5  # 2 seeds x 5 arms
    assert alone.equals(together)


def rows_or_raise(exp):
    """A seed's rows, and the worker's pid; seed 1 fails as a study error would."""
    if exp.seed == 1:
        raise errors.DataError("seed 1: broken on purpose")
    return [{"pid": os.getpid()}]


def test_seeds_run_in_other_processes_in_order_and_a_seed_error_comes_back(one_thread):
    exp = load_experiment("smoke", ["launch.seed_workers=2"])
    rows = workers.run_seeds(exp, rows_or_raise, [0, 2, 3], "toy")
    assert [row["seed"] for row in rows] == [0, 2, 3]
    assert os.getpid() not in {row["pid"] for row in rows}
    with pytest.raises(errors.DataError, match="seed 1: broken on purpose"):
        workers.run_seeds(exp, rows_or_raise, [0, 1], "toy")


def test_one_worker_per_seed_at_most_and_one_process_for_one_worker():
    exp = load_experiment("smoke", ["launch.seed_workers=4"])
    assert workers.worker_count(exp, 3) == 3
    rows = workers.run_seeds(
        load_experiment("smoke"), rows_or_raise, [0, 2], "toy"
    )  # launch.seed_workers defaults to 1: no other process
    assert {row["pid"] for row in rows} == {os.getpid()}
