"""From the store to the gaps answer: which of the reference's features no benchmark fires (DESIGN §5b).

Glue between the store (arrays out of DuckDB) and the pure `analysis/gaps.py`: loads the suite's benchmarks and its
reference corpora for one encoder (and its null twin and lexical baseline, on the same samples), runs `find_gaps`
on each, and
returns one JSON-able dict (the `gaps --json` contract in docs/cli.md; `summary.json["gaps"]`). Texts of the
typical prompts come from the store; `export_seeds` writes them as JSONL seeds for new eval items.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from qscope_eval.errors import QScopeError
from qscope_eval.analysis.gaps import GapConfig, GapResult, find_gaps
from qscope_eval.store import EncodedSet, Store

def no_reference_fix(db) -> str:
    return ("add a `reference:` list to the suite (same entries as `benchmarks:`, e.g. "
            "- {name: traffic, path: prompts.jsonl, text: prompt}) and rerun "
            f"`qscope-eval encode SUITE --db {db}` (only the reference prompts are encoded)")


class GapInputs:
    """One encoder's benchmark and reference rows, with the null twin on the same samples (or None)."""

    def __init__(self, real: EncodedSet, null: EncodedSet | None, n_bench: int, reference: list[str], lexical=None):
        self.real, self.null, self.n_bench, self.reference = real, null, n_bench, reference
        self.lexical = lexical
        """jobs.lexical_encoder.LexicalSet on the same samples, or None."""

    @property
    def benchmarks(self) -> list[str]:
        return self.real.benchmarks[: self.n_bench]

    def parts(self, es: EncodedSet, threshold: float = 0.0) -> tuple:
        """(F fired (n, d), benchmark membership (n_bench, n), reference rows (n,) bool, reference corpora
        membership (n_refs, n)) of `es`: the arguments of gaps.find_gaps."""
        F = sp.csr_matrix(es.X > threshold)
        ref = np.asarray(es.M[self.n_bench:].sum(axis=0)).ravel() > 0
        return F, es.M[: self.n_bench], ref, es.M[self.n_bench:]


def resolve_reference(store: Store, reference: str | None, suite: str | None = None) -> tuple[list[str], list[str]]:
    """(benchmarks, reference corpora) to compare: the named reference (default: all of them, or all of
    `suite`'s) and the benchmarks of the suite that registered it. Clear errors for a file without
    references or a wrong name."""
    refs = store.benchmark_names(role="reference", suite=suite)
    if not refs:
        raise QScopeError(f"{store.path} holds no reference corpus (it was audited before references existed, or its "
                          f"suite names none); {no_reference_fix(store.path)}")
    if reference is not None:
        if reference not in refs:
            others = store.benchmark_roles()
            what = "is a benchmark, not a reference corpus" if others.get(reference) == "benchmark" else "is not stored"
            raise QScopeError(f"reference {reference!r} {what} in {store.path}; known references: {', '.join(refs)}")
        refs = [reference]
    suites = {store.suite_of([r]) for r in refs}
    benches = [b for s in sorted(suites) for b in store.benchmark_names(suite=s)]
    if not benches:
        raise QScopeError(f"no benchmarks registered beside reference {', '.join(refs)}; encode the suite's benchmarks")
    return list(dict.fromkeys(benches)), refs


def load_inputs(store: Store, encoder: str | int | None = None, reference: str | None = None,
                suite: str | None = None) -> GapInputs:
    """The arrays `gaps_report` needs, with every input checked (null encoder, empty reference)."""
    benches, refs = resolve_reference(store, reference, suite)
    enc = store.encoder(encoder)
    if enc.kind in ("null", "lexical"):
        raise QScopeError(f"encoder {enc.encoder_id} is a {enc.kind} baseline; pick the SAE encoder it rode along with")
    real = store.load_encoded(enc, benches + refs)
    n_ref = np.asarray(real.M[len(benches):].sum(axis=1)).ravel()
    missing = [r for r, n in zip(refs, n_ref) if n == 0]
    if missing:
        raise QScopeError(f"reference {', '.join(missing)} has no samples encoded by encoder {enc.encoder_id}; run "
                          f"`qscope-eval encode SUITE --db {store.path}` to encode them")
    null_enc = store.null_for(enc)
    null = store.load_encoded(null_enc, benches + refs) if null_enc is not None else None
    if null is not None and not np.array_equal(null.sample_ids, real.sample_ids):
        null = None  # the null twin lacks some samples (interrupted run): no baseline rather than a skewed one
    from qscope_eval.jobs.lexical_encoder import load_lexical

    return GapInputs(real, null, len(benches), refs, load_lexical(store, real))


def _headline(res: GapResult) -> dict:
    return {"covered_share": res.covered_share, "gap_share": res.gap_share, "unresolved_share": res.unresolved_share,
            "gap_excess_share": res.gap_excess_share, "n_gap_features": res.n_gap_features,
            "n_tested_features": res.n_tested, "n_groups": res.n_groups_total}


