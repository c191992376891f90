"""User SQL runs read-only: writes, ATTACH, COPY and file reads are refused and the file is unchanged."""

import hashlib

import pytest

from qscope_eval.errors import QueryError
from qscope_eval.store.query import run_sql
from synthetic import build_store


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "s.duckdb"
    build_store(path).close()
    return path


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_views_answer_common_questions(db):
    cov = run_sql(db, "SELECT benchmark, n_features FROM coverage WHERE encoder_id = 1 ORDER BY benchmark")
    assert len(cov) == 5 and (cov["n_features"] > 0).all()
    ov = run_sql(db, "SELECT * FROM pairwise_overlap WHERE encoder_id = 1 AND a = b")
    assert (ov["asym_a_to_b"] == 1).all()


@pytest.mark.parametrize("sql", [
    "DELETE FROM samples",
    "DROP TABLE activations",
    "CREATE TABLE x AS SELECT 1",
    "ATTACH '/tmp/other.duckdb' AS o",
    "COPY samples TO '/tmp/leak.csv'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "INSTALL httpfs",
    "SET enable_external_access = true",
])
def test_writes_and_file_access_are_refused(db, sql, tmp_path):
    before = digest(db)
    with pytest.raises(QueryError, match="refused|SQL error"):
        run_sql(db, sql)
    assert digest(db) == before


def test_time_limit_interrupts(db):
    with pytest.raises(QueryError, match="limit"):
        run_sql(db, "SELECT count(*) FROM range(1000000000) a, range(1000) b", timeout_s=1)


def test_max_rows_streams(db):
    assert len(run_sql(db, "SELECT * FROM range(1000000)", max_rows=7)) == 7
