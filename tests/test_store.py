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


def test_coverage_counts_each_benchmarks_fired_features(tmp_path):
    """The `coverage` view's |F(D)| against numpy on the raw rows and against benchmark_features' rows: per encoder,
    only benchmarks (not reference corpora), only values > 0, shared prompts counted in every benchmark; and
    `pairwise_overlap` against the same sets."""
    from synthetic import build_store

    rng = np.random.default_rng(1)
    with build_store(tmp_path / "c.duckdb", n_bench=3, n=30) as s:
        e = s.encoder("toy@main|sae|L1|last|sae")
        ids = s.register_benchmark("ref", "synth", {}, [f"ref {i}" for i in range(20)] + ["bench0 q0 shared"], role="reference")
        todo = s.pending(e.encoder_id, ids)
        rows = np.repeat(np.arange(len(todo)), 6)
        vals = np.where(rng.random(rows.size) < 0.3, 0.0, 1.0)  # some stored zeros: not fired
        s.write_batch(e.encoder_id, todo, np.full(len(todo), 9), np.zeros(len(todo), bool), rows,
                      rng.integers(200, 256, rows.size), vals, np.ones(rows.size, int))
        acts = s.con.execute("SELECT encoder_id, sample_id, feature FROM activations WHERE value > 0").fetchnumpy()
        members = s.con.execute("SELECT benchmark, sample_id FROM bench_memberships").fetchall()
        want = {}
        for enc in (1, 2):
            for bench in {b for b, _ in members}:
                samples = [i for b, i in members if b == bench]
                fired = acts["feature"][(acts["encoder_id"] == enc) & np.isin(acts["sample_id"], samples)]
                if fired.size:
                    want[(enc, bench)] = len(np.unique(fired))
        got = {(r[0], r[1]): r[2] for r in s.con.execute("SELECT encoder_id, benchmark, n_features FROM coverage").fetchall()}
        assert got == want and len(want) == 6 and "ref" not in {b for _, b in got}
        old = dict(((r[0], r[1]), r[2]) for r in s.con.execute(
            "SELECT encoder_id, benchmark, count(*) FROM benchmark_features GROUP BY ALL").fetchall())
        assert got == old
        share = s.con.execute("SELECT max(abs(share_of_dsae - n_features / 256)) FROM coverage").fetchall()[0][0]
        assert share < 1e-12
        sets = {}
        for enc, bench in want:
            samples = [i for b, i in members if b == bench]
            sets[(enc, bench)] = set(acts["feature"][(acts["encoder_id"] == enc) & np.isin(acts["sample_id"], samples)].tolist())
        pairs = s.con.execute("SELECT encoder_id, a, b, n_shared, n_a, n_b, asym_a_to_b, sym, jaccard FROM pairwise_overlap").fetchall()
        assert len(pairs) == sum(1 for x in want for y in want if x[0] == y[0] and sets[x] & sets[y]) > 6
        for enc, a, b, shared, n_a, n_b, asym, sym, jac in pairs:
            A, B = sets[(enc, a)], sets[(enc, b)]
            assert (shared, n_a, n_b) == (len(A & B), len(A), len(B))
            assert np.allclose([asym, sym, jac], [len(A & B) / len(A), len(A & B) / min(len(A), len(B)), len(A & B) / len(A | B)])


