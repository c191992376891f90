"""Choose the demo's causal LM layer, pooling and SAE by measurement on suites of known structure (issue 27).

13 benchmarks in 7 topic groups (MMLU subjects grouped by topic, HumanEval, GSM8K), the first N prompts of each,
as lm-eval shows them (zero-shot; MMLU prompts end with "Answer:"). One forward pass per backbone reads every layer
it needs; the residuals of the prompts' tokens are cached on disk (`--cache`), so every (layer, pooling, encoder)
candidate is pooled from the same forward with the project's own pooling functions (model.encode.pool_last /
pool_max / pool_top, model.encode.token_mask):

  python bench/demo_model_bench.py speed                                                    # tokens/s per candidate
  python bench/demo_model_bench.py collect --model asset:smollm2 --layers 4 7 10 13 16      # forward once
  python bench/demo_model_bench.py layers  --model asset:smollm2                            # raw residuals per layer
  python bench/demo_model_bench.py score   --model asset:smollm2 --layer 10 --sae DIR       # last/top/max, SAE/null/words
  python bench/demo_model_bench.py score   --model asset:minilm --layer 3 --sae qscope_eval/suites/demo_sae  # reference

Figures (all with 95 % Wilson intervals over prompts, or bootstrap intervals where said):

  nn_purity        share of prompts whose nearest other prompt (cosine of the pooled feature vectors: binary
                   fired sets) is in the same topic group
  xb_purity        the same, with the nearest prompt taken from the OTHER benchmarks only (and only prompts of
                   groups with >= 2 benchmarks): does the representation put a prompt next to the same topic
                   asked by another benchmark? (same-benchmark neighbours are easy: same template, same subject)
  groups_dropped / kept    the default recommendation (analysis.recommend, via bench/recommend_bench.score)
  template_share   mean share of a prompt's fired features that fire on >= 50 % of all prompts (what every prompt
                   shares: the template)
The null (random dictionary of the same shape, seed 0, like the audit's) and the words (lexical: tf-idf cosine of
analysis.lexical.term_counts, no model) are scored on the same prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # recommend_bench.score: the recommendation's figures

GROUPS = {
    "math": ["mmlu_elementary_mathematics", "mmlu_high_school_mathematics", "mmlu_college_mathematics"],
    "biology": ["mmlu_high_school_biology", "mmlu_college_biology", "mmlu_anatomy"],
    "history": ["mmlu_high_school_us_history", "mmlu_high_school_world_history", "mmlu_high_school_european_history"],
    "economics": ["mmlu_high_school_macroeconomics", "mmlu_high_school_microeconomics"],
    "physics": ["mmlu_high_school_physics", "mmlu_conceptual_physics"],
    "code": ["humaneval"],
    "word_problems": ["gsm8k"],
}
BENCH_MMLU = tuple(b.removeprefix("mmlu_") for bs in GROUPS.values() for b in bs if b.startswith("mmlu_"))
"""MMLU subjects this bench measures on: the demo SAE's training corpus leaves them out."""


def suite_dict(n: int, max_length: int, model: str = "asset:smollm2") -> dict:
    """The bench suite (a suite file's content): every benchmark's first n prompts."""
    benches = []
    for bs in GROUPS.values():
        for b in bs:
            if b == "gsm8k":
                benches.append({"name": b, "task": "gsm8k", "data_files": {"test": "asset:gsm8k/test.jsonl"}})
            elif b == "humaneval":
                benches.append({"name": b, "task": "humaneval", "data_files": {"test": "asset:humaneval/HumanEval.jsonl.gz"}})
            else:
                benches.append({"name": b, "task": b, "data_files": {"test": f"asset:mmlu/{b.removeprefix('mmlu_')}.jsonl"}})
    return {"name": "demo-model-bench", "model": {"id": model, "dtype": "float32", "device": "cpu", "max_length": max_length},
            "sae": {"path": "."}, "layers": [0], "pooling": "top", "limit": n, "benchmarks": benches}


def _cache_file(args, model: str) -> Path:
    return Path(args.cache) / f"{model.replace(':', '_').replace('/', '_')}-n{args.n}-L{args.max_length}.pt"


