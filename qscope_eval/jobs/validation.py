"""The validate job: lm-eval sample logs + a store -> does the feature proxy track behaviour? (DESIGN §5a)

Glue only: data/lmeval_logs reads the logs, data/lmeval_match matches them to
stored samples, analysis/validation does the math, the store keeps models,
per-sample scores and the result (store/validation). Everything is computed before the single write transaction, so
a fatal error (no logs, nothing matched, fewer than 3 models) writes nothing.

Overlap measures are pluggable: OVERLAP_MEASURES maps a name to a function of the
loaded encoder's arrays returning a (K, K) matrix (or None when it does not apply);
the recommendation's own measure can be registered there.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from datetime import datetime, timezone
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from qscope_eval.analysis import metrics
from qscope_eval.analysis import validation as V
from qscope_eval import progress as prog
from qscope_eval.data.lmeval_logs import LogSet, read_logs
from qscope_eval.data.lmeval_match import SampleIndex, TaskMatch, match_tasks
from qscope_eval.jobs import summary as sm_
from qscope_eval.store import Store


@dataclass(frozen=True)
class ValidateConfig:
    """How to read the logs and how hard to bootstrap."""

    metric: str | None = None
    """Per-sample metric to use (default: the first the task logs, e.g. acc or exact_match)."""
    filter: str | None = None
    """lm-eval filter to use when a task logs several (default: the first, e.g. strict-match)."""
    reference: str | None = None
    """Benchmark (stored name or logged task) to control for in partial score correlations."""
    draws: int = 2000
    """Monte Carlo (n, subset) draws per benchmark for R(D)."""
    replicates: int = 500
    """Bootstrap replicates (models and benchmarks resampled) for every interval."""
    seed: int = 0
    """Seed of the draws and the bootstrap."""
    min_items: int = 10
    """A benchmark needs at least this many samples scored for every one of its models."""
    level: float = 0.95
    """Interval level."""

    def __post_init__(self):
        if self.draws < 100 or self.replicates < 50 or self.min_items < 2 or not 0.5 < self.level < 1:
            raise V.ValidationError("validate: draws >= 100, replicates >= 50, min_items >= 2 and 0.5 < level < 1 are required")


def _sym(ld: sm_.Loaded, sm: metrics.SuiteMetrics) -> np.ndarray:
    return sm.overlap.sym


def _freq(ld: sm_.Loaded, sm: metrics.SuiteMetrics) -> np.ndarray:
    return V.frequency_weighted_overlap(metrics.benchmark_features(ld.real.M, metrics.fired(ld.real.X)))


def _null_sym(ld: sm_.Loaded, sm: metrics.SuiteMetrics) -> np.ndarray | None:
    return None if sm.null_overlap is None else sm.null_overlap.sym


def _lexical_sym(ld: sm_.Loaded, sm: metrics.SuiteMetrics) -> np.ndarray | None:
    return None if sm.lexical_overlap is None else sm.lexical_overlap.sym


OVERLAP_MEASURES: dict[str, Callable[[sm_.Loaded, metrics.SuiteMetrics], np.ndarray | None]] = {
    "sym": _sym,                  # the report's Eq. 11
    "freq_weighted": _freq,       # Σ_f min(p_a(f), p_b(f)): alike firing distributions
    "null_sym": _null_sym,        # Eq. 11 on the random-dictionary twin: what geometry alone gives
    "lexical_sym": _lexical_sym,  # Eq. 11 on the prompts' words (docs/baselines.md): what the surface alone gives
}
LABELS = {"sym": "feature overlap (symmetric, report Eq. 11)", "freq_weighted": "frequency-weighted feature overlap",
          "null_sym": "null-dictionary overlap (baseline)", "lexical_sym": "prompts' words overlap (baseline)"}


# ----------------------------------------------------------------------------- scores per benchmark
@dataclass
class BenchScores:
    """One benchmark's correctness matrix over the models that cover it."""

    name: str
    match: TaskMatch
    models: list[str]
    sample_ids: np.ndarray
    C: np.ndarray
    """(models × samples) scores, complete."""