def test_feature_views_count_each_sample_once(tmp_path):
    """benchmark_features', feature_support's and feature_frequency's per-feature counts and frequencies against
    numpy on the raw rows, with a prompt listed twice in one benchmark (counted once, as the metrics' membership sets do) and a
    prompt shared by a benchmark and a reference corpus."""
    from synthetic import build_store

    rng = np.random.default_rng(2)
    with build_store(tmp_path / "f.duckdb", n_bench=2, n=20) as s:
        e = s.encoder("toy@main|sae|L1|last|sae")
        dup = s.register_benchmark("dup", "synth", {}, ["twice", "once", "twice", "bench0 q0 shared"])
        ref = s.register_benchmark("ref", "synth", {}, ["r1", "r2", "once"], role="reference")
        todo = s.pending(e.encoder_id, np.concatenate([dup, ref]))
        rows = np.repeat(np.arange(len(todo)), 5)
        feats = np.concatenate([rng.choice(12, 5, replace=False) for _ in todo])
        s.write_batch(e.encoder_id, todo, np.full(len(todo), 9), np.zeros(len(todo), bool), rows, feats,
                      np.ones(rows.size), np.ones(rows.size, int))
        acts = s.con.execute("SELECT encoder_id, sample_id, feature FROM activations WHERE value > 0").fetchnumpy()
        members = set(s.con.execute("SELECT benchmark, sample_id FROM memberships").fetchall())
        roles = s.benchmark_roles()
        encoded = set(s.con.execute("SELECT encoder_id, sample_id FROM encoded").fetchall())
        want_bf, want_fs = {}, {}
        for enc in (1, 2):
            for bench in roles:
                samples = {i for b, i in members if b == bench}
                n_enc = sum((enc, i) in encoded for i in samples)
                sel = (acts["encoder_id"] == enc) & np.isin(acts["sample_id"], list(samples))
                for f in np.unique(acts["feature"][sel]).tolist():
                    n = len(set(acts["sample_id"][sel & (acts["feature"] == f)].tolist()))
                    want_fs[(enc, roles[bench], bench, f)] = (n, n_enc, n / n_enc)
                    if roles[bench] == "benchmark":
                        want_bf[(enc, bench, f)] = n
        got_bf = {r[:3]: r[3] for r in s.con.execute("SELECT * FROM benchmark_features").fetchall()}
        got_fs = {r[:4]: r[4:] for r in s.con.execute("SELECT * FROM feature_support").fetchall()}
        assert got_bf == want_bf and got_fs.keys() == want_fs.keys()
        assert all(got_fs[k][:2] == v[:2] and abs(got_fs[k][2] - v[2]) < 1e-12 for k, v in want_fs.items())
        assert want_fs[(1, "benchmark", "dup", int(feats[0]))][1] == 3  # "twice" counts once among 3 distinct prompts
        want_ff = {}
        for enc in (1, 2):
            in_bench = (acts["encoder_id"] == enc) & np.isin(acts["sample_id"], [i for b, i in members if roles[b] == "benchmark"])
            for f in np.unique(acts["feature"][in_bench]).tolist():
                n_b = sum((enc, b, f) in want_bf for b in roles)
                want_ff[(enc, f)] = (len(set(acts["sample_id"][in_bench & (acts["feature"] == f)].tolist())), n_b)
        got_ff = {r[:2]: r[2:] for r in s.con.execute("SELECT * FROM feature_frequency").fetchall()}
        assert got_ff == want_ff


def test_reference_gaps_breaks_ties_by_registration_order(tmp_path):
    """A reference feature two benchmarks fire equally often: `closest_benchmark` is the one registered first,
    every time (arg_max took whichever row came first)."""
    with Store(tmp_path / "t.duckdb") as s:
        e = encoder(s, d=8)
        ids = {name: s.register_benchmark(name, "x", {}, [f"{name} {i}" for i in range(4)]) for name in ("zeta", "alpha")}
        ids["ref"] = s.register_benchmark("ref", "x", {}, ["r0", "r1"], role="reference")
        every = np.concatenate(list(ids.values()))  # zeta, alpha: feature 3 in half their prompts; ref: in all
        fires = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 1])
        rows = np.arange(len(every))
        s.write_batch(e.encoder_id, every, np.ones(len(every)), np.zeros(len(every), bool), rows,
                      np.where(fires == 1, 3, 5), np.ones(len(every)), np.ones(len(every)))
        for _ in range(5):
            got = s.con.execute("SELECT closest_benchmark, max_benchmark_frequency, frequency FROM reference_gaps "
                                "WHERE feature = 3").fetchall()
            assert got == [("zeta", 0.5, 1.0)]


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
        # the first part's markers and parts row are in, inside the open transaction; now the second part fails
        seen.append(self.con.execute("SELECT count(*) FROM encoded").fetchall()[0][0])
        if len(seen) == 2:
            raise RuntimeError("disk full")
        return n

    monkeypatch.setattr(Store, "_write_one", write_one_then_fail)
    with Store(path) as s, pytest.raises(RuntimeError, match="disk full"):
        s.write_batches([good, good])
    assert seen and seen[0] == 2, "the failure must come after an INSERT, inside the transaction"
    monkeypatch.undo()
    assert path.read_bytes() == before
    with Store(path) as s:  # (opening also removes the failed batch's part files)
        assert sorted(p.name for p in s.parts_dir.iterdir()) == []
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


# ---- files written before activations moved into Parquet parts (schema 1) ----------------------
def _downgrade_to_v1(path):
    """Rewrite a store the way schema 1 kept it: activations in a DuckDB table, no parts."""
    import shutil

    import duckdb

    from qscope_eval.store.schema import VIEWS

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE act1 AS SELECT * FROM activations")
    for v in ["sample_features", "benchmark_features", "coverage", "pairwise_overlap", "feature_frequency", "activations"]:
        con.execute(f"DROP VIEW {v}")
    con.execute("ALTER TABLE act1 RENAME TO activations; DROP TABLE parts; UPDATE meta SET value = '1'")
    con.execute(VIEWS)
    con.close()
    shutil.rmtree(path.with_name(path.name + ".parts"))


