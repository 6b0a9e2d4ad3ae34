"""`ragconf export` round-trips: each file loads with plain `haystack.Pipeline.loads` (allowlist on) and runs
against the same store with the same policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ragconf.export import ALLOWED_MODULES, export_stages
from ragconf.guard import AccessGuard
from ragconf.runtime import RagApp
from ragconf.spec import load_config

QUESTION = "How do I fail over the database? What is the meal allowance?"


@pytest.fixture
def rag(handbook_dir: Path) -> Any:
    app = RagApp(
        load_config(overrides=[f"project.workdir={handbook_dir / '.ragconf'}", "routing.profiles=[extractive]"])
    )
    yield app
    app.close()


def test_export_loads_in_plain_haystack_and_matches_ragconf(rag: Any, tmp_path: Path) -> None:
    from haystack import Pipeline
    from haystack.core.errors import DeserializationError

    files = export_stages(rag, tmp_path / "export")
    names = sorted(p.name for p in files)
    assert names == ["generator-extractive.yaml", "retrieval.yaml", "stages.json"]
    manifest = json.loads((tmp_path / "export" / "stages.json").read_text())
    info = manifest["stages"]["retrieval.yaml"]
    assert info["output"] == "access_guard.documents" and sorted(info["retrievers"]) == ["bm25", "dense"]

    text = (tmp_path / "export" / "retrieval.yaml").read_text()
    with pytest.raises(DeserializationError):  # Haystack's allowlist stays on: ragconf must be allowed explicitly
        Pipeline.loads(text)
    loaded = Pipeline.loads(text, allowed_modules=ALLOWED_MODULES)
    assert Path(loaded.get_component("bm25").document_store.path) == Path(rag.store.path).resolve()

    for user in ("alice", "carol"):
        principal = rag.principal(user)
        expected, _, _ = rag.retrieve(QUESTION, principal)
        filters = rag.policy.retrieval_filter(principal, {"query": QUESTION, "action": "retrieve"}).filters
        data: dict[str, Any] = {name: {"filters": filters} for name in info["retrievers"]}
        for ref in info["inputs"]["query"]:
            comp, sock = ref.split(".")
            data.setdefault(comp, {})[sock] = QUESTION
        data["access_guard"] = {"principal": principal.to_input()}
        got = loaded.run(data)["access_guard"]["documents"]
        assert [d.id for d in got] == [d.id for d in expected], user

    # without the pushed-down filter, the exported guard still enforces the policy (carol: public only)
    data = {"bm25": {"query": QUESTION}, "query_embedder": {"text": QUESTION}}
    data["access_guard"] = {"principal": rag.principal("carol").to_input()}
    got = loaded.run(data)["access_guard"]["documents"]
    assert got and all(d.meta.get("classification") == "public" for d in got)

    gen = Pipeline.loads((tmp_path / "export" / "generator-extractive.yaml").read_text(), allowed_modules=["ragconf"])
    replies = gen.run({"answer": {"query": "meal allowance", "documents": got}})["answer"]["replies"]
    assert "[1]" in replies[0]


def test_access_guard_round_trips_and_fails_closed(rag: Any, tmp_path: Path) -> None:
    import shutil

    guard = rag.retrieval.pipeline.get_component("access_guard")
    data = guard.to_dict()
    assert data["init_parameters"]["policy_revision"] == rag.policy.bundle_revision
    again = AccessGuard.from_dict(data)
    assert again.policy.bundle_revision == rag.policy.bundle_revision
    assert again.to_dict() == data
    # no bundle: nothing passes
    from haystack import Document

    doc = Document(content="x", meta={"classification": "public"})
    assert (
        AccessGuard.from_dict({"init_parameters": {"policy_revision": "r"}}).run([doc], {"id": "u"})["documents"] == []
    )
    # a bundle that changed since the export is refused
    changed = tmp_path / "bundle"
    shutil.copytree(data["init_parameters"]["bundle"], changed)
    (changed / "ragconf" / "access" / "extra.rego").write_text("package ragconf.extra\n\nx := 1\n")
    from ragconf.errors import PolicyConfigError

    with pytest.raises(PolicyConfigError, match="export it again"):
        AccessGuard.from_dict({"init_parameters": {**data["init_parameters"], "bundle": str(changed)}})
