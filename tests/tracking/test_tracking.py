"""Tracking against real MLflow stores (local SQLite in tmp_path, and a real `mlflow server`); no mocks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragconf.errors import TrackingError
from ragconf.spec.loader import config_hash
from ragconf.tracking import (
    NullTracker,
    compare_runs,
    flush,
    format_comparison,
    list_runs,
    load_run_config,
    make_tracker,
)

CONFIG: dict[str, Any] = {
    "corpus": {"name": "handbook", "sources": [{"path": "docs", "glob": "*.md"}]},
    "retrieval": {"top_k": 5, "mode": "hybrid"},
    "notes": "x" * 9000,  # longer than MLflow's param value limit
}


def _cfg(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {"enabled": True, "uri": None, "experiment": "test", "log_asks": True, "workdir": str(tmp_path), **kw}


def _client(tmp_path: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")


def test_manifest_is_logged_and_read_back(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights")
    tracker = make_tracker(_cfg(tmp_path), workdir=tmp_path)
    with tracker.start_run("eval", config=CONFIG, overrides=["retrieval.top_k=5"]) as run:
        digest = run.log_model_fingerprint("minilm", [model])
        run.log_index_fingerprint({"documents": 3, "chunks": 7, "content_hash": "abc"})
        run.log_policy_revision("rev1")
        run.log_dataset_fingerprint("scifact", [model])
        run.log_metrics({"ndcg@10": 0.5, "p95_ms": 12.0})
        run.log_trace("ask", [{"name": "retriever", "start_ns": 0, "end_ns": 2_000_000, "attributes": {"k": 5}}])
        run_id = run.run_id
    assert run_id
    r = _client(tmp_path).get_run(run_id)
    tags, params = r.data.tags, r.data.params
    assert r.info.status == "FINISHED"
    assert tags["ragconf.kind"] == "eval"
    assert tags["config_hash"] == config_hash(CONFIG)
    assert json.loads(tags["overrides"]) == ["retrieval.top_k=5"]
    assert tags["model.minilm.sha256"] == digest and len(digest) == 64
    assert tags["index.chunks"] == "7" and tags["policy.revision"] == "rev1"
    assert tags["dataset.scifact.sha256"] == digest
    assert tags["version.mlflow"] and tags["version.haystack-ai"]
    assert params["retrieval.top_k"] == "5" and params["corpus.sources.0.glob"] == "*.md"
    assert 0 < len(params["notes"]) <= 6000
    assert r.data.metrics["ndcg_10"] == 0.5 and r.data.metrics["latency.retriever_ms"] == 2.0
    # artifacts live under <workdir>/mlartifacts (not MLflow's ./mlruns default)
    assert str(tmp_path.resolve() / "mlartifacts") in r.info.artifact_uri
    config, overrides = load_run_config(_cfg(tmp_path), run_id)
    assert config == CONFIG and overrides == ["retrieval.top_k=5"]
    art = Path(r.info.artifact_uri.removeprefix("file://"))
    assert json.loads((art / "overrides.json").read_text()) == ["retrieval.top_k=5"]
    assert yaml.safe_load((art / "config.yaml").read_text()) == CONFIG
    assert json.loads((art / "trace.json").read_text())["spans"][0]["name"] == "retriever"


def test_config_hash_is_stable() -> None:
    reordered = {k: CONFIG[k] for k in reversed(list(CONFIG))}
    assert config_hash(reordered) == config_hash(CONFIG)
    assert config_hash({**CONFIG, "retrieval": {"top_k": 6, "mode": "hybrid"}}) != config_hash(CONFIG)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "bogus-scheme://nowhere"])
def test_failing_uri_warns_once_and_never_raises(tmp_path: Path, uri: str, capsys: pytest.CaptureFixture) -> None:
    tracker = make_tracker(_cfg(tmp_path, uri=uri.format(port=_free_port())), workdir=tmp_path)
    t0 = time.perf_counter()
    for _ in range(2):
        with tracker.start_run("eval", config=CONFIG, overrides=[]) as run:
            run.log_metrics({"x": 1.0})
            run.log_text("t", "t.txt")
            assert run.run_id is None
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert err.count("warning: tracking") == 1, err


def test_disabled_tracking_is_a_null_tracker(tmp_path: Path) -> None:
    tracker = make_tracker(_cfg(tmp_path, enabled=False), workdir=tmp_path)
    assert isinstance(tracker, NullTracker)
    with tracker.start_run("ask", config=CONFIG, overrides=[]) as run:
        run.log_metrics({"x": 1.0})
        assert run.run_id is None
    assert tracker.start_parent("sweep", overrides=[]).run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_background_ask_runs_flush_in_process(tmp_path: Path) -> None:
    tracker = make_tracker(_cfg(tmp_path), workdir=tmp_path)
    keys = []
    for i in range(3):
        t0 = time.perf_counter()
        with tracker.start_run("ask", config=CONFIG, overrides=[]) as run:
            run.log_metrics({"total_ms": float(i)})
            run.log_dict({"question": f"q{i}"}, "ask.json")
            keys.append(run.run_id)
        assert time.perf_counter() - t0 < 0.5  # the caller never waits for MLflow (seconds to open its store)
    assert flush(60)
    for key in keys:
        config, _ = load_run_config(_cfg(tmp_path), key)  # the run key resolves
        assert config == CONFIG
    rows = [r for r in list_runs(_cfg(tmp_path)) if r["kind"] == "ask"]
    assert sorted(r["metrics"]["total_ms"] for r in rows) == [0.0, 1.0, 2.0]


def test_background_ask_run_is_written_at_interpreter_exit(tmp_path: Path) -> None:
    script = f"""
