"""Evidence for one SAE feature: where it fires, how often, and with what (DESIGN §5b).

`feature_evidence(store, feature)` gathers, for one encoder:
  * its firing frequency in every benchmark and reference corpus (share of the corpus's encoded samples);
  * the samples with the highest pooled value, with their text and, re-encoded through the backbone and SAE
    recorded in the encoder's params, the per-token activation of the feature (the tokens where it fires);
  * the features it co-fires with (Jaccard of sample sets).
Only those few samples are re-encoded. When the model or SAE cannot be loaded (another machine, an encoder
stored before its model spec was recorded, a changed SAE file), the tokens are left out with a note saying
why, and everything else is still returned. jobs/gaps.py and the report's drill-down call it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from qscope_eval.errors import QScopeError
from qscope_eval.analysis.gaps import cofiring, top_by_value
from qscope_eval.store import EncodedSet, EncoderRow, Store


class TokenEvidence(NamedTuple):
    """Per-token activations of one feature on a few prompts, or why they are missing."""

    tokens: list[list[dict]] | None
    """Per prompt: [{"token", "value", "pooled"}] in order (`pooled`: the token is one pooling reads)."""
    note: str | None
    """Why `tokens` is None (model not available), else None."""


def _all_corpora(store: Store, enc: EncoderRow) -> tuple[EncodedSet, list[str]]:
    names = store.benchmark_names() + store.benchmark_names(role="reference")
    roles = store.benchmark_roles()
    return store.load_encoded(enc, names), [roles.get(n, "benchmark") for n in names]


def feature_evidence(store: Store, feature: int, encoder: str | int | None = None, top: int = 5, n_cofire: int = 10,
                     reencode: bool = True, inputs=None, threshold: float = 0.0) -> dict:
    """The evidence dict for `feature` (the `feature --json` contract in docs/cli.md).

    inputs: a jobs.gaps.GapInputs already loaded for this encoder (saves a second read of the store).
    """
    if inputs is not None:
        es = inputs.real
        roles = ["benchmark"] * inputs.n_bench + ["reference"] * (len(es.benchmarks) - inputs.n_bench)
    else:
        enc0 = store.encoder(encoder)
        es, roles = _all_corpora(store, enc0)
    enc = es.encoder
    if not 0 <= int(feature) < enc.d_sae:
        raise QScopeError(f"feature {feature} is out of range for encoder {enc.encoder_id} (d_sae {enc.d_sae}); "
                          f"give an id from 0 to {enc.d_sae - 1}")
    feature = int(feature)
    F = sp.csr_matrix(es.X > threshold)
    col = np.asarray(F[:, feature].todense()).ravel().astype(np.int64)  # (n_samples,) fired or not
    sizes = np.asarray(es.M.sum(axis=1)).ravel()
    fired = es.M.astype(np.int64) @ col
    freq = [{"name": n, "role": r, "n_samples": int(s), "n_fired": int(k), "frequency": float(k / s) if s else None}
            for n, r, s, k in zip(es.benchmarks, roles, sizes, fired)]
    rows, vals = top_by_value(es.X, feature, top)
    ids = es.sample_ids[rows]
    texts = store.texts(ids)
    MT = es.M.T.tocsr()
    samples = [{"sample_id": int(i), "value": float(v), "in": [es.benchmarks[b] for b in MT[r].indices],
                "text": texts.get(int(i), "")} for i, v, r in zip(ids, vals, rows)]
    if not samples:
        tok = TokenEvidence(None, "the feature fires on no stored sample")
    elif reencode:
        tok = token_activations(enc, [s["text"] for s in samples], feature)
    else:
        tok = TokenEvidence(None, f"token view not computed here; run `qscope-eval feature --db {store.path} {feature}` "
                                  "where the model is available")
    for s, t in zip(samples, tok.tokens or []):
        s["tokens"] = t
    co = cofiring(F, feature, n_cofire)
    return {
        "feature": feature,
        "encoder": {"encoder_id": enc.encoder_id, "key": enc.key, "layer": enc.layer, "pooling": enc.pooling,
                    "d_sae": enc.d_sae, "kind": enc.kind},
        "n_samples_fired": int(col.sum()), "frequency": freq, "top_samples": samples,
        "tokens_available": tok.tokens is not None, "tokens_note": tok.note,
        "cofiring": [{"feature": int(f), "jaccard": float(j), "n_both": int(n)}
                     for f, j, n in zip(co.features, co.jaccard, co.n_both)],
    }


def token_activations(enc: EncoderRow, texts: list[str], feature: int) -> TokenEvidence:
    """Re-encode `texts` with the encoder's backbone + SAE; the feature's activation on every token."""
    try:
        bb, sae, encode_spec = _load(enc)
    except _Unavailable as e:
        return TokenEvidence(None, f"token view not available: {e}")
    import torch

    from qscope_eval.model.encode import token_mask

    tok = bb.tokenize(texts)
    out = []
    with torch.no_grad():
        for ids in tok.ids:
            res = bb.residuals([ids], [enc.layer])
            hidden = res.hidden[enc.layer]  # [1, T, d_model]
            mask = token_mask(hidden, res.attention_mask, res.special_mask, encode_spec.exclude_first,
                              encode_spec.sink_factor)[0]  # [T] tokens `max`/`top` pooling read
            enc_out = sae.encode(hidden[0].to(sae.dtype))  # top_acts, top_indices [T, k]
            hit = (enc_out.top_indices == feature)
            value = (enc_out.top_acts * hit).sum(dim=1).float().cpu().numpy()  # [T] z of the feature, 0 if not top-k
            pieces = _pieces(bb.tokenizer, [int(t) for t in ids])
            out.append([{"token": p, "value": float(v), "pooled": bool(m)}
                        for p, v, m in zip(pieces, value, mask.cpu().numpy())])
    return TokenEvidence(out, None)


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text as it appears in the decoded prompt (spaces kept), so the pieces join back into the
    prompt: the growth of the decoded prefix, or the token decoded alone where decoding is not prefix-stable."""
    out, prev = [], ""
    for i in range(len(ids)):
        cur = tokenizer.decode(ids[: i + 1], clean_up_tokenization_spaces=False)
        out.append(cur[len(prev):] if cur.startswith(prev) else tokenizer.decode([ids[i]]))
        prev = cur
    return out


