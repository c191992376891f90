"""Match logged lm-eval prompts to the store's samples, and logged tasks to stored benchmarks.

See lmeval_logs.py for the rules (whole prompt, suffix, suffix before a constant
chat-template tail, then the doc's fields; doc check; ambiguity is never guessed). A logged task is
assigned to the stored benchmark that holds most of its matched samples, so
benchmark names never need to agree; docs matched to samples outside that
benchmark, and tasks that another task already claimed, are reported.
"""

from __future__ import annotations

import bisect
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from qscope_eval.data.lmeval_logs import CALIBRATE, MAX_TAIL, MIN_SUFFIX, TaskLog, normalize

REASONS = ("no stored prompt", "ambiguous", "doc mismatch", "other benchmark")
DOC_PROBE = 24   # doc-field fallback tries per task before giving up when none succeeds
DOC_SLACK = 100  # characters a stored template may add after the doc's field beyond what lm-eval's adds


class SampleIndex:
    """Stored prompt texts, normalised, for exact and longest-suffix lookup."""

    def __init__(self, texts: dict[int, str]):
        by_norm: dict[str, list[int]] = defaultdict(list)
        for sid, t in texts.items():
            by_norm[normalize(t)].append(int(sid))
        self.by_norm = dict(by_norm)
        self.raw = texts
        # reversed texts, sorted: "stored text is a suffix of p" == "reversed text is a prefix of reversed p"
        self.rev = sorted(n[::-1] for n in self.by_norm if len(n) >= MIN_SUFFIX)

    def _corpus(self) -> tuple[str, list[int], list[str]]:
        """All normalised texts joined by NUL (built on first use): one C-speed `find` scans them all."""
        if not hasattr(self, "_joined"):
            norms = list(self.by_norm)
            starts, pos = [], 0
            for n in norms:
                starts.append(pos)
                pos += len(n) + 1
            self._joined = ("\0".join(norms), starts, norms)
        return self._joined

    def containing(self, field: str, max_rest: int, limit: int = 50) -> set[str]:
        """Stored texts holding `field` with at most `max_rest` characters after it (its own question is last
        in a prompt; a few-shot example of it sits further from the end)."""
        joined, starts, norms = self._corpus()
        hits, pos, seen = set(), joined.find(field), 0
        while pos != -1 and seen < limit:
            k = bisect.bisect_right(starts, pos) - 1
            rest = len(norms[k]) - (pos - starts[k] + len(field))
            if 0 <= rest <= max_rest:
                hits.add(norms[k])
            pos, seen = joined.find(field, pos + 1), seen + 1
        return hits

    def longest_suffix(self, p: str) -> str | None:
        """The longest stored (normalised) text that is a suffix of normalised prompt p."""
        if p in self.by_norm:
            return p
        q = p[::-1]
        while len(q) >= MIN_SUFFIX:
            i = bisect.bisect_right(self.rev, q) - 1
            if i < 0:
                return None
            c = self.rev[i]
            if q.startswith(c):
                return c[::-1]
            # any stored prefix of q is a prefix of the common part of q and c (see DESIGN §5a notes)
            q = q[:len(os.path.commonprefix([q, c]))]
        return None


def _strings(x: Any, out: list[str]) -> list[str]:
    if isinstance(x, str):
        n = normalize(x)
        if len(n) >= 8:
            out.append(n)
    elif isinstance(x, dict):
        for v in x.values():
            _strings(v, out)
    elif isinstance(x, list):
        for v in x:
            _strings(v, out)
    return out


def doc_agrees(doc: Any, prompt: str, stored: str) -> bool:
    """The doc's longest string field found in the prompt must be inside the stored text (True if none is)."""
    inside = [s for s in _strings(doc, []) if s in prompt]
    return not inside or max(inside, key=len) in stored


@dataclass
class Match:
    sample_id: int | None
    reason: str | None
    """None when matched, else one of REASONS."""
    how: str | None = None
    """`prompt` (the stored text ends the prompt) or `doc` (the doc's longest field ends a stored text)."""


def _by_doc(idx: SampleIndex, doc: Any, p: str) -> str | None | bool:
    """Fallback for prompts rendered with another template: the stored text holding the doc's longest field
    (>= 20 characters, shown in the prompt) about as near its end as in the prompt. False: ambiguous."""
    fields = [f for f in _strings(doc, []) if len(f) >= 20 and f in p]
    if not fields:
        return None
    f = max(fields, key=len)
    hits = idx.containing(f, max_rest=len(p) - (p.rfind(f) + len(f)) + DOC_SLACK)
    return (hits.pop() if hits else None) if len(hits) <= 1 else False


class DocBudget:
    """The doc-field fallback scans every stored text: it stays on for a task only while it finds something
    (a task that is not in the suite would otherwise cost one scan per document and model)."""

    def __init__(self, probe: int = DOC_PROBE):
        self.probe, self.tries, self.hits = probe, 0, 0

    def allowed(self) -> bool:
        return self.hits > 0 or self.tries < self.probe

    def record(self, found: bool) -> None:
        self.tries += 1
        self.hits += int(found)


