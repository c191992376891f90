"""Anchor items (analysis/anchors.py, jobs/sample_select.py, `qscope-eval anchors`).

Planted item-response data (abilities θ ~ N(0, 1), item discrimination a and difficulty b, 0/1 draws):
the chosen items must estimate held-out models' full scores better than random items of the same
count, and every error figure is recomputed here by plain loops. End to end: genuine lm-eval logs of 24
planted models (tests/lmeval_fixtures.py) against a store of the same documents as this project renders
them (the suite of tests/test_validate.py, prompts only).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.model_selection import KFold

from lmeval_fixtures import BENCH_OF, SUITE_BENCHMARKS, plant_features, plant_models
from qscope_eval.analysis import anchors as A
from qscope_eval.analysis import irt
from qscope_eval.cli import cli
from qscope_eval.data.suite import load_suite
from qscope_eval.data.sources import load_suite_rows
from qscope_eval.store import Store


def planted(M=110, J=240, seed=0, guess=0.0):
    rng = np.random.default_rng(seed)
    th, a, b = rng.normal(size=M), np.exp(rng.normal(0, 0.4, J)), rng.normal(0, 1.2, J)
    P = guess + (1 - guess) / (1 + np.exp(-a * (th[:, None] - b)))
    return (rng.random((M, J)) < P).astype(np.float64), th, a, b


@pytest.fixture(scope="module")
def C():
    return planted()[0]


# ----------------------------------------------------------------------------- the analysis
def test_chosen_items_beat_random_items_on_held_out_models(C):
    for n in (30, 100):
        ev = A.evaluate(C, n, A.DEFAULT_METHOD, folds=5, random_draws=200, seed=0)
        assert ev.n_items == n and ev.n_models == C.shape[0] and ev.random_n_items == n
        assert ev.mae < ev.random_mae_mean, (n, ev)
        assert ev.random_better < 0.2                      # beats (nearly) every random draw, not just their mean
        assert ev.mae_lo <= ev.mae <= ev.mae_hi
    # more items, smaller error (random items too): the figures mean what they say
    e10 = A.evaluate(C, 10, "anchor", random_draws=100)
    assert e10.random_mae_mean > ev.random_mae_mean and e10.mae > ev.mae


def _slow_posterior_estimate(y, items, fit):
    """p-IRT by plain loops: posterior on the grid, observed anchors + expected others (items every training
    model failed or solved: as they did)."""
    a, b, const = fit.a, fit.b, fit.constant
    J = len(a)
    post = []
    for g in irt.GRID:
        ll = -g * g / 2
        for k, j in enumerate(items):
            p = 1 / (1 + math.exp(-a[j] * (g - b[j])))
            ll += y[k] * math.log(p) + (1 - y[k]) * math.log(1 - p)
        post.append(ll)
    top = max(post)
    w = [math.exp(x - top) for x in post]
    w = [x / sum(w) for x in w]
    rest = [j for j in range(J) if j not in set(items) and math.isnan(const[j])]
    fixed = sum(const[j] for j in range(J) if j not in set(items) and not math.isnan(const[j]))
    expected = sum(wg * sum(1 / (1 + math.exp(-a[j] * (g - b[j]))) for j in rest) for g, wg in zip(irt.GRID, w))
    return (sum(y) + expected + fixed) / J


def test_estimates_and_held_out_errors_match_a_slow_computation(C):
    Cs = C[:40, :60].copy()
    Cs[:, :3], Cs[:, 3:5] = 0, 1            # items nobody / everybody solves take p-IRT's constant path
    for method in ("anchor", "irt", "gp-irt", "info"):
        ev = A.evaluate(Cs, 8, method, folds=4, random_draws=50, seed=3)
        errs = np.full(len(Cs), np.nan)
        for k, (tr, te) in enumerate(KFold(4, shuffle=True, random_state=3).split(Cs)):
            an = A.choose_anchors(Cs[tr], 8, method, 3 + k)
            assert len(set(an.items)) == 8 and abs(an.weights.sum() - 1) < 1e-9
            for i in (te if method == "anchor" else te[:3]):   # the slow p-IRT loop on 3 models per fold
                y = [Cs[i, j] for j in an.items]
                wmean = sum(w * v for w, v in zip(an.weights, y))
                if method == "anchor":
                    est = wmean
                else:
                    pirt = _slow_posterior_estimate(y, list(an.items), an.fit)
                    est = an.lam * wmean + (1 - an.lam) * pirt if method == "gp-irt" else pirt
                errs[i] = 100 * (est - sum(Cs[i]) / Cs.shape[1])
        seen = ~np.isnan(errs)
        np.testing.assert_allclose(ev.errors[seen], errs[seen], atol=1e-8)
        if method == "anchor":
            assert ev.mae == pytest.approx(sum(abs(e) for e in errs) / len(errs))
            assert ev.rmse == pytest.approx(math.sqrt(sum(e * e for e in errs) / len(errs)))
            assert ev.max_error == pytest.approx(max(abs(e) for e in errs))
    # the random baseline: the same subsets, scored by a loop
    subsets = A.random_subsets(Cs.shape[1], 50, 3 + 29, 8)
    maes = [sum(abs(100 * (sum(Cs[i, j] for j in s) / 8 - Cs[i].mean())) for i in range(len(Cs))) / len(Cs) for s in subsets]
    assert ev.random_mae_mean == pytest.approx(np.mean(maes))
    assert ev.random_better == pytest.approx(np.mean([m < ev.mae for m in maes]))


def test_anchor_weights_are_cluster_shares_and_irt_recovers_the_plan():
    C, th, a, b = planted(M=80, J=120, seed=5)
    an = A.choose_anchors(C, 12, "anchor", seed=1)
    # every item sits in the cluster of exactly one anchor: shares of 120 items, summing to 1
    assert np.allclose((an.weights * 120).round(), an.weights * 120) and abs(an.weights.sum() - 1) < 1e-12
    fit = irt.fit_irt(C)
    assert np.corrcoef(fit.theta, th)[0, 1] > 0.95 and np.corrcoef(fit.b, b)[0, 1] > 0.9
    # items no training model solves (or all do) are predicted so: a benchmark nobody solves estimates 0, not
    # the few points the IRT priors would leave
    for const in (0.0, 1.0):
        ev = A.evaluate(np.full((10, 30), const), 5, "info", random_draws=20)
        assert ev.mae == 0 and ev.random_mae_mean == 0
    # duplicated item patterns and more anchors than distinct patterns: still n distinct items
    D = np.repeat(C[:, :5], 6, axis=1)
    an = A.choose_anchors(D, 10, "anchor")
    assert len(set(an.items)) == 10 and abs(an.weights.sum() - 1) < 1e-12


def test_token_budget_is_respected_by_anchors_and_random_items(C):
    D = C[:60, :150]
    costs = np.random.default_rng(1).integers(20, 200, D.shape[1]).astype(float)
    for method in ("anchor", "info"):
        an = A.choose_anchors(D, None, method, costs=costs, budget=3000)
        assert costs[an.items].sum() <= 3000 and len(an.items) > 10
    ev = A.evaluate(D, None, "info", folds=3, random_draws=40, costs=costs, budget=3000)
    assert all(costs[s].sum() <= 3000 for s in A.random_subsets(D.shape[1], 40, 29, costs=costs, budget=3000))
    assert ev.n_items > 10 and ev.random_n_items > 10
    with pytest.raises(A.AnchorError, match="token budget"):
        A.choose_anchors(D, None, "anchor", costs=costs, budget=5)
    with pytest.raises(A.AnchorError, match="at least"):
        A.evaluate(C[:4], 5)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A store holding the project's rendering of the logged tasks' documents (no model: prompts only, as the
    anchors need) with a `planted` encoder for the feature-only path; and the logs of 24 planted models."""
    root = tmp_path_factory.mktemp("anchors")
    (root / "s.yaml").write_text("name: val\nmodel: {id: none/none}\nsae: {path: ./sae}\nlayers: [1]\nlimit: 20\n"
                                 "benchmarks:\n" + SUITE_BENCHMARKS)
    suite = load_suite(root / "s.yaml")
    rows = load_suite_rows(suite)
    db = root / "base.duckdb"
    with Store(db) as s:
        for b in suite.benchmarks:
            s.register_benchmark(b.name, suite.name, {"name": b.name}, rows.loc[rows.benchmark == b.name, "text"].tolist())
        plant_features(s)
    plant_models(root / "logs")
    return db, root / "logs"


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_cli_chooses_anchors_from_real_lmeval_logs_and_exports_them(base, tmp_path):
    db, logs = base
    res = run("anchors", "--db", db, logs, "--n", 5, "--method", "anchor", "--draws", 50, "--json",
              "--export", tmp_path / "a.jsonl")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["evidence"] == "scores" and out["n_models"] == 24
    assert {b["name"] for b in out["benchmarks"]} == set(BENCH_OF.values())
    # the full scores it reports are the models' means computed straight from the log files
    truth = {}
    for f in sorted(logs.glob("model_*/samples_my_mmlu_prehistory_*.jsonl")):
        vals = {}
        for line in f.read_text().splitlines():
            r = json.loads(line)
            vals[r["doc_id"]] = float(r["acc"])
        truth[f"planted/model-{f.parent.name[-2:]}"] = 100 * np.mean(list(vals.values()))
    pre = next(b for b in out["benchmarks"] if b["name"] == "prehistory")
    assert pre["n_items"] == 20 and pre["n_chosen"] == 5 and len(pre["held_out"]) == 24
    assert {m: v["score"] for m, v in pre["held_out"].items()} == pytest.approx(truth, abs=1e-3)
    errs = [v["estimate"] - v["score"] for v in pre["held_out"].values()]
    assert pre["mae"] == pytest.approx(np.mean(np.abs(errs)), abs=1e-3)
    # exported items: stored samples of their benchmark, with their logged doc_id and text
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(lines) == sum(b["n_chosen"] for b in out["benchmarks"]) == 35
    with Store(db, read_only=True) as s:
        texts, members = s.stored_prompts()
    for it in lines:
        assert it["benchmark"] in members[it["sample_id"]] and it["text"] == texts[it["sample_id"]]
        assert it["evidence"] == "scores" and 0 <= it["doc_id"] < 20 and it["weight"] > 0
    assert out["lmeval_samples"] == {b["task"]: sorted(it["doc_id"] for it in b["items"]) for b in out["benchmarks"]}
    table = run("anchors", "--db", db, logs, "--n", 5, "--draws", 20, "--benchmark", "my_mmlu_prehistory")
    assert table.exit_code == 0 and "prehistory" in table.stdout and "random_MAE" in table.stdout
    assert "gsm8k" not in table.stdout