def collect(args) -> None:
    """One truncated forward over the bench prompts; cache every requested layer's residuals and the masks."""
    import torch

    from qscope_eval.data.sources import load_suite_rows
    from qscope_eval.data.suite import parse_suite
    from qscope_eval.model.backbone import load_backbone

    suite = parse_suite(suite_dict(args.n, args.max_length, args.model), source=Path.cwd() / "x.yaml")
    rows = load_suite_rows(suite)
    bb = load_backbone(suite.model)
    tok = bb.tokenize(rows["text"].tolist())
    out = {"benchmark": rows["benchmark"].tolist(), "text": rows["text"].tolist(), "layers": list(args.layers),
           "hidden": {n: [] for n in args.layers}, "special": [], "n_truncated": tok.n_truncated}
    t0 = time.perf_counter()
    for i in range(0, len(tok.ids), args.batch):
        res = bb.residuals(tok.ids[i:i + args.batch], list(args.layers))
        for j, ids in enumerate(tok.ids[i:i + args.batch]):
            for n in args.layers:
                out["hidden"][n].append(res.hidden[n][j, :len(ids)].clone())
            out["special"].append(res.special_mask[j, :len(ids)].clone())
        print(f"  {i + len(tok.ids[i:i + args.batch])}/{len(tok.ids)} prompts, {time.perf_counter() - t0:.0f}s", flush=True)
    n_tok = int(tok.lengths.sum())
    dt = time.perf_counter() - t0
    out["seconds"], out["n_tokens"] = dt, n_tok
    path = _cache_file(args, args.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    print(f"{args.model}: {len(tok.ids)} prompts, {n_tok} tokens ({tok.n_truncated} truncated to {args.max_length}), "
          f"forward to layer {max(args.layers)} in {dt:.0f}s ({n_tok / dt:.0f} tokens/s, torch threads "
          f"{torch.get_num_threads()}) -> {path}")


# ----------------------------------------------------------------------------- scoring helpers


def _load(args, model: str) -> dict:
    import torch

    path = _cache_file(args, model)
    if not path.is_file():
        raise SystemExit(f"no cached residuals {path}; run: python bench/demo_model_bench.py collect --model {model}")
    return torch.load(path, weights_only=False)


def _groups(benchmarks: list[str]) -> np.ndarray:
    group_of = {b: g for g, bs in GROUPS.items() for b in bs}
    return np.array([group_of[b] for b in benchmarks])


def _wilson(hits: np.ndarray) -> str:
    from scipy.stats import binomtest

    k, n = int(hits.sum()), int(hits.size)
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return f"{k / n:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def _nn_hits(S: np.ndarray, bench: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nn: nearest other prompt in the same group [n] bool, xb: nearest prompt of another benchmark in the same
    group, for prompts whose group has >= 2 benchmarks [m] bool). S [n, n] similarity."""
    S = S.astype(np.float64).copy()
    S[~np.isfinite(S)] = -np.inf
    np.fill_diagonal(S, -np.inf)
    nn = group[S.argmax(axis=1)] == group
    multi = np.array([len(GROUPS[g]) >= 2 for g in group])
    X = np.where(bench[:, None] == bench[None, :], -np.inf, S)
    xb = group[X.argmax(axis=1)] == group
    return nn, xb[multi]


def _cosine_dense(V: np.ndarray) -> np.ndarray:
    V = V - V.mean(0)
    V = V / (V.std(0) + 1e-6)  # z-score each dimension: a few huge residual dimensions would decide alone
    V = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
    return V @ V.T


def _cosine_sparse(F) -> np.ndarray:
    import scipy.sparse as sp

    F = sp.csr_matrix(F, dtype=np.float64)
    norms = np.sqrt(np.asarray(F.multiply(F).sum(axis=1)).ravel())
    G = (F @ F.T).toarray()
    with np.errstate(invalid="ignore", divide="ignore"):
        return G / np.outer(norms, norms)


def _lexical(texts: list[str]):
    from qscope_eval.analysis import lexical

    counts = lexical.term_counts(texts)
    return counts, _cosine_sparse(lexical.tfidf(counts))


def layers_cmd(args) -> None:
    """Raw residuals per layer (no SAE): mean over the pooled tokens and the last token, nearest-neighbour purity."""
    import torch

    from qscope_eval.model.encode import last_positions, token_mask

    data = _load(args, args.model)
    bench = np.array(data["benchmark"])
    group = _groups(data["benchmark"])
    print(f"{args.model}: {len(bench)} prompts, {data['n_tokens']} tokens, forward {data['seconds']:.0f}s")
    print("| layer | view | nn_purity [95% CI] | xb_purity [95% CI] |")
    print("|---|---|---|---|")
    for n in data["layers"]:
        means, lasts = [], []
        for h, sp_ in zip(data["hidden"][n], data["special"]):
            h, sp_ = h[None].float(), sp_[None]
            att = torch.ones_like(sp_)
            mask = token_mask(h, att, sp_)
            means.append((h[mask].mean(0) if mask.any() else h[0].mean(0)).numpy())
            lasts.append(h[0, int(last_positions(att, sp_)[0])].numpy())
        for view, V in (("mean of pooled tokens", np.stack(means)), ("last token", np.stack(lasts))):
            nn, xb = _nn_hits(_cosine_dense(V), bench, group)
            print(f"| {n} | {view} | {_wilson(nn)} | {_wilson(xb)} |", flush=True)
    nn, xb = _nn_hits(_lexical(data["text"])[1], bench, group)
    print(f"| - | words (tf-idf) | {_wilson(nn)} | {_wilson(xb)} |")


def _batches(data: dict, layer: int, size: int = 32):
    """Right-padded batches of the cached residuals: (first row, hidden [B, T, d], attention, special, pool mask)."""
    import torch

    from qscope_eval.model.encode import token_mask

    hs, sps = data["hidden"][layer], data["special"]
    for i in range(0, len(hs), size):
        part, spart = hs[i:i + size], sps[i:i + size]
        T = max(h.shape[0] for h in part)
        hidden = torch.zeros(len(part), T, part[0].shape[1])
        att = torch.zeros(len(part), T, dtype=torch.bool)
        special = torch.ones(len(part), T, dtype=torch.bool)
        for j, (h, spm) in enumerate(zip(part, spart)):
            hidden[j, :h.shape[0]], att[j, :h.shape[0]], special[j, :h.shape[0]] = h.float(), True, spm
        yield i, hidden, att, special, token_mask(hidden, att, special)


def _pool_all(data: dict, layer: int, sae, stats, m: int) -> dict[str, "object"]:
    """Per pooling, the (n_prompts x d_sae) csr of pooled values, with the project's pooling functions.
    `top_self`: `top` with reference means taken from these prompts' own pooled tokens (no shipped stats)."""
    import scipy.sparse as sp
    import torch

    from qscope_eval.model.encode import encode_tokens, pool_last, pool_max, pool_top

    d = sae.cfg.d_sae
    self_sum, n_tok = torch.zeros(d, dtype=torch.float64), 0
    for _, hidden, _, _, mask in _batches(data, layer):
        acts, idx = encode_tokens(sae, hidden[mask])
        self_sum.index_add_(0, idx.flatten(), acts.flatten().double())
        n_tok += int(mask.sum())
    self_mean = (self_sum / max(n_tok, 1)).numpy()
    self_ref = torch.from_numpy(np.maximum(self_mean, self_mean[self_mean > 0].min()).astype(np.float32))
    ref = torch.from_numpy(stats.reference_mean()) if stats is not None else None
    rows = {p: ([], [], []) for p in ("last", "max", "top", "top_self")}
    for first, hidden, att, special, mask in _batches(data, layer):
        pooled = {"last": pool_last(sae, hidden, att, special), "max": pool_max(sae, hidden, mask),
                  "top_self": pool_top(sae, hidden, mask, self_ref, m)}
        if ref is not None:
            pooled["top"] = pool_top(sae, hidden, mask, ref, m)
        for name, pb in pooled.items():
            r, c, v = rows[name]
            r.append(pb.row + first), c.append(pb.feature), v.append(pb.value)
    n = len(data["hidden"][layer])
    return {name: sp.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(n, d))
            for name, (r, c, v) in rows.items() if r}