class _Unavailable(Exception):
    """The encoder's model or SAE cannot be loaded here (the message says why)."""


def _load(enc: EncoderRow):
    """(backbone, SAE, EncodeSpec) for `enc`, checked to be the very SAE the encoder used."""
    from qscope_eval.data.suite import EncodeSpec, ModelSpec, SaeSpec

    p = enc.params
    if enc.kind != "sae":
        raise _Unavailable("token views are shown for SAE encoders, not the null baseline")
    if "model" not in p or "sae" not in p:
        raise _Unavailable("this encoder was stored before its model spec was recorded; rerun "
                           "`qscope-eval encode SUITE --db PATH` (nothing is re-encoded) to record it")
    try:
        model, sae_spec = ModelSpec(**p["model"]), SaeSpec(**p["sae"])
        encode_spec = EncodeSpec(**p.get("encode", {}))
        bb, sae = _load_cached(model, sae_spec, enc.layer)
    except (QScopeError, OSError, TypeError, ValueError) as e:
        raise _Unavailable(f"the model {p['model'].get('id')!r} or its SAE could not be loaded ({e})") from None
    if sae_spec.path:  # a local SAE: the file must still be the one the encoder used (same content hash)
        from qscope_eval.model.encoders import RuntimeSpec, sae_identity

        probe = RuntimeSpec(model, sae_spec, (enc.layer,), enc.pooling, False, encode_spec)
        if sae_identity(probe, enc.layer) != enc.sae:
            raise _Unavailable(f"the SAE file under {sae_spec.path} changed since this encoder ran ({enc.sae})")
    return bb, sae, encode_spec


@lru_cache(maxsize=2)
def _load_cached(model, sae_spec, layer: int):
    from qscope_eval.model.backbone import load_backbone
    from qscope_eval.model.encoders import live_backbone
    from qscope_eval.model.sae import check_compatible, load_sae

    bb = live_backbone(model) or load_backbone(model)
    bb.check_layers([layer])
    sae = load_sae(sae_spec, layer, device=bb.device)
    check_compatible(sae, bb.d_model, bb.n_layers)
    return bb, sae
