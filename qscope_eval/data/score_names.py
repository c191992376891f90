"""Score-table column names -> stored benchmark names (leaderboard spellings, lm-eval task names, --map).

A score table names its columns however its source does: Open LLM Leaderboard v1
exports `harness|hendrycksTest-anatomy|5` and `harness|arc:challenge|25`, v2 exports
`leaderboard_mmlu_pro`, HELM-style sheets `MMLU (Anatomy)`, lm-eval writes task names
(`mmlu_anatomy`), people write `mmlu_anatomy (5-shot)`. A column is matched to a
stored benchmark, in this order of trust:

- ``map``: the user's `--map FILE` says so (a column mapped to null is ignored);
- ``exact``: the column IS a stored benchmark name;
- ``task``: the column is the lm-eval task a stored benchmark was built from (suite `task:`);
- ``leaderboard``: after undoing a leaderboard spelling (`harness|X|n`, `hendrycksTest-`,
  `arc:challenge`, the leaderboard's display names such as `TruthfulQA`), the name or task;
- ``normalised``: lower-cased, punctuation and spaces -> `_`, shot counts stripped.

Two stored benchmarks matching one column at its best level is an error (never a guess),
and so is a column naming no benchmark while looking like a score column: it is reported
as ``unmatched`` with the reason, never dropped silently. Metadata columns (parameters,
licence, averages, standard errors ...) are ``ignored`` with the reason.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from qscope_eval.errors import QScopeError


class ScoreTableError(QScopeError):
    """A score table cannot be read or matched; the message says what to fix."""


MATCHED = ("exact", "task", "leaderboard", "normalised", "map")
"""`how` values of a column whose scores are used (ColumnMatch.how)."""

# The leaderboard's display names and v1 task spellings -> the lm-eval task they report.
ALIASES = {
    "arc": "arc_challenge", "arc_c": "arc_challenge", "arc_e": "arc_easy", "truthfulqa": "truthfulqa_mc2",
    "truthfulqa_mc": "truthfulqa_mc2", "truthful_qa": "truthfulqa_mc2", "hellaswag": "hellaswag",
    "hella_swag": "hellaswag", "winogrande": "winogrande", "gsm8k": "gsm8k", "gsm_8k": "gsm8k", "mmlu": "mmlu",
    "mmlu_pro": "mmlu_pro", "mmlu_pro_": "mmlu_pro", "bbh": "bbh", "gpqa": "gpqa", "ifeval": "ifeval",
    "math": "math", "math_lvl_5": "math_hard", "musr": "musr", "human_eval": "humaneval", "humaneval": "humaneval",
}

# Metadata columns of leaderboard exports: (pattern on the normalised name, why it is not a benchmark).
_META = [
    (r"(^|_)(stderr|std_?err|se|sd|std|ci|ci_lo|ci_hi|lo|hi|interval|err|error)$|stderr", "a standard error / interval column, not a score"),
    (r"^(average|avg|mean|overall|total|score_avg|average_score)(_|$)|(^|_)average$", "an average over benchmarks, not a benchmark"),
    (r"(^|_)(params|n_params|num_params|parameters|size|model_size|b)(_|$)|#params", "a model-size column, not a score"),
    (r"licen[cs]e|hub|likes|downloads|hearts|flag|merged|moe|available|co2|carbon|emissions|cost|price", "model metadata, not a score"),
    (r"^(type|model_type|precision|weight_type|architecture|arch|base_model|revision|sha|date|submission|"
     r"upload|rank|id|index|unnamed|chat_template|still_on_hub|official|generation|maintainers|link|url)(_|$)",
     "model metadata, not a score"),
    (r"^(n|n_samples|n_items|count|num_samples|samples|sample_len|effective|original)$", "a sample-count column, not a score"),
]


def normalise(name: str) -> str:
    """Lower-case, leaderboard wrappers undone, punctuation and spaces -> '_', shot counts stripped."""
    s = str(name).strip()
    m = re.fullmatch(r"\s*(?:harness|leaderboard|lighteval|helm|custom)\|(.+?)\|\s*\d+\s*", s, flags=re.I)
    if m:  # `harness|hendrycksTest-anatomy|5`
        s = m.group(1)
    s = re.sub(r"(?i)hendrycks_?test[-_ ]?", "mmlu_", s)
    s = re.sub(r"(?i)[\s_(\[-]*\d+[\s_-]*shots?[)\]]?", "", s)  # `(5-shot)`, `_5shot`, ` 25-shot`
    s = s.lower().replace("&", "and")
    s = re.sub(r"[^a-z0-9]+", "_", s).strip("_")
    return s


def _keys(name: str) -> set[str]:
    """Every normalised spelling a name may stand for (with and without a `leaderboard_` prefix, its alias)."""
    n = normalise(name)
    out = {n}
    if n.startswith("leaderboard_"):
        out.add(n[len("leaderboard_"):])
    out |= {ALIASES[k] for k in list(out) if k in ALIASES}
    return {k for k in out if k}


def _looks_leaderboard(column: str) -> bool:
    return bool(re.search(r"\||hendrycks|:|\(|shot|^leaderboard_", column, flags=re.I)) or normalise(column) in ALIASES


def meta_reason(column: str) -> str | None:
    """Why a column is metadata (None: it may be a score)."""
    n = normalise(column)
    for pat, why in _META:
        if re.search(pat, n) or re.search(pat, str(column).lower()):
            return why
    return None


@dataclass(frozen=True)
class NameMatch:
    """Where one column name points: a stored benchmark, or None, and how / why."""

    benchmark: str | None
    how: str
    reason: str


class Matcher:
    """Matches column names to stored benchmarks (names, their lm-eval tasks, a user map)."""

    def __init__(self, benchmarks: Sequence[str], tasks: Mapping[str, str] | None = None,
                 mapping: Mapping[str, str | None] | None = None):
        self.benchmarks = list(benchmarks)
        self.tasks = {b: t for b, t in (tasks or {}).items() if t and b in set(self.benchmarks)}
        self.mapping = dict(mapping or {})
        unknown = sorted({v for v in self.mapping.values() if v is not None} - set(self.benchmarks))
        if unknown:
            raise ScoreTableError(f"--map names benchmarks this database does not hold: {', '.join(unknown)}; "
                                  f"stored benchmarks: {', '.join(self.benchmarks) or 'none'}")
        self._by_key: dict[str, set[str]] = {}
        for b in self.benchmarks:
            for k in _keys(b) | (_keys(self.tasks[b]) if b in self.tasks else set()):
                self._by_key.setdefault(k, set()).add(b)

    def match(self, column: str) -> NameMatch:
        """The stored benchmark a column names; raises ScoreTableError when two benchmarks match equally well."""
        if column in self.mapping:
            b = self.mapping[column]
            return NameMatch(b, "map", f"--map: {column!r} -> {b}") if b else NameMatch(None, "ignored", "--map maps it to null")
        if column in self.benchmarks:
            return NameMatch(column, "exact", "the stored benchmark's name")
        by_task = sorted(b for b, t in self.tasks.items() if t == column)
        if by_task:
            return self._one(column, by_task, "task", f"the lm-eval task of {by_task[0]}")
        hits = sorted(set().union(*(self._by_key.get(k, set()) for k in _keys(column))))
        if hits:
            how = "leaderboard" if _looks_leaderboard(column) else "normalised"
            return self._one(column, hits, how, f"{column!r} reads as {normalise(column)!r}")
        why = meta_reason(column)
        if why:
            return NameMatch(None, "ignored", why)
        return NameMatch(None, "unmatched", f"no stored benchmark is named like {normalise(column)!r}; "
                                            "add it to --map FILE (column -> benchmark) if it is one")

    def _one(self, column: str, hits: list[str], how: str, reason: str) -> NameMatch:
        if len(hits) > 1:
            raise ScoreTableError(f"column {column!r} matches {len(hits)} stored benchmarks ({', '.join(hits)}); "
                                  f"say which with --map FILE (a line `{column}: {hits[0]}`, or `{column}: null` to ignore it)")
        return NameMatch(hits[0], how, reason)


def read_mapping(path: str | Path) -> dict[str, str | None]:
    """--map FILE: YAML `column: benchmark` (null: ignore) or a two-column CSV (column, benchmark; empty: ignore)."""
    p = Path(path)
    if not p.is_file():
        raise ScoreTableError(f"--map {p}: no such file; give a YAML (`column: benchmark`) or two-column CSV file")
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix.lower() in (".csv", ".tsv"):
        rows = [r for r in csv.reader(text.splitlines(), delimiter="\t" if p.suffix.lower() == ".tsv" else ",") if r]
        if rows and [c.strip().lower() for c in rows[0][:2]] in (["column", "benchmark"], ["source", "benchmark"]):
            rows = rows[1:]
        bad = [r for r in rows if len(r) not in (1, 2)]
        if bad:
            raise ScoreTableError(f"--map {p}: every line needs two cells (column, benchmark); line {bad[0]!r} has {len(bad[0])}")
        return {r[0].strip(): (r[1].strip() or None) if len(r) == 2 and r[1].strip().lower() not in ("null", "none") else None
                for r in rows}
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ScoreTableError(f"--map {p} is not valid YAML ({str(e).splitlines()[0]}); write `column: benchmark` lines") from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, type(None))) for v in data.values()):
        raise ScoreTableError(f"--map {p} must be a mapping of `column: benchmark` (or `column: null` to ignore it)")
    return {str(k): v for k, v in data.items()}