from pathlib import Path
from ragconf.tracking import make_tracker
cfg = {{"enabled": True, "uri": None, "experiment": "test", "log_asks": True}}
t = make_tracker(cfg, workdir=Path({str(tmp_path)!r}))
with t.start_run("ask", config={{"a": 1}}, overrides=["a=1"]) as run:
    run.log_metrics({{"total_ms": 7.0}})
print(run.run_id)
"""  # no explicit flush: the atexit hook must write the run
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    key = out.stdout.strip().splitlines()[-1]
    config, overrides = load_run_config(_cfg(tmp_path), key)
    assert config == {"a": 1} and overrides == ["a=1"]


def test_list_compare_and_unknown_run(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    tracker = make_tracker(cfg, workdir=tmp_path)
    ids = []
    for top_k, ndcg, rev in ((5, 0.5, "r1"), (10, 0.6, "r2")):
        conf = {**CONFIG, "retrieval": {"top_k": top_k, "mode": "hybrid"}, **({"extra": 1} if top_k == 10 else {})}
        with tracker.start_run("eval", config=conf, overrides=[f"retrieval.top_k={top_k}"]) as run:
            run.log_metrics({"ndcg@10": ndcg})
            run.log_policy_revision(rev)
            ids.append(run.run_id)
    rows = list_runs(cfg, max_results=10)
    assert [r["run_id"] for r in rows] == ids[::-1]
    assert rows[0]["kind"] == "eval" and rows[0]["metrics"]["ndcg_10"] == 0.6 and rows[0]["start_time"]
    cmp = compare_runs(cfg, *ids)
    assert cmp["config"]["changed"] == {"retrieval.top_k": (5, 10)}
    assert cmp["config"]["added"] == {"extra": 1} and cmp["config"]["removed"] == {}
    assert cmp["fingerprints"]["policy.revision"] == ("r1", "r2")
    assert cmp["metrics"]["ndcg_10"][2] == pytest.approx(0.1)
    text = format_comparison(cmp)
    assert "retrieval.top_k: 5 -> 10" in text and "+0.1000" in text
    with pytest.raises(TrackingError, match="no run 'nope'"):
        compare_runs(cfg, ids[0], "nope")
    with pytest.raises(TrackingError):
        load_run_config(cfg, "0" * 32)


def test_sweep_parent_and_children(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    parent = make_tracker(cfg, workdir=tmp_path).start_parent("sweep", overrides=["retrieval.top_k=5,10"])
    children = []
    for k in (5, 10):
        tracker = make_tracker(cfg, workdir=tmp_path)
        tracker.parent_run_id = parent.run_id
        with tracker.start_run("eval", config=CONFIG, overrides=[f"retrieval.top_k={k}"]) as run:
            children.append(run.run_id)
    parent.close()
    client = _client(tmp_path)
    assert client.get_run(parent.run_id).info.status == "FINISHED"
    assert all(client.get_run(c).data.tags["mlflow.parentRunId"] == parent.run_id for c in children)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("server")
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 50
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
                pytest.fail(f"mlflow server did not start: {err[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_real_mlflow_server_receives_a_run(tmp_path: Path, mlflow_server: str) -> None:
    cfg = _cfg(tmp_path, uri=mlflow_server)
    tracker = make_tracker(cfg, workdir=tmp_path)
    with tracker.start_run("eval", config=CONFIG, overrides=["retrieval.top_k=5"]) as run:
        run.log_metrics({"ndcg@10": 0.42})
        run_id = run.run_id
    assert run_id
    assert not (tmp_path / "mlflow.db").exists()
    rows = list_runs(cfg)
    assert rows[0]["run_id"] == run_id and rows[0]["metrics"]["ndcg_10"] == 0.42
    config, overrides = load_run_config(cfg, run_id)
    assert config == CONFIG and overrides == ["retrieval.top_k=5"]


def test_a_full_in_memory_queue_overflows_to_the_spool_and_loses_nothing(
    handbook_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server under sustained load: once RAGCONF_TRACKING_MAX_PENDING runs wait in memory, the next ones go to
    the on-disk spool (0600) for the writer process; memory stays bounded and every run is still written."""
    import shutil

    from ragconf.service import RagService
    from ragconf.tracking import flush, list_runs
    from ragconf.tracking import mlflow_tracker as mt

    work = tmp_path / "hb"
    shutil.copytree(handbook_dir, work, ignore=shutil.ignore_patterns("spool", "mlflow.db*"))
    monkeypatch.chdir(work)
    monkeypatch.setenv("RAGCONF_SPOOL_WRITER", "0")  # keep the spooled files for a look
    monkeypatch.setattr(mt, "MAX_PENDING", 0)
    before = mt.overflowed
    with RagService.from_overrides([]) as svc:
        keys = [svc.ask("How do I fail over the database?", "carol").run_id for _ in range(3)]
        flush()
        spooled = sorted((work / ".ragconf" / "spool").glob("*.json"))
        assert mt.overflowed - before == 3 and len(spooled) == 3
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in spooled)
        cfg = svc.tracking_config()
        listed = {r["tags"].get("ragconf.run_key") for r in list_runs(cfg, kind="ask")}  # drains the spool
        assert set(keys) <= listed
    assert not list((work / ".ragconf" / "spool").glob("*.json"))


