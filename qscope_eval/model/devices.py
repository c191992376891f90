"""One worker per GPU: how many GPUs a machine offers, and which one a worker process encodes on.

A machine with several GPUs runs an audit with `--task-runner dask=gpus`: a local Dask cluster with
one worker process per visible GPU (jobs.audit.parse_task_runner counts them with `gpu_count`). Each
worker loads the model once (model.encoders.load_runtime) on ITS GPU: worker i of a local cluster uses
cuda:(i mod n_gpus) when the suite says `device: auto` or `cuda` (`device_for_worker`); an explicit
`cuda:N` or `cpu` is kept, and outside a Dask worker nothing changes. The flow hands shards to whichever
worker is free, so the GPUs share the work without any further coordination; the single writer stays
in the flow process.

QSCOPE_GPUS overrides the count (a dry run of the layout on a CPU machine: the workers then keep
`device: auto`, which is the CPU there).
"""

from __future__ import annotations

import os

GPUS_ENV = "QSCOPE_GPUS"


def gpu_count() -> int:
    """GPUs to run workers on: $QSCOPE_GPUS if set, else torch.cuda.device_count()."""
    given = os.environ.get(GPUS_ENV, "").strip()
    if given:
        if not given.isdigit():
            from qscope_eval.errors import QScopeError

            raise QScopeError(f"{GPUS_ENV}={given!r} is not a number of GPUs; unset it or give e.g. {GPUS_ENV}=2")
        return int(given)
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_index() -> int | None:
    """This process's index in a local Dask cluster (worker names 0..N-1), or None outside a Dask worker."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        name = get_worker().name
    except ValueError:  # not running inside a worker
        return None
    if isinstance(name, int):
        return name
    return int(name) if str(name).isdigit() else None


def device_for_worker(device: str, index: int | None, n_gpus: int) -> str:
    """The device worker `index` uses: cuda:(index mod n_gpus) for `auto`/`cuda` on a GPU machine, else `device`."""
    if index is None or n_gpus < 1 or device not in ("auto", "cuda"):
        return device
    return f"cuda:{index % n_gpus}"


def this_worker_device(device: str) -> str:
    """device_for_worker for the calling process (real CUDA devices only: the override is for counting)."""
    index = worker_index()
    if index is None or device not in ("auto", "cuda"):
        return device
    import torch

    return device_for_worker(device, index, torch.cuda.device_count() if torch.cuda.is_available() else 0)
