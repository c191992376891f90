"""How far torch.compile moves a bf16 model's residuals from eager, with and without rounding like eager.

Random bf16 Qwen3s (toy.random_qwen3) on this machine: the same prompts through model.forward eager, then with
the decoder layers compiled by inductor (model.compiling.compile_layers), emulate_eager off and on. Prints the
share of residual elements that differ from eager and the relative L2 error, per model size. Needs a C++
compiler (inductor on CPU); on CUDA pass --device cuda.

    python bench/compile_fidelity.py [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qscope_eval.model import compiling, forward, toy  # noqa: E402
from qscope_eval.model.batching import ForwardOptions  # noqa: E402

SIZES = [(2, 64, 128, 4, 2, 16), (6, 256, 768, 4, 2, 64)]
"""(layers, d_model, intermediate, heads, kv heads, head_dim) of the toy models."""


def residuals(bb, ids, layer: int, compile_: bool) -> list[torch.Tensor]:
    opts = ForwardOptions(4096, 64, bucket=forward.COMPILE_BUCKET, compile=compile_)
    out = {}

    def grab(res):
        return [res.hidden[layer][r, : int(res.lengths[r])].float().cpu() for r in range(len(res.lengths))]

    for chunk in forward.iter_forward(bb, [layer], grab, opts, ids=ids):
        out.update(zip(chunk.positions.tolist(), chunk.result))
    return [out[i] for i in range(len(ids))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=24)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ids = [rng.integers(100, 20000, size=int(n)) for n in rng.integers(32, 200, size=args.prompts)]
    print(f"{'layers':>6} {'d_model':>7}  {'emulate_eager':<13} {'elements differing':>18} {'relative L2':>12}")
    for layers, d, inter, heads, kv, hd in SIZES:
        cfg = toy.qwen3_1p7b_config(hidden_size=d, intermediate_size=inter, num_hidden_layers=layers,
                                    num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd)
        bb = toy.random_qwen3(cfg, device=args.device, dtype=torch.bfloat16, seed=0)
        eager = residuals(bb, ids, layers - 1, False)
        ref = torch.cat([e.flatten() for e in eager])
        for emulate in (False, True):
            torch._dynamo.reset()
            try:
                compiling.compile_layers(bb, emulate_eager=emulate)
                got = residuals(bb, ids, layers - 1, True)
                assert compiling.compiled(bb), "inductor failed; the eager fallback ran"
            finally:
                compiling.uncompile(bb)
            diff = torch.cat([g.flatten() for g in got]) - ref
            print(f"{layers:>6} {d:>7}  {str(emulate):<13} {float((diff != 0).float().mean()):>17.1%} "
                  f"{float(diff.norm() / ref.norm()):>12.4f}", flush=True)


if __name__ == "__main__":
    main()