def test_a_model_that_ran_only_the_chosen_items_is_estimated_from_them(base, tmp_path):
    db, logs = base
    first = json.loads(run("anchors", "--db", db, logs, "--n", 5, "--method", "anchor", "--draws", 20,
                           "--benchmark", "prehistory", "--json").stdout)
    chosen = {it["doc_id"]: it["weight"] for it in first["benchmarks"][0]["items"]}
    new = tmp_path / "new" / "model_new"
    new.mkdir(parents=True)
    res = json.loads(next((logs / "model_05").glob("results_*.json")).read_text())
    res["config"]["model_args"] = "pretrained=planted/new"
    (new / next((logs / "model_05").glob("results_*.json")).name).write_text(json.dumps(res))
    src = next((logs / "model_05").glob("samples_my_mmlu_prehistory_*.jsonl"))
    kept = [json.loads(x) for x in src.read_text().splitlines() if json.loads(x)["doc_id"] in chosen]
    (new / src.name).write_text("".join(json.dumps(r) + "\n" for r in kept))
    out = json.loads(run("anchors", "--db", db, logs, tmp_path / "new", "--n", 5, "--method", "anchor", "--draws", 20,
                         "--benchmark", "prehistory", "--json").stdout)
    row = out["benchmarks"][0]
    assert row["items"] == first["benchmarks"][0]["items"] and "planted/new" not in row["held_out"]
    expected = 100 * sum(chosen[r["doc_id"]] * float(r["acc"]) for r in kept)
    assert row["estimates"] == {"planted/new": pytest.approx(expected, abs=1e-3)}


