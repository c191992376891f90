"""The fidelity arms of bench/encode_arms.py (a mixin of its Bench): what the fast paths do to the feature sets.

- `baseline_arm`: the Qwen-Scope model-card procedure (one prompt at a time, full forward) on a few prompts, and
  `versus_baseline`: our `last` sets against its sets, per prompt (Jaccard);
- `noise_arm`: the batch-composition noise floor of a configuration (jobs.noise.measure_noise_floor: the same prompts
  batched and one at a time);
- `sae_arm`: the SAE alone in fp32 / TF32 / bf16 on real masked residuals, and the per-token top-k sets against fp32;
- `precision_arm`: pooled `max` / `top` sets with the SAE in bf16 against TF32 on the same prompts and batches (the
  SAE's rounding alone), to read beside that pooling's noise floor in the same run.

The state they use (model, SAE, prompts, save) is encode_arms.Bench's.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from qscope_eval.analysis import noise
from qscope_eval.data.suite import EncodeSpec
from qscope_eval.jobs import pipeline
from qscope_eval.jobs.noise import measure_noise_floor
from qscope_eval.model.encode import encode_tokens, token_mask


class FidelityArms:
    """Feature-set agreement arms; mixed into encode_arms.Bench."""

    @staticmethod
    def fired_sets(res: dict) -> dict[int, set]:
        """ModelCardBaseline.run's features -> {sample: set of features with z > 0}."""
        return {k: {f for f, (v, _) in feats.items() if v > 0} for k, feats in res.items()}

    def sae_arm(self, n_tokens: int) -> None:
        """SAE encode alone on real masked residuals: fp32 / tf32 / bf16 and agreement of the top-k sets with fp32."""
        spec = EncodeSpec()
        chunks, got = [], 0
        for i in range(0, len(self.texts), 16):
            res = self.bb.residuals(self.tok.ids[i : i + 16], [self.layer])
            h = res.hidden[self.layer]
            chunks.append(h[token_mask(h, res.attention_mask, res.special_mask, spec.exclude_first, spec.sink_factor)])
            got += chunks[-1].shape[0]
            if got >= n_tokens:
                break
        x = torch.cat(chunks)[:n_tokens]
        ref = None
        for prec in ("fp32", "tf32", "bf16"):
            encode_tokens(self.sae, x[:1024], prec)
            self.sync()
            t0 = time.perf_counter()
            v, idx = encode_tokens(self.sae, x, prec)
            self.sync()
            dt = time.perf_counter() - t0
            sets = idx.sort(dim=1).values
            fired = v > 0
            if ref is None:
                ref = (sets, idx, v)
                agree, jac = 1.0, 1.0
            else:
                agree = float((sets == ref[0]).all(dim=1).float().mean())
                # per-token Jaccard of the fired sets
                a = torch.zeros(x.shape[0], self.sae.cfg.d_sae, dtype=torch.bool, device=x.device)
                b = torch.zeros_like(a)
                a.scatter_(1, ref[1], ref[2] > 0)
                b.scatter_(1, idx, fired)
                jac = float(((a & b).sum(1) / (a | b).sum(1).clamp(min=1)).float().mean())
                del a, b
            tflops = 2 * x.shape[0] * self.sae.cfg.d_model * self.sae.cfg.d_sae / dt / 1e12
            row = {"arm": f"SAE alone {prec}", "tokens": int(x.shape[0]), "seconds": round(dt, 4),
                   "tokens_per_s": round(x.shape[0] / dt), "sae_tflops": round(tflops, 1),
                   "topk_sets_identical_to_fp32": round(agree, 4), "mean_jaccard_vs_fp32": round(jac, 4)}
            self.save(row)
            print(f"SAE alone {prec:<5} {x.shape[0]:>9,} tokens {dt:8.3f}s {x.shape[0] / dt:>12,.0f} tok/s "
                  f"{tflops:7.1f} TFLOP/s  sets identical to fp32 {agree:.4f}  mean Jaccard {jac:.4f}", flush=True)

    def noise_arm(self, name: str, pooling: str, spec: EncodeSpec, n: int) -> dict:
        t0 = time.perf_counter()
        nf = measure_noise_floor(self.runtime(pooling), self.texts, self.suite(pooling, spec), n=n)
        nf = next(iter(nf.values()))
        row = {"arm": f"noise floor {pooling}: {name}", "seconds": round(time.perf_counter() - t0, 1), **nf.to_dict()}
        self.save(row)
        print(f"noise floor {pooling}: {name:<28} {nf.n_samples} prompts batched vs alone: mean Jaccard "
              f"{nf.mean_jaccard:.4f}, min {nf.min_jaccard:.3f}, {nf.share_differ:.0%} of sets differ; union floor "
              + ", ".join(f"m={m}: {j:.3f}" for m, j in zip(nf.union_sizes, nf.union_jaccard)), flush=True)
        return row

    def baseline_arm(self, spec: EncodeSpec, n: int) -> None:
        """The model-card procedure on n prompts (run first, before anything is compiled); keeps its feature sets."""
        from transformers import Qwen3ForCausalLM

        from encode_baseline import ModelCardBaseline

        with torch.device("meta"):
            lm = Qwen3ForCausalLM(self.config)
        lm.model = self.bb.model
        lm.lm_head.weight = self.bb.model.embed_tokens.weight
        lm.eval()
        base = self.base = ModelCardBaseline(lm, self.bb.tokenizer, self.bb.layers_module[self.layer], self.sae,
                                             "last", spec, self.bb.max_length)  # kept: gpu_probe reruns it
        keys = list(range(n))
        base.run(keys[:2], self.texts[:2])
        self.sync()
        t0 = time.perf_counter()
        res, _ = base.run(keys, self.texts[:n])
        self.sync()
        self.record("baseline (model card) last", time.perf_counter() - t0, self.lengths[:n])
        self.base_sets = self.fired_sets(res)

    def versus_baseline(self, name: str, spec: EncodeSpec) -> None:
        """Jaccard of our `last` feature sets (spec) against the model-card baseline's, per prompt."""
        n = len(self.base_sets)
        batches = list(pipeline.encode_texts(self.runtime("last"), np.arange(n), self.texts[:n], self.suite("last", spec)))
        nf = noise.compare_sets(self.base_sets, noise.feature_sets(batches, f"random|L{self.layer}|last|sae"))
        row = {"arm": f"ours ({name}) vs model-card baseline, last", **nf.to_dict()}
        self.save(row)
        print(f"ours ({name}) vs model-card baseline (last, {n} prompts): mean Jaccard {nf.mean_jaccard:.4f}, "
              f"{nf.share_differ:.0%} of sets differ", flush=True)

    def precision_arm(self, pooling: str, spec: EncodeSpec, n: int) -> dict:
        """Pooled sets with the SAE in bf16 against TF32: the same prompts in the same batches, so the difference is
        the SAE's rounding alone; its throughput is the "suite ... bf16 SAE" arms'."""
        rt, key = self.runtime(pooling), f"random|L{self.layer}|{pooling}|sae"
        sets, t0 = {}, time.perf_counter()
        for prec in ("tf32", "bf16"):
            suite = self.suite(pooling, dataclasses.replace(spec, sae_precision=prec))
            sets[prec] = noise.feature_sets(pipeline.encode_texts(rt, np.arange(n), self.texts[:n], suite), key)
        nf = noise.compare_sets(sets["tf32"], sets["bf16"])
        row = {"arm": f"SAE bf16 vs tf32, {pooling}", "seconds": round(time.perf_counter() - t0, 1), **nf.to_dict()}
        self.save(row)
        print(f"SAE bf16 vs tf32, {pooling} ({n} prompts, same batches): mean Jaccard {nf.mean_jaccard:.4f}, min "
              f"{nf.min_jaccard:.3f}, {nf.share_differ:.0%} of sets differ (read beside the noise floor of {pooling})",
              flush=True)
        return row