def _score_rows(logs: LogSet, matches: list[TaskMatch]) -> pd.DataFrame:
    """One row per (model, benchmark, sample): the value (mean if lm-eval logged the same prompt twice)."""
    by_task = defaultdict(list)
    for tl in logs.tasks:
        by_task[tl.task].append(tl)
    rows = []
    for tm in matches:
        if tm.benchmark is None:
            continue
        for tl in by_task[tm.task]:
            for d, x in zip(tl.doc_ids, tl.values):
                sid = tm.samples.get((tl.model, d))
                if sid is not None:
                    rows.append((tl.model, tm.benchmark, sid, float(x), tl.metric, tl.filter, tl.task, d))
    df = pd.DataFrame(rows, columns=["model", "benchmark", "sample_id", "value", "metric", "filter", "task", "doc_id"])
    return df.groupby(["model", "benchmark", "sample_id"], as_index=False, sort=False).agg(
        value=("value", "mean"), metric=("metric", "first"), filter=("filter", "first"), task=("task", "first"),
        doc_id=("doc_id", "min"))


def _matrices(df: pd.DataFrame, matches: list[TaskMatch], cfg: ValidateConfig, notes: list[str]) -> list[BenchScores]:
    """Per benchmark: drop models missing over half its samples, keep samples every remaining model has."""
    out = []
    for tm in matches:
        if tm.benchmark is None:
            continue
        part = df[df.benchmark == tm.benchmark]
        metrics_used = sorted(part.metric.unique())
        if len(metrics_used) > 1:  # e.g. one model's log lacks `acc`: scores on different scales do not rank
            notes.append(f"{tm.benchmark}: models were scored with different metrics ({', '.join(metrics_used)}); "
                         "pass --metric to use one")
        wide = part.pivot(index="model", columns="sample_id", values="value")
        have = wide.notna().mean(axis=1)
        thin = sorted(have.index[have < 0.5])
        if thin:
            notes.append(f"{tm.benchmark}: models {', '.join(thin)} have under half of its matched samples; left out of it")
        wide = wide.drop(index=thin)
        full = wide.dropna(axis=1)
        if full.shape[1] < wide.shape[1]:
            notes.append(f"{tm.benchmark}: {wide.shape[1] - full.shape[1]} of {wide.shape[1]} matched samples lack "
                         "a score from some model; using the samples every model has")
        if full.shape[0] < V.MIN_MODELS or full.shape[1] < cfg.min_items:
            notes.append(f"{tm.benchmark}: {full.shape[0]} models x {full.shape[1]} common samples; needs "
                         f">= {V.MIN_MODELS} models and >= {cfg.min_items} samples: left out")
            continue
        out.append(BenchScores(tm.benchmark, tm, list(full.index), full.columns.to_numpy(np.int64), full.to_numpy(np.float64)))
    return out


def _null_r(C: np.ndarray, draws: int, seed: int) -> float:
    """R with each item's scores shuffled across models: what the definition gives with no real ranking."""
    rng = np.random.default_rng(seed)
    P = np.take_along_axis(C, rng.random(C.shape).argsort(axis=0), axis=0)
    return V.performance_redundancy(P, draws, seed).r


def _resolve_reference(ref: str | None, benches: list[BenchScores]) -> int | None:
    if ref is None:
        return None
    for k, b in enumerate(benches):
        if ref in (b.name, b.match.task):
            return k
    known = ", ".join(f"{b.name} (task {b.match.task})" for b in benches) or "none"
    raise V.ValidationError(f"--reference {ref!r} is not a validated benchmark; choose one of: {known}")


# ----------------------------------------------------------------------------- the job
def _f(x) -> float | None:
    return metrics.finite(x)


def _matrix(A: np.ndarray | None) -> list | None:
    return None if A is None else [[_f(x) for x in row] for row in A]


def _feature_side(store: Store, encoder, benches: list[BenchScores]) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Encoder info, per-benchmark R̂/AUC/N and every applicable overlap measure, on the SAME samples as R
    (each benchmark's scored items, not all it stores: R and R̂ of one D must see one D); and stored sizes."""
    names = [b.name for b in benches]
    ld = sm_.load(store, encoder, names)
    stored = np.asarray(ld.real.M.sum(axis=1)).ravel()
    rows, cols = [], []
    for k, b in enumerate(benches):
        pos = np.searchsorted(ld.real.sample_ids, b.sample_ids)
        ok = (pos < len(ld.real.sample_ids)) & (ld.real.sample_ids[np.minimum(pos, len(ld.real.sample_ids) - 1)] == b.sample_ids)
        if not ok.all():
            raise V.ValidationError(f"{(~ok).sum()} scored samples of {b.name} are not encoded by encoder "
                                    f"{ld.real.encoder.encoder_id}; run `qscope-eval encode` for its suite first")
        rows += [k] * len(pos)
        cols += pos.tolist()
    M = sp.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(len(benches), len(ld.real.sample_ids)))
    lex = ld.lexical and ld.lexical._replace(data=dataclasses.replace(ld.lexical.data, M=M))
    ld = sm_.Loaded(dataclasses.replace(ld.real, M=M), ld.null and dataclasses.replace(ld.null, M=M), lex)
    sm = sm_.suite_metrics(ld)
    per = {"r_hat": np.array([r.r_hat for r in sm.redundancy]), "auc": np.array([r.auc for r in sm.redundancy]),
           "n_samples": sm.coverage.n_samples.astype(np.float64)}
    overlaps = {k: fn(ld, sm) for k, fn in OVERLAP_MEASURES.items()}
    return sm_._encoder_dict(ld), per, {k: v for k, v in overlaps.items() if v is not None}, stored