def _match_one(idx: SampleIndex, prompt: str, doc: Any, tail: int, budget: DocBudget | None = None) -> Match:
    p = normalize(prompt)
    cut = p[:len(p) - tail].rstrip() if tail else p
    hit, how = idx.longest_suffix(cut), "prompt"
    if hit is None and tail:
        hit = idx.longest_suffix(p)
    if hit is None and (budget is None or budget.allowed()):
        hit, how = _by_doc(idx, doc, p), "doc"
        if budget is not None:
            budget.record(hit is not None)
        if hit is False:
            return Match(None, "ambiguous")
    if hit is None:
        return Match(None, "no stored prompt")
    ids = idx.by_norm[hit]
    if len(ids) > 1:  # two stored prompts differ only in whitespace: which one lm-eval showed is a guess
        raw = [i for i in ids if idx.raw[i].strip() and idx.raw[i].strip() in prompt]
        if len(raw) != 1:
            return Match(None, "ambiguous")
        ids = raw
    if not doc_agrees(doc, p, hit):
        return Match(None, "doc mismatch")
    return Match(ids[0], None, how)


def calibrate_tail(idx: SampleIndex, prompts: list[str]) -> int:
    """Characters of constant tail (chat template) after the stored text, fitted on a file's first prompts."""
    norm = [normalize(p) for p in dict.fromkeys(prompts[:CALIBRATE])]
    if len(norm) < 2:
        return 0
    common = os.path.commonprefix([n[::-1] for n in norm])[:MAX_TAIL]
    best, best_hits = 0, sum(idx.longest_suffix(n) is not None for n in norm)
    if best_hits == len(norm):
        return 0
    for t in range(1, len(common) + 1):
        hits = sum(idx.longest_suffix(n[:len(n) - t].rstrip()) is not None for n in norm)
        if hits > best_hits:
            best, best_hits = t, hits
    return best


@dataclass
class TaskMatch:
    """Where one logged task landed."""

    task: str
    benchmark: str | None
    n_docs: int
    """Distinct doc_ids logged for the task (over all models)."""
    n_matched: int
    """Docs matched to a sample of `benchmark`."""
    by_doc: int = 0
    """Of those, matched through the doc's fields (another prompt template) rather than the prompt's text."""
    unmatched: dict[str, int] = field(default_factory=dict)
    """Reason -> docs."""
    samples: dict[tuple[str, int], int] = field(default_factory=dict)
    """(model, doc_id) -> sample_id, within `benchmark`."""
    note: str | None = None


def match_tasks(logs: list[TaskLog], idx: SampleIndex, members: dict[int, set[str]]) -> list[TaskMatch]:
    """Match every logged doc, then assign each task to one stored benchmark (members: sample -> benchmarks)."""
    by_task: dict[str, list[TaskLog]] = defaultdict(list)
    for tl in logs:
        by_task[tl.task].append(tl)
    results = []
    for task, tls in sorted(by_task.items()):
        doc_match: dict[tuple[str, int], Match] = {}
        cache: dict[tuple[str, int], Match] = {}  # models share a task's prompts: match each once
        budget = DocBudget()
        for tl in tls:
            tail = calibrate_tail(idx, tl.prompts)
            for d, p, doc in zip(tl.doc_ids, tl.prompts, tl.docs):
                if (p, tail) not in cache:
                    cache[(p, tail)] = _match_one(idx, p, doc, tail, budget)
                doc_match[(tl.model, d)] = cache[(p, tail)]
        votes = Counter(b for m in {x.sample_id for x in doc_match.values() if x.sample_id is not None}
                        for b in members.get(m, ()))
        results.append(_assign(task, doc_match, votes, members))
    return _one_task_per_benchmark(results)


def _assign(task: str, doc_match: dict, votes: Counter, members: dict[int, set[str]]) -> TaskMatch:
    docs = {d for _, d in doc_match}
    per_doc: dict[int, Match] = {}
    for (_, d), m in doc_match.items():  # a doc counts as matched if it matched for some model
        if d not in per_doc or (per_doc[d].sample_id is None and m.sample_id is not None):
            per_doc[d] = m
    if not votes:
        why = Counter(m.reason for m in per_doc.values())
        return TaskMatch(task, None, len(docs), 0, 0, dict(why),
                         note=f"{task}: none of its {len(docs)} prompts is stored (not in the suite, or rendered "
                              "differently, e.g. with include_target); skipped")
    sizes = Counter(b for bs in members.values() for b in bs)
    bench = min(votes, key=lambda b: (-votes[b], sizes[b], b))   # most matches; ties: the smaller benchmark
    samples, why = {}, Counter()
    for (model, d), m in doc_match.items():
        if m.sample_id is not None and bench in members.get(m.sample_id, ()):
            samples[(model, d)] = m.sample_id
    for d, m in per_doc.items():
        if m.sample_id is None:
            why[m.reason] += 1
        elif bench not in members.get(m.sample_id, ()):
            why["other benchmark"] += 1
    n_matched = len({d for _, d in samples})
    by_doc = len({d for (model, d), m in doc_match.items() if m.how == "doc" and (model, d) in samples})
    return TaskMatch(task, bench, len(docs), n_matched, by_doc, dict(why), samples)


def _one_task_per_benchmark(results: list[TaskMatch]) -> list[TaskMatch]:
    """Two logged tasks on one stored benchmark (e.g. gsm8k and gsm8k_cot): keep the one matching more docs."""
    best: dict[str, TaskMatch] = {}
    for r in results:
        if r.benchmark is None:
            continue
        other = best.get(r.benchmark)
        if other is None or (r.n_matched, -len(r.task)) > (other.n_matched, -len(other.task)):
            best[r.benchmark] = r
    for r in results:
        if r.benchmark is not None and best[r.benchmark] is not r:
            r.note = (f"{r.task}: its prompts are benchmark {r.benchmark!r}, already matched by "
                      f"{best[r.benchmark].task!r} ({best[r.benchmark].n_matched} docs); skipped")
            r.benchmark, r.samples = None, {}
    return results
