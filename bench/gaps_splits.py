"""Does `qscope-eval gaps` find the topics no benchmark covers, on topic splits other than the demo's?

Each split names MMLU subjects as benchmarks and others as reference corpora, some of them sister subjects
of a benchmark ("covered") and some not ("uncovered"). The demo backbone (MiniLM) and its SAE (with the
null twin) encode the questions (question text only, or with `--choices` as lm-eval shows them; `limit` per
subject; cached in OUT/gaps_<split>.duckdb).
Printed per split, for the SAE and the null encoder:
  * per reference corpus (`--reference NAME`): covered share and gap share of its firing mass;
  * precision: share of the gap groups' typical prompts that come from uncovered subjects (weighted by each
    group's excess share), and which uncovered subjects lead some group (recall);
  * the same for one *mixed* reference (all reference subjects in one corpus, no names: the dilution case).

    PYTHONPATH=. python bench/gaps_splits.py [--limit 100] [--choices] [--out out/splits100]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qscope_eval.jobs.gaps import gaps_report, load_inputs
from qscope_eval.analysis.gaps import GapConfig, find_gaps
from qscope_eval.jobs.pipeline import encode_suite
from qscope_eval.store import Store
from qscope_eval.data.suite import SUITES_DIR, parse_suite

SPLITS = {
    "science_humanities": {
        "benchmarks": ["high_school_chemistry", "philosophy", "high_school_macroeconomics"],
        "covered": ["college_chemistry", "moral_disputes"],
        "uncovered": ["virology", "high_school_geography"],
    },
    "religion_business_cs": {
        "benchmarks": ["world_religions", "marketing", "high_school_computer_science"],
        "covered": ["management", "college_computer_science"],
        "uncovered": ["prehistory", "nutrition"],
    },
}


TEXT = "{{question}}"
CHOICES = "{{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"


def entry(name: str, subject: str, limit: int) -> dict:
    return {"name": name, "path": f"asset:mmlu/{subject}.jsonl", "text": TEXT, "limit": limit}


def build(split: str, spec: dict, limit: int, mixed: bool, out: Path) -> Path:
    """Encode the split (cached). mixed=True: one reference corpus holding every reference subject."""
    refs = spec["covered"] + spec["uncovered"]
    if mixed:
        from qscope_eval.data import assets

        lines = []
        for s in refs:
            lines += [json.loads(x) for x in assets.resolve(f"asset:mmlu/{s}.jsonl").read_text().split("\n")[:limit]]
        mix = out / f"gaps_{split}_mixed.jsonl"
        mix.write_text("".join(json.dumps(x) + "\n" for x in lines))
        reference = [{"name": "traffic", "path": str(mix), "text": TEXT}]
    else:
        reference = [entry(f"ref_{s}", s, limit) for s in refs]
    suite = parse_suite({
        "name": f"gaps-{split}", "model": {"id": "asset:minilm", "dtype": "float32", "device": "cpu"},
        "sae": {"path": str(SUITES_DIR / "demo_sae")}, "layers": [3], "pooling": "top", "null": True,
        "benchmarks": [entry(s, s, limit) for s in spec["benchmarks"]], "reference": reference})
    db = out / f"gaps_{split}{'_mixed' if mixed else ''}.duckdb"
    with Store(db) as store:
        encode_suite(suite, store, progress=False)
    return db


def subject_of(store: Store, spec: dict, limit: int) -> dict[str, str]:
    """prompt text -> reference subject."""
    from qscope_eval.data import assets

    out = {}
    for s in spec["covered"] + spec["uncovered"]:
        for line in assets.resolve(f"asset:mmlu/{s}.jsonl").read_text().split("\n")[:limit]:
            out[json.loads(line)["question"]] = s
    return out


def precision(rep: dict, subjects: dict[str, str], uncovered: list[str]) -> tuple[float, list[str]]:
    shares, weights, leads = [], [], set()
    for g in rep["groups"]:
        subs = [subjects.get(p["text"].split("\nA. ")[0]) for p in g["prompts"]]  # the question part
        shares.append(np.mean([s in uncovered for s in subs]))
        weights.append(g["excess_share"])
        top = max(set(subs), key=subs.count)
        if top in uncovered:
            leads.add(top)
    return (float(np.average(shares, weights=weights)) if weights else float("nan")), sorted(leads)


def null_headline(store: Store, reference: str | None) -> dict:
    gi = load_inputs(store, None, reference)
    F, Mb, ref, parts = gi.parts(gi.null)
    r = find_gaps(F, Mb, ref, GapConfig(), parts)
    return {"covered": r.covered_share, "gap": r.gap_share}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--out", default="out")
    ap.add_argument("--choices", action="store_true", help="prompts as lm-eval shows MMLU (question, choices, Answer:)")
    args = ap.parse_args()
    if args.choices:
        global TEXT
        TEXT = CHOICES
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    for split, spec in SPLITS.items():
        print(f"== {split}: benchmarks {', '.join(spec['benchmarks'])}; covered {', '.join(spec['covered'])}; "
              f"uncovered {', '.join(spec['uncovered'])}")
        for mixed in (False, True):
            db = build(split, spec, args.limit, mixed, out)
            with Store(db) as store:
                subjects = subject_of(store, spec, args.limit)
                rep = gaps_report(store)
                prec, leads = precision(rep, subjects, spec["uncovered"])
                c, n = rep["coverage"], rep["null"]
                print(f"  {'mixed reference' if mixed else 'named corpora  '}: covered {c['covered_share']:.2f} "
                      f"(null {n['covered_share']:.2f}), gap {c['gap_share']:.2f} (null {n['gap_share']:.2f}), "
                      f"{c['n_groups']} groups; precision {prec:.2f}; uncovered subjects leading a group: {leads}")
                if mixed:
                    continue
                for s in spec["covered"] + spec["uncovered"]:
                    r = gaps_report(store, reference=f"ref_{s}")["coverage"]
                    nh = null_headline(store, f"ref_{s}")
                    tag = "uncovered" if s in spec["uncovered"] else "covered  "
                    print(f"    {tag} {s:28s} covered {r['covered_share']:.2f} gap {r['gap_share']:.2f}   "
                          f"null: covered {nh['covered']:.2f} gap {nh['gap']:.2f}")


if __name__ == "__main__":
    main()
