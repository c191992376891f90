"""The anchors job: lm-eval sample logs of many models + a store -> per benchmark, the few items whose
results estimate a model's full-benchmark score, with the estimate's error on held-out models beside
random items of the same count (analysis/anchors.py). Without logs: the feature-only sample selection
(jobs/summary.select_samples), labelled as such — it keeps features, not scores.

Glue only: data/lmeval_logs reads, data/lmeval_match matches logged prompts to stored samples, the
validate job's helpers build each benchmark's correctness matrix (models × items), analysis/anchors
chooses and evaluates. Nothing is written to the database.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qscope_eval.analysis import anchors as A
from qscope_eval.analysis.metrics import finite
from qscope_eval.errors import QScopeError
from qscope_eval.jobs import summary as sm_
from qscope_eval.jobs.validation import BenchScores, ValidateConfig, _matrices, matched_logs
from qscope_eval.store import Store

FEATURE_LABEL = ("feature-only: no per-sample logs, so these items keep the benchmark's SAE features, not its "
                 "scores; do not read a model's score on them (give lm-eval --log_samples folders of several models)")
SCORE_LABEL = ("chosen from the per-item results of the logged models; the error is measured on models held out "
               "of the choice")
EVAL_KEYS = ("mae", "mae_lo", "mae_hi", "rmse", "max_error", "random_mae_mean", "random_mae_sd", "random_rmse_mean",
             "random_better", "random_n_items", "random_mae_q05", "random_mae_q50", "random_mae_q95")
CHARS_PER_TOKEN = 4.0   # token cost of a sample no encoder has counted: characters / 4 (labelled in the output)


@dataclass(frozen=True)
class AnchorConfig:
    """What to choose and how hard to check it."""

    n: int | None = 100
    """Items per benchmark (give this or token_budget)."""
    token_budget: int | None = None
    """Prompt tokens per benchmark instead of a count (items cost their prompt's tokens)."""
    method: str = A.DEFAULT_METHOD
    """Anchor method (analysis/anchors.METHODS)."""
    benchmark: str | None = None
    """Only this benchmark (stored name or logged task); default all that the logs cover."""
    metric: str | None = None
    """Per-sample metric (default: each task's first, e.g. acc or exact_match)."""
    filter: str | None = None
    """lm-eval filter when a task logs several (default: the first)."""
    folds: int = 5
    """K of the K-fold split over models for the held-out error."""
    draws: int = 200
    """Random item subsets for the baseline."""
    seed: int = 0
    """Seed of the clustering, the folds and the random draws."""
    level: float = 0.95
    """Interval level of the held-out error."""

    def __post_init__(self):
        if (self.n is None) == (self.token_budget is None):
            raise A.AnchorError("give either --n or --token-budget (one of them)")
        if self.method not in A.METHODS:
            raise A.AnchorError(f"unknown --method {self.method!r}; choose one of {', '.join(A.METHODS)}")
        if self.folds < 2 or self.draws < 20 or not 0.5 < self.level < 1:
            raise A.AnchorError("anchors: --folds >= 2, --draws >= 20 and 0.5 < level < 1 are required")


def _f(x) -> float | None:
    return finite(x, 4)


def _costs(store: Store, ids: np.ndarray, notes: list[str], name: str) -> tuple[np.ndarray, str]:
    """Token cost per sample: the encoder's count, else characters / 4 (said in a note and in the row)."""
    lengths = store.sample_lengths(ids)
    toks = [lengths[int(i)][1] for i in ids]
    if all(t is not None for t in toks):
        return np.asarray(toks, np.float64), "encoder"
    notes.append(f"{name}: no encoder has counted the tokens of some samples; their cost is characters / "
                 f"{CHARS_PER_TOKEN:g}")
    return np.asarray([t if t is not None else lengths[int(i)][0] / CHARS_PER_TOKEN for i, t in zip(ids, toks)]), "chars/4"


def _estimates(part: pd.DataFrame, b: BenchScores, a: A.Anchors | None, notes: list[str]) -> dict[str, float | None]:
    """Models left out of the matrix (they ran few of the items) that ran every chosen item: their estimated
    full score, points. These are the models a team runs on the anchors alone."""
    if a is None or part.empty:
        return {}
    wide = part.pivot(index="model", columns="sample_id", values="value")
    chosen = b.sample_ids[a.items]
    out = {}
    for m in sorted(set(wide.index) - set(b.models)):
        have = wide.loc[m].reindex(chosen)
        if have.isna().any():
            notes.append(f"{b.name}: {m} ran {int(have.notna().sum())} of the {len(chosen)} chosen items; no estimate "
                         "(run it on all chosen items, or on the whole benchmark)")
            continue
        out[m] = _f(100 * A.estimate(have.to_numpy(np.float64)[None, :], a)[0])
    if out:
        notes.append(f"{b.name}: {', '.join(out)} ran the chosen items only: estimated from them (`estimates`), "
                     "not part of the choice")
    return out


def _bench_row(store: Store, b: BenchScores, doc_ids: dict[int, int], cfg: AnchorConfig, notes: list[str],
               part: pd.DataFrame) -> dict:
    C = b.C
    M, J = C.shape
    costs, source = _costs(store, b.sample_ids, notes, b.name)
    row = {"name": b.name, "task": b.match.task, "evidence": "scores", "method": cfg.method, "n_models": M,
           "n_items": J, "total_tokens": int(costs.sum()), "token_source": source}
    everything = (cfg.n is not None and cfg.n >= J) or (cfg.token_budget is not None and costs.sum() <= cfg.token_budget)
    if everything:
        notes.append(f"{b.name}: {J} items fit the request: run all of them (nothing to choose, no error)")
        items, weights, lam, ev, a = np.arange(J), np.full(J, 1 / J), None, None, None
    else:
        ev = A.evaluate(C, cfg.n, cfg.method, cfg.folds, cfg.draws, cfg.seed, costs, cfg.token_budget, cfg.level)
        a = A.choose_anchors(C, cfg.n, cfg.method, cfg.seed, costs, cfg.token_budget)
        items, weights, lam = a.items, a.weights, a.lam
    row.update({"n_chosen": int(len(items)), "chosen_tokens": int(costs[items].sum()), "lam": _f(lam)})
    row.update({k: (None if ev is None else _f(getattr(ev, k))) for k in EVAL_KEYS[:10]})
    q = (None, None, None) if ev is None else ev.random_mae_q
    row.update({"random_mae_q05": _f(q[0]), "random_mae_q50": _f(q[1]), "random_mae_q95": _f(q[2])})
    full = 100 * C.mean(axis=1)
    row["held_out"] = None if ev is None else {
        m: {"score": _f(s), "estimate": _f(s + e)} for m, s, e in zip(b.models, full, ev.errors)}
    row["estimates"] = _estimates(part, b, a, notes)
    row["feature_coverage"] = None
    row["items"] = [{"sample_id": int(b.sample_ids[j]), "doc_id": doc_ids.get(int(b.sample_ids[j])),
                     "weight": _f(w), "tokens": int(costs[j])} for j, w in zip(items, weights)]
    return row


def _pick(benches: list[BenchScores], wanted: str | None, stored: list[str]) -> tuple[list[BenchScores], list[str]]:
    """The scored benchmarks to choose in, and the stored ones without usable scores (feature-only rows)."""
    scored = {b.name for b in benches}
    if wanted is None:
        return benches, [n for n in stored if n not in scored]
    hit = [b for b in benches if wanted in (b.name, b.match.task)]
    if hit or wanted in stored:
        return hit, [] if hit else [wanted]
    known = ", ".join([f"{b.name} (task {b.match.task})" for b in benches] + [n for n in stored if n not in scored])
    raise A.AnchorError(f"--benchmark {wanted!r} is neither a stored benchmark nor a logged task; choose one of: {known}")


def _head(cfg: AnchorConfig, evidence: str) -> dict:
    return {"evidence": evidence, "label": SCORE_LABEL if evidence == "scores" else FEATURE_LABEL,
            "method": cfg.method if evidence == "scores" else "features", "n": cfg.n, "token_budget": cfg.token_budget,
            "folds": cfg.folds, "draws": cfg.draws, "seed": cfg.seed, "interval_level": cfg.level}


def run_anchors(store: Store, paths: list[str], cfg: AnchorConfig = AnchorConfig(), encoder=None) -> dict:
    """Anchors per benchmark from the logs under `paths`; the feature-only choice when `paths` is empty."""
    if not paths:
        return _feature_only(store, cfg, encoder)
    logs, matches, df, notes = matched_logs(store, paths, cfg.metric, cfg.filter, A.AnchorError)
    benches = _matrices(df, matches, ValidateConfig(metric=cfg.metric, filter=cfg.filter, min_items=3), notes)
    benches, unscored = _pick(benches, cfg.benchmark, store.benchmark_names())
    for b in [b for b in benches if len(b.models) < A.MIN_MODELS]:
        notes.append(f"{b.name}: scores of {len(b.models)} models; the held-out error needs >= {A.MIN_MODELS}: "
                     "feature-only choice")
        unscored.append(b.name)
    benches = [b for b in benches if len(b.models) >= A.MIN_MODELS]
    if not benches:
        raise A.AnchorError(f"anchors need per-sample scores of at least {A.MIN_MODELS} models on a benchmark (to "
                            f"choose on some and measure the error on others); found {len(logs.models)} model(s): "
                            "add the logs of more models")
    doc_ids = df.groupby("sample_id")["doc_id"].min().astype(int).to_dict()
    rows = [_bench_row(store, b, doc_ids, cfg, notes, df[df.benchmark == b.name]) for b in benches]
    if unscored:  # benchmarks no logged model covers: the feature-only choice, labelled per row
        try:
            rows += _feature_rows(store, sm_.load(store, encoder), unscored, cfg, notes)
            notes.append(f"{', '.join(unscored)}: no usable per-sample scores; their items are the feature-only choice "
                         "(evidence 'features': keeps features, not scores)")
        except QScopeError as e:
            notes.append(f"{', '.join(unscored)}: no usable per-sample scores and no feature choice either ({e})")
    models = sorted({m for b in benches for m in b.models})
    # lm-eval's own way to run only these items: `lm_eval ... --samples '<this as JSON>'` (task -> doc_ids)
    runnable = {b["task"]: sorted(it["doc_id"] for it in b["items"]) for b in rows if b["evidence"] == "scores"}
    return {**_head(cfg, "scores"), "n_models": len(models), "models": models, "benchmarks": rows,
            "lmeval_samples": runnable, "notes": notes}


def _feature_only(store: Store, cfg: AnchorConfig, encoder) -> dict:
    """No logs: `select --level sample` per benchmark (best n samples, or a token budget, by characteristic features)."""
    ld = sm_.load(store, encoder)
    names = ld.real.benchmarks
    if cfg.benchmark is not None and cfg.benchmark not in names:
        raise A.AnchorError(f"no benchmark {cfg.benchmark!r}; known: {', '.join(names)}")
    notes: list[str] = []
    rows = _feature_rows(store, ld, [cfg.benchmark] if cfg.benchmark else names, cfg, notes)
    return {**_head(cfg, "features"), "n_models": 0, "models": [], "benchmarks": rows, "lmeval_samples": {},
            "notes": notes}


def _feature_rows(store: Store, ld: sm_.Loaded, names: list[str], cfg: AnchorConfig, notes: list[str]) -> list[dict]:
    rows = []
    for name in names:
        if name not in ld.real.benchmarks:
            notes.append(f"{name}: not encoded by encoder {ld.real.encoder.encoder_id}; no feature choice")
            continue
        n_items = len(ld.real.M[ld.real.benchmarks.index(name)].indices)
        n = None if cfg.n is None else min(cfg.n, n_items)
        rep = sm_.select_samples(store, ld, None, name, n, cfg.token_budget)
        ids = np.asarray(rep["chosen"], np.int64)
        if n is not None and len(ids) < n:
            notes.append(f"{name}: {len(ids)} samples already show all its characteristic features; fewer than --n chosen")
        costs, source = _costs(store, ids, notes, name)
        rows.append({"name": name, "task": None, "evidence": "features", "method": "features", "n_models": 0,
                     "n_items": n_items, "total_tokens": rep["total_tokens"], "token_source": source,
                     "n_chosen": len(ids), "chosen_tokens": int(costs.sum()), "lam": None,
                     **{k: None for k in EVAL_KEYS}, "held_out": None, "estimates": {}, "feature_coverage": _f(rep.get("coverage")),
                     "items": [{"sample_id": int(i), "doc_id": None, "weight": None, "tokens": int(c)}
                               for i, c in zip(ids, costs)]})
    return rows


def export_rows(store: Store, out: dict) -> pd.DataFrame:
    """One row per chosen item (benchmark, task, sample_id, doc_id, weight, tokens, evidence, text): what to run."""
    rows = [{"benchmark": b["name"], "task": b["task"], **it, "evidence": b["evidence"]}
            for b in out["benchmarks"] for it in b["items"]]
    df = pd.DataFrame(rows, columns=["benchmark", "task", "sample_id", "doc_id", "weight", "tokens", "evidence"])
    texts = store.texts(df.sample_id.tolist()) if len(df) else {}
    df["text"] = [texts.get(int(i)) for i in df.sample_id]
    return df
