"""Train a TopK SAE in the Qwen-Scope format on any backbone's residuals (DESIGN §8).

The demo ships an SAE we train ourselves on all-MiniLM-L6-v2 (layer 3, width 4096, k 32),
and users can train one for their own model:

    sae, stats = train_sae(collect_activations(backbone, texts, layer, 400_000), TrainConfig())

Recipe: no input normalisation and no b_dec subtraction (the SAE must encode exactly as
Qwen-Scope's do), b_dec initialised to the data mean, unit-norm decoder rows with the
encoder initialised as their transpose, Adam with linear warm-up and linear decay. After
each step decoder rows are renormalised, and before it the gradient component parallel
to each row is removed (it would only change the norm). The backward pass is sparse: the
encoder gradient touches only the k selected features per token (a sparse x dense matmul
instead of a dense [B, d_sae] gradient), and the decoder is an embedding_bag over the k
selected rows. Training data use the pooling token mask (no special tokens, position 0
or sinks), so the SAE sees the tokens it will later encode.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from qscope_eval.errors import SaeError
from qscope_eval.model.sae import Sae, SaeConfig

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how."""

    model: str = "asset:minilm"
    """Backbone: hub id, local folder or `asset:` ref (used by train_sae_command)."""
    layer: int = 3
    """Decoder/encoder layer whose output residual the SAE reads."""
    d_sae: int = 4096
    """Dictionary width."""
    k: int = 32
    """Features kept per token."""
    steps: int = 1800
    """Optimiser steps."""
    batch_tokens: int = 4096
    """Tokens per step (sampled without replacement, reshuffled every epoch)."""
    lr: float = 1e-3
    """Peak Adam learning rate."""
    warmup_steps: int = 100
    """Linear warm-up from 0 to lr; then linear decay to 0 at the last step."""
    seed: int = 0
    """Seeds initialisation, batch order and the text shuffle."""
    max_tokens: int = 400_000
    """Training tokens to collect (after masking)."""
    heldout: float = 0.05
    """Share of texts (train_sae_command) or tokens (train_sae without `heldout`) held out for FVU."""
    device: str = "cpu"
    """Where to train: cpu, cuda, ..."""
    max_length: int | None = None
    """Texts are truncated to this many tokens (None: the model's limit); the suite should use the same."""

    def __post_init__(self):
        if not 1 <= self.k <= self.d_sae:
            raise SaeError(f"k must be between 1 and d_sae ({self.d_sae}), got {self.k}")
        if self.steps < 1 or self.batch_tokens < 1 or self.max_tokens < 1:
            raise SaeError("steps, batch_tokens and max_tokens must be >= 1")
        if not 0 <= self.warmup_steps < self.steps:
            raise SaeError(f"warmup_steps must be in [0, steps), got {self.warmup_steps} with {self.steps} steps")
        if not 0 < self.heldout < 0.5:
            raise SaeError("heldout must be in (0, 0.5)")
        if self.lr <= 0:
            raise SaeError("lr must be > 0")
        if self.max_length is not None and self.max_length < 2:
            raise SaeError(f"max_length must be >= 2 tokens (or None for the model's limit), got {self.max_length}")


@dataclass
class TrainStats:
    """Outcome of a training run."""

    steps: int
    """Steps taken."""
    n_train: int
    """Training tokens."""
    n_heldout: int
    """Held-out tokens."""
    fvu_heldout: float
    """Fraction of variance unexplained on held-out tokens: sum |x - x̂|² / sum |x - mean|²."""
    fvu_train: float
    """Mean FVU over the last 10% of steps."""
    dead: int
    """Features that did not fire during the last epoch of training."""
    silent_heldout: int
    """Features that never fired on the held-out tokens."""
    wall_s: float
    """Training time (seconds, excludes activation collection)."""
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(step, batch FVU) every log interval."""


class _TopKEncoder(torch.autograd.Function):
    """pre = x @ W.T + b, top-k, ReLU; backward only through the k selected features per token."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, k):
        pre = torch.addmm(b_enc, x, W_enc.T)  # [B, d_sae]
        vals, idx = pre.topk(k, dim=-1, sorted=False)  # [B, k]
        acts = vals.relu()
        ctx.save_for_backward(x, acts, idx)
        ctx.d_sae = W_enc.shape[0]
        return acts, idx

    @staticmethod
    def backward(ctx, grad_acts, _grad_idx):
        x, acts, idx = ctx.saved_tensors
        g = grad_acts * (acts > 0)  # ReLU gradient, [B, k]
        B, k = idx.shape
        tokens = torch.arange(B, device=x.device).repeat_interleave(k)
        # grad W_enc [d_sae, d] = S @ x with S [d_sae, B] holding g at (feature, token): B*k*d work, not B*d_sae*d
        S = torch.sparse_coo_tensor(torch.stack([idx.flatten(), tokens]), g.flatten(), (ctx.d_sae, B),
                                    check_invariants=False)
        grad_W = torch.sparse.mm(S, x)
        grad_b = torch.zeros(ctx.d_sae, dtype=g.dtype, device=g.device).index_add_(0, idx.flatten(), g.flatten())
        return None, grad_W, grad_b, None


