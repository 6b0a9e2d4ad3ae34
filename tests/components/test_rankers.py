"""Rankers: the diversity (MMR) ranker (real embedder, real pipeline; near-duplicates give way, relevance order
kept at lambda 1, the access guard still applies after it) and the LLM ranker against a local fake
OpenAI-compatible endpoint, routed by the routing policy."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from haystack import Document

from ragconf.components.rankers import DiversityRanker, LLMRanker
from ragconf.runtime import RagApp
from ragconf.spec import load_config
from tests.fakes import chat_completion, local_server, read_json, send_json

DOCS = [
    Document(id="a", content="To fail over the primary database, promote the replica and repoint the service."),
    Document(id="a2", content="To fail over the primary database, promote the replica and repoint the service!"),
    Document(id="a3", content="Failing over the primary database: promote the replica, then repoint the service."),
    Document(id="b", content="Database backups run nightly and are kept for thirty days in object storage."),
    Document(id="c", content="The office opens at eight; badges are issued at the front desk."),
]
Q = "How do I fail over the primary database?"


def test_mmr_pushes_near_duplicates_down() -> None:
    ranker = DiversityRanker(top_k=3, lambda_mult=0.5)
    picked = [d.id for d in ranker.run(Q, DOCS)["documents"]]
    assert picked[0] in {"a", "a2", "a3"} and len(picked) == 3
    assert "b" in picked  # a different, related passage beats the second copy of the first
    assert len({"a", "a2", "a3"} & set(picked)) <= 2
    relevance_only = [d.id for d in DiversityRanker(top_k=5, lambda_mult=1.0).run(Q, DOCS)["documents"]]
    assert set(relevance_only[:3]) == {"a", "a2", "a3"} and relevance_only[-1] == "c"
    assert DiversityRanker(top_k=2).run(Q, DOCS, top_k=1)["documents"][0].id in {"a", "a2", "a3"}
    assert DiversityRanker().run(Q, [])["documents"] == []


@pytest.mark.parametrize("bad", [{"top_k": 0}, {"lambda_mult": 1.5}])
def test_bad_parameters(bad: dict) -> None:
    with pytest.raises(ValueError):
        DiversityRanker(**bad)


def test_diverse_pipeline_in_yaml_keeps_the_guard(handbook_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(handbook_dir)
    rag = RagApp.from_overrides(["pipeline=hybrid_diverse", "tracking=disabled"])
    try:
        docs, ids, _ = rag.retrieve("When should we fail over the primary database?", rag.principal("carol"))
        assert docs and ids["access.documents"]
        assert all(d.meta.get("classification") in ("public", "internal") for d in docs)  # carol: no runbook
        alice, _, _ = rag.retrieve("When should we fail over the primary database?", rag.principal("alice"))
        assert any(d.meta.get("classification") == "confidential" for d in alice)
        assert len({d.id for d in alice}) == len(alice) <= 10
    finally:
        rag.close()


# ----- llm_ranker against a local fake OpenAI-compatible endpoint ------------------------------------------------


class _FakeRanker(BaseHTTPRequestHandler):
    """Scores passage i with i (so the last passage ranks first): the reranked order is the reverse."""

    prompts: list[str] = []
    garbage = False

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = read_json(self)
        prompt = body["messages"][-1]["content"]
        type(self).prompts.append(prompt)
        n = len(re.findall(r"^\[\d+\] ", prompt, re.M))
        content = "no idea" if type(self).garbage else json.dumps({"scores": list(range(n))})
        send_json(self, chat_completion(content, body["model"]))


@pytest.fixture()
def ranker_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    _FakeRanker.prompts, _FakeRanker.garbage = [], False
    with local_server(_FakeRanker) as url:
        yield url


def test_llm_ranker_without_a_routing_decision_sends_nothing(ranker_url: str) -> None:
    ranker = LLMRanker(base_url=ranker_url, api_key_env=None, top_k=5)
    out = ranker.run(Q, DOCS)
    assert [d.id for d in out["documents"]] == [d.id for d in DOCS] and not out["rerank"]["applied"]
    assert _FakeRanker.prompts == []
    allow = lambda docs, profile: (True, "ok", "d1")  # noqa: E731
    out = ranker.run(Q, DOCS, route_gate=allow)
    assert [d.id for d in out["documents"]] == [d.id for d in reversed(DOCS)] and out["rerank"]["applied"]
    assert out["documents"][0].meta["llm_score"] == 4.0 and "llm_score" not in DOCS[-1].meta
    _FakeRanker.garbage = True
    out = ranker.run(Q, DOCS, route_gate=allow)
    assert [d.id for d in out["documents"]] == [d.id for d in DOCS] and "JSON" in out["rerank"]["reason"]


def _reranked_app(tmp_path: Path, handbook_dir: Path, url: str, locality: str) -> RagApp:
    team = tmp_path / f"team-{locality}"
    (team / "pipeline").mkdir(parents=True)
    (team / "config.yaml").write_text(
        "defaults:\n  - corpus: handbook\n  - store: sqlite\n  - embedder: minilm\n  - pipeline: reranked\n"
        "  - generator: extractive\n  - identity: handbook\n  - policy: default\n  - tracking: disabled\n"
        "  - eval: none\n  - _self_\n"
    )
    (team / "pipeline" / "reranked.yaml").write_text(
        "name: reranked\ncomponents:\n  bm25:\n    type: bm25_retriever\n    params: {top_k: 20}\n"
        f"  rank:\n    type: llm_ranker\n    params: {{base_url: '{url}', api_key_env: null, locality: {locality},"
        " candidates: 8, top_k: 8}\n"
        "connections:\n  - {sender: bm25.documents, receiver: rank.documents}\n"
        "inputs:\n  query: [bm25.query, rank.query]\noutput: rank.documents\n"
    )
    return RagApp(load_config(team, [f"project.workdir={handbook_dir / '.ragconf'}", "cache.retrieval=0"]))


def test_llm_ranker_is_routed_by_policy(tmp_path: Path, handbook_dir: Path, ranker_url: str) -> None:
    """A remote ranker reranks carol's public candidates but never receives alice's confidential runbook (the
    routing policy refuses, the fused order stays); a local ranker reranks alice's too."""
    question = "When should we fail over the primary database?"
    rag = _reranked_app(tmp_path, handbook_dir, ranker_url, "remote")
    try:
        carol, _, _ = rag.retrieve("What is the meal allowance abroad?", rag.principal("carol"))
        assert carol and all(d.meta.get("llm_score") is not None for d in carol)
        scores = [d.meta["llm_score"] for d in carol]
        assert scores == sorted(scores, reverse=True)
        sent = len(_FakeRanker.prompts)
        assert sent == 1
        alice, _, _ = rag.retrieve(question, rag.principal("alice"))
        assert any(d.meta.get("classification") == "confidential" for d in alice)
        assert all("llm_score" not in d.meta for d in alice) and len(_FakeRanker.prompts) == sent
        secret = next(d for d in alice if d.meta.get("classification") == "confidential").content[:40]
        assert all(secret not in p for p in _FakeRanker.prompts)
    finally:
        rag.close()
    rag = _reranked_app(tmp_path, handbook_dir, ranker_url, "local")
    try:
        alice, _, _ = rag.retrieve(question, rag.principal("alice"))
        assert all(d.meta.get("llm_score") is not None for d in alice)
    finally:
        rag.close()
