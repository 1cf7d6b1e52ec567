"""A study's seeds as concurrent processes of one job (launch.seed_workers), the job's CPU threads
shared out among them. At ViT-nano's sizes one thread per process keeps two cores busier than two
threads on one process (OpenMP's barriers around small matrices; benchmarks/RESULTS.md).

Workers are spawned (never forked from a process whose OpenMP threads may be running), so what they
run must be picklable: a module's function, or a functools.partial of one. A worker dies with the
job's process (Linux's parent-death signal), so a stopped job leaves no seed training on.
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

import torch

from studylib import distributed
from studylib.experiment import Experiment
from studylib.io import duration

OneSeed = Callable[[Experiment], list[dict]]


def worker_count(exp: Experiment, seeds: int) -> int:
    """How many processes run the seeds: launch.seed_workers, at most one per seed, and one in a job
    of several ranks (whose ranks train each seed together)."""
    if distributed.world_size() > 1:
        return 1
    return max(1, min(exp.launch.seed_workers, seeds))


def run_seeds(exp: Experiment, one_seed: OneSeed, seeds: Sequence[int], study: str) -> list[dict]:
    """`one_seed`'s rows for every seed (the seed in each row), in the order of `seeds`, run by
    `worker_count` processes; a seed's error is raised here once the seeds running beside it end."""
    workers = worker_count(exp, len(seeds))
    label = study or "study"
    if workers == 1:
        rows, start = [], time.perf_counter()
        for k, seed in enumerate(seeds):
            left = (time.perf_counter() - start) / max(k, 1) * (len(seeds) - k)
            eta = f", eta {duration(left)}" if k else ""
            print(f"[{label}] seed {seed}: {k + 1} of {len(seeds)}{eta}", flush=True)
            rows += seed_rows(one_seed, exp, seed)
        return rows
    threads = max(1, torch.get_num_threads() // workers)
    print(
        f"[{label}] {len(seeds)} seeds, {workers} at a time, {threads} thread(s) each", flush=True
    )
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(threads,),
    ) as pool:
        futures = [pool.submit(seed_rows, one_seed, exp, seed, label) for seed in seeds]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in finished if f.exception() is not None]
        if failed:
            for future in futures:
                future.cancel()
            raise failed[0].exception()
        return [row for future in futures for row in future.result()]


def seed_rows(one_seed: OneSeed, exp: Experiment, seed: int, label: str = "") -> list[dict]:
    """`one_seed` on `exp` at `seed`, with the seed in every row."""
    if label:
        print(f"[{label}] seed {seed}: started", flush=True)
    rows = one_seed(dataclasses.replace(exp, seed=seed))
    return [{**row, "seed": seed} for row in rows]


def _start_worker(threads: int) -> None:
    """A worker's set-up: its share of the threads, and death with the process that started it."""
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
