"""The audit flow: suite -> register -> encode shards -> metrics -> selection -> report (DESIGN §7).

Tasks are thin calls into the library. The flow process is the ONLY DuckDB writer:
`encode_shard` is pure compute (one shard's texts in, its batches out; it runs on a
thread of this process or on a Dask worker) and `write_shard` stores each shard as
soon as its future completes, its forward batches merged into transactions of up to 2^20 pairs. The store is the
resume point: a rerun registers again and encodes only the samples still pending.

Input errors (suite, benchmark files, model, SAE) fail in `load` before the first
write, so bad input leaves the database as it was. (With Dask workers, `load` reads
only the model's config and checks its weight files exist: the flow process never
holds the model; a corrupt checkpoint then fails on the workers, as a failed run.) From the first write on, the
run is recorded in `runs` (run_id = the Prefect flow-run id); a failure marks it
`failed` with the error and re-raises.

    from flows.audit import audit
    audit("demo", db="out/demo.duckdb", out="out/demo")               # one process, local ephemeral Prefect
    audit("demo", db="out/demo.duckdb", out="out/demo", task_runner="dask=4")   # 4 local Dask workers
    audit(..., task_runner="dask=tcp://scheduler:8786")                    # an existing Dask cluster

A suite with several layers gets one report per layer (the first at `out`, the others in
`out/layer{L}/`), linked from a table of all layers.

Dask workers need qscope-eval importable (and this folder on PYTHONPATH when it is not installed) and,
for a remote cluster, a Prefect API they can reach (PREFECT_API_URL of a Prefect server).
"""

from __future__ import annotations

import uuid
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from qscope_eval.model.encoders import EncoderInfo, check_encoders

from qscope_eval import progress as prog
from qscope_eval.jobs import pipeline
from qscope_eval.jobs.audit import AuditSettings, parse_task_runner, render_layers, summarize_layers
from qscope_eval.store import Store
from qscope_eval.data.suite import Suite, load_suite
from qscope_eval.errors import QScopeError

# Nothing here is worth caching or persisting: the store is the cache, and shard results are big arrays.
LOCAL = dict(cache_policy=NO_CACHE, persist_result=False)


def make_task_runner(spec: str | None):
    """A prefect-dask DaskTaskRunner for `spec` (see parse_task_runner), or None for the flow's own runner."""
    parsed = parse_task_runner(spec)
    if parsed is None:
        return None
    from prefect_dask import DaskTaskRunner

    n_workers, address = parsed
    if address:
        return DaskTaskRunner(address=address)
    # processes, one thread each: torch gets a whole worker; no dashboard port to collide with
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def _share_api(runner):
    """Dask workers report to THIS process's Prefect API. (In local ephemeral mode the settings hold no
    URL, and each worker process would start a temporary server of its own.)"""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if runner is None or PREFECT_API_URL.value():
        return nullcontext()
    return temporary_settings(updates={PREFECT_API_URL: str(get_client(sync_client=True).api_url)})


# ---- tasks: each one library call ------------------------------------------------------

@task(**LOCAL)
def load(suite: str, remote_workers: bool = False) -> tuple[Suite, pd.DataFrame, list[EncoderInfo]]:
    """Read the suite and every benchmark; cross-check the model and SAEs. Writes nothing.

    In-process, the model is loaded here (cached: the shard tasks reuse it). With Dask workers
    this process never runs the model, so only its config is read (check_encoders).
    """
    s = load_suite(suite)
    rows = pipeline.load_rows(s)
    s = pipeline.ensure_reference_stats(s, rows)  # `top` with an SAE that ships no statistics: computed once, cached
    encoders = check_encoders(s) if remote_workers else pipeline.load_runtime(s).encoders
    return s, rows, encoders


@task(**LOCAL)
def prepare(suite: Suite, store: Store, rows: pd.DataFrame, encoders: list) -> pipeline.Prepared:
    """Register benchmarks and encoders; list the samples some encoder still lacks."""
    return pipeline.prepare(suite, store, rows, encoders)


@task(retries=2, retry_delay_seconds=5, task_run_name="encode-shard-{shard}", **LOCAL)
def encode_shard(shard: int, suite: Suite, ids: np.ndarray, texts: list[str]) -> list[pipeline.EncodedBatch]:
    """Pure compute for one shard (no database): tokenize, forward, encode, pool."""
    return list(pipeline.encode_texts(pipeline.load_runtime(suite), ids, texts, suite))


@task(task_run_name="write-shard-{shard}", **LOCAL)
def write_shard(shard: int, store: Store, encoders: dict, batches: list[pipeline.EncodedBatch],
                texts: dict | None = None) -> int:
    """Store one shard: its forward batches merged into transactions of up to 2^20 pairs (with `texts`, the
    lexical encoders' rows too, computed here from the texts). Returns its samples."""
    for batch in pipeline.merged_runs(batches):
        pipeline.write_results(store, encoders, batch, texts)
    store.release()  # the flow now waits for the next shard: let readers in meanwhile
    return sum(len(b.ids) for b in batches)


@task(**LOCAL)
def summarize(store: Store, settings: AuditSettings, run_id: str, tokens: bool = True) -> list[dict]:
    """Metrics, selection, duplicates, drift and reference gaps per layer (summary.json); records each F(D) for
    the next drift. tokens=False: no token views in the gaps (this process does not hold the model)."""
    return summarize_layers(store, settings, run_id, save_features=True, tokens=tokens)


