"""The one audit orchestration: settings -> one summary per layer -> one report per layer.

Both the Prefect flow (flows/audit.py, after encoding) and `qscope-eval report`
(re-rendering from a database) call `summarize_layers` and `render_layers`, so a
re-render of an audit's run gives the same pages and summaries: every layer, the
suite's cost kind and min_support, the truncation warnings, the run's own
timestamp. The settings an audit resolved are stored in its `runs.params`.

Also here, because the CLI and the flow both need them: Prefect's environment
defaults and the task-runner parser (neither imports Prefect).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from qscope_eval.errors import QScopeError
from qscope_eval.jobs import summary as sm
from qscope_eval.jobs.pipeline import truncation_warnings
from qscope_eval.store import Store

DEFAULT_DASK_WORKERS = 2
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def prefect_env(home: bool = True) -> None:
    """Environment defaults for Prefect; must run before `import prefect` (settings are read then)."""
    if home:
        os.environ.setdefault("PREFECT_HOME", str(Path(".prefect").resolve()))
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


class _DropPrefectServerNotes(logging.Filter):
    """Prefect's notes on starting and stopping its temporary local server (and the link it adds)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Starting temporary server") or msg.startswith("Stopping temporary server"))


def quiet_prefect_logs(machine_output: bool = False) -> None:
    """Keep the audit's terminal readable: our flow's own lines and every warning stay; Prefect's temporary-server
    notes and each task's "Finished in state Completed()" go. `machine_output` (--json/--csv): warnings only.
    Call after `import prefect` (which configures its loggers). `QSCOPE_EVAL_PREFECT_NOTES=1` keeps the server
    notes (to see how many temporary servers a run starts)."""
    base = logging.getLogger("prefect")
    if os.environ.get("QSCOPE_EVAL_PREFECT_NOTES") != "1" and not any(isinstance(f, _DropPrefectServerNotes) for f in base.filters):
        base.addFilter(_DropPrefectServerNotes())
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)
    if machine_output:
        logging.getLogger("prefect.flow_runs").setLevel(logging.WARNING)


def parse_task_runner(spec: str | None) -> tuple[int, str | None] | None:
    """`None` -> None (in-process); `dask` / `dask=N` -> (N local workers, None); `dask=gpus` -> (one local worker
    per GPU, None; model.devices); `dask=ADDRESS` -> (0, ADDRESS)."""
    if not spec:
        return None
    kind, eq, arg = spec.partition("=")
    if kind != "dask" or (eq and not arg):
        raise QScopeError(f"task runner {spec!r} is not understood; use `dask`, `dask=N` (N local workers), "
                          f"`dask=gpus` (one worker per GPU) or `dask=ADDRESS` (a running scheduler, e.g. tcp://10.0.0.5:8786)")
    if arg == "gpus":
        from qscope_eval.model.devices import GPUS_ENV, gpu_count

        n = gpu_count()
        if n < 1:
            raise QScopeError(f"dask=gpus found no CUDA GPU; use dask=N for CPU workers (or {GPUS_ENV}=N for a dry run)")
        return n, None
    if arg.isdigit():
        if int(arg) < 1:
            raise QScopeError("dask=N needs N >= 1 workers")
        return int(arg), None
    return (0, arg) if arg else (DEFAULT_DASK_WORKERS, None)


