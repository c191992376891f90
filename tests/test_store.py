"""Store: content-addressed samples, idempotent batch writes, views, transactions that roll back."""

import numpy as np
import pytest

from qscope_eval.errors import StoreError
from qscope_eval.store import Store, sample_id


def encoder(store, d=16, kind="sae"):
    return store.register_encoder(f"m@main|s|L1|last|{kind}", "m", "main", "s", 1, "last", kind, d, {})


def test_shared_prompt_is_stored_once_and_counts_in_both(tmp_path):
    with Store(tmp_path / "a.duckdb") as s:
        a = s.register_benchmark("a", "x", {}, ["p", "q", "shared"])
        b = s.register_benchmark("b", "x", {}, ["shared", "r"])
        assert a[2] == b[0] == sample_id("shared")
        assert s.con.execute("SELECT count(*) FROM samples").fetchall()[0][0] == 4
        e = encoder(s)
        todo = s.pending(e.encoder_id, np.concatenate([a, b]))
        assert len(todo) == 4  # the shared prompt is encoded once
        s.write_batch(e.encoder_id, todo, np.ones(4), np.zeros(4, bool), np.arange(4), np.arange(4), np.ones(4), np.ones(4))
        es = s.load_encoded(e)
        assert es.M.toarray().sum(axis=1).tolist() == [3, 2]
        cov = dict(s.con.execute("SELECT benchmark, n_features FROM coverage").fetchall())
        assert cov == {"a": 3, "b": 2}


def test_replayed_batch_adds_nothing(tmp_path):
    with Store(tmp_path / "a.duckdb") as s:
        ids = s.register_benchmark("a", "x", {}, ["p", "q"])
        e = encoder(s)
        args = (ids, [3, 4], [False, True], np.array([0, 1, 1]), np.array([5, 6, 7]), np.array([1.0, 2.0, 3.0]), np.array([1, 1, 2]))
        assert s.write_batch(e.encoder_id, *args) == 2
        assert s.write_batch(e.encoder_id, *args) == 0
        assert s.con.execute("SELECT count(*) FROM activations").fetchall()[0][0] == 3
        assert len(s.pending(e.encoder_id, ids)) == 0


def test_failed_transaction_leaves_file_as_it_was(tmp_path, monkeypatch):
    """A write that fails INSIDE the transaction (after an INSERT ran) is rolled back: the file stays byte-identical."""
    path = tmp_path / "a.duckdb"
    with Store(path) as s:
        ids = s.register_benchmark("a", "x", {}, ["p", "q"])
        e = encoder(s)
    before = path.read_bytes()
    good = (e.encoder_id, ids, [1, 1], [False, False], np.array([0, 1]), np.array([3, 4]), np.array([1.0, 2.0]), np.array([1, 1]))
    seen = []
    real_write_one = Store._write_one

    def write_one_then_fail(self, *part):
        n = real_write_one(self, *part)
        # the first part's rows are in, inside the open transaction; now the second part fails
        seen.append(self.con.execute("SELECT count(*) FROM activations").fetchall()[0][0])
        if len(seen) == 2:
            raise RuntimeError("disk full")
        return n

    monkeypatch.setattr(Store, "_write_one", write_one_then_fail)
    with Store(path) as s, pytest.raises(RuntimeError, match="disk full"):
        s.write_batches([good, good])
    assert seen and seen[0] == 2, "the failure must come after an INSERT, inside the transaction"
    monkeypatch.undo()
    assert path.read_bytes() == before
    with Store(path) as s:
        assert s.con.execute("SELECT count(*) FROM activations").fetchall()[0][0] == 0
        assert s.con.execute("SELECT count(*) FROM encoded").fetchall()[0][0] == 0


def test_refuses_foreign_duckdb_file(tmp_path):
    import duckdb

    p = tmp_path / "other.duckdb"
    con = duckdb.connect(str(p))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    with pytest.raises(StoreError, match="not a qscope-eval database"):
        Store(p)


def test_no_encoder_yet_names_the_command(tmp_path):
    with Store(tmp_path / "a.duckdb") as s, pytest.raises(StoreError, match="qscope-eval encode"):
        s.encoder()
