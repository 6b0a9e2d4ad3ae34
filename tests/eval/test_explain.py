"""Failure analysis (issue 9 item 4) on the handbook: a relevant document that is in no source is `not_in_index`,
one the persona may not see is `hidden_by_policy` and its id is never reported; counts land on the run as
metrics, `eval/explain.json` and the per-query table's `failure` column. Real pipeline, policy and MLflow store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def evalset(handbook_dir: Path) -> Path:
    """The handbook evaluation set plus a query whose only relevant document is in no source."""
    dst = handbook_dir / "eval_explain"
    if not dst.exists():
        shutil.copytree(ROOT / "examples" / "handbook" / "eval", dst)
        with (dst / "queries.jsonl").open("a") as f:
            f.write(json.dumps({"_id": "q99", "text": "What is the moon base vacation policy?"}) + "\n")
        with (dst / "qrels" / "test.tsv").open("a") as f:
            f.write("q99\thr/moon-base.md\t1\n")
    return dst


def _evaluate(handbook_dir: Path, evalset: Path, user: str, threshold: float, monkeypatch: Any) -> Any:
    from ragconf.service import RagService

    monkeypatch.chdir(handbook_dir)
    overrides = ["eval=handbook", f"eval.path={evalset}", "eval.personas=[]"]
    with RagService.from_overrides(overrides) as svc:
        result = svc.evaluate(user=user, explain=threshold)
        hidden = {
            d
            for q in result.judgements.values()
            for d in q
            if d in {str(c.meta["doc_id"]) for c in svc.rag.store.filter_documents()}
        }
        chunks = svc.rag.store.filter_documents({"field": "meta.doc_id", "operator": "in", "value": sorted(hidden)})
        seen = {str(c.meta["doc_id"]) for c in svc.rag.policy.check_documents(svc.principal(user), chunks, {}).allowed}
    return result, hidden - seen


def test_missing_and_hidden_documents_are_classified_and_logged(
    handbook_dir: Path, evalset: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    result, hidden = _evaluate(handbook_dir, evalset, "carol", 0.5, monkeypatch)
    exp = result.explanation
    by_query = {f.query_id: f for f in exp.failures}
    assert by_query["q99"].category == "not_in_index"
    assert by_query["q99"].doc_id == "hr/moon-base.md" and "not in the corpus sources" in by_query["q99"].detail
    # carol (a contractor) sees few handbook pages: the queries whose only relevant page she may not see
    hidden_queries = {q for q, rels in result.judgements.items() if set(rels) <= hidden}
    assert hidden_queries and {q for q, f in by_query.items() if f.category == "hidden_by_policy"} == hidden_queries
    assert all(by_query[q].doc_id is None for q in hidden_queries)
    assert exp.counts["not_in_index"] == 1 and exp.counts["hidden_by_policy"] == len(hidden_queries)
    assert (
        sum(exp.counts.values())
        == len(exp.failures)
        == sum(1 for q in result.query_texts if result.per_query.get(q, {}).get("ndcg@10", 0.0) < 0.5)
    )

    client = MlflowClient(tracking_uri=f"sqlite:///{(handbook_dir / '.ragconf' / 'mlflow.db').resolve()}")
    run = client.get_run(result.run_id)
    assert run.data.metrics["explain.hidden_by_policy"] == len(hidden_queries)
    assert run.data.metrics["explain.not_in_index"] == 1 and run.data.metrics["explain.threshold"] == 0.5
    logged = Path(client.download_artifacts(result.run_id, "eval/explain.json", str(tmp_path))).read_text()
    assert json.loads(logged)["counts"] == exp.counts
    table = json.loads(Path(client.download_artifacts(result.run_id, "eval/per_query.json", str(tmp_path))).read_text())
    rows = {r[0]: dict(zip(table["columns"], r, strict=True)) for r in table["data"]}
    assert rows["q99"]["failure"] == "not_in_index"
    assert all(rows[q]["failure"] == "hidden_by_policy" for q in hidden_queries)
    # ids carol may not see appear nowhere on the run
    everything = logged + json.dumps(table)
    assert not any(d in everything for d in hidden)


def test_nothing_below_the_threshold_explains_nothing(
    handbook_dir: Path, evalset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, _ = _evaluate(handbook_dir, evalset, "alice", 0.0, monkeypatch)
    assert result.explanation.failures == [] and set(result.explanation.counts.values()) == {0}
