"""Per-query evaluation in MLflow (issue 9 item 3): an eval run has the evaluation set as a dataset input with its
fingerprint, a per-query table (metrics, latency, only ids the user may see) and PNG plots. Real CLI, real MLflow
store; images opened with PIL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli


def _client(workdir: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{(workdir / '.ragconf' / 'mlflow.db').resolve()}")


def _artifact(client: Any, run_id: str, path: str, dst: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(dst)))


def _assert_png(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width >= 300 and img.height >= 200
        # not a blank canvas: a plot has several colours
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 3
        return img.size


@pytest.fixture(scope="module")
def eval_run(handbook_dir: Path) -> dict[str, Any]:
    proc = run_cli("eval", "eval=handbook", "--json", cwd=handbook_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["run_id"]
    return out


def test_eval_run_has_the_dataset_input_with_its_fingerprint(handbook_dir: Path, eval_run: dict[str, Any]) -> None:
    client = _client(handbook_dir)
    run = client.get_run(eval_run["run_id"])
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    sha = run.data.tags["dataset.eval.sha256"]  # the handbook evaluation set lives in examples/handbook/eval
    assert ds.name == "eval" and len(ds.digest) == 32 and ds.source_type == "local"
    assert json.loads(ds.profile)["num_rows"] == eval_run["queries"]
    # the same files evaluated on fewer queries are another dataset (its own row count), same file sha
    proc = run_cli("eval", "eval=handbook", "eval.max_queries=2", "eval.personas=[]", "--json", cwd=handbook_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    small = client.get_run(json.loads(proc.stdout)["run_id"])
    sds = small.inputs.dataset_inputs[0].dataset
    assert sds.digest != ds.digest and json.loads(sds.profile)["num_rows"] == 2
    assert small.data.tags["dataset.eval.sha256"] == sha
    tags = {t.key: t.value for t in inputs[0].tags}
    assert tags["mlflow.data.context"] == "eval" and tags["ragconf.sha256"] == sha
    assert {c["name"] for c in json.loads(ds.schema)["mlflow_colspec"]} >= {"query_id", "query", "relevant_doc_ids"}


def test_per_query_table_has_metrics_latency_and_only_visible_ids(
    handbook_dir: Path, eval_run: dict[str, Any], tmp_path: Path
) -> None:
    from ragconf.service import RagService

    client = _client(handbook_dir)
    table = json.loads(_artifact(client, eval_run["run_id"], "eval/per_query.json", tmp_path).read_text())
    cols = table["columns"]
    assert cols[:2] == ["query_id", "judged"]
    assert {"ndcg@10", "recall@10", "mrr@10", "map", "latency_ms", "retrieved_ids", "failure"} <= set(cols)
    rows = [dict(zip(cols, r, strict=True)) for r in table["data"]]
    assert len(rows) == eval_run["queries"]
    judged = [r for r in rows if r["judged"]]
    assert judged and all(r["latency_ms"] > 0 for r in rows)
    # the table's per-query nDCG@10 averages to the run's metric
    mean = sum(r["ndcg@10"] for r in judged) / len(judged)
    assert mean == pytest.approx(eval_run["metrics"]["ndcg@10"], abs=1e-9)
    # every listed chunk id is one the policy lets the evaluating user (alice) see, checked afresh
    listed = sorted({i for r in rows for i in r["retrieved_ids"]})
    assert listed
    with RagService.from_overrides([f"project.workdir={handbook_dir / '.ragconf'}", "eval=handbook"]) as svc:
        chunks = svc.rag.store.filter_documents({"field": "id", "operator": "in", "value": listed})
        allowed = svc.rag.policy.check_documents(svc.principal("alice"), chunks, {"action": "audit"}).allowed
    assert len(chunks) == len(allowed) == len(listed)


def test_eval_run_has_ndcg_and_latency_histograms(handbook_dir: Path, eval_run: dict[str, Any], tmp_path: Path) -> None:
    client = _client(handbook_dir)
    names = {a.path for a in client.list_artifacts(eval_run["run_id"], "plots")}
    assert names == {"plots/ndcg_10_hist.png", "plots/latency_hist.png"}
    for name in names:
        _assert_png(_artifact(client, eval_run["run_id"], name, tmp_path))
