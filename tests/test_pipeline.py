"""The encode job end to end on a tiny real suite: resume, content-address dedup, killed runs,
truncation, and bad input that leaves the database as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
import torch
from click.testing import CliRunner

from qscope_eval.model import encoders

from qscope_eval.cli import cli
from qscope_eval.jobs.pipeline import encode_suite
from qscope_eval.store import Store
from qscope_eval.data.suite import load_suite
from synthetic import write_tiny_suite

REPO = Path(__file__).resolve().parents[1]
TABLES = ["samples", "benchmarks", "memberships", "encoders", "encoded", "activations", "runs"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_suite(tmp_path_factory.mktemp("tiny"))


def snapshot(db: Path) -> dict:
    with duckdb.connect(str(db), read_only=True) as con:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}


def q(db: Path, sql: str):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_encode_then_rerun_encodes_nothing(tiny, tmp_path):
    db = tmp_path / "a.duckdb"
    with Store(db) as s:
        rep = encode_suite(load_suite(tiny), s, progress=False)
        assert (rep.n_samples, rep.n_encoded, rep.n_skipped) == (20, 20, 0)
        again = encode_suite(load_suite(tiny), s, progress=False)
        assert (again.n_encoded, again.n_skipped) == (0, 20)
    # where the time went: the parts add up to the run (rounded to 0.1 ms each), the first batch is inside the loop
    ph = rep.phases
    assert set(ph) == {"prepare", "first_batch", "loop", "tail"} and min(ph.values()) >= 0
    assert ph["first_batch"] <= ph["loop"] and abs(ph["prepare"] + ph["loop"] + ph["tail"] - rep.seconds) < 0.01
    assert "first_batch" not in again.phases  # nothing to encode: no batch
    # a real, a null and a lexical encoder, each with every sample marked once
    assert q(db, "SELECT kind, count(*) FROM encoded JOIN encoders USING (encoder_id) GROUP BY 1 ORDER BY 1") == [
        ("lexical", 20), ("null", 20), ("sae", 20)]
    # `last` pooling: at most k features per sample, all positive
    assert q(db, "SELECT max(n), min(v) FROM (SELECT count(*) AS n, min(value) AS v FROM activations JOIN encoders "
                 "USING (encoder_id) WHERE kind <> 'lexical' GROUP BY encoder_id, sample_id)")[0][0] <= 8
    assert q(db, "SELECT count(*) FROM activations WHERE value <= 0")[0][0] == 0


def test_shared_prompts_are_encoded_once_and_count_in_both(tiny, tmp_path):
    suite = write_tiny_suite(tiny.parent, name="dedup", benchmarks=textwrap.dedent("""\
          - {name: fruit, path: fruit.jsonl, text: q}
          - {name: numbers, path: numbers.jsonl, text: q}
          - {name: fruit_head, path: fruit.jsonl, text: q, limit: 4}
        """))
    db = tmp_path / "d.duckdb"
    with Store(db) as s:
        rep = encode_suite(load_suite(suite), s, progress=False)
    assert rep.n_samples == 20 and rep.n_encoded == 20
    assert q(db, "SELECT count(*) FROM samples")[0][0] == 20
    assert q(db, "SELECT count(*) FROM memberships")[0][0] == 24
    # a benchmark whose prompts are a subset of another's is fully covered by it
    assert q(db, "SELECT asym_a_to_b FROM pairwise_overlap WHERE encoder_id = 1 AND a = 'fruit_head' AND b = 'fruit'")[0][0] == 1.0


KILLER = """
import os, signal, sys, time
from qscope_eval.jobs.pipeline import encode_suite
from qscope_eval.store import Store
from qscope_eval.data.suite import load_suite
seen = []
def on_batch(n):
    seen.append(n)
    if len(seen) == int(sys.argv[3]):
        time.sleep(1.5)  # let the writer thread commit what it has queued, then die mid-run
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no close
encode_suite(load_suite(sys.argv[1]), Store(sys.argv[2]), progress=False, on_batch=on_batch)
"""


def test_killed_run_resumes_without_duplicates(tiny, tmp_path):
    suite = tiny.parent / "small_batches.yaml"
    suite.write_text(tiny.read_text().replace("batch_tokens: 256", "batch_tokens: 64").replace("name: tiny", "name: small"))
    db = tmp_path / "k.duckdb"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(suite), str(db), "3"], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    partial = q(db, "SELECT count(*) FROM encoded")[0][0]
    assert 0 < partial < 60  # some batches landed, not all
    # each stored sample has all its activations (batch and marker in one transaction)
    assert q(db, "SELECT count(*) FROM activations a ANTI JOIN encoded e USING (encoder_id, sample_id)")[0][0] == 0
    with Store(db) as s:
        rep = encode_suite(load_suite(suite), s, progress=False)
    assert partial % 3 == 0 and rep.n_encoded == 20 - partial // 3  # the three encoders of a batch land together
    assert q(db, "SELECT count(*) FROM encoded")[0][0] == 60
    dup = "SELECT count(*) FROM (SELECT encoder_id, sample_id, feature, count(*) c FROM activations GROUP BY ALL HAVING c > 1)"
    assert q(db, dup)[0][0] == 0
    # identical to an uninterrupted run
    clean = tmp_path / "clean.duckdb"
    with Store(clean) as s:
        encode_suite(load_suite(suite), s, progress=False)
    acts = "SELECT encoder_id, sample_id, feature, round(value, 5), n_tokens FROM activations ORDER BY ALL"
    assert q(db, acts) == q(clean, acts)


STATE = {"samples": "SELECT * FROM samples ORDER BY ALL", "memberships": "SELECT * FROM memberships ORDER BY ALL",
         "benchmarks": "SELECT name, suite, spec, n_samples, cost, role FROM benchmarks ORDER BY ALL",
         "activations": "SELECT encoder_id, sample_id, feature, round(value, 5), n_tokens FROM activations ORDER BY ALL",
         "encoded": "SELECT encoder_id, sample_id, n_tokens, truncated, n_features FROM encoded ORDER BY ALL"}


def test_the_writer_stores_the_texts_and_the_database_ends_the_same(tiny, tmp_path, monkeypatch):
    """prepare(defer_texts=True) writes no text; its registrations, run later, store what prepare would have, and
    encode_suite with the texts stored by its writer (QUICK_START) ends with the same database as without."""
    from qscope_eval.jobs import pipeline

    suite = load_suite(tiny)
    rows, infos = pipeline.load_rows(suite), pipeline.load_runtime(suite).encoders
    now, later = tmp_path / "now.duckdb", tmp_path / "later.duckdb"
    with Store(now) as a, Store(later) as b:
        eager = pipeline.prepare(suite, a, rows, infos)
        deferred = pipeline.prepare(suite, b, rows, infos, defer_texts=True)
        assert eager.registrations == [] and len(deferred.registrations) == len(suite.benchmarks)
        assert b.con.execute("SELECT count(*) FROM samples").fetchall() == [(0,)]
        assert deferred.pending_ids.tolist() == eager.pending_ids.tolist() and len(eager.pending_ids) == 20
        assert {k: v.tolist() for k, v in deferred.benchmark_ids.items()} == {k: v.tolist() for k, v in eager.benchmark_ids.items()}
        for register in deferred.registrations:
            register()
    for name in ("samples", "memberships", "benchmarks"):
        assert q(now, STATE[name]) == q(later, STATE[name]), name
    ends = {}
    for quick in (False, True):
        monkeypatch.setattr(pipeline, "QUICK_START", quick)
        db = tmp_path / f"quick{quick}.duckdb"
        with Store(db) as s:
            assert encode_suite(suite, s, progress=False).n_encoded == 20
        ends[quick] = {name: q(db, sql) for name, sql in STATE.items()}
    assert ends[True] == ends[False] and len(ends[True]["samples"]) == 20 and ends[True]["activations"]
    with Store(tmp_path / "quickTrue.duckdb") as s:  # an encoder the store knows: its stored samples are not pending
        assert len(pipeline.prepare(suite, s, rows, infos, defer_texts=True).pending_ids) == 0


def test_a_failed_text_registration_stops_the_run_before_any_batch_lands(tiny, tmp_path, monkeypatch):
    """The writer stores the texts first: if that fails, the error reaches the caller and no batch is written."""
    from qscope_eval.errors import StoreError

    def full_disk(self, *a, **k):
        raise StoreError("no space left on device")

    monkeypatch.setattr(Store, "register_benchmark", full_disk)
    db = tmp_path / "f.duckdb"
    with Store(db) as s:
        with pytest.raises(StoreError, match="no space left"):
            encode_suite(load_suite(tiny), s, progress=False)
    assert q(db, "SELECT count(*) FROM encoded")[0][0] == 0 and q(db, "SELECT count(*) FROM samples")[0][0] == 0
    assert q(db, "SELECT count(*) FROM activations")[0][0] == 0


def test_adding_samples_on_another_encode_path_is_warned(tiny, tmp_path):
    """Samples encoded eagerly, then more added in the deterministic mode: their sets come from different arithmetic,
    so the run says so, once per encoder, before it starts; a run with nothing to add says nothing."""
    base = write_tiny_suite(tiny.parent, name="onebench",
                            benchmarks="  - {name: fruit, path: fruit.jsonl, text: q}\n")
    more = tiny.parent / "det.yaml"
    more.write_text(tiny.read_text().replace("batch_tokens: 256}", "batch_tokens: 256, deterministic: true}"))
    db = tmp_path / "p.duckdb"
    with Store(db) as s:
        first = encode_suite(load_suite(base), s, progress=False)
        second = encode_suite(load_suite(more), s, progress=False)
        third = encode_suite(load_suite(more), s, progress=False)
    assert not [w for w in first.warnings if "path" in w]
    path = [w for w in second.warnings if "one path per database" in w]
    assert len(path) == 1 and "10 samples" in path[0] and "10 more" in path[0] and "deterministic: False" in path[0]
    assert second.n_encoded == 10 and third.n_encoded == 0
    assert not [w for w in third.warnings if "one path per database" in w]


def test_overlong_prompts_are_truncated_warned_and_counted(tiny, tmp_path):
    suite = tiny.parent / "short.yaml"
    suite.write_text(tiny.read_text().replace("device: cpu}", "device: cpu, max_length: 8}").replace("name: tiny", "name: short"))
    db = tmp_path / "t.duckdb"
    with Store(db) as s:
        rep = encode_suite(load_suite(suite), s, progress=False)
    assert rep.n_truncated == 20 and any("truncated" in w for w in rep.warnings)
    assert q(db, "SELECT count(*), max(n_tokens) FROM encoded WHERE truncated")[0] == (40, 8)


def _bad_suites(root: Path):
    base = (root / "tiny.yaml").read_text()
    (root / "empty.jsonl").write_text("")
    (root / "sae_notdict").mkdir(exist_ok=True)
    torch.save([1, 2, 3], root / "sae_notdict" / "layer1.sae.pt")
    (root / "sae_narrow").mkdir(exist_ok=True)
    torch.save({"W_enc": torch.zeros(16, 32), "W_dec": torch.zeros(32, 16), "b_enc": torch.zeros(16), "b_dec": torch.zeros(32)},
               root / "sae_narrow" / "layer1.sae.pt")
    bench = "  - {name: fruit, path: fruit.jsonl, text: q}\n"
    return {
        "missing SAE layer file": (base.replace("layers: [1]", "layers: [2]"), "layers present: 1"),
        "layer outside the model": (base.replace("layers: [1]", "layers: [9]"), "outside"),
        "not a tensor dict": (base.replace("path: ./sae}", "path: ./sae_notdict}"), "layer1.sae.pt"),
        "width mismatch": (base.replace("path: ./sae}", "path: ./sae_narrow, k: 4}"), "d_model"),
        "empty benchmark": (base.replace(bench, bench + "  - {name: empty, path: empty.jsonl, text: q}\n"), "empty"),
        "unknown lm-eval task": (base.replace(bench, bench + "  - {name: g, task: gsm8kk, data_files: {test: fruit.jsonl}}\n"), "gsm8k"),
        "malformed yaml": ("name: [unclosed\n", "not valid YAML"),
    }


BAD_CASES = ["missing SAE layer file", "layer outside the model", "not a tensor dict", "width mismatch",
             "empty benchmark", "unknown lm-eval task", "malformed yaml"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_and_leaves_db_unchanged(tiny, tmp_path, case):
    db = tmp_path / "b.duckdb"
    with Store(db) as s:
        encode_suite(load_suite(tiny), s, progress=False)
    before = snapshot(db)
    text, needle = _bad_suites(tiny.parent)[case]
    bad = tiny.parent / "bad.yaml"
    bad.write_text(text.replace("name: tiny", "name: bad"))
    res = CliRunner().invoke(cli, ["encode", str(bad), "--db", str(db), "--no-progress"])
    assert res.exit_code == 1, res.output
    err = res.output.strip()
    assert err.startswith("Error: ") and "\n" not in err and needle in err, err
    assert snapshot(db) == before


# ---- checking a suite without the model's weights (the flow process under Dask) ----------------

def test_check_encoders_matches_the_runtime_without_loading_weights(tiny, monkeypatch):
    from qscope_eval.model import backbone
    from qscope_eval.jobs import pipeline

    suite = load_suite(tiny)
    expected = pipeline.load_runtime(suite).encoders
    assert [e.kind for e in expected] == ["sae", "null"] and expected[0].d_sae == 128 and expected[0].k == 8

    def no_weights(*a, **k):
        raise AssertionError("check_encoders must not load the model")

    monkeypatch.setattr(backbone, "load_backbone", no_weights)
    monkeypatch.setattr("transformers.AutoModel.from_pretrained", no_weights)
    assert encoders.check_encoders(suite) == expected


@pytest.mark.parametrize("case", ["missing SAE layer file", "layer outside the model", "not a tensor dict", "width mismatch"])
def test_check_encoders_refuses_what_the_runtime_refuses(tiny, case):
    from qscope_eval.errors import QScopeError

    text, needle = _bad_suites(tiny.parent)[case]
    bad = tiny.parent / "bad_check.yaml"
    bad.write_text(text.replace("name: tiny", "name: bad"))
    with pytest.raises(QScopeError, match=needle):
        encoders.check_encoders(load_suite(bad))


def test_check_encoders_wants_weight_files(tiny, tmp_path):
    import shutil


    from qscope_eval.errors import ModelError

    (tmp_path / "model").mkdir()
    shutil.copy(tiny.parent / "model" / "config.json", tmp_path / "model" / "config.json")
    suite = tmp_path / "s.yaml"
    suite.write_text(tiny.read_text().replace("id: ./model", f"id: {tmp_path / 'model'}").replace("./sae", str(tiny.parent / "sae"))
                     .replace("fruit.jsonl", str(tiny.parent / "fruit.jsonl")).replace("numbers.jsonl", str(tiny.parent / "numbers.jsonl")))
    with pytest.raises(ModelError, match="no weights"):
        encoders.check_encoders(load_suite(suite))


def test_local_sae_identity_follows_content_not_path(tiny, tmp_path):
    import dataclasses
    import shutil



    suite = load_suite(tiny)
    key = encoders.encoder_key(suite, 1, "sae")
    moved = tmp_path / "elsewhere" / "sae"
    shutil.copytree(tiny.parent / "sae", moved)
    at = lambda path: dataclasses.replace(suite, sae=dataclasses.replace(suite.sae, path=str(path)))  # noqa: E731
    assert encoders.encoder_key(at(moved), 1, "sae") == key  # a moved checkout keeps its stored encoder
    state = torch.load(moved / "layer1.sae.pt", weights_only=True)
    state["b_enc"] = state["b_enc"] + 1.0  # "retrained": same shapes, new weights, same path
    torch.save(state, moved / "layer1.sae.pt")
    retrained = encoders.encoder_key(at(moved), 1, "sae")
    assert retrained != key and retrained.sae.startswith("local:sae#")
    assert encoders.EncoderKey.parse(str(retrained)) == retrained and retrained.twin("null").kind == "null"


def test_lexical_encoder_holds_the_words_and_fills_an_older_database_without_the_model(tiny, tmp_path):
    """`lexical: false` stores no lexical encoder (and the loader then shows none); a later run with the default
    fills it from the stored texts alone (no forward pass), with exactly the words' hashed counts."""
    import numpy as np

    from qscope_eval.analysis.lexical import LEXICAL_WIDTH, lexical_features, term_counts
    from qscope_eval.jobs.summary import load

    off = write_tiny_suite(tiny.parent, name="nolex", extra="lexical: false\n")
    db = tmp_path / "l.duckdb"
    with Store(db) as s:
        assert encode_suite(load_suite(off), s, progress=False).n_encoded == 20
        assert load(s).lexical is None
    assert q(db, "SELECT count(*) FROM encoders WHERE kind = 'lexical'")[0][0] == 0
    with Store(db) as s:
        rep = encode_suite(load_suite(tiny), s, progress=False)
        assert rep.n_encoded == 0  # the model had nothing to do: the words come from the stored texts
        ld = load(s)
        texts = s.texts(ld.real.sample_ids.tolist())
    assert q(db, "SELECT kind, d_sae, count(*) FROM encoded JOIN encoders USING (encoder_id) "
                 "WHERE kind = 'lexical' GROUP BY ALL") == [("lexical", LEXICAL_WIDTH, 20)]
    want = term_counts([texts[int(i)] for i in ld.real.sample_ids])
    got = q(db, "SELECT sample_id, feature, value FROM activations JOIN encoders USING (encoder_id) "
                "WHERE kind = 'lexical' ORDER BY ALL")
    W = want.tocoo()
    assert sorted((int(ld.real.sample_ids[r]), int(c), float(v)) for r, c, v in zip(W.row, W.col, W.data)) == got
    assert ld.lexical.source == "stored" and ld.lexical.encoder_id is not None
    assert (ld.lexical.data.X != lexical_features(want)).nnz == 0
    assert np.array_equal(ld.lexical.data.sample_ids, ld.real.sample_ids)
