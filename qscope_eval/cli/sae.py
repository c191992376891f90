"""CLI commands that make SAE artefacts: `train-sae` and `feature-stats`.

Both read a text corpus from a suite (its benchmarks' prompts), a text file
(one prompt per line) or a JSONL file (a `text` field), and write into an SAE
directory in the Qwen-Scope format, so `sae: {path: DIR}` picks them up.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from qscope_eval.errors import QScopeError


def read_corpus(texts_file: str | None, suite: str | None) -> tuple[list[str], str]:
    """Texts and a one-line description of where they came from."""
    if (texts_file is None) == (suite is None):
        raise QScopeError("give exactly one corpus: --texts FILE (.txt one per line, or .jsonl with a `text` field) or --suite SUITE")
    if suite is not None:
        from qscope_eval.data.sources import load_suite_rows
        from qscope_eval.data.suite import load_suite

        rows = load_suite_rows(load_suite(suite))
        return rows["text"].tolist(), f"prompts of suite {suite} ({len(rows)} rows)"
    path = Path(texts_file)
    if not path.is_file():
        raise QScopeError(f"no corpus file {path}; give a .txt (one text per line) or .jsonl (a `text` field) file")
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise QScopeError(f"{path}:{n} is not a JSON object with a `text` field") from None
    else:
        texts = [t for t in path.read_text().splitlines() if t.strip()]
    return texts, f"{path.name} ({len(texts)} texts)"


@click.command("train-sae")
@click.option("--model", default="asset:minilm", show_default=True, help="Hub id, local model dir or asset: ref.")
@click.option("--layer", type=int, required=True, help="Layer whose output residual the SAE reads.")
@click.option("--d-sae", type=int, default=4096, show_default=True, help="Dictionary width.")
@click.option("--k", type=int, default=32, show_default=True, help="Features kept per token (TopK).")
@click.option("--steps", type=int, default=1800, show_default=True, help="Optimizer steps.")
@click.option("--max-tokens", type=int, default=400_000, show_default=True, help="Training tokens to collect.")
@click.option("--batch-tokens", type=int, default=4096, show_default=True, help="Tokens per optimiser step.")
@click.option("--max-length", type=int, default=None, help="Truncate texts to this many tokens (default: the model's limit).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the initialisation, the batch order and the text shuffle.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the model and the training (cpu, cuda, cuda:1).")
@click.option("--texts", "texts_file", default=None, help="Corpus file: .txt (one per line) or .jsonl (`text`).")
@click.option("--suite", default=None, help="Use a suite's benchmark prompts as the corpus.")
@click.option("--demo", is_flag=True, help="Reproduce a committed demo SAE: with --model asset:minilm the MiniLM one "
              "(corpus: MMLU subjects and GSM8K items the demo suite does not use), with --model asset:smollm2 the "
              "SmolLM2 one (corpus: qscope_eval.data.demo_corpus); its TRAINING.md has the exact command.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="SAE directory to write.")
def train_sae(model, layer, d_sae, k, steps, max_tokens, batch_tokens, max_length, lr, seed, device, texts_file, suite,
              demo, out_dir):
    """Train a TopK SAE on a model's residual stream, saved in the Qwen-Scope format.

    Writes layer{N}.sae.pt + config.json, the `top`-pooling reference statistics
    (layer{N}.stats.npz and layer{N}.null.stats.npz) and TRAINING.md.

    Example: qscope-eval train-sae --model asset:minilm --layer 3 --texts corpus.txt --out my_sae
    """
    from qscope_eval.model.train_sae import TrainConfig, train_demo_sae, train_sae_command

    if demo:
        rep = train_demo_sae(out_dir, steps=steps, max_tokens=max_tokens, seed=seed, model=model, layer=layer,
                             d_sae=d_sae, k=k, batch_tokens=batch_tokens, max_length=max_length)
    else:
        texts, corpus = read_corpus(texts_file, suite)
        cfg = TrainConfig(model=model, layer=layer, d_sae=d_sae, k=k, steps=steps, max_tokens=max_tokens, lr=lr,
                          seed=seed, device=device, warmup_steps=min(100, steps // 10), batch_tokens=batch_tokens,
                          max_length=max_length)
        command = "qscope-eval " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        rep = train_sae_command(texts, out_dir, cfg, corpus=corpus, command=command)
    click.echo(f"wrote {out_dir}: held-out FVU {rep.stats.fvu_heldout:.4f}, dead features {rep.stats.dead}")

@click.command("feature-stats")
@click.argument("suite")
@click.option("--texts", "texts_file", default=None, help="Reference corpus (.txt / .jsonl); default: the suite's prompts.")
@click.option("--max-tokens", type=int, default=400_000, show_default=True, help="Reference tokens to read.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Where to write layer{N}.stats.npz.")
def feature_stats(suite, texts_file, max_tokens, out_dir):
    """Reference feature statistics for `top` pooling, for every layer of SUITE's SAE (a YAML path or built-in name).

    Mean activation and firing frequency per feature over a reference corpus (the
    same token mask pooling uses), for the SAE and its null dictionary. Point the
    suite at them with `sae: {feature_stats: DIR}`.

    Example: qscope-eval feature-stats release-audit.yaml --texts reference.txt --out stats/
    """
    from qscope_eval.model.backbone import load_backbone
    from qscope_eval.model.encode import iter_masked_residuals
    from qscope_eval.model.feature_stats import feature_stats_from_acts
    from qscope_eval.model.sae import load_sae, null_sae
    from qscope_eval.model.feature_stats import save_feature_stats
    from qscope_eval.data.suite import load_suite

    s = load_suite(suite)
    texts, corpus = read_corpus(texts_file, None if texts_file else suite)
    bb = load_backbone(s.model)
    bb.check_layers(list(s.layers))
    for layer in s.layers:
        sae = load_sae(s.sae, layer, device=bb.device)
        acts = iter_masked_residuals(bb, texts, layer, s.encode, max_tokens=max_tokens)
        main, null = feature_stats_from_acts([sae, null_sae(sae.cfg, seed=0).to(bb.device)], acts, corpus=corpus)
        save_feature_stats(main, out_dir, layer)
        save_feature_stats(null, out_dir, layer, null=True)
        click.echo(f"layer {layer}: {main.n_tokens} tokens, {main.n_dead} features never fired -> {out_dir}")
