"""Benchmark of `validate`'s two costly parts against the obvious versions, on seeded synthetic data.

1. R(D) (report Eqs. 4–6): the vectorized Monte Carlo (draw_pair_signs + weighted_tau: one matrix
   product per batch of draws) against a loop that draws the same kind of subset and calls
   scipy.stats.kendalltau per draw. Both estimate the same quantity; the table shows both values
   and their Monte Carlo standard errors, so the agreement can be read off. Then the model
   bootstrap of R (its interval): reusing the draws with pair weights against redoing the loop
   per resample (timed on 3 resamples, extrapolated linearly; printed).
2. Matching logged prompts to stored texts: the sorted-reversed-text index (longest stored suffix
   by bisection) against scanning every stored text with `str.endswith` per prompt, on prompts
   with a few-shot prefix; the baseline is timed on a subset and extrapolated linearly (printed).

Ratios use process CPU seconds (single-threaded code), which other tenants of a shared machine
do not inflate.

    python bench/validate_bench.py [--models 30] [--items 2000] [--draws 2000] [--replicates 500] [--stored 50000] [--prompts 5000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qscope_eval.analysis import validation as V  # noqa: E402
from qscope_eval.data.lmeval_match import SampleIndex  # noqa: E402
from qscope_eval.data.lmeval_logs import normalize  # noqa: E402


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def loop_r(C: np.ndarray, draws: int, seed: int) -> tuple[float, float]:
    """The obvious R: per draw, n ~ U{1..N}, a random n-subset, scipy's Kendall tau-b (NaN -> 0)."""
    rng = np.random.default_rng(seed)
    full = C.sum(axis=1)
    taus = []
    for _ in range(draws):
        n = int(rng.integers(1, C.shape[1] + 1))
        S = rng.choice(C.shape[1], size=n, replace=False)
        t = stats.kendalltau(C[:, S].sum(axis=1), full).statistic
        taus.append(0.0 if np.isnan(t) else t)
    return float(np.mean(taus)), float(np.std(taus, ddof=1) / np.sqrt(draws))


def words(rng, n):
    vocab = np.array(["the", "a", "model", "value", "of", "is", "what", "number", "train", "cell", "king", "river",
                      "x", "y", "sum", "prime", "gene", "war", "code", "list", "return", "energy", "price", "farm"])
    return " ".join(vocab[rng.integers(0, len(vocab), n)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=30)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--stored", type=int, default=50_000)
    ap.add_argument("--prompts", type=int, default=5000)
    ap.add_argument("--baseline-prompts", type=int, default=100)
    ap.add_argument("--replicates", type=int, default=500)
    a = ap.parse_args()
    rng = np.random.default_rng(0)

    ability, diff = rng.normal(size=a.models), rng.normal(size=a.items)
    C = (rng.random((a.models, a.items)) < 1 / (1 + np.exp(-(ability[:, None] - diff[None, :])))).astype(float)
    fast, fw, fc = timed(lambda: V.performance_redundancy(C, a.draws, seed=1))
    (slow_r, slow_se), sw, sc = timed(lambda: loop_r(C, a.draws, 1))
    print(f"R(D), {a.models} models x {a.items} items, {a.draws} draws")
    print(f"  vectorized      R = {fast.r:.4f} ± {fast.se:.4f}   wall {fw:7.2f} s   cpu {fc:7.2f} s")
    print(f"  scipy per draw  R = {slow_r:.4f} ± {slow_se:.4f}   wall {sw:7.2f} s   cpu {sc:7.2f} s")
    print(f"  ratio (cpu): {sc / fc:.1f}x")
    B, kb = a.replicates, 3
    counts = np.stack([np.bincount(rng.integers(0, a.models, a.models), minlength=a.models) for _ in range(B)])
    ps = V.draw_pair_signs(C, a.draws, seed=1)
    _, bw_, bc_ = timed(lambda: V.bootstrap_redundancy(ps, counts))

    def loop_boot():  # the obvious bootstrap: resample models, redo the whole Monte Carlo
        for b in range(kb):
            loop_r(C[rng.integers(0, a.models, a.models)], a.draws, b)

    _, lw, lc = timed(loop_boot)
    print(f"model bootstrap of R, {B} replicates (same draws reused, pair weights) vs redoing the loop per replicate")
    print(f"  vectorized      wall {bw_:7.2f} s   cpu {bc_:7.2f} s")
    print(f"  loop            cpu {lc:7.2f} s on {kb} replicates -> {lc * B / kb:.1f} s extrapolated to {B}")
    print(f"  ratio (cpu): {lc * B / kb / bc_:.0f}x")

    texts = {i: f"Question {i}: {words(rng, 30)}?\nAnswer:" for i in range(a.stored)}
    shots = "\n\n".join(texts[i] + " 42" for i in range(5))
    asked = rng.choice(a.stored, size=a.prompts, replace=False)
    prompts = [f"Solve these.\n\n{shots}\n\n{texts[i]}" for i in asked]
    idx, bw, bc = timed(lambda: SampleIndex(texts))
    hits, mw, mc = timed(lambda: [idx.longest_suffix(normalize(p)) for p in prompts])
    ok = sum(h == normalize(texts[i]) for h, i in zip(hits, asked))
    norms = [normalize(t) for t in texts.values()]
    k = a.baseline_prompts

    def scan():
        out = []
        for p in prompts[:k]:
            q = normalize(p)
            out.append(max((t for t in norms if q.endswith(t)), key=len, default=None))
        return out

    base, sw2, sc2 = timed(scan)
    assert base == hits[:k]
    ext = sc2 * a.prompts / k
    print(f"matching {a.prompts} five-shot prompts against {a.stored} stored texts ({ok} matched correctly)")
    print(f"  index build      wall {bw:7.2f} s   cpu {bc:7.2f} s")
    print(f"  suffix lookups   wall {mw:7.2f} s   cpu {mc:7.2f} s")
    print(f"  scan baseline    cpu {sc2:7.2f} s on {k} prompts -> {ext:.1f} s extrapolated to {a.prompts}")
    print(f"  ratio (cpu, index build + lookups vs extrapolated scan): {ext / (bc + mc):.0f}x")


if __name__ == "__main__":
    main()