def test_schema_1_file_is_read_as_is_and_migrated_on_write_open(tmp_path):
    import duckdb

    from qscope_eval.jobs import summary as analysis
    from qscope_eval.store.query import run_sql
    from synthetic import build_store

    path = tmp_path / "old.duckdb"
    build_store(path).close()
    cov_sql = "SELECT encoder_id, benchmark, n_features FROM coverage ORDER BY ALL"
    want = run_sql(path, cov_sql)
    _downgrade_to_v1(path)
    assert run_sql(path, cov_sql).equals(want)  # readers need no migration
    with Store(path, read_only=True) as s:
        old_X = analysis.load(s).real.X.toarray()
    with Store(path) as s:  # a writer migrates: each encoder's rows become one part, in one transaction
        assert s.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [("2",)]
        assert s.con.execute("SELECT count(*) FROM parts").fetchall() == [(2,)]
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'activations'").fetchall() == [("VIEW",)]
    assert run_sql(path, cov_sql).equals(want)
    with Store(path, read_only=True) as s:
        assert (analysis.load(s).real.X.toarray() == old_X).all()


def test_second_writer_is_refused_and_readers_get_in_between_batches(tmp_path):
    from qscope_eval.store.query import run_sql

    path = tmp_path / "w.duckdb"
    with Store(path, hold_s=0.0) as s:
        ids = s.register_benchmark("a", "x", {}, ["p", "q", "r"])
        with pytest.raises(StoreError, match="another qscope-eval process"):
            Store(path)
        e = encoder(s)
        s.write_batch(e.encoder_id, ids[:2], [1, 1], [False, False], np.array([0, 1]), np.array([3, 4]), np.ones(2), np.ones(2))
        # the writer released the file after its commit: a reader (another connection) sees the batch
        assert run_sql(path, "SELECT count(*) AS n FROM activations")["n"][0] == 2
        s.write_batch(e.encoder_id, ids[2:], [1], [False], np.array([0]), np.array([5]), np.ones(1), np.ones(1))
        assert run_sql(path, "SELECT count(*) AS n FROM encoded")["n"][0] == 3


def test_moved_database_reads_its_parts_from_the_new_place(tmp_path):
    import shutil

    from qscope_eval.store.query import run_sql
    from synthetic import build_store

    old = tmp_path / "a" / "s.duckdb"
    old.parent.mkdir()
    build_store(old).close()
    count = "SELECT count(*) AS n FROM activations"
    want = run_sql(old, count)["n"][0]
    new = tmp_path / "b" / "s.duckdb"
    shutil.move(str(old.parent), str(new.parent))  # the file and its .parts folder, together
    assert run_sql(new, count)["n"][0] == want > 0  # a reader points at the parts beside the file
    with Store(new) as s:  # a writer re-points the stored view once
        assert s.con.execute(count).fetchall()[0][0] == want


def test_activation_rows_are_grouped_by_sample_whatever_order_they_come_in(tmp_path):
    from qscope_eval.store.parts import activation_table

    rng = np.random.default_rng(3)
    ids = np.array([50, 10, 40, 20], dtype=np.int64)
    rows = np.repeat(np.arange(4), 5)
    feats = np.concatenate([np.sort(rng.choice(1000, 5, replace=False)) for _ in range(4)])
    vals = rng.random(20).astype(np.float32)
    keep = np.ones(4, bool)
    sorted_in = activation_table(1, ids, keep, rows, feats, vals, np.ones(20, int)).to_pydict()
    assert sorted_in["sample_id"] == np.repeat(ids, 5).tolist() and sorted_in["feature"] == feats.tolist()  # as given
    shuffle = rng.permutation(20)
    got = activation_table(1, ids, keep, rows[shuffle], feats[shuffle], vals[shuffle], np.ones(20, int)).to_pydict()
    assert got == sorted_in  # a shuffled batch is grouped back by sample, features rising
    keep = np.array([True, False, True, True])  # sample 10 is stored already: its rows go
    part = activation_table(1, ids, keep, rows[shuffle], feats[shuffle], vals[shuffle], np.ones(20, int)).to_pydict()
    assert 10 not in part["sample_id"] and len(part["sample_id"]) == 15
    # the store keeps each (sample, feature) with its own value, shuffled or not
    for name, order in (("s", np.arange(20)), ("u", shuffle)):
        with Store(tmp_path / f"{name}.duckdb") as s:
            e = s.register_encoder("toy@main|sae|L1|max|sae", "toy", "main", "sae", 1, "max", "sae", 1000, {})
            sids = s.register_benchmark("b", "t", {"path": "x"}, [f"q{i}" for i in range(4)])
            s.write_batch(e.encoder_id, sids, np.full(4, 9), np.zeros(4, bool), rows[order], feats[order], vals[order],
                          np.ones(20, int))
            got = s.con.execute("SELECT sample_id, feature, value FROM activations ORDER BY ALL").fetchall()
        expect = sorted((int(sids[r]), int(f), float(v)) for r, f, v in zip(rows, feats, vals))
        assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in expect]
        np.testing.assert_allclose([v for *_, v in got], [v for *_, v in expect], rtol=1e-6)
