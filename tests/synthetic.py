"""A small synthetic qscope-eval store (5 benchmarks, a real and a null encoder), for tests that need
stored data without running a model. `build_store(path)` returns an open Store."""
import sys, numpy as np
from qscope_eval.store import Store
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
                rows += [r] * 8; feats += list(f); vals += list(rng.random(8) + 0.1)
            s.write_batch(enc.encoder_id, todo, rng.integers(10, 100, len(todo)), np.zeros(len(todo), bool),
                          np.array(rows), np.array(feats), np.array(vals), np.ones(len(rows), int))
    return s
if __name__ == "__main__":
    build_store(sys.argv[1]).close()