def test_per_config_caches_stay_bounded(tmp_path: Path) -> None:
    """A process logging runs of many configs (a Python sweep) keeps a bounded number of config copies, and a
    background run's config is a copy the caller can no longer change."""
    from ragconf.tracking.mlflow_tracker import CONFIG_CACHE, Tracker

    tracker = Tracker({}, workdir=tmp_path)
    configs = [{"pipeline": {"name": f"p{i}", "top_k": [i]}} for i in range(3 * CONFIG_CACHE)]
    copies = [tracker._frozen_config(c, f"h{i}") for i, c in enumerate(configs)]
    assert len(tracker._frozen) == CONFIG_CACHE and list(tracker._frozen) == [
        f"h{i}" for i in range(2 * CONFIG_CACHE, 3 * CONFIG_CACHE)
    ]
    configs[-1]["pipeline"]["top_k"].append(99)
    last = 3 * CONFIG_CACHE - 1
    assert copies[-1] == {"pipeline": {"name": f"p{last}", "top_k": [last]}}
    assert tracker._frozen_config(configs[-1], f"h{last}") is copies[-1]  # reused while cached


def test_secrets_are_masked_whatever_their_yaml_type() -> None:
    """YAML reads `password: 123456` as a number: it is masked like a string; counts whose key merely contains
    a secret word (`max_tokens`) and flags stay as they are, so the logged config still reproduces the run."""
    from ragconf.service import mask_secrets

    cfg = {
        "db": {"password": 123456, "db_password": 4.5, "api_key": 42, "client_secret": "s3"},
        "generator": {"max_tokens": 256, "api_key_env": "OPENAI_API_KEY", "secret_required": True, "token": None},
        "serve": {"auth": {"api_keys": [{"sha256": "ab" * 32, "user": "alice"}]}},
    }
    out = mask_secrets(cfg)
    assert out["db"] == {k: "<masked>" for k in cfg["db"]}
    assert out["generator"] == {
        "max_tokens": 256,
        "api_key_env": "<masked>",
        "secret_required": True,
        "token": None,
    }
    assert out["serve"]["auth"]["api_keys"] == [{"sha256": "<masked>", "user": "alice"}]
    assert cfg["db"]["password"] == 123456  # a copy