def _membership(bench: np.ndarray):
    import scipy.sparse as sp

    names = list(dict.fromkeys(bench.tolist()))
    rows = np.array([names.index(b) for b in bench])
    return names, sp.csr_matrix((np.ones(len(bench)), (rows, np.arange(len(bench)))), shape=(len(names), len(bench)))


def _recommend(names, M, X, Xn) -> dict:
    """The default recommendation (analysis.recommend through bench/recommend_bench.char_method) on these prompts:
    groups with no kept benchmark, kept/total, and the benchmark-level nearest-neighbour purity of its ratios."""
    import recommend_bench as rb

    from qscope_eval.analysis import metrics

    group_of = {b: g for g, bs in GROUPS.items() for b in bs}
    costs = np.asarray(M.sum(axis=1)).ravel().astype(float)
    kept, S = rb.char_method(M, metrics.fired(X), metrics.fired(Xn) if Xn is not None else None, costs)
    kept_groups = {group_of[names[k]] for k in kept}
    pure = []
    for i, b in enumerate(names):
        if len(GROUPS[group_of[b]]) >= 2:
            row = S[i].astype(float).copy()
            row[i] = -np.inf
            pure.append(group_of[names[int(np.argmax(row))]] == group_of[b])
    return {"groups_dropped": len(GROUPS) - len(kept_groups), "dropped": [g for g in GROUPS if g not in kept_groups],
            "kept": f"{len(kept)}/{len(names)}", "bench_nn_purity": float(np.mean(pure)),
            "kept_names": [names[k] for k in kept]}