def gaps_report(store: Store, encoder: str | int | None = None, reference: str | None = None,
                cfg: GapConfig = GapConfig(), threshold: float = 0.0, evidence: bool = False,
                inputs: GapInputs | None = None, tokens: bool = True) -> dict:
    """Gaps of the suite against its reference corpora (or one: `reference`), beside the null's numbers.

    evidence=True adds, per group, the lead feature's drill-down (evidence.feature_evidence: top samples with
    the tokens where it fires, re-encoded when the model is available and `tokens`).
    """
    gi = inputs or load_inputs(store, encoder, reference)
    F, Mb, ref, parts = gi.parts(gi.real, threshold)
    res = find_gaps(F, Mb, ref, cfg, parts)
    null = None
    if gi.null is not None:
        Fn = gi.parts(gi.null, threshold)[0]
        null = _headline(find_gaps(Fn, Mb, ref, cfg, parts))
    lexical = None
    if gi.lexical is not None:
        lexical = _headline(find_gaps(gi.parts(gi.lexical.data, threshold)[0], Mb, ref, cfg, parts))
    ids = gi.real.sample_ids
    texts = store.texts(ids[np.concatenate([g.samples for g in res.groups])]) if res.groups else {}
    names = gi.benchmarks
    groups = []
    for n, g in enumerate(res.groups, 1):
        feats = [_feature_row(res, int(f), names) for f in g.features[:10]]
        groups.append({
            "group": n, "n_features": int(g.features.size), "features": [int(f) for f in g.features],
            "excess_share": g.excess, "mass_share": g.mass, "n_samples": g.n_samples,
            "prompts": [{"sample_id": int(ids[s]), "text": texts.get(int(ids[s]), ""), "score": float(sc)}
                        for s, sc in zip(g.samples, g.sample_scores)],
            "closest_benchmarks": [{"benchmark": names[b], "matched_share": m} for b, m in g.closest],
            "top_features": feats,
        })
    if evidence and groups:
        from qscope_eval.jobs.evidence import feature_evidence

        for grp in groups:
            grp["evidence"] = feature_evidence(store, grp["features"][0], gi.real.encoder.encoder_id, top=3,
                                               inputs=gi, reencode=tokens)
    e = gi.real.encoder
    return {
        "encoder": {"encoder_id": e.encoder_id, "key": e.key, "layer": e.layer, "pooling": e.pooling, "d_sae": e.d_sae,
                    "null_encoder_id": gi.null.encoder.encoder_id if gi.null is not None else None,
                    "lexical_encoder_id": gi.lexical.encoder_id if gi.lexical is not None else None,
                    "lexical_source": gi.lexical.source if gi.lexical is not None else None},
        "reference": gi.reference, "n_reference_samples": int(ref.sum()), "benchmarks": names,
        "config": {"ratio": cfg.ratio, "min_count": cfg.min_count, "alpha": cfg.alpha,
                   "group_distance": cfg.group_distance, "threshold": threshold},
        "coverage": _headline(res), "null": null, "lexical": lexical, "groups": groups,
    }


def summary_gaps(store: Store, encoder_id: int, suite: str | None = None, cfg: GapConfig = GapConfig(),
                 tokens: bool = True) -> dict | None:
    """`summary.json["gaps"]`: the gaps report with each group's evidence, None when the suite has no reference;
    {"error": ...} when it cannot be computed (the rest of the audit still stands)."""
    if not store.benchmark_names(role="reference", suite=suite):
        return None
    try:
        return gaps_report(store, encoder_id, cfg=cfg, evidence=True, tokens=tokens,
                           inputs=load_inputs(store, encoder_id, suite=suite))
    except QScopeError as e:
        return {"error": str(e)}


def _feature_row(res: GapResult, f: int, names: list[str]) -> dict:
    c = res.calls
    return {"feature": f, "reference_frequency": float(c.p_ref[f]), "max_benchmark_frequency": float(c.q_best[f]),
            "closest_benchmark": names[c.closest[f]] if c.closest[f] >= 0 else None, "p_value": float(c.p_value[f]),
            "excess_share": float(c.excess[f])}


def export_seeds(report: dict, path: str | Path) -> int:
    """Write each gap group's prompts as JSONL seeds (one object per prompt). Returns the lines written."""
    path = Path(path)
    if path.is_dir():
        raise QScopeError(f"{path} is a directory; give a file path for --export, e.g. out/seeds.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for g in report["groups"]:
            closest = g["closest_benchmarks"][0]["benchmark"] if g["closest_benchmarks"] else None
            for p in g["prompts"]:
                fh.write(json.dumps({"group": g["group"], "text": p["text"], "sample_id": p["sample_id"],
                                     "score": p["score"], "features": g["features"][:5],
                                     "reference": report["reference"], "closest_benchmark": closest},
                                    ensure_ascii=False) + "\n")
                n += 1
    return n

