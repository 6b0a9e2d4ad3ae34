"""Metrics agree with ir-measures (pytrec_eval) to 1e-6, including ties and queries missing from the run."""

from __future__ import annotations

import random

import ir_measures
import pytest
from ir_measures import AP, RR, R, nDCG

from ragconf.errors import SpecError
from ragconf.eval import check_gates, citation_precision, evaluate_run, parse_gates, reference_overlap


def reference(qrels: dict, run: dict) -> dict:
    q = [ir_measures.Qrel(a, b, r) for a, ds in qrels.items() for b, r in ds.items()]
    r = [ir_measures.ScoredDoc(a, b, s) for a, ds in run.items() for b, s in ds.items()]
    agg = ir_measures.calc_aggregate([nDCG @ 10, R @ 10, R @ 100, RR @ 10, AP], q, r)
    return {
        "ndcg@10": agg[nDCG @ 10],
        "recall@10": agg[R @ 10],
        "recall@100": agg[R @ 100],
        "mrr@10": agg[RR @ 10],
        "map": agg[AP],
    }


@pytest.mark.parametrize("seed", range(25))
def test_agrees_with_ir_measures_on_random_runs_with_ties(seed: int) -> None:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(60)]
    qrels = {f"q{i}": {d: rng.choice([0, 1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 8))} for i in range(15)}
    run = {}
    for q in list(qrels)[:-2]:  # the last two queries are missing from the run
        run[q] = {d: float(rng.randint(0, 5)) for d in rng.sample(docs, rng.randint(5, 40))}  # many ties
    ours, ref = evaluate_run(qrels, run), reference(qrels, run)
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k


def test_gates_pass_fail_and_margins() -> None:
    gates = parse_gates(["ndcg@10 >= 0.66", "leakage == 0", "p95_ms <= 200"])
    res = check_gates(gates, {"ndcg@10": 0.61, "leakage": 0.0, "p95_ms": 250.0})
    assert [r.passed for r in res] == [False, True, False]
    assert res[0].margin == pytest.approx(-0.05) and res[2].margin == pytest.approx(-50)
    with pytest.raises(SpecError, match="did you mean 'ndcg@10'"):
        check_gates(parse_gates(["ndcg@1O >= 1"]), {"ndcg@10": 1.0})
    with pytest.raises(SpecError) as info:
        parse_gates(["ndcg@10 is high"])
    assert info.value.key == "eval.gates[0]"


def test_answer_metrics() -> None:
    passages = ["Every parent receives 20 weeks of fully paid parental leave.", "Unrelated text about parking."]
    assert citation_precision("Parents get 20 weeks of paid parental leave [1].", passages) == 1.0
    assert citation_precision("Parents get 20 weeks of paid parental leave [2].", passages) == 0.0
    assert citation_precision("No citation here.", passages) == 0.0
    assert reference_overlap("20 weeks of leave", "20 weeks of leave")["f1"] == 1.0
    assert 0 < reference_overlap("20 weeks paid leave", "parents get 20 weeks")["rougeL"] < 1