def _fvu_sums(x: torch.Tensor, rec: torch.Tensor, mean: torch.Tensor) -> tuple[float, float]:
    return float((x - rec).pow(2).sum()), float((x - mean).pow(2).sum())


@torch.no_grad()
def evaluate(sae: Sae, acts: torch.Tensor, chunk: int = 8192) -> tuple[float, torch.Tensor]:
    """Held-out FVU and per-feature firing counts [d_sae] of `sae` on `acts` [N, d]."""
    mean = acts.mean(0)
    err = tot = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for x in acts.split(chunk):
        x = x.to(sae.device, sae.dtype)
        out = sae.encode(x)
        e, t = _fvu_sums(x, sae.decode(*out), mean.to(x.device))
        err, tot = err + e, tot + t
        fired += torch.bincount(out.top_indices[out.top_acts > 0].cpu(), minlength=sae.cfg.d_sae)
    return err / max(tot, 1e-12), fired


# Long on purpose: the training loop (warm-up, decay, sparse backward, dead-feature count,
# held-out FVU) reads best as one piece; its parts share the optimizer state.
def train_sae(acts: torch.Tensor, cfg: TrainConfig, heldout: torch.Tensor | None = None,
              log: Log | None = None, log_every: int = 100) -> tuple[Sae, TrainStats]:
    """Train a TopK SAE on activations [N, d_model]; evaluate on `heldout` (else a random cfg.heldout share)."""
    acts = acts.detach().float()
    gen = torch.Generator().manual_seed(cfg.seed)
    if heldout is None:
        perm = torch.randperm(acts.shape[0], generator=gen)
        n_held = max(1, int(acts.shape[0] * cfg.heldout))
        heldout, acts = acts[perm[:n_held]], acts[perm[n_held:]]
    n, d = acts.shape
    if n < cfg.batch_tokens:
        raise SaeError(f"only {n} training tokens for batches of {cfg.batch_tokens}; give more texts or lower batch_tokens")
    dev = torch.device(cfg.device)
    data = acts.to(dev)
    # decoder rows [d_sae, d] (= W_dec.T), unit norm; encoder = their transpose (W_enc = rows)
    dec = torch.randn(cfg.d_sae, d, generator=gen)
    dec /= dec.norm(dim=1, keepdim=True)
    P = torch.nn.Parameter
    W_dec, W_enc = P(dec.clone().to(dev)), P(dec.clone().to(dev))
    b_enc, b_dec = P(torch.zeros(cfg.d_sae, device=dev)), P(data.mean(0).clone())
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    decay = cfg.steps - cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (cfg.warmup_steps + 1) if s < cfg.warmup_steps else max(0.0, (cfg.steps - s) / decay))
    total_var = float((data - data.mean(0)).pow(2).sum(1).mean())  # per-token variance, for FVU as the loss scale
    last_fired = torch.full((cfg.d_sae,), -1, dtype=torch.long, device=dev)
    steps_per_epoch = n // cfg.batch_tokens
    order, curve, tail = None, [], []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(n, generator=gen).to(dev)
        j = step % steps_per_epoch
        x = data[order[j * cfg.batch_tokens : (j + 1) * cfg.batch_tokens]]  # [B, d]
        z, idx = _TopKEncoder.apply(x, W_enc, b_enc, cfg.k)  # [B, k]
        rec = F.embedding_bag(idx, W_dec, per_sample_weights=z, mode="sum") + b_dec  # [B, d]
        fvu = (rec - x).pow(2).sum(1).mean() / total_var
        opt.zero_grad(set_to_none=True)
        fvu.backward()
        with torch.no_grad():
            # drop the gradient component along each (unit) decoder row: it would only change the norm
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        sched.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8)
            last_fired[idx[z > 0]] = step
        f = float(fvu.detach())
        if step >= cfg.steps - max(1, cfg.steps // 10):
            tail.append(f)
        if step % log_every == 0 or step == cfg.steps - 1:
            curve.append((step, round(f, 5)))
            if log:
                quiet = int((last_fired < step - steps_per_epoch).sum()) if step >= steps_per_epoch else -1
                log(f"step {step:5d}  fvu {f:.4f}  lr {sched.get_last_lr()[0]:.2e}  silent for an epoch {quiet}  "
                    f"{time.perf_counter() - t0:.0f}s")
    wall = time.perf_counter() - t0
    sae_cfg = SaeConfig(d_model=d, d_sae=cfg.d_sae, k=cfg.k, layer=cfg.layer)
    sae = Sae(sae_cfg, W_enc.detach().cpu().contiguous(), b_enc.detach().cpu(), W_dec.detach().T.cpu().contiguous(),
              b_dec.detach().cpu(), source=sae_cfg.filename)
    fvu_held, fired = evaluate(sae, heldout)
    dead = int((last_fired < cfg.steps - steps_per_epoch).sum())
    stats = TrainStats(steps=cfg.steps, n_train=n, n_heldout=int(heldout.shape[0]), fvu_heldout=fvu_held,
                       fvu_train=sum(tail) / len(tail), dead=dead, silent_heldout=int((fired == 0).sum()),
                       wall_s=wall, curve=curve)
    return sae, stats


def collect_activations(backbone, texts: Sequence[str], layer: int, max_tokens: int | None = None,
                        encode_spec=None) -> torch.Tensor:
    """[N, d_model] fp32 CPU residuals of `texts` at `layer`: the tokens pooling reads, in text order."""
    from qscope_eval.model.encode import iter_masked_residuals

    parts = [flat.float().cpu() for flat in iter_masked_residuals(backbone, texts, layer, encode_spec, max_tokens)]
    if not parts or sum(p.shape[0] for p in parts) == 0:
        raise SaeError("the texts gave no tokens after masking; give more or longer texts")
    return torch.cat(parts)


# ---------------------------------------------------------------- commands: user runs and the demo


@dataclass
class TrainReport:
    """What train_sae_command wrote and measured."""

    out_dir: Path
    stats: TrainStats
    n_texts: int
    collect_s: float
    stats_s: float
    config: TrainConfig


def _log_default(msg: str) -> None:
    print(msg, flush=True)


def train_sae_command(texts: Sequence[str], out_dir: str | Path, cfg: TrainConfig = TrainConfig(), *,
                      revision: str = "main", dtype: str = "float32", encode_spec=None, corpus: str = "",
                      command: str = "", backbone=None, log: Log | None = _log_default) -> TrainReport:
    """Collect activations of `texts`, train, and write the SAE directory.

    Writes `layer{n}.sae.pt` + `config.json`, the reference statistics for `top` pooling
    over the same tokens (`layer{n}.stats.npz`, and `layer{n}.null.stats.npz` for the
    null dictionary), and `TRAINING.md` (command, data, seed, FVU, dead features, time).
    Texts are shuffled with the seed; `cfg.heldout` of them are held out for FVU. Pass an
    already loaded `backbone` to skip loading `cfg.model`.
    """
    from qscope_eval.model.backbone import load_backbone
    from qscope_eval.model.feature_stats import feature_stats_from_acts
    from qscope_eval.model.sae import null_sae, save_sae
    from qscope_eval.model.feature_stats import save_feature_stats
    from qscope_eval.data.suite import ModelSpec

    log = log or (lambda _m: None)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if len(texts) < 20:
        raise SaeError(f"only {len(texts)} non-empty texts; an SAE needs thousands of tokens, give more texts")
    texts = texts.copy()
    random.Random(cfg.seed).shuffle(texts)
    n_held = max(1, int(len(texts) * cfg.heldout))
    held_texts, train_texts = texts[:n_held], texts[n_held:]
    if backbone is None:
        backbone = load_backbone(ModelSpec(id=cfg.model, revision=revision, dtype=dtype, device=cfg.device,
                                           max_length=cfg.max_length))
    backbone.check_layers([cfg.layer])
    t0 = time.perf_counter()
    acts = collect_activations(backbone, train_texts, cfg.layer, cfg.max_tokens, encode_spec)
    held = collect_activations(backbone, held_texts, cfg.layer, max(1, int(cfg.max_tokens * cfg.heldout)), encode_spec)
    collect_s = time.perf_counter() - t0
    log(f"collected {acts.shape[0]} training and {held.shape[0]} held-out tokens of {cfg.model} layer {cfg.layer} "
        f"(d_model {acts.shape[1]}) in {collect_s:.0f}s")
    sae, stats = train_sae(acts, cfg, heldout=held, log=log)
    log(f"held-out FVU {stats.fvu_heldout:.4f}, dead features {stats.dead}, {stats.wall_s:.0f}s")
    out_dir = Path(out_dir)
    save_sae(sae, out_dir)
    t1 = time.perf_counter()
    corpus = corpus or f"{len(train_texts)} texts, first {acts.shape[0]} masked tokens (train_sae_command)"
    ref = torch.cat([acts, held])
    main_stats, null_stats = feature_stats_from_acts([sae, null_sae(sae.cfg, seed=0)], ref, corpus=corpus)
    save_feature_stats(main_stats, out_dir, cfg.layer)
    save_feature_stats(null_stats, out_dir, cfg.layer, null=True)
    stats_s = time.perf_counter() - t1
    report = TrainReport(out_dir, stats, len(texts), collect_s, stats_s, cfg)
    (out_dir / "TRAINING.md").write_text(training_md(report, command=command, corpus=corpus,
                                                     stats_dead_ref=main_stats.n_dead))
    return report


def training_md(r: TrainReport, command: str = "", corpus: str = "", stats_dead_ref: int | None = None) -> str:
    """The TRAINING.md written beside a trained SAE."""
    c, s = r.config, r.stats
    curve = "\n".join(f"| {step} | {fvu:.4f} |" for step, fvu in s.curve)
    lines = [
        f"# TopK SAE for `{c.model}`, layer {c.layer}",
        "",
        "Qwen-Scope file format (`layer{n}.sae.pt`: W_enc, b_enc, W_dec, b_dec, fp32); trained by",
        "`qscope_eval.model.train_sae` (recipe: DESIGN §8).",
        "",
        "## Reproduce",
        "",
        "```",
        command or "qscope_eval.model.train_sae.train_sae_command(texts, out_dir, cfg)",
        "```",
        "",
        "## Setup",
        "",
        f"- data: {corpus}",
        f"- texts: {r.n_texts} (shuffled with seed {c.seed}; {c.heldout:.0%} of texts held out)",
        f"- tokens: {s.n_train} training, {s.n_heldout} held-out (pooling mask: no special tokens, position 0 or sinks)",
        f"- texts truncated to {c.max_length} tokens" if c.max_length else "- texts truncated to the model's limit",
        f"- width {c.d_sae}, k {c.k}, {c.steps} steps of {c.batch_tokens} tokens, Adam lr {c.lr} "
        f"({c.warmup_steps} warm-up steps, then linear decay), seed {c.seed}, device {c.device}",
        "- no input normalisation, no b_dec subtraction, encoder initialised as the decoder's transpose,",
        "  unit-norm decoder rows, b_dec initialised to the data mean, no AuxK",
        "",
        "## Result",
        "",
        f"- held-out FVU: **{s.fvu_heldout:.4f}** (train FVU over the last 10% of steps: {s.fvu_train:.4f})",
        f"- dead features (no firing during the last training epoch): **{s.dead}** of {c.d_sae}",
        f"- features silent on the held-out tokens: {s.silent_heldout}",
    ]
    if stats_dead_ref is not None:
        lines.append(f"- features that never fire on the reference corpus (`layer{c.layer}.stats.npz`): {stats_dead_ref}")
    lines += [
        f"- wall time: collect activations {r.collect_s:.0f} s, train {s.wall_s:.0f} s, "
        f"reference stats {r.stats_s:.0f} s (torch {torch.__version__}, torch threads: {torch.get_num_threads()})",
        "",
        "## Training curve (batch FVU)",
        "",
        "| step | FVU |",
        "|---:|---:|",
        curve,
        "",
    ]
    return "\n".join(lines)


# The MiniLM demo SAE (qscope_eval/suites/demo_sae) was trained on other data than the demo suite's benchmarks.
DEMO_MMLU_SUBJECTS = ("high_school_mathematics", "elementary_mathematics", "high_school_us_history",
                      "high_school_world_history", "high_school_biology", "college_biology")
DEMO_GSM8K_LIMIT = 200


def demo_training_texts() -> list[str]:
    """MiniLM SAE corpus: MMLU questions of every subject the demo does not audit + GSM8K items past the first 200."""
    import json

    from qscope_eval.data.assets import mmlu_subjects, resolve
    from qscope_eval.data.demo_corpus import gsm8k_prompt, mmlu_prompt

    texts = []
    for subject in mmlu_subjects():
        if subject in DEMO_MMLU_SUBJECTS:
            continue
        with open(resolve(f"asset:mmlu/{subject}.jsonl")) as f:
            texts += [mmlu_prompt(json.loads(line)) for line in f if line.strip()]
    with open(resolve("asset:gsm8k/test.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    texts += [gsm8k_prompt(r) for r in rows[DEMO_GSM8K_LIMIT:]]
    return texts


def train_demo_sae(out_dir: str | Path, steps: int = 1800, max_tokens: int = 400_000, seed: int = 0,
                   log: Log | None = _log_default, model: str = "asset:minilm", layer: int = 3, d_sae: int = 4096,
                   k: int = 32, batch_tokens: int = 4096, max_length: int | None = None) -> TrainReport:
    """Reproduce a committed demo SAE.

    `asset:minilm` (the defaults): qscope_eval/suites/demo_sae, MiniLM layer 3, on MMLU + GSM8K. Any other model
    (the demo's `asset:smollm2`): the broader corpus of data.demo_corpus (held-out MMLU subjects, GSM8K, stdlib
    code, Python documentation prose)."""
    import shlex

    cfg = TrainConfig(model=model, layer=layer, d_sae=d_sae, k=k, steps=steps, batch_tokens=batch_tokens, lr=1e-3,
                      warmup_steps=min(100, steps // 10), seed=seed, max_tokens=max_tokens, max_length=max_length)
    if model == "asset:minilm":
        texts = demo_training_texts()
        corpus = (f"MMLU test questions (lm-eval zero-shot prompt) of the {57 - len(DEMO_MMLU_SUBJECTS)} subjects the "
                  f"demo does not audit, plus GSM8K test items {DEMO_GSM8K_LIMIT + 1}-1319 (`Question: ...\\nAnswer:`); "
                  f"excluded: {', '.join(DEMO_MMLU_SUBJECTS)} and the first {DEMO_GSM8K_LIMIT} GSM8K items")
        command = (f"python -c \"from qscope_eval.model.train_sae import train_demo_sae; "
                   f"train_demo_sae('{out_dir}', steps={steps}, max_tokens={max_tokens}, seed={seed})\"")
    else:
        import platform

        from qscope_eval.data.demo_corpus import demo_lm_corpus

        c = demo_lm_corpus()
        texts, corpus = c.texts, c.description + f" (Python {platform.python_version()})"
        command = (f"qscope-eval train-sae --demo --model {shlex.quote(model)} --layer {layer} --d-sae {d_sae} --k {k} "
                   f"--steps {steps} --batch-tokens {batch_tokens} --max-tokens {max_tokens} --seed {seed}"
                   + (f" --max-length {max_length}" if max_length else "") + f" --out {out_dir}")
    return train_sae_command(texts, out_dir, cfg, corpus=corpus, command=command, log=log)
