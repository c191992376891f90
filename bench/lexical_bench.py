"""Which lexical "fired feature" is the strongest honest baseline, and what the template check sees (issue 27).

On the known-structure suites of bench/recommend_bench.py (MMLU subjects in topic
groups, HumanEval, GSM8K; texts from a database made by `qscope-eval encode
bench/suites/validation.yaml`), for each representation of a prompt it prints the
nearest-neighbour purity of the topic groups: the share of benchmarks (whose group
has >= 2 members) whose most similar other benchmark is in its own group, under two
pairwise measures:

  sym     symmetric overlap of the benchmarks' fired sets (Qwen-Scope Eq. 11)
  ratio   the recommendation's measure: covered share of the characteristic firing mass
          over the benchmark's split-half self-coverage (analysis/recommend.py)

Representations: the SAE and its null twin (where the database has them encoded), the
words as `terms` (every distinct word fires) and as `top` (the 32 words of highest
tf·idf per prompt, idf over the suite: the lexical twin of `top` pooling), and the
classic benchmark-level tf·idf cosine (`tfidf_similarity`, one number per pair).

Then the template check: each encoder's template share (analysis/template.py) per
benchmark, median and max over the suite, and the count at or above TEMPLATE_SHARE.

Last, the cost of the lexical encoder's rows (term_counts over the suite's prompts, on this
machine's CPU): what the encode job's writer thread adds to each batch.

Run:  python bench/lexical_bench.py --db out/validation.duckdb [--db-last out/validation_last.duckdb]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qscope_eval.analysis import lexical as lx, metrics, recommend as rc  # noqa: E402
from qscope_eval.analysis.template import TEMPLATE_SHARE, template_share  # noqa: E402
from qscope_eval.jobs.summary import load  # noqa: E402
from qscope_eval.store import Store  # noqa: E402
from recommend_bench import SUITES, _slice  # noqa: E402


def purity(S: np.ndarray, names: list[str], group_of: dict[str, str], sizes: dict[str, int]) -> float:
    """Share of benchmarks (group of >= 2) whose most similar other benchmark is in their own group."""
    hits = []
    for i, b in enumerate(names):
        if sizes[group_of[b]] < 2:
            continue
        row = np.asarray(S[i], float).copy()
        row[i] = -np.inf
        row[~np.isfinite(row)] = -np.inf
        hits.append(group_of[names[int(np.argmax(row))]] == group_of[b])
    return float(np.mean(hits)) if hits else float("nan")


def representations(es, null, counts, cols) -> dict:
    out = {"SAE": metrics.fired(es.X[cols])}
    if null is not None:
        out["null"] = metrics.fired(null.X[cols])
    C = counts[cols]
    out["words: terms"] = lx.lexical_features(C, "terms") > 0
    out["words: top-32 tf·idf"] = lx.lexical_features(C, "top") > 0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="out/validation.duckdb")
    ap.add_argument("--db-last", default=None, help="the same suite encoded with `last` pooling (template check)")
    ap.add_argument("--min-samples", type=int, default=20, help="benchmarks with fewer encoded samples are left out")
    args = ap.parse_args(argv)
    dbs = [("top", args.db)] + ([("last", args.db_last)] if args.db_last else [])
    print("| pooling | suite | benchmarks | representation | nn purity (sym) | nn purity (ratio) | seconds |")
    print("|---|---|---|---|---|---|---|")
    totals: dict = {}
    template_rows, timing = [], []
    for pooling, db in dbs:
        with Store(db, read_only=True) as store:
            ld = load(store, lexical=False)
            texts = store.texts(ld.real.sample_ids.tolist())
        es = ld.real
        docs = [texts[int(i)] for i in es.sample_ids]
        lx.term_counts(docs[:10])  # the vectorizer's import, once
        t = time.perf_counter()
        counts = lx.term_counts(docs)
        timing.append((pooling, len(docs), sum(map(len, docs)), time.perf_counter() - t))
        n_enc = dict(zip(es.benchmarks, np.asarray(es.M.sum(axis=1)).ravel()))
        for suite, groups in SUITES.items():
            groups = {g: [b for b in bs if n_enc.get(b, 0) >= args.min_samples] for g, bs in groups.items()}
            groups = {g: bs for g, bs in groups.items() if bs}
            names = [b for bs in groups.values() for b in bs]
            if len(names) < 4:
                continue
            group_of = {b: g for g, bs in groups.items() for b in bs}
            sizes = {g: len(bs) for g, bs in groups.items()}
            M, cols = _slice(es, names)
            reps = representations(es, ld.null, counts, cols)
            for rep, F in reps.items():
                t = time.perf_counter()
                sym = metrics.overlap_matrices(M, F, 1).sym
                ratio = rc._ratios(M, F, rc.RecommendConfig())[-1]
                ps, pr = purity(sym, names, group_of, sizes), purity(ratio, names, group_of, sizes)
                totals.setdefault((pooling, rep), []).append((ps, pr))
                print(f"| {pooling} | {suite} | {len(names)} | {rep} | {ps:.2f} | {pr:.2f} | "
                      f"{time.perf_counter() - t:.1f} |", flush=True)
                ts = template_share(rc.benchmark_profiles(M, F))
                template_rows.append((pooling, suite, rep, float(np.median(ts)), float(ts.max()),
                                      int((ts >= TEMPLATE_SHARE).sum()), len(names)))
            cos = lx.tfidf_similarity(M, counts[cols])
            pc = purity(cos, names, group_of, sizes)
            totals.setdefault((pooling, "words: tf·idf cosine (benchmark means)"), []).append((pc, pc))
            print(f"| {pooling} | {suite} | {len(names)} | words: tf·idf cosine (benchmark means) | {pc:.2f} | – | |")
    print()
    print("| pooling | representation | mean nn purity (sym) | mean nn purity (ratio) | suites |")
    print("|---|---|---|---|---|")
    for (pooling, rep), v in totals.items():
        a = np.array(v)
        print(f"| {pooling} | {rep} | {np.nanmean(a[:, 0]):.2f} | {np.nanmean(a[:, 1]):.2f} | {len(v)} |")
    print()
    for pooling, n, chars, sec in timing:
        print(f"the lexical encoder's work (term_counts, what the encode writer adds per batch): {n} prompts, "
              f"{chars / 1e6:.2f} M characters in {sec:.2f} s ({1e3 * sec / n:.3f} ms per prompt)")
    print()
    print(f"Template share (analysis/template.py; threshold {TEMPLATE_SHARE:.0%})")
    print("| pooling | suite | representation | median | max | benchmarks >= threshold |")
    print("|---|---|---|---|---|---|")
    for pooling, suite, rep, med, mx, hit, n in template_rows:
        print(f"| {pooling} | {suite} | {rep} | {med:.2f} | {mx:.2f} | {hit}/{n} |")


if __name__ == "__main__":
    main()
