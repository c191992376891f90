"""Suite spec: the issue's example shape parses; malformed input gets one clear SuiteError."""

import textwrap
from pathlib import Path

import pytest

from qscope_eval.errors import SuiteError
from qscope_eval.data.suite import builtin_suites, load_suite

EXAMPLE = """
name: release-audit
model: {id: Qwen/Qwen3-1.7B-Base, revision: main, dtype: bfloat16, device: auto}
sae: {release: Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50}
layers: [14]
pooling: last
limit: 500
benchmarks:
  - {name: gsm8k, task: gsm8k}
  - {name: gsm8k_local, task: gsm8k, data_files: {test: data/gsm8k.jsonl}}
  - {name: my_set, path: data/my_set.jsonl, text: "{{question}}"}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_issue_example_parses_and_resolves_paths(tmp_path):
    s = load_suite(write(tmp_path, EXAMPLE))
    assert s.name == "release-audit" and s.layers == (14,) and s.pooling == "last" and s.limit == 500
    assert s.model.dtype == "bfloat16" and s.sae.release.endswith("W32K-L0_50")
    local = s.benchmarks[1]
    assert local.data_files == {"test": str(tmp_path / "data" / "gsm8k.jsonl")}
    assert s.benchmarks[2].path == str(tmp_path / "data" / "my_set.jsonl")
    assert s.limit_for(s.benchmarks[0]) == 500


def test_builtin_demo_suite_loads_by_name():
    assert "demo" in builtin_suites()
    s = load_suite("demo")
    assert len(s.benchmarks) >= 5 and s.pooling == "top"


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace("pooling: last", "poolng: last"), "did you mean 'pooling'"),
    (lambda t: t.replace("pooling: last", "pooling: mean"), "pooling 'mean' is not one of"),
    (lambda t: t.replace("layers: [14]", "layers: [14, 14]"), "distinct"),
    (lambda t: t.replace("layers: [14]", "layers: fourteen"), "list of integers"),
    (lambda t: t.replace("{name: gsm8k, task: gsm8k}", "{name: gsm8k_local, task: gsm8k}"), "unique"),
    (lambda t: t.replace("{name: gsm8k, task: gsm8k}", "{name: gsm8k}"), "exactly one of `task:`"),
    (lambda t: t.replace("sae: {release: Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50}", "sae: {}"), "exactly one of `release:`"),
    (lambda t: t.replace("name: release-audit\n", ""), "has no `name:`"),
    (lambda t: t + "  - {name: bad, task: x, colour: red}\n", "unknown key 'colour' in benchmarks[3]"),
    (lambda t: t.replace("dtype: bfloat16", "dtype: int8"), "model.dtype"),
    (lambda t: t + "encode: {commit_every_s: -1}\n", "encode.commit_every_s must be between 0"),
])
def test_bad_suites_name_the_fix(tmp_path, edit, needle):
    with pytest.raises(SuiteError, match=None) as e:
        load_suite(write(tmp_path, edit(EXAMPLE)))
    assert needle in str(e.value)


def test_malformed_yaml_reports_line(tmp_path):
    with pytest.raises(SuiteError, match=r"not valid YAML at line \d+"):
        load_suite(write(tmp_path, "name: x\nmodel: {id: [unclosed\n"))


def test_unknown_suite_name_lists_builtins():
    with pytest.raises(SuiteError, match="built-in name.*demo"):
        load_suite("no-such-suite")