@dataclass(frozen=True)
class AuditSettings:
    """What an audit's summaries depend on besides the data (stored in runs.params as `settings`)."""

    suite: str
    """Suite name (audit history is grouped by it)."""
    benchmarks: tuple[str, ...]
    """The suite's benchmarks, in suite order."""
    encoder_ids: tuple[int, ...]
    """Main (SAE) encoder of each layer; the first one's report is the main page."""
    target: float = 0.95
    """Share of coverage the recommendation keeps."""
    cost: str = "samples"
    """Benchmark cost kind: samples, tokens or custom."""
    min_support: int = 1
    """A feature counts for a benchmark when it fires in at least this many of its samples."""
    exact: bool = False
    """Exact MILP selection instead of lazy greedy."""
    method: str = "characteristic"
    """Benchmark recommendation: characteristic (docs/recommendation.md) or union (the report's set cover)."""
    tau: float | None = None
    """characteristic: share of a benchmark's characteristic a kept one must show (None: the library default)."""
    scores: dict | None = None
    """The suite's score selection (ScoreSelectionSpec.params(): paths, max_error, ...) or None: features only."""
    notes: tuple[str, ...] = ()
    """Warnings the audit's own steps raised (a skipped `validation:` step, a change of encode path), shown on the
    main report."""

    def __post_init__(self):
        if not self.encoder_ids:
            raise QScopeError(f"suite {self.suite!r} has no encoded layer in this database; run `qscope-eval audit` first")
        if self.cost not in sm.COST_KINDS:
            raise QScopeError(f"cost {self.cost!r} is not one of {', '.join(sm.COST_KINDS)}")
        if not 0 < self.target <= 1:
            raise QScopeError(f"target must be in (0, 1], got {self.target}")
        if self.method not in sm.METHODS:
            raise QScopeError(f"selection method {self.method!r} is not one of {', '.join(sm.METHODS)}")

    def to_params(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_params(cls, params: dict) -> "AuditSettings":
        fields = {k: params[k] for k in cls.__dataclass_fields__ if k in params}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def summarize_layers(store: Store, settings: AuditSettings, run_id: str | None,
                     save_features: bool = False, tokens: bool = True) -> list[dict]:
    """One summary.json dict per layer (the first is the main report); `save_features` records F(D) for drift.

    Each summary's `gaps` compares the suite's reference corpora with its benchmarks (None without a
    reference); `tokens=False` leaves out the token views, which re-encode a few prompts in this process
    (the flow with Dask workers does not hold the model)."""
    from qscope_eval.jobs.gaps import summary_gaps

    warnings = truncation_warnings(store, [store.encoder(e) for e in settings.encoder_ids], list(settings.benchmarks))
    generated = store.run_started_at(run_id) if run_id else None
    summaries = []
    for encoder_id in settings.encoder_ids:
        ld = sm.load(store, encoder_id, list(settings.benchmarks))
        s = sm.audit_summary(store, ld, settings.suite, run_id, settings.target, settings.cost,
                             min_support=settings.min_support, exact=settings.exact, method=settings.method,
                             tau=settings.tau)
        if save_features:
            store.save_run_features(run_id, sm.feature_sets(ld.real, min_support=settings.min_support), encoder_id)
        s["gaps"] = summary_gaps(store, encoder_id, settings.suite, tokens=tokens)
        s["warnings"] = list(warnings) + s.get("warnings", [])  # truncation first, then the summary's own
        s["validation"] = store.latest_validation(encoder_id)  # `validate` (or the suite's validation step), if run
        s["score_validation"] = store.latest_score_validation(encoder_id)  # `validate --scores`, if saved
        s["behaviour_selection"] = _behaviour(store, ld, settings, s["warnings"])
        if generated:
            s["generated_at"] = generated
        summaries.append(s)
    summaries[0]["warnings"] += settings.notes  # the audit's own warnings go on the main report
    if len(summaries) > 1:
        layers = sm.layer_overview(summaries)
        for s in summaries:
            s["layers"] = layers
    return summaries


def _behaviour(store: Store, ld: sm.Loaded, settings: AuditSettings, warnings: list[str]) -> dict | None:
    """The recommendation from the suite's score tables (None without them, or with a warning when they are bad)."""
    if not settings.scores:
        return None
    from qscope_eval.jobs.behaviour_select import select_with_scores

    try:
        return select_with_scores(store, ld, cost=settings.cost, tau=settings.tau, **settings.scores)
    except QScopeError as e:  # a bad table must not fail an audit whose encoding is done: say so on the report
        warnings.append(f"selection.scores skipped: {e}")
        return None


def layer_dirs(summaries: list[dict], out: str | Path) -> list[Path]:
    """Where each layer's report goes: the first layer at `out`, each other layer in `out/layer{L}`."""
    rows = summaries[0].get("layers") or [{"report": "report.html"}]
    return [(Path(out) / row["report"]).parent for row in rows]


def render_layers(summaries: list[dict], out: str | Path, png: bool = True):
    """Render every layer's report; returns the main (first) layer's ReportFiles."""
    from qscope_eval.report import render_report

    files = [render_report(s, d, png=png) for s, d in zip(summaries, layer_dirs(summaries, out))]
    return files[0]


def rerender_settings(store: Store, suite: str | None = None, encoder: str | int | None = None,
                      target: float | None = None) -> tuple[AuditSettings, str | None]:
    """The settings to re-render: the suite's last completed audit (every layer, its cost and min_support),
    or, for a database that was only encoded, all its SAE encoders with the defaults. Returns (settings, run_id)."""
    suites = store.suites()
    if suite is None:
        if len(suites) != 1:
            raise QScopeError(f"this database holds several suites ({', '.join(suites)}); name one with --suite")
        suite = suites[0]
    elif suite not in suites:
        raise QScopeError(f"no benchmarks of suite {suite!r} in this database; suites there: {', '.join(suites) or 'none'}")
    run = store.last_run(suite)
    saved = (run or {}).get("params", {}).get("settings")
    if saved:
        settings, run_id = AuditSettings.from_params(saved), run["run_id"]
    else:  # encoded but never audited (or audited by a version that did not store its settings)
        benches = tuple(store.benchmark_names(suite=suite))
        ids = tuple(e.encoder_id for e in store.encoders() if e.kind == "sae")
        settings, run_id = AuditSettings(suite, benches, ids), (run or {}).get("run_id")
    changes = {}
    if encoder is not None:
        changes["encoder_ids"] = (store.encoder(encoder).encoder_id,)
    if target is not None:
        changes["target"] = target
    if changes:
        settings = AuditSettings(**{**asdict(settings), **changes})
    return settings, run_id
