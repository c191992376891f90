"""The `validate --scores` job: a score table + a store -> does feature similarity track score correlation? (DESIGN §5a)

Glue only: data/scores reads and matches the table, analysis/proxies computes each
feature kind's pairwise similarity (the SAE encoder, its null twin, and the prompts' own
words: a stored 'lexical' encoder if there is one, else analysis/lexical on the stored
texts), analysis/behaviour compares them with the pairwise score correlations (the
report's Table 2, with permutation tests, bootstrap intervals and the reliability
ceiling), and store/scores keeps models, scores and the result. Everything is computed
before the single write transaction, so any error writes nothing.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from qscope_eval.analysis import lexical, metrics
from qscope_eval.analysis.behaviour import AgreementConfig, score_agreement
from qscope_eval.analysis.proxies import MEASURES, lexical_proxies, proxy_matrices
from qscope_eval.data.score_names import MATCHED
from qscope_eval.data.scores import MIN_MODELS, ScoreTable, ScoreTableError, read_scores
from qscope_eval.jobs import summary as sm_
from qscope_eval.store import Store

KINDS = ("sae", "null", "lexical")
"""Feature kinds compared with behaviour, in report order (proxy names are '<kind>:<measure>')."""


def _f(x) -> float | None:
    return metrics.finite(x)


def resolve_reference(ref: str | None, table: ScoreTable, names: list[str]) -> int | None:
    """--reference BENCH (a stored name, or the table column / lm-eval task that matched it) -> its index in `names`."""
    if ref is None:
        return None
    if ref in names:
        return names.index(ref)
    for m in table.matching:
        if m.column == ref and m.benchmark in names and m.how in MATCHED:
            return names.index(m.benchmark)
    raise ScoreTableError(f"--reference {ref!r} is not a benchmark of this score validation; choose one of: "
                          f"{', '.join(names)}")


def _lexical(store: Store, ld: sm_.Loaded, names: list[str]) -> tuple[dict[str, np.ndarray], str]:
    """Lexical proxies on the SAE's very samples: a stored 'lexical' encoder's counts if any, else the stored texts."""
    es = ld.real
    stored = next((e for e in store.encoders() if e.kind == "lexical"), None)
    if stored is not None:
        lx = store.load_encoded(stored, names)
        if np.array_equal(lx.sample_ids, es.sample_ids):
            return lexical_proxies(es.M, lx.X), f"encoder {stored.encoder_id} ({stored.key})"
    texts = store.texts(es.sample_ids)
    counts = lexical.term_counts([texts[int(i)] for i in es.sample_ids])
    return lexical_proxies(es.M, counts), "word counts of the stored prompt texts (analysis/lexical.term_counts)"


def feature_proxies(store: Store, encoder, names: list[str]) -> tuple[dict[str, np.ndarray], dict, list[str]]:
    """Every '<kind>:<measure>' (K × K) proxy over `names`, the encoder dict, and notes (kinds that are missing)."""
    ld = sm_.load(store, encoder, names)
    have = np.asarray(ld.real.M.sum(axis=1)).ravel()
    empty = [n for n, k in zip(names, have) if k == 0]
    if empty:
        raise ScoreTableError(f"benchmarks {', '.join(empty)} have no samples encoded by encoder "
                              f"{ld.real.encoder.encoder_id}; run `qscope-eval encode` for their suite first")
    notes = []
    proxies = {f"sae:{k}": v for k, v in proxy_matrices(ld.real.M, metrics.fired(ld.real.X)).items()}
    if ld.null is not None:
        proxies.update({f"null:{k}": v for k, v in proxy_matrices(ld.null.M, metrics.fired(ld.null.X)).items()})
    else:
        notes.append("no null encoder rode along with this encoder: the random-dictionary baseline is missing "
                     "(encode with `null: true` in the suite)")
    lex, how = _lexical(store, ld, names)
    proxies.update({f"lexical:{k}": v for k, v in lex.items()})
    enc = sm_._encoder_dict(ld)
    enc["lexical"] = how
    return proxies, enc, notes


def _bench_rows(S: pd.DataFrame) -> list[dict]:
    return [{"name": b, "n_models": int(S[b].notna().sum()), "mean": _f(S[b].mean()), "sd": _f(S[b].std(ddof=1))}
            for b in S.columns]


def run_score_validation(store: Store, paths: Sequence[str | Path], cfg: AgreementConfig, *, encoder=None,
                         metric: str | None = None, mapping: str | Path | None = None, save: bool = True,
                         filter: str | None = None, reference: str | None = None,
                         progress: Callable[[str], None] | None = None) -> dict:
    """Read and match the score table, compute every proxy and the agreement, and (save) store it all in one transaction.

    reference: --reference BENCH by name (resolved to cfg.reference's index once the benchmarks are known).
    """
    say = progress or (lambda s: None)
    names_all = store.benchmark_names()
    if not names_all:
        raise ScoreTableError(f"{store.path} has no benchmarks; run `qscope-eval encode SUITE --db {store.path}` first")
    table = read_scores(paths, benchmarks=names_all, tasks=store.benchmark_tasks(), metric=metric, mapping=mapping,
                        filter=filter)
    S = table.matched()
    names = [b for b in names_all if b in S.columns]
    S = S[names].dropna(how="all")
    if len(names) < 2:
        raise ScoreTableError(f"only {len(names)} score column matches a stored benchmark ({', '.join(names)}); "
                              "pairwise score correlations need at least 2 (3 for a correlation over pairs): "
                              "add columns or give --map FILE")
    if S.shape[0] < MIN_MODELS:
        raise ScoreTableError(f"{S.shape[0]} models have scores; at least {MIN_MODELS} are needed")
    ref = resolve_reference(reference, table, names)
    if ref is not None:
        cfg = dataclasses.replace(cfg, control="reference", reference=ref)
    say(f"feature proxies over {len(names)} benchmarks (SAE, null, lexical)")
    proxies, enc, notes = feature_proxies(store, encoder, names)
    say(f"agreement: {S.shape[0]} models, {len(names) * (len(names) - 1) // 2} pairs, "
        f"{cfg.permutations} permutations, {cfg.replicates} bootstrap replicates")
    res = score_agreement(S.to_numpy(float), proxies, names, cfg)
    agreement = res.to_dict()
    vid = str(uuid.uuid4())
    used = table.rows[table.rows.benchmark.isin(names) & table.rows.model.isin(S.index)]
    sources = sorted({m.source for m in table.matching})
    out = {
        "validation_id": vid, "kind": "scores",
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "encoder": enc, "sources": sources,
        "matching": [{"source": m.source, "column": m.column, "benchmark": m.benchmark, "how": m.how,
                      "reason": m.reason, "scale": m.scale or None, "n_models": m.n_models} for m in table.matching],
        "scales": {m.benchmark: m.scale for m in table.matching if m.how in MATCHED and m.benchmark in names},
        "n_models": int(S.shape[0]), "models": [str(m) for m in S.index],
        "benchmarks": _bench_rows(S),
        "config": {"control": cfg.control, "reference": None if ref is None else names[ref],
                   "permutations": cfg.permutations, "replicates": cfg.replicates, "level": cfg.level,
                   "min_pair_models": cfg.min_pair_models, "seed": cfg.seed, "metric": metric,
                   "measures": list(MEASURES)},
        "agreement": agreement,
        "notes": list(table.notes) + notes + list(agreement.get("notes") or []),
    }
    if save:
        src = used.groupby("model")["source"].agg(lambda s: ", ".join(sorted(set(s))))
        mdf = pd.DataFrame({"model": src.index.astype(str), "source": src.to_numpy()})
        params = {"paths": [str(p) for p in paths], "metric": metric, "filter": filter,
                  "mapping": None if mapping is None else str(mapping), **out["config"]}
        store.save_score_validation(vid, enc["encoder_id"], params, out, mdf, used)
    return out
