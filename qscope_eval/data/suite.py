"""Suite spec: a YAML file -> typed, validated config.

A suite names the benchmarks to audit, the model whose residual stream is read,
the SAE release and layers that encode it, and how per-token codes are pooled
into one feature set per prompt. Everything is checked here, before any model
is loaded, so a typo costs a second, not a GPU hour. Checks that need the model
(layer range, SAE width) live in backbone.py / sae.py.

    name: release-audit
    model: {id: Qwen/Qwen3-1.7B-Base, revision: main, dtype: bfloat16, device: auto}
    sae: {release: Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50}   # or {path: some/local/dir}
    layers: [14]
    pooling: top             # top (default) | last | max
    limit: 500               # per benchmark, optional
    benchmarks:
      - {name: gsm8k, task: gsm8k}
      - {name: my_set, path: data/my_set.jsonl, text: "{{question}}"}
    reference:               # optional: the prompts the model will really see (gaps, DESIGN §5b)
      - {name: traffic, path: data/traffic.jsonl, text: prompt}

Relative paths resolve against the suite file; `asset:NAME` paths name the
offline assets that PyPI packages ship (see assets.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qscope_eval.data.score_selection import ScoreSelectionSpec, split_keys
from qscope_eval.errors import SuiteError

POOLINGS = ("last", "max", "top")
DTYPES = ("auto", "float32", "bfloat16", "float16")
COSTS = ("samples", "tokens", "custom")
SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """Which Hugging Face model to read residuals from."""

    id: str
    """Hub id (`Qwen/Qwen3-1.7B-Base`), a local directory, or `asset:minilm`."""
    revision: str = "main"
    """Hub revision (branch, tag or commit); part of the encoder identity."""
    dtype: str = "auto"
    """Weights dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."""
    device: str = "auto"
    """`auto` (cuda if available), `cpu`, `cuda`, `cuda:1`, ..."""
    max_length: int | None = None
    """Truncate prompts to this many tokens (default: the model's maximum)."""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise SuiteError(f"model.dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.max_length is not None and self.max_length < 2:
            raise SuiteError("model.max_length must be at least 2 tokens")


@dataclass(frozen=True)
class SaeSpec:
    """Which SAE encodes the residuals: a released set or a local directory."""

    release: str | None = None
    """Qwen-Scope release id, e.g. `Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50`."""
    path: str | None = None
    """Local directory holding `layer{n}.sae.pt` files (Qwen-Scope format)."""
    revision: str = "main"
    """Hub revision of the release."""
    k: int | None = None
    """TopK override; by default the release's (registry) or the directory's config.json k."""
    feature_stats: str | None = None
    """Reference statistics for `top` pooling (default: `feature_stats` beside the SAE)."""

    def __post_init__(self):
        if (self.release is None) == (self.path is None):
            raise SuiteError("sae needs exactly one of `release:` (a Qwen-Scope release id) or `path:` (a local directory)")
        if self.k is not None and self.k < 1:
            raise SuiteError("sae.k must be a positive integer")

    @property
    def identity(self) -> str:
        """Stable string naming this SAE inside encoder keys."""
        return f"{self.release}@{self.revision}" if self.release else f"path:{self.path}"


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: an lm-eval task, or a local JSONL/CSV/Parquet file with a text template."""

    name: str
    """Benchmark name used in the database and reports."""
    task: str | None = None
    """lm-eval task name (its own config supplies the prompt, `doc_to_text`)."""
    path: str | None = None
    """Local data file (.jsonl, .json, .csv, .parquet; .gz allowed for jsonl)."""
    text: str | None = None
    """For `path`: a field name or a Jinja template over the row, e.g. `{{question}}`."""
    data_files: dict[str, str] | None = None
    """For `task`: point lm-eval's config at local files, {split: path}."""
    split: str | None = None
    """Which split to read (default: the task's test split, else validation)."""
    num_fewshot: int = 0
    """Prepend this many few-shot examples, as lm-eval would show them."""
    include_target: bool = False
    """Append the gold answer to the prompt (measures answer features too)."""
    description: bool = False
    """Prepend the task's description line as lm-eval does; off by default: it is the same for every
    prompt of a task and names the subject, so it would inflate same-topic overlap (DESIGN §3: doc_to_text)."""
    limit: int | None = None
    """Per-benchmark sample cap (overrides the suite's `limit`)."""
    cost: float | None = None
    """Cost for benchmark-level selection when `selection.cost: custom`."""

    def __post_init__(self):
        if not _NAME_RE.match(self.name):
            raise SuiteError(f"benchmark name {self.name!r} may only use letters, digits, '_', '-', '.'")
        if (self.task is None) == (self.path is None):
            raise SuiteError(f"benchmark {self.name!r} needs exactly one of `task:` (lm-eval task) or `path:` (local file)")
        if self.path is not None and self.data_files is not None:
            raise SuiteError(f"benchmark {self.name!r}: `data_files` goes with `task:`; for a local file use `path:` and `text:`")
        if self.task is not None and self.text is not None:
            raise SuiteError(f"benchmark {self.name!r}: `text` goes with `path:`; an lm-eval task brings its own prompt")
        if self.num_fewshot < 0:
            raise SuiteError(f"benchmark {self.name!r}: num_fewshot must be >= 0")
        if self.limit is not None and self.limit < 1:
            raise SuiteError(f"benchmark {self.name!r}: limit must be >= 1")
        if self.cost is not None and not self.cost > 0:
            raise SuiteError(f"benchmark {self.name!r}: cost must be > 0")


SAE_PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class EncodeSpec:
    """Batching and pooling knobs; none of them changes which features fire except the pooling ones."""

    batch_tokens: int = 0
    """Token budget per forward batch (padded length x batch size, or a packed row); 0 = from free GPU memory
    (forward.auto_batch_tokens; at most 2048 off CUDA)."""
    max_batch: int = 256
    """Upper bound on prompts per batch."""
    top_m: int = 32
    """`top` pooling: features kept per prompt."""
    sink_factor: float = 10.0
    """A token is an attention sink if its residual norm > sink_factor x the prompt's median norm."""
    exclude_first: bool = True
    """`max`/`top` pooling skip position 0 (out of distribution for Qwen-Scope SAEs)."""
    shard_size: int = 2048
    """Samples per encode shard (the unit of retry and resume)."""
    saturation_warn: float = 0.9
    """Warn when a benchmark fires more than this share of d_sae (`max` pooling saturates)."""
    packing: bool = False
    """Pack prompts into one row with per-prompt attention (Qwen2/Qwen3 dense models; flash varlen on CUDA sm80+)."""
    compile: bool = False
    """torch.compile the decoder layers (falls back to eager with a warning if compilation fails)."""
    deterministic: bool = False
    """Each prompt's codes independent of its batch: aligned fixed-shape packing (or one prompt per forward), fp32 SAE."""
    sae_precision: str = "tf32"
    """SAE encoder matmul on CUDA: fp32, tf32 (fp32 accumulate; the bf16 residual is exact in tf32) or bf16."""
    commit_every_s: float = 0.5
    """The writer commits at least this often; batches finished in between share one transaction (0: each batch)."""

    def __post_init__(self):
        if self.sae_precision not in SAE_PRECISIONS:
            raise SuiteError(f"encode.sae_precision {self.sae_precision!r} is not one of {', '.join(SAE_PRECISIONS)}")
        if (self.batch_tokens != 0 and self.batch_tokens < 16) or self.max_batch < 1 or self.top_m < 1 or self.shard_size < 1:
            raise SuiteError("encode: batch_tokens >= 16 (or 0 = auto), max_batch >= 1, top_m >= 1 and shard_size >= 1 are required")
        if self.sink_factor <= 1:
            raise SuiteError("encode.sink_factor must be > 1 (it multiplies the median token norm)")
        if not 0 <= self.commit_every_s <= 3600:
            raise SuiteError("encode.commit_every_s must be between 0 (commit every batch) and 3600 seconds")
        if not 0 < self.saturation_warn <= 1:
            raise SuiteError("encode.saturation_warn must be in (0, 1]")


@dataclass(frozen=True)
class SelectionSpec:
    """Defaults for subset selection in audits."""

    target: float = 0.95
    """Share to keep: of the feature union (method union), or of the characteristic mass (sample level)."""
    cost: str = "samples"
    """Benchmark cost: samples, tokens, or custom (each benchmark's `cost:`)."""
    min_support: int = 1
    """A feature counts for a benchmark only if it fires in at least this many of its samples."""
    method: str = "characteristic"
    """characteristic (every dropped benchmark covered by a kept one, docs/recommendation.md) or union (the report's set cover)."""
    tau: float = 0.8
    """characteristic: share of a benchmark's characteristic a kept benchmark must show to cover it."""
    scores: ScoreSelectionSpec | None = None
    """Score tables and tolerance: benchmarks with scores decided by prediction (data/score_selection.py)."""

    def __post_init__(self):
        if not 0 < self.target <= 1:
            raise SuiteError(f"selection.target must be in (0, 1], got {self.target}")
        if self.method not in ("characteristic", "union"):
            raise SuiteError(f"selection.method {self.method!r} is not one of characteristic, union")
        if not 0 < self.tau <= 1.5:
            raise SuiteError(f"selection.tau must be in (0, 1.5] (e.g. 0.8), got {self.tau}")
        if self.cost not in COSTS:
            raise SuiteError(f"selection.cost {self.cost!r} is not one of {', '.join(COSTS)}")
        if self.min_support < 1:
            raise SuiteError("selection.min_support must be >= 1")


@dataclass(frozen=True)
class ValidationSpec:
    """Optional audit step: check the feature proxy against lm-eval per-sample logs (DESIGN §5a)."""

    logs: tuple[str, ...]
    """lm-eval --output_path folders (or run folders) holding samples_<task>_<timestamp>.jsonl files."""
    metric: str | None = None
    """Per-sample metric (default: each task's first, e.g. acc, exact_match)."""
    filter: str | None = None
    """lm-eval filter when a task logs several (default: the first)."""
    reference: str | None = None
    """Benchmark to control for in partial score correlations (the report uses MMLU)."""
    draws: int = 2000
    """Monte Carlo draws per benchmark for R(D)."""
    replicates: int = 500
    """Bootstrap replicates (models resampled)."""

    def __post_init__(self):
        if not self.logs:
            raise SuiteError("validation.logs must list at least one folder of lm-eval sample logs")
        missing = [p for p in self.logs if not Path(p).exists()]
        if missing:
            raise SuiteError(f"validation.logs: {', '.join(missing)} not found; give lm-eval --output_path folders")
        if self.draws < 100 or self.replicates < 50:
            raise SuiteError("validation: draws >= 100 and replicates >= 50 are required")


@dataclass(frozen=True)
class Suite:
    """A validated suite."""

    name: str
    """Suite name (audit history is grouped by it)."""
    model: ModelSpec
    """The backbone."""
    sae: SaeSpec
    """The SAE set."""
    layers: tuple[int, ...]
    """Decoder layers whose output residual is encoded (one encoder per layer)."""
    benchmarks: tuple[BenchmarkSpec, ...]
    """What to audit."""
    reference: tuple[BenchmarkSpec, ...] = ()
    """Reference corpora (same entry shapes as benchmarks): encoded in the same pass, never selected or
    counted in benchmark metrics; `qscope-eval gaps` compares them with the benchmarks."""
    pooling: str = "top"
    """last | max | top (DESIGN §3). Default `top`, chosen by measurement on templated suites (docs/demo-model.md):
    `last` reads the template's last token ("Answer:") on MMLU-style prompts. An SAE without reference statistics
    gets them computed once from a broad corpus (jobs/reference_stats.py)."""
    limit: int | None = None
    """Samples per benchmark (first N in the task's order)."""
    null: bool = False
    """Also fill a `null` encoder (random dictionary, same shape, fixed seed) in the same pass."""
    lexical: bool = True
    """Also fill a `lexical` encoder (the prompts' own words, no model; docs/baselines.md) beside each SAE encoder."""
    task_paths: tuple[str, ...] = ()
    """Extra directories of lm-eval task YAMLs."""
    encode: EncodeSpec = field(default_factory=EncodeSpec)
    """Batching and pooling knobs."""
    selection: SelectionSpec = field(default_factory=SelectionSpec)
    """Selection defaults."""
    validation: ValidationSpec | None = None
    """Audit step: validate against lm-eval sample logs of several models (None: skip)."""
    source: str | None = None
    """The file this suite was read from."""

    def __post_init__(self):
        if not _NAME_RE.match(self.name):
            raise SuiteError(f"suite name {self.name!r} may only use letters, digits, '_', '-', '.'")
        if self.pooling not in POOLINGS:
            raise SuiteError(f"pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if not self.layers or any(layer < 0 for layer in self.layers) or len(set(self.layers)) != len(self.layers):
            raise SuiteError("layers must be a non-empty list of distinct non-negative integers, e.g. [14]")
        if not self.benchmarks:
            raise SuiteError("benchmarks is empty: list at least one benchmark")
        names = [b.name for b in self.benchmarks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SuiteError(f"benchmark names must be unique; repeated: {', '.join(dup)}")
        refs = [r.name for r in self.reference]
        clash = sorted({n for n in refs if refs.count(n) > 1 or n in names})
        if clash:
            raise SuiteError(f"reference names must be unique and differ from every benchmark name; rename: {', '.join(clash)}")
        if self.limit is not None and self.limit < 1:
            raise SuiteError("limit must be >= 1")
        for key in ("null", "lexical"):
            if not isinstance(getattr(self, key), bool):
                raise SuiteError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if self.selection.cost == "custom":
            missing = [b.name for b in self.benchmarks if b.cost is None]
            if missing:
                raise SuiteError(f"selection.cost is custom but these benchmarks have no `cost:`: {', '.join(missing)}")

    def limit_for(self, bench: BenchmarkSpec) -> int | None:
        return bench.limit if bench.limit is not None else self.limit


def _check_keys(data: dict, cls, where: str) -> None:
    allowed = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            dym = f"; did you mean {hint[0]!r}?" if hint else ""
            raise SuiteError(f"unknown key {key!r} in {where}{dym} (allowed: {', '.join(allowed)})")


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise SuiteError(f"{where} must be a mapping (key: value), got {type(data).__name__}")
    _check_keys(data, cls, where)
    try:
        return cls(**data)
    except TypeError as e:  # missing required field
        raise SuiteError(f"{where}: {e}".replace("__init__() ", "")) from None


def resolve_path(value: str, base: Path) -> str:
    """Relative paths resolve against the suite's folder; `asset:` and absolute paths stay."""
    if value.startswith("asset:") or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def looks_local(model_id: str) -> bool:
    """Is this model id a local path (or an asset) rather than a hub id? The one rule, for the suite and the backbone."""
    return model_id.startswith(("./", "../", "/", "~", ".\\", "asset:"))


def _resolve_entry(b: Any, base: Path, where: str) -> Any:
    """A benchmark or reference entry with its file paths resolved against the suite's folder."""
    if not isinstance(b, dict):
        return b  # _build names the problem
    b = dict(b)
    if isinstance(b.get("path"), str):
        b["path"] = resolve_path(b["path"], base)
    if isinstance(b.get("data_files"), dict):
        b["data_files"] = {str(k): resolve_path(str(v), base) for k, v in b["data_files"].items()}
    elif b.get("data_files") is not None:
        raise SuiteError(f"{where}.data_files must map split names to files, e.g. {{test: data/x.jsonl}}")
    return b


def parse_suite(data: Any, source: Path | None = None) -> Suite:
    """Build a Suite from parsed YAML (a dict). Raises SuiteError naming the fix."""
    if not isinstance(data, dict):
        raise SuiteError("a suite file must be a YAML mapping with name, model, sae, layers and benchmarks")
    if None in data:  # YAML reads an unquoted `null:` key as None
        data = {("null" if k is None else k): v for k, v in data.items()}
    _check_keys(data, Suite, "the suite")
    base = source.parent if source else Path.cwd()
    for key in ("name", "model", "sae", "layers", "benchmarks"):
        if key not in data:
            raise SuiteError(f"the suite has no `{key}:`; add it (see `qscope-eval suites` for an example)")
    model = dict(data["model"]) if isinstance(data["model"], dict) else {"id": data["model"]}
    if isinstance(model.get("id"), str) and looks_local(model["id"]) and not model["id"].startswith("asset:"):
        model["id"] = resolve_path(str(Path(model["id"]).expanduser()), base)
    sae = dict(data["sae"]) if isinstance(data["sae"], dict) else data["sae"]
    if isinstance(sae, dict):
        for key in ("path", "feature_stats"):
            if isinstance(sae.get(key), str):
                sae[key] = resolve_path(sae[key], base)
    layers = data["layers"]
    if isinstance(layers, int):
        layers = [layers]
    if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise SuiteError("layers must be a list of integers, e.g. [14]")
    if not isinstance(data["benchmarks"], list):
        raise SuiteError("benchmarks must be a list of mappings, e.g. - {name: gsm8k, task: gsm8k}")
    benches = [_build(BenchmarkSpec, _resolve_entry(b, base, f"benchmarks[{i}]"), f"benchmarks[{i}]")
               for i, b in enumerate(data["benchmarks"])]
    reference = data.get("reference") or []
    if not isinstance(reference, list):
        raise SuiteError("reference must be a list of mappings like benchmarks, e.g. - {name: traffic, path: t.jsonl, text: prompt}")
    refs = [_build(BenchmarkSpec, _resolve_entry(r, base, f"reference[{i}]"), f"reference[{i}]") for i, r in enumerate(reference)]
    kwargs = {k: v for k, v in data.items()
              if k not in ("model", "sae", "layers", "benchmarks", "reference", "encode", "selection", "task_paths",
                            "validation")}
    return Suite(
        model=_build(ModelSpec, model, "model"),
        sae=_build(SaeSpec, sae, "sae"),
        layers=tuple(layers),
        benchmarks=tuple(benches),
        reference=tuple(refs),
        task_paths=tuple(resolve_path(p, base) for p in data.get("task_paths") or ()),
        encode=_build(EncodeSpec, data.get("encode") or {}, "encode"),
        selection=_selection(data.get("selection") or {}, base),
        validation=_validation(data.get("validation"), base),
        source=str(source) if source else None,
        **kwargs,
    )


def _selection(v: Any, base: Path) -> SelectionSpec:
    rest, scores = split_keys(v, lambda p: resolve_path(str(p), base)) if isinstance(v, dict) else (v, None)
    return dataclasses.replace(_build(SelectionSpec, rest, "selection"), scores=scores)


def _validation(v: Any, base: Path) -> ValidationSpec | None:
    if v is None:
        return None
    if not isinstance(v, dict) or not isinstance(v.get("logs", []), (list, str)):
        raise SuiteError("validation must be a mapping with `logs:` (a list of folders), e.g. {logs: [runs/]}")
    logs = v.get("logs", [])
    logs = [logs] if isinstance(logs, str) else logs
    return _build(ValidationSpec, {**v, "logs": tuple(resolve_path(str(p), base) for p in logs)}, "validation")


def builtin_suites() -> dict[str, Path]:
    """Built-in suite names -> their YAML files (shipped inside the package)."""
    return {p.stem: p for p in sorted(SUITES_DIR.glob("*.yaml"))}


def load_suite(spec: str | Path) -> Suite:
    """Load a suite from a path, or a built-in name such as `demo`."""
    path = Path(spec).expanduser()
    if not path.exists():
        builtins = builtin_suites()
        if str(spec) in builtins:
            path = builtins[str(spec)]
        else:
            names = ", ".join(builtins) or "none"
            raise SuiteError(f"no suite file {str(spec)!r}; give a path to a YAML file or a built-in name ({names})")
    if path.is_dir():
        raise SuiteError(f"{path} is a directory; give the suite's YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}; fix the syntax and rerun") from None
    return parse_suite(data, source=path.resolve())
