"""Shared test data: a synthetic store (no model) and a tiny real suite (tiny Qwen3 + random SAE).

`build_store(path)` writes 5 benchmarks with a real and a null encoder straight
into a Store, for tests of metrics, SQL, the CLI and the report.
`write_tiny_suite(root)` writes the real project path end to end: a tiny random
Qwen3 checkpoint with the real Qwen tokenizer (toy.tiny_qwen3), a random SAE in
the exact Qwen-Scope format (sae.save_sae) and two local JSONL benchmarks.
`tiny_backbone()` is an in-memory tiny Qwen3 Backbone (real tokenizer) for forward-path tests;
`OutOfMemoryError` stands in for torch.cuda.OutOfMemoryError there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from qscope_eval.store import Store

SHARD = 4  # tiny suite: 20 samples -> 5 shards


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (batching.is_oom matches the class name)."""


def tiny_backbone(num_hidden_layers: int = 4, dtype=None):
    """A tiny random Qwen3 Backbone (d_model 64, the real Qwen tokenizer) on CPU, seed 0."""
    from qscope_eval.model import toy

    config = toy.qwen3_1p7b_config(hidden_size=64, intermediate_size=128, num_hidden_layers=num_hidden_layers,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return toy.random_qwen3(config, device="cpu", dtype=dtype, seed=0)


def build_store(path, seed=0, n_bench=5, n=60, d=256):
    rng = np.random.default_rng(seed)
    s = Store(path)
    e = s.register_encoder("toy@main|sae|L1|last|sae", "toy", "main", "sae", 1, "last", "sae", d, {})
    en = s.register_encoder("toy@main|sae|L1|last|null", "toy", "main", "sae", 1, "last", "null", d, {})
    for b in range(n_bench):
        texts = [f"bench{b} q{i} " + ("shared" if i < 5 else str(rng.integers(1e9))) for i in range(n)]
        ids = s.register_benchmark(f"bench_{b}", "synth", {"path": "x"}, texts)
        for enc, width in ((e, 40), (en, 120)):
            todo = s.pending(enc.encoder_id, ids)
            rows, feats, vals = [], [], []
            for r in range(len(todo)):
                f = rng.choice(np.arange(b * 30, b * 30 + width) % d, size=8, replace=False)
                rows += [r] * 8
                feats += list(f)
                vals += list(rng.random(8) + 0.1)
            s.write_batch(enc.encoder_id, todo, rng.integers(10, 100, len(todo)), np.zeros(len(todo), bool),
                          np.array(rows), np.array(feats), np.array(vals), np.ones(len(rows), int))
    return s


def write_tiny_suite(root: Path, name: str = "tiny", extra: str = "", benchmarks: str | None = None) -> Path:
    """Tiny Qwen3 + random SAE (layer 1, d_sae 128, k 8) + two 10-prompt JSONL benchmarks; returns the suite YAML."""
    import torch

    from qscope_eval.model.sae import Sae, SaeConfig, save_sae
    from qscope_eval.model.toy import tiny_qwen3

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "model" / "config.json").exists():
        tiny_qwen3(root / "model")
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(128, 64, generator=gen)
    W /= W.norm(dim=1, keepdim=True)
    save_sae(Sae(SaeConfig(d_model=64, d_sae=128, k=8, layer=1), W, torch.randn(128, generator=gen) * 0.1,
                 W.T.contiguous(), torch.zeros(64)), root / "sae")
    topics = {"fruit": "apple banana cherry plum", "numbers": "seven eight nine eleven"}
    for bench, words in topics.items():
        rows = [{"q": f"Question {i} about {words}: which {bench} comes {'first' if i % 2 else 'last'}?"} for i in range(10)]
        (root / f"{bench}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    benchmarks = benchmarks or "  - {name: fruit, path: fruit.jsonl, text: q}\n  - {name: numbers, path: numbers.jsonl, text: q}\n"
    suite = root / f"{name}.yaml"
    suite.write_text(f"""name: {name}
model: {{id: ./model, dtype: float32, device: cpu}}
sae: {{path: ./sae}}
layers: [1]
pooling: last
"null": true
encode: {{shard_size: {SHARD}, batch_tokens: 256}}
{extra}benchmarks:
{benchmarks}""")
    return suite


if __name__ == "__main__":
    build_store(sys.argv[1]).close()