def _verdicts(res: V.ValidationResult, n_models: int) -> list[str]:
    by = {(a.name, a.method): a for a in res.agreements}
    lines = []
    for ov in ("sym", "freq_weighted"):
        a = by.get((f"{ov}~score_pearson", "spearman"))
        if a is not None:
            line = V.verdict(a, LABELS[ov], "score correlation", n_models)
            for key, who in (("null_sym", "random directions"), ("lexical_sym", "the prompts' words")):
                base = by.get((f"{key}~score_pearson", "spearman"))
                if base is not None and ov == "sym" and math.isfinite(base.value):
                    has_hi = a.hi is not None and math.isfinite(a.hi)
                    if has_hi and base.value > a.hi:  # the baseline's point lies above the SAE's whole interval
                        line += f"; {who} do better (ρ = {base.value:.2f}): the SAE adds nothing visible over them"
                    elif a.lo is not None and math.isfinite(a.lo) and base.value >= a.lo:
                        line += f"; {who} do as well (ρ = {base.value:.2f}): the SAE adds nothing visible over them"
                    else:
                        line += f" ({who}: ρ = {base.value:.2f})"
            lines.append(line)
    a = by.get(("r~r_hat", "spearman"))
    line = V.verdict(a, "the feature redundancy R̂", "performance-based redundancy R", n_models)
    base = by.get(("r~n_samples", "spearman"))
    if base is not None and math.isfinite(base.value):
        line += f" (benchmark size alone: ρ = {base.value:.2f})"
    return lines + [line]


def _result_dict(vid, cfg, enc, benches, names, models, per, overlaps, res, ref, matches, notes, r_null, stored) -> dict:
    K = len(names)
    corr = res.corr
    bench_rows = []
    for k, (b, red) in enumerate(zip(benches, res.redundancy)):
        scores = {m: _f(b.C[i].mean()) for i, m in enumerate(b.models)}
        bench_rows.append({"name": b.name, "task": b.match.task, "n_models": len(b.models), "n_items": int(b.C.shape[1]),
                           "r": _f(red.r), "r_se": _f(red.se), "r_lo": _f(res.r_lo[k]), "r_hi": _f(res.r_hi[k]),
                           "r_null": _f(r_null[k]), "r_hat": _f(per["r_hat"][k]), "auc": _f(per["auc"][k]),
                           "n_stored": int(stored[k]), "scores": scores,
                           "tau_curve": {"n": [int(x) for x in red.ns], "tau": [_f(x) for x in red.tau_n]}})
    a, b = V.pairs_of(np.arange(K))
    pairs = [{"a": names[i], "b": names[j], "n_models": int(corr.n_models[i, j]),
              "score_pearson": _f(corr.pearson[i, j]), "score_spearman": _f(corr.spearman[i, j]),
              "score_partial": None if corr.partial_pearson is None else _f(corr.partial_pearson[i, j]),
              **{f"overlap_{k}": _f(v[i, j]) for k, v in overlaps.items()}} for i, j in zip(a, b)]
    return {
        "validation_id": vid, "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "encoder": enc, "n_models": len(models), "models": models,
        "draws": cfg.draws, "replicates": res.replicates, "level": res.level, "seed": cfg.seed,
        "reference": None if ref is None else names[ref],
        "matching": [{"task": m.task, "benchmark": m.benchmark, "n_docs": m.n_docs, "n_matched": m.n_matched,
                      "by_doc": m.by_doc,
                      "unmatched": m.unmatched, "note": m.note} for m in matches],
        "benchmarks": bench_rows,
        "score_correlation": {"names": names, "pearson": _matrix(corr.pearson), "spearman": _matrix(corr.spearman),
                              "partial_pearson": _matrix(corr.partial_pearson), "n_models": corr.n_models.tolist()},
        "overlap": {k: _matrix(v) for k, v in overlaps.items()},
        "pairs": pairs,
        "agreement": [{"name": x.name, "method": x.method, "value": _f(x.value), "lo": _f(x.lo), "hi": _f(x.hi),
                       "n_units": x.n_units, "n_models": x.n_models, "replicates": x.replicates} for x in res.agreements],
        "verdicts": _verdicts(res, len(models)),
        "notes": notes,
    }


