"""`ragconf tune`: weighted-RRF grid on an eval set's qrels, tuned pipeline file that loads and runs, a real
MLflow `tune` run, clean errors for pipelines without a fusion component."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
