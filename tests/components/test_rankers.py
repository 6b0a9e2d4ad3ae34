"""The diversity (MMR) ranker: real embedder, real pipeline; near-duplicates give way, relevance order kept at
lambda 1, the access guard still applies after it."""

from __future__ import annotations

from pathlib import Path

import pytest
from haystack import Document

from ragconf.components.rankers import DiversityRanker
from ragconf.runtime import RagApp

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
