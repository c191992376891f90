"""Test data for the service: the synthetic store plus two recorded audits with their report folders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from synthetic import build_store

from qscope_eval.jobs import summary as analysis
from qscope_eval.report import render_report


def add_benchmark(s, name: str, lo: int, n: int = 20, seed: int = 0) -> None:
    """A new benchmark whose samples fire 6 of the features lo..lo+40 (both encoders), so the suite's union grows."""
    rng = np.random.default_rng(seed)
    ids = s.register_benchmark(name, "synth", {"path": "x"}, [f"{name} q{i} {rng.integers(1e9)}" for i in range(n)])
    for enc in s.encoders():
        todo = s.pending(enc.encoder_id, ids)
        feats = np.concatenate([rng.choice(np.arange(lo, lo + 40) % enc.d_sae, 6, replace=False) for _ in todo])
        s.write_batch(enc.encoder_id, todo, np.full(len(todo), 30), np.zeros(len(todo), bool), np.repeat(np.arange(len(todo)), 6),
                      feats, rng.random(feats.size) + 0.1, np.ones(feats.size, int))


def build_audited(path: Path, n_runs: int = 2, grow: bool = False) -> Path:
    """build_store(path) + `n_runs` completed audits of suite 'synth' (summary, F(D) for drift, report HTML).

    grow: before each audit after the first, a new benchmark joins (coverage and drift change between audits).
    """
    path = Path(path)
    s = build_store(path)
    try:
        for i in range(n_runs):
            run_id = f"run-{i}"
            if grow and i:
                add_benchmark(s, f"extra_{i}", 150 + 25 * i, seed=i)
            s.start_run(run_id, "synth", {"i": i})
            ld = analysis.load(s)
            summary = analysis.audit_summary(s, ld, "synth", run_id)
            out = path.parent / f"report-{i}"
            render_report(summary, out, png=False)
            s.save_run_features(run_id, analysis.feature_sets(ld.real), ld.real.encoder.encoder_id)
            s.finish_run(run_id, "completed", ld.real.encoder.encoder_id, summary=summary, report_dir=str(out.resolve()))
    finally:
        s.close()
    return path


if __name__ == "__main__":
    build_audited(Path(sys.argv[1]), n_runs=int(sys.argv[2]) if len(sys.argv) > 2 else 2, grow=len(sys.argv) > 3)
