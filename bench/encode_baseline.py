"""The baseline of the encode benchmark, the Qwen-Scope model-card procedure, and the identity check.

Baseline: one prompt at a time, tokenizer(text) -> a full forward of the model
(Qwen: AutoModelForCausalLM, LM head included; the demo's MiniLM encoder has no
LM head, so its full forward is AutoModel: all 6 layers and the pooler), the
residual read by a forward hook on the layer, EVERY position encoded in fp32 by
the SAE (pre = x @ W_enc.T + b_enc, top-k, ReLU), then pooled in Python (lists
and dicts over the tokens) with exactly the pooling semantics of
qscope_eval.model.encode (token mask: no special tokens, no position 0, no attention
sinks; `last`, `max` or `top`).

Identity check: per sample the same features with the same n_tokens, values
within rtol. Differences that sit on a top-k / ReLU / rank-m boundary, where a
batched and a one-prompt forward may round either way, are diagnosed by
re-running the baseline on that prompt (ModelCardBaseline.ties) and reported as
such; anything else is a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics

import numpy as np
import torch

from encode_common import Features
from qscope_eval.model.sae import Sae
from qscope_eval.data.suite import EncodeSpec


# ---------------------------------------------------------------- the baseline: the model-card procedure


class ModelCardBaseline:
    """One prompt at a time: full forward, hook on the layer, SAE on every position in fp32, pooling in Python."""

    def __init__(self, full_model: torch.nn.Module, tokenizer, layer_module: torch.nn.Module, sae: Sae,
                 pooling: str, spec: EncodeSpec, max_length: int, ref_mean: np.ndarray | None = None, m: int = 32):
        self.model, self.tokenizer, self.layer_module = full_model, tokenizer, layer_module
        self.device = next(full_model.parameters()).device
        # fp32 SAE weights on the model's device, as the model card loads them
        self.W_enc, self.b_enc = sae.W_enc.float(), sae.b_enc.float()
        self.k, self.pooling, self.spec, self.max_length, self.m = sae.cfg.k, pooling, spec, max_length, m
        self.ref_mean = ref_mean.tolist() if ref_mean is not None else None
        tok = tokenizer
        self.special = {int(i) for i in (tok.all_special_ids or []) if i is not None}
        if tok.pad_token_id is not None:
            self.special.add(int(tok.pad_token_id))
        self.captured: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def hooked(self):
        def hook(module, args, output):
            self.captured["resid"] = output[0] if isinstance(output, (tuple, list)) else output

        handle = self.layer_module.register_forward_hook(hook)
        try:
            yield self
        finally:
            handle.remove()

    def encode(self, text: str) -> tuple[Features, int]:
        """Pooled features of one prompt and its token count."""
        inputs = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_length)
        inputs = {name: t.to(self.device) for name, t in inputs.items()}
        with torch.no_grad():
            self.model(**inputs)  # every layer, LM head / pooler included
            x = self.captured.pop("resid")[0].float()  # [T, d_model], fp32
            pre = x @ self.W_enc.T + self.b_enc  # [T, d_sae]: every position
            top = pre.topk(self.k, dim=-1)
            values, indices = top.values.relu().tolist(), top.indices.tolist()
            norms = x.norm(dim=-1).tolist()
        ids = inputs["input_ids"][0].tolist()
        return self.pool(ids, values, indices, norms), len(ids)

    def kept(self, ids: list[int], norms: list[float]) -> list[int]:
        """Positions the pooling reads: `last`: the last non-special token; `max`/`top`: the token mask."""
        plain = [t for t, i in enumerate(ids) if i not in self.special]  # not special (no padding here)
        if self.pooling == "last":
            return [plain[-1] if plain else len(ids) - 1]
        # median_low = torch.median's "lower of the two middle values"
        median = statistics.median_low([norms[t] for t in plain]) if plain else math.nan
        return [t for t in plain
                if not (self.spec.exclude_first and t == 0) and not norms[t] > self.spec.sink_factor * median]

    def pool(self, ids: list[int], values: list[list[float]], indices: list[list[int]], norms: list[float],
             cut: bool = True) -> Features:
        """The pooling of qscope_eval.model.encode, written as plain Python over tokens."""
        keep = self.kept(ids, norms)
        if self.pooling == "last":
            t = keep[0]
            return {f: (v, 1) for f, v in zip(indices[t], values[t]) if v > 0}
        acc: dict[int, float] = {}
        count: dict[int, int] = {}
        for t in keep:
            for f, v in zip(indices[t], values[t]):
                if v > 0:
                    if self.pooling == "max":
                        acc[f] = max(acc.get(f, 0.0), v)
                    else:
                        acc[f] = acc.get(f, 0.0) + v
                    count[f] = count.get(f, 0) + 1
        if self.pooling == "max":
            return {f: (v, count[f]) for f, v in acc.items()}
        # top: mean z over the kept tokens / reference mean; the m best, ties to the lower id
        score = {f: s / len(keep) / self.ref_mean[f] for f, s in acc.items()}
        best = sorted(score, key=lambda f: (-score[f], f))[: self.m if cut else None]
        return {f: (score[f], count[f]) for f in best if score[f] > 0}

    def ties(self, text: str, features: set[int], tol: float) -> dict[int, str]:
        """Which of `features` sit on a decision boundary of this prompt, where rounding noise of the order
        of `tol` (a batched vs a one-prompt forward) may flip them: at a pooled token, the feature is k-th
        or (k+1)-th with the two within tol; or it is in the top-k with a pre-activation within tol of 0
        (ReLU); or (`top`) its score is within tol of the m-th best. Not timed: run after the fact."""
        inputs = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_length)
        inputs = {name: t.to(self.device) for name, t in inputs.items()}
        with self.hooked(), torch.no_grad():
            self.model(**inputs)
            x = self.captured.pop("resid")[0].float()
            pre = x @ self.W_enc.T + self.b_enc
            top = pre.topk(self.k + 1, dim=-1)
            vals, idx, norms = top.values.tolist(), top.indices.tolist(), x.norm(dim=-1).tolist()
        ids = inputs["input_ids"][0].tolist()
        why: dict[int, str] = {}
        for t in self.kept(ids, norms):
            vk, vk1 = vals[t][self.k - 1], vals[t][self.k]
            scale = abs(vals[t][0]) or 1.0  # the token's largest pre-activation
            for f in features - set(why):
                if f in idx[t][self.k - 1:] and vk - vk1 <= tol * scale:
                    why[f] = f"k-th/(k+1)-th tie at token {t} (gap {(vk - vk1) / scale:.0e} of the top value)"
                elif f in idx[t][: self.k] and abs(vals[t][idx[t].index(f)]) <= tol * scale:
                    why[f] = f"pre-activation within {tol:g} of 0 at token {t}"
        if self.pooling == "top" and set(why) != features:
            z = [[max(v, 0.0) for v in row[: self.k]] for row in vals]
            scores = self.pool(ids, z, [row[: self.k] for row in idx], norms, cut=False)
            ranked = sorted(scores.values(), key=lambda vn: -vn[0])
            if len(ranked) > self.m:
                s_m, s_m1 = ranked[self.m - 1][0], ranked[self.m][0]
                for f in features - set(why):
                    if s_m - s_m1 <= tol * s_m and f in scores and s_m1 * (1 - tol) <= scores[f][0] <= s_m * (1 + tol):
                        why[f] = f"the m-th and (m+1)-th scores within {tol:g}"
        return why

    def run(self, keys: list[int], texts: list[str]) -> tuple[dict[int, Features], int]:
        out, n_tokens = {}, 0
        with self.hooked():
            for key, text in zip(keys, texts):
                out[key], n = self.encode(text)
                n_tokens += n
        return out, n_tokens


# ---------------------------------------------------------------- identity


@dataclasses.dataclass
class Identity:
    n_samples: int = 0
    n_features: int = 0
    max_rel_err: float = 0.0
    """Over the features on which both agree on membership and n_tokens."""
    missing: list = dataclasses.field(default_factory=list)
    suspects: dict = dataclasses.field(default_factory=dict)
    """sample -> features whose membership, n_tokens or value (beyond rtol) differ."""
    explained: dict = dataclasses.field(default_factory=dict)
    """sample -> {feature: why}: differences that sit on a top-k / ReLU / rank-m boundary."""
    jaccard: list = dataclasses.field(default_factory=list)

    @property
    def unexplained(self) -> dict:
        return {k: fs - set(self.explained.get(k, {})) for k, fs in self.suspects.items()
                if fs - set(self.explained.get(k, {}))}

    def ok(self) -> bool:
        return not self.missing and not self.unexplained


def compare(base: dict[int, Features], ours: dict[int, Features], rtol: float) -> Identity:
    idt = Identity()
    for key, want in base.items():
        got = ours.get(key)
        if got is None:
            idt.missing.append(key)
            continue
        idt.n_samples += 1
        a, b = set(want), set(got)
        idt.jaccard.append(len(a & b) / len(a | b) if a | b else 1.0)
        suspects = a ^ b
        for f in a & b:
            (v0, n0), (v1, n1) = want[f], got[f]
            idt.n_features += 1
            err = abs(v1 - v0) / max(abs(v0), 1e-30)
            if n0 != n1 or err > rtol:
                suspects.add(f)
            else:
                idt.max_rel_err = max(idt.max_rel_err, err)
        if suspects:
            idt.suspects[key] = suspects
    return idt


def explain(idt: Identity, baseline: ModelCardBaseline, texts: dict[int, str], tol: float) -> Identity:
    """Diagnose each differing sample with the baseline (untimed): which differences are boundary ties."""
    for key, fs in idt.suspects.items():
        idt.explained[key] = baseline.ties(texts[key], fs, tol)
    return idt


def identity_line(idt: Identity, rtol: float, what: str, strict: bool = True) -> str:
    head = f"{idt.n_samples} samples, {idt.n_features} features, max rel err {idt.max_rel_err:.1e} (rtol {rtol:g})"
    ties = {k: v for k, v in idt.explained.items() if v}
    tie_note = ""
    if ties:
        key, why = next(iter(ties.items()))
        f, reason = next(iter(why.items()))
        n_f = sum(len(v) for v in ties.values())
        tie_note = (f"; {len(ties)} sample(s) differ only in {n_f} feature(s) sitting on a top-k boundary, where a "
                    f"batched and a one-prompt forward may round either way (e.g. sample {key}, feature {f}: {reason})")
    if idt.ok():
        return f"identity {what}: OK ({head}{tie_note})"
    parts = []
    if idt.missing:
        parts.append(f"{len(idt.missing)} samples missing")
    bad = idt.unexplained
    if bad:
        key, fs = next(iter(bad.items()))
        parts.append(f"{len(bad)} samples differ beyond rounding (first: sample {key}, features {sorted(fs)[:8]})")
    j = idt.jaccard
    jac = f"; Jaccard of the sets mean {np.mean(j):.4f}, min {np.min(j):.4f}" if j else ""
    return f"identity {what}: {'FAIL' if strict else 'APPROX'} ({head}; {'; '.join(parts)}{jac}{tie_note})"