def matched_logs(store: Store, paths: list[str], metric: str | None, filt: str | None,
                 error: type[Exception]) -> tuple[LogSet, list[TaskMatch], pd.DataFrame, list[str]]:
    """Read the lm-eval sample logs under `paths` and match them to the stored prompts by content: (logs, the task
    matches, one score row per matched document, notes). `error` (the caller's error class) on an empty database
    or when no logged prompt is stored. `validate` and `anchors` both start here."""
    logs = read_logs(paths, metric, filt)
    texts, members = store.stored_prompts()
    if not texts:
        raise error(f"{store.path} has no benchmarks; run `qscope-eval encode SUITE --db {store.path}` first")
    matches = match_tasks(logs.tasks, SampleIndex(texts), members)
    notes = list(logs.notes) + [m.note for m in matches if m.note]
    if not any(m.benchmark for m in matches):
        raise error("no logged prompt matches a stored sample: the logs are of tasks this database does "
                    f"not hold (logged: {', '.join(sorted({t.task for t in logs.tasks}))})")
    return logs, matches, _score_rows(logs, matches), notes


def run_validation(store: Store, paths: list[str], cfg: ValidateConfig = ValidateConfig(), encoder=None,
                   save: bool = True) -> dict:
    """Read, match, compute, and (save=True) store models, per-sample scores and the result in one transaction."""
    logs, matches, df, notes = matched_logs(store, paths, cfg.metric, cfg.filter, V.ValidationError)
    benches = _matrices(df, matches, cfg, notes)
    models = sorted({m for b in benches for m in b.models})
    if len(models) < V.MIN_MODELS or not benches:
        raise V.ValidationError(
            f"validation needs per-sample scores of at least {V.MIN_MODELS} models on a common benchmark (rankings and "
            f"correlations over fewer mean nothing); found {len(logs.models)} model(s): {', '.join(logs.models)}; "
            "add the logs of more models")
    names = [b.name for b in benches]
    ref = _resolve_reference(cfg.reference, benches)
    enc, per, overlaps, stored = _feature_side(store, encoder, benches)
    col = {m: j for j, m in enumerate(models)}
    S = np.full((len(benches), len(models)), np.nan)
    for k, b in enumerate(benches):
        S[k, [col[m] for m in b.models]] = b.C.mean(axis=1)
    signs = [V.draw_pair_signs(b.C, cfg.draws, cfg.seed + k)
             for k, b in enumerate(prog.bar(benches, desc="validate: R draws", unit="benchmark"))]
    inp = V.ValidationInput(names, models, signs, [np.array([col[m] for m in b.models]) for b in benches], S,
                            per, overlaps, ref)
    with prog.stage(f"validate: model bootstrap ({cfg.replicates} replicates)"):
        res = V.validate(inp, cfg.replicates, cfg.seed, cfg.level)
    tied = [b.name for b, r in zip(benches, res.redundancy) if not math.isfinite(r.r)]
    if tied:  # e.g. lm-eval's dummy model: every generation wrong
        notes.append(f"{', '.join(tied)}: every model has the same score, so there is no ranking: R and the "
                     "correlations involving it are undefined (left out)")
    r_null = [_null_r(b.C, max(cfg.draws // 2, 100), cfg.seed + 7919 + k)
              for k, b in enumerate(prog.bar(benches, desc="validate: R_null", unit="benchmark"))]
    vid = str(uuid.uuid4())
    out = _result_dict(vid, cfg, enc, benches, names, models, per, overlaps, res, ref, matches, notes, r_null, stored)
    if save:
        used = df.merge(pd.DataFrame([(b.name, m) for b in benches for m in b.models], columns=["benchmark", "model"]))
        sources = {tl.model: str(tl.path.parent) for tl in logs.tasks}
        mdf = pd.DataFrame({"model": models, "source": [sources.get(m) for m in models]})
        store.save_validation(vid, enc["encoder_id"], {"paths": [str(p) for p in paths], **cfg.__dict__}, out, mdf, used)
    return out