def test_cli_without_logs_is_the_labelled_feature_only_choice(base):
    db, _ = base
    out = json.loads(run("anchors", "--db", db, "--n", 4, "--json").stdout)
    assert out["evidence"] == "features" and "feature-only" in out["label"]
    assert len(out["benchmarks"]) == 7 and all(1 <= b["n_chosen"] <= 4 and b["mae"] is None for b in out["benchmarks"])
    assert all(b["items"][0]["weight"] is None for b in out["benchmarks"])


def test_a_benchmark_no_model_was_logged_on_gets_the_labelled_feature_choice(base, tmp_path):
    db, logs = base
    part = tmp_path / "part"
    for f in logs.rglob("*.json*"):
        if "prehistory" not in f.name:
            (part / f.parent.name).mkdir(parents=True, exist_ok=True)
            (part / f.parent.name / f.name).write_text(f.read_text())
    out = json.loads(run("anchors", "--db", db, part, "--n", 4, "--draws", 20, "--json").stdout)
    ev = {b["name"]: b["evidence"] for b in out["benchmarks"]}
    assert ev.pop("prehistory") == "features" and set(ev.values()) == {"scores"} and len(ev) == 6
    assert any("prehistory" in n and "feature-only" in n for n in out["notes"])
    assert all(set(b) == set(out["benchmarks"][0]) for b in out["benchmarks"])     # one set of keys for every row


def test_input_errors_are_one_line(base, tmp_path):
    db, logs = base
    few = tmp_path / "few"
    for m in ("model_00", "model_01", "model_02"):
        (few / m).mkdir(parents=True)
        for f in (logs / m).iterdir():
            (few / m / f.name).write_text(f.read_text())
    for args, msg in [(("--n", 5, "--token-budget", 100, logs), "either --n or --token-budget"),
                      (("--n", 5, few), "at least 6 models"),
                      (("--n", 5, "--benchmark", "nope", logs), "choose one of")]:
        res = run("anchors", "--db", db, *args)
        assert res.exit_code == 1 and res.output.strip().startswith("Error:") and msg in res.output, res.output