def _template_share(F) -> float:
    import scipy.sparse as sp

    B = sp.csr_matrix(F > 0)
    common = np.asarray(B.mean(axis=0)).ravel() >= 0.5
    per = np.asarray(B[:, common].sum(axis=1)).ravel() / np.maximum(np.asarray(B.sum(axis=1)).ravel(), 1)
    return float(per.mean())


def _boot_diff(a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0) -> str:
    """Paired bootstrap over prompts of mean(a) - mean(b): the point and a 95 % percentile interval."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(reps, a.size))
    d = a[idx].mean(1) - b[idx].mean(1)
    return f"{a.mean() - b.mean():+.3f} [{np.percentile(d, 2.5):+.3f}, {np.percentile(d, 97.5):+.3f}]"


def score_cmd(args) -> None:
    """last / max / top pooling with the SAE, its null twin and the words: purity, recommendation, template share."""
    import torch

    from qscope_eval.analysis import lexical
    from qscope_eval.data.suite import SaeSpec
    from qscope_eval.model.feature_stats import load_feature_stats
    from qscope_eval.model.sae import load_sae, null_sae

    torch.manual_seed(0)
    data = _load(args, args.model)
    bench = np.array(data["benchmark"])
    group = _groups(data["benchmark"])
    names, M = _membership(bench)
    sae = load_sae(SaeSpec(path=str(Path(args.sae).resolve())), args.layer)
    null = null_sae(sae.cfg, seed=0)
    stats = nstats = None
    try:
        stats, nstats = load_feature_stats(args.sae, args.layer), load_feature_stats(args.sae, args.layer, null=True)
    except Exception as e:  # noqa: BLE001 - a release without stats: `top` is skipped, `top_self` still runs
        print(f"(no feature stats beside the SAE: {e}; `top` skipped)")
    t = time.perf_counter()
    pooled = _pool_all(data, args.layer, sae, stats, args.m)
    pooled_null = _pool_all(data, args.layer, null, nstats, args.m)
    print(f"{args.model} layer {args.layer}, SAE {args.sae} (d_sae {sae.cfg.d_sae}, k {sae.cfg.k}): {len(bench)} "
          f"prompts of {len(names)} benchmarks in {len(GROUPS)} groups; pooled in {time.perf_counter() - t:.0f}s")
    counts, lex_S = _lexical(data["text"])
    lex_nn, lex_xb = _nn_hits(lex_S, bench, group)
    lex_rec = _recommend(names, M, lexical.top_terms(counts, args.m), None)
    out = {"model": args.model, "layer": args.layer, "sae": args.sae, "n_prompts": int(len(bench)),
           "words": {"nn_purity": float(lex_nn.mean()), "xb_purity": float(lex_xb.mean()), **lex_rec}, "pooling": {}}
    head = ["pooling", "encoder", "nn_purity [95% CI]", "xb_purity [95% CI]", "xb: SAE - this [95% CI]",
            "groups_dropped", "kept", "bench nn_purity", "template_share", "features/prompt"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    print(f"| - | words (tf-idf; top-{args.m} terms for the recommendation) | {_wilson(lex_nn)} | {_wilson(lex_xb)} | | "
          f"{lex_rec['groups_dropped']} {lex_rec['dropped'] or ''} | {lex_rec['kept']} | {lex_rec['bench_nn_purity']:.2f} | | |")
    for pooling in ("last", "max", "top", "top_self"):
        if pooling not in pooled:
            continue
        F, Fn = pooled[pooling], pooled_null[pooling]
        rec = _recommend(names, M, F, Fn)
        sae_nn, sae_xb = _nn_hits(_cosine_sparse(F > 0), bench, group)
        null_nn, null_xb = _nn_hits(_cosine_sparse(Fn > 0), bench, group)
        rec_null = _recommend(names, M, Fn, None)
        per = float((F > 0).sum(axis=1).mean())
        print(f"| {pooling} | SAE | {_wilson(sae_nn)} | {_wilson(sae_xb)} | | {rec['groups_dropped']} "
              f"{rec['dropped'] or ''} | {rec['kept']} | {rec['bench_nn_purity']:.2f} | {_template_share(F):.2f} | {per:.0f} |")
        print(f"| {pooling} | null | {_wilson(null_nn)} | {_wilson(null_xb)} | {_boot_diff(sae_xb, null_xb)} | "
              f"{rec_null['groups_dropped']} {rec_null['dropped'] or ''} | {rec_null['kept']} | "
              f"{rec_null['bench_nn_purity']:.2f} | {_template_share(Fn):.2f} | {float((Fn > 0).sum(axis=1).mean()):.0f} |")
        print(f"| {pooling} | words | | | {_boot_diff(sae_xb, lex_xb)} | | | | | |", flush=True)
        out["pooling"][pooling] = {"sae": {"nn_purity": float(sae_nn.mean()), "xb_purity": float(sae_xb.mean()), **rec,
                                           "template_share": _template_share(F), "features_per_prompt": per},
                                   "null": {"nn_purity": float(null_nn.mean()), "xb_purity": float(null_xb.mean()),
                                            **rec_null, "template_share": _template_share(Fn)}}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


def speed_cmd(args) -> None:
    """Truncated-forward tokens/s of the candidates on the same 64 MMLU prompts, in one run: SmolLM2 at several
    layers, a Qwen2.5-0.5B-shaped model (random weights: compute does not depend on them) and MiniLM layer 3."""
    import torch
    from transformers import AutoModel, Qwen2Config

    from qscope_eval.data.assets import resolve
    from qscope_eval.data.demo_corpus import _jsonl, mmlu_prompt
    from qscope_eval.data.suite import ModelSpec
    from qscope_eval.model.backbone import Backbone, load_backbone

    texts = [mmlu_prompt(r) for r in _jsonl(resolve("asset:mmlu/astronomy.jsonl"))[:64]]

    def rate(bb, layer, tok):
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            for i in range(0, len(tok.ids), 16):
                bb.residuals(tok.ids[i:i + 16], [layer])
            best = min(best, time.perf_counter() - t)
        return int(tok.lengths.sum()) / best

    smol = load_backbone(ModelSpec(id="asset:smollm2", dtype="float32", device="cpu"))
    tok = smol.tokenize(texts)
    print(f"torch threads {torch.get_num_threads()}, {int(tok.lengths.sum())} SmolLM2 tokens")
    for layer in (7, 10, 13):
        print(f"| SmolLM2-135M | {layer} | {rate(smol, layer, tok):.0f} |", flush=True)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=True)
    qwen = Backbone.from_model(AutoModel.from_config(cfg, dtype=torch.float32), smol.tokenizer, "qwen2.5-0.5b-shaped")
    print(f"| Qwen2.5-0.5B shape (random weights, SmolLM2's token ids) | 8 | {rate(qwen, 8, tok):.0f} |", flush=True)
    mini = load_backbone(ModelSpec(id="asset:minilm", dtype="float32", device="cpu"))
    print(f"| all-MiniLM-L6-v2 | 3 | {rate(mini, 3, mini.tokenize(texts)):.0f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["collect", "layers", "score", "speed"])
    ap.add_argument("--model", default="asset:smollm2")
    ap.add_argument("--layers", type=int, nargs="*", default=[4, 7, 10, 13, 16])
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--sae", default=None, help="SAE directory (Qwen-Scope format) for `score`")
    ap.add_argument("--n", type=int, default=30, help="prompts per benchmark")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--m", type=int, default=32, help="`top` pooling: features kept per prompt (the suite default)")
    ap.add_argument("--cache", default="out/demo_model_bench")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    {"collect": collect, "layers": layers_cmd, "score": score_cmd, "speed": speed_cmd}[args.command](args)


if __name__ == "__main__":
    main()
