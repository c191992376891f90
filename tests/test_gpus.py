"""One worker per GPU (`--task-runner dask=gpus`, qscope_eval.model.devices), dry run on CPU.

The count comes from torch (or QSCOPE_GPUS, set here to pretend a 2-GPU machine); a real local Dask
cluster of 2 worker processes then shows each worker resolving its own GPU index, and a worker on
this CPU machine keeping `device: auto` (no CUDA to put it on).
"""

from __future__ import annotations

import pytest

from qscope_eval.errors import QScopeError
from qscope_eval.model.devices import GPUS_ENV, device_for_worker, gpu_count, worker_index


def test_device_for_worker():
    assert [device_for_worker("auto", i, 2) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert device_for_worker("cuda", 3, 4) == "cuda:3"
    assert device_for_worker("cuda:2", 0, 4) == "cuda:2"  # an explicit device is kept
    assert device_for_worker("cpu", 1, 4) == "cpu"
    assert device_for_worker("auto", None, 4) == "auto"  # not a Dask worker
    assert device_for_worker("auto", 1, 0) == "auto"  # no GPU: auto stays auto (the CPU)
    assert worker_index() is None


def test_dask_gpus_counts_gpus(monkeypatch):
    from prefect_dask import DaskTaskRunner

    from flows.audit import make_task_runner
    from qscope_eval.jobs.audit import parse_task_runner

    monkeypatch.setenv(GPUS_ENV, "2")
    assert gpu_count() == 2 and parse_task_runner("dask=gpus") == (2, None)
    runner = make_task_runner("dask=gpus")
    assert isinstance(runner, DaskTaskRunner) and runner.cluster_kwargs["n_workers"] == 2
    assert runner.cluster_kwargs["processes"] and runner.cluster_kwargs["threads_per_worker"] == 1
    monkeypatch.setenv(GPUS_ENV, "0")
    with pytest.raises(QScopeError, match="no CUDA GPU"):
        parse_task_runner("dask=gpus")
    monkeypatch.setenv(GPUS_ENV, "two")
    with pytest.raises(QScopeError, match="not a number"):
        gpu_count()


def _where() -> tuple:
    from qscope_eval.model.devices import this_worker_device, worker_index

    i = worker_index()
    return i, device_for_worker("auto", i, 2), this_worker_device("auto")


def test_each_local_worker_takes_its_own_gpu():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        # one task pinned to each worker, as the flow's shard tasks run there
        futures = [client.submit(_where, workers=[addr], pure=False) for addr in client.scheduler_info()["workers"]]
        got = client.gather(futures)
    assert sorted(got) == [(0, "cuda:0", "auto"), (1, "cuda:1", "auto")]
