"""`ragconf tune`: weighted-RRF grid on an eval set's qrels, tuned pipeline file that loads and runs, a real
MLflow `tune` run, clean errors for pipelines without a fusion component."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragconf.adapter import load_adapter
from tests.conftest import ROOT, run_cli

MINI = ROOT / "tests" / "fixtures" / "scifact_mini"
BEIR = [
    "corpus=beir",
    f"corpus.path={MINI}",
    "eval=beir",
    f"eval.path={MINI}",
    "pipeline=hybrid_fast",
    "identity=anonymous",
]


def test_fuse_grid_finds_the_branch_that_ranks_the_relevant_document_first() -> None:
    from ragconf.tune import fuse_grid

    lists = {"q1": (["a", "b", "c"], ["r", "a", "b"]), "q2": (["x", "y"], ["r2", "x"])}
    qrels = {"q1": {"r": 1}, "q2": {"r2": 1}}
    grid = fuse_grid(lists, qrels, [0.0, 0.5, 1.0], [3])
    by_w = {g["bm25_weight"]: g["ndcg@10"] for g in grid}
    assert by_w[0.0] == pytest.approx(1.0)  # dense alone puts r / r2 first
    assert by_w[1.0] < by_w[0.5] < by_w[0.0]


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("tune")
    run_cli("ingest", *BEIR, cwd=work, check=True)
    return work


def test_tune_writes_a_pipeline_that_runs_and_logs_a_run(mini_dir: Path) -> None:
    out = mini_dir / "cfg" / "pipeline" / "mini_tuned.yaml"
    proc = run_cli("tune", *BEIR, "--split", "test", "-o", str(out), "--json", cwd=mini_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(proc.stdout)
    assert res["queries"] > 0 and res["component"] == "hybrid" and res["run_id"]
    assert res["best_ndcg"] >= res["default_ndcg"]  # the grid holds a point at least as good as equal weights
    assert len(res["grid"]) == 11 * 3
    import yaml

    tuned = yaml.safe_load(out.read_text())
    w = tuned["components"]["hybrid"]["params"]["weights"]
    assert w == [pytest.approx(res["best"]["bm25_weight"]), pytest.approx(1 - res["best"]["bm25_weight"])]
    # the file is a pipeline group option of its config dir: eval with it reproduces the tuned score
    ev = run_cli("eval", *BEIR, "pipeline=mini_tuned", "--config-dir", str(out.parent.parent), "--json", cwd=mini_dir)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert json.loads(ev.stdout)["metrics"]["ndcg@10"] == pytest.approx(res["best_ndcg"], abs=1e-6)
    runs = run_cli("runs", "list", "--json", *BEIR, cwd=mini_dir)
    assert runs.returncode == 0, runs.stderr
    assert res["run_id"] in runs.stdout


def test_tune_needs_a_fusion_component_and_training_qrels(mini_dir: Path) -> None:
    proc = run_cli("tune", *BEIR, "pipeline=bm25", cwd=mini_dir)
    assert proc.returncode == 2 and "no fusion component" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("tune", *BEIR, cwd=mini_dir)  # scifact_mini has no train split
    assert proc.returncode == 2 and "no train qrels" in proc.stderr and "Traceback" not in proc.stderr


BEIR_H = [*BEIR[:-2], "identity=anonymous", "pipeline=hybrid"]


def test_tune_adapter_writes_an_adapter_and_a_pipeline_that_runs(mini_dir: Path) -> None:
    proc = run_cli("tune", *BEIR_H, "--split", "test", "--adapter", "--json", cwd=mini_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(proc.stdout)
    out = mini_dir / res["output"]
    assert out == mini_dir / "tuned" / "pipeline" / "hybrid_adapted.yaml"
    adapter = mini_dir / "tuned" / "adapters" / "hybrid_adapted.npz"
    W, meta = load_adapter(adapter)
    assert W.shape == (384, 384) and meta["split"] == "test" and meta["questions"] == res["queries"] > 10
    assert meta["embedder"]["model_id"] == "minilm-int8" and meta["steps"] == res["best"]["steps"]
    import yaml

    tuned = yaml.safe_load(out.read_text())
    assert tuned["components"]["adapter"] == {"type": "query_adapter", "params": {"model": str(adapter)}}
    assert {"sender": "adapter.embedding", "receiver": "dense.query_embedding"} in tuned["connections"]
    assert {"sender": "query_embedder.embedding", "receiver": "adapter.embedding"} in tuned["connections"]
    ev = run_cli("eval", *BEIR_H, "pipeline=hybrid_adapted", "--config-dir", "tuned", "--json", cwd=mini_dir)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert json.loads(ev.stdout)["metrics"]["ndcg@10"] > 0.5
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(mini_dir / '.ragconf' / 'mlflow.db').resolve()}")
    run = client.get_run(res["run_id"])
    assert run.data.params["tune.mode"] == "adapter" and "tune.ndcg_10" in run.data.metrics
    names = {a.path for a in client.list_artifacts(res["run_id"])}
    assert {"hybrid_adapted.npz", "tuned_pipeline.yaml", "tune_grid.json"} <= names


def test_tune_adapter_errors_are_clean(mini_dir: Path, tmp_path: Path) -> None:
    proc = run_cli("tune", *BEIR, "pipeline=bm25", "--split", "test", "--adapter", cwd=mini_dir)
    assert proc.returncode == 2 and "0 query embedders" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "cfg" / "pipeline"
    bad.mkdir(parents=True)
    (bad / "broken.yaml").write_text(
        "name: broken\ncomponents:\n  query_embedder: {type: text_embedder}\n"
        f"  adapter: {{type: query_adapter, params: {{model: {tmp_path / 'nope.npz'}}}}}\n"
        "  dense: {type: embedding_retriever}\nconnections:\n"
        "  - {sender: query_embedder.embedding, receiver: adapter.embedding}\n"
        "  - {sender: adapter.embedding, receiver: dense.query_embedding}\n"
        "inputs:\n  query: [query_embedder.text]\noutput: dense.documents\n"
    )
    (tmp_path / "cfg" / "config.yaml").write_text((ROOT / "configs" / "config.yaml").read_text())
    proc = run_cli("ask", "what?", *BEIR, "pipeline=broken", "--config-dir", str(tmp_path / "cfg"), cwd=mini_dir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no query adapter file" in proc.stderr and "adapter" in proc.stderr and "Traceback" not in proc.stderr