@task(**LOCAL)
def validate(store: Store, suite: Suite, encoder_id: int) -> str | None:
    """The suite's `validation:` step (feature proxy vs lm-eval per-sample logs), stored for `summarize` to show.

    Returns None, or why it was skipped: the audit's own results stand, and the report says so."""
    from qscope_eval.jobs.validation import ValidateConfig, run_validation

    v = suite.validation
    cfg = ValidateConfig(metric=v.metric, filter=v.filter, reference=v.reference, draws=v.draws, replicates=v.replicates)
    try:
        run_validation(store, list(v.logs), cfg, encoder=encoder_id)
    except QScopeError as e:
        return f"validation against behaviour skipped: {e}"
    return None


@task(**LOCAL)
def render(summaries: list[dict], out: str):
    """The HTML/PNG report and summary.json of every layer under `out` (the first layer's is returned)."""
    return render_layers(summaries, out)


# ---- the flow ----------------------------------------------------------------------------

def _encode(prep: pipeline.Prepared, store: Store, task_runner: str | None) -> int:
    """Fan the pending ids out in shards; write each shard here as it completes. Returns samples encoded."""
    ids, size = prep.pending_ids, prep.suite.encode.shard_size
    runner = make_task_runner(task_runner)
    done, error = 0, None
    prep.backfill(store)()  # lexical rows of samples the SAE stored before the lexical encoder existed
    bar = prog.bar(total=len(ids), desc="encode", unit="sample")  # on a terminal; off with --json
    with _share_api(runner), runner or nullcontext(), bar:
        submit = (lambda **kw: runner.submit(encode_shard, kw)) if runner else encode_shard.submit
        futures = {submit(shard=n, suite=prep.suite, ids=ids[i:i + size],
                          texts=[prep.texts[x] for x in ids[i:i + size].tolist()]): n
                   for n, i in enumerate(range(0, len(ids), size))}
        for fut in as_completed(list(futures)):
            shard = futures.pop(fut)  # drop our reference: the shard's arrays are freed once written
            try:
                batches = fut.result()
            except Exception as e:  # keep storing the other shards (less to redo), fail afterwards
                error = error or e
                continue
            n = write_shard(shard, store, prep.encoders, batches, prep.texts)
            done += n
            bar.update(n)
    if error is not None:
        raise error
    return done


def _record_failure(store: Store, run_id: str, error: BaseException) -> None:
    try:
        store.finish_run(run_id, "failed", error=f"{type(error).__name__}: {error}")
    except Exception as e:  # never hide the audit's own error behind a bookkeeping one
        get_run_logger().error("could not record the failed run %s: %s", run_id, e)


@flow(name="qscope-audit", task_runner=ThreadPoolTaskRunner(max_workers=1))
def audit(suite: str, db: str, out: str, target: float | None = None, task_runner: str | None = None,
          exact: bool = False) -> dict:
    """Audit a benchmark suite: encode what is missing, then coverage, overlap, selection and the report.

    suite: a suite YAML path or a built-in name; db: the DuckDB file; out: the report folder;
    target: share to keep (default: the suite's selection.target): of the feature union for method union, of the
        characteristic mass at sample level;
    task_runner: None (in-process), `dask`, `dask=N` or `dask=ADDRESS`; exact: MILP selection.
    """
    log = get_run_logger()
    remote = parse_task_runner(task_runner) is not None  # a bad spec fails now, before anything loads
    s, rows, encoders = load(suite, remote)
    if remote:
        log.info("model and SAEs checked from their config and files; the weights load on the Dask workers only")
    run_id = str(flow_run.id or uuid.uuid4())
    params = {"suite": suite, "db": db, "out": out, "target": target, "task_runner": task_runner, "exact": exact}
    with Store(db) as store:
        store.start_run(run_id, s.name, params)
        try:
            prep = prepare(s, store, rows, encoders)
            log.info("%s: %d samples, %d to encode, encoders %s", s.name, prep.n_samples, len(prep.pending_ids),
                     ", ".join(prep.encoders))
            for w in prep.warnings:
                log.warning(w)
            n_encoded = _encode(prep, store, task_runner)
            settings = AuditSettings(s.name, tuple(b.name for b in s.benchmarks),
                                     tuple(e.encoder_id for e in prep.main_encoders), target or s.selection.target,
                                     s.selection.cost, s.selection.min_support, exact, s.selection.method,
                                     s.selection.tau, s.selection.scores and s.selection.scores.params())
            why = validate(store, s, settings.encoder_ids[0]) if s.validation is not None else None
            notes = tuple(prep.warnings) + ((why,) if why else ())
            if notes:  # stored with the settings, so `qscope-eval report` shows them too
                settings = replace(settings, notes=notes)
            store.update_run_params(run_id, {**params, "settings": settings.to_params()})
            summaries = summarize(store, settings, run_id, tokens=not remote)
            for w in summaries[0]["warnings"]:
                log.warning(w)
            summary, enc = summaries[0], prep.main_encoders[0]
            files = render(summaries, out)
            store.finish_run(run_id, "completed", enc.encoder_id, summary=summary, report_dir=str(Path(out).resolve()))
        except BaseException as e:
            _record_failure(store, run_id, e)
            raise
    log.info("report: %s", files.html)
    return {"run_id": run_id, "suite": s.name, "n_samples": prep.n_samples, "n_encoded": n_encoded,
            "html": str(files.html), "pngs": {k: str(p) for k, p in files.pngs.items()},
            "summary_json": str(files.summary_json),
            "summary": summary}

