"""Caches (issue 10): query embeddings by text; retrieval results keyed by question, top_k, the whole principal,
the index version and the policy revision. A cached result never crosses users, never outlives a write to
the index or a policy change, and a hit is still checked (and audited) by the current policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ragconf.runtime import RagApp

Q = "When should we fail over the primary database?"


def test_query_embedding_cache_runs_the_model_once_per_text() -> None:
    from ragconf.components.embedders import RagconfTextEmbedder

    emb = RagconfTextEmbedder(query_cache=8)
    first = emb.run("failover runbook")["embedding"]
    calls = emb.embedder.calls
    again = emb.run("failover runbook")["embedding"]
    assert again == first and emb.embedder.calls == calls  # no model run for the repeat
    again.append(1.0)  # a caller mutating its copy does not change the cache
    assert emb.run("failover runbook")["embedding"] == first
    emb.run("another question")
    assert emb.embedder.calls == calls + 1
    stats = emb._cache.stats()
    assert stats["hits"] == 2 and stats["misses"] == 2 and stats["saved_ms"] > 0
    off = RagconfTextEmbedder(query_cache=0)
    off.run("x")
    n = off.embedder.calls
    off.run("x")
    assert off.embedder.calls == n + 1


@pytest.fixture()
def hb(handbook_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the ingested handbook (this test writes to the store)."""
    work = tmp_path / "hb"
    shutil.copytree(handbook_dir, work, ignore=shutil.ignore_patterns("spool", "mlflow.db*"))
    monkeypatch.chdir(work)
    return work


def _retrieve(rag: RagApp, user: str, question: str = Q) -> tuple[list[str], dict[str, str], dict[str, float]]:
    docs, ids, timings = rag.retrieve(question, rag.principal(user))
    return [d.id for d in docs], ids, timings


def test_retrieval_cache_hits_per_user_and_is_rechecked_and_audited(hb: Path) -> None:
    rag = RagApp.from_overrides(["tracking=disabled"])
    try:
        first, ids1, t1 = _retrieve(rag, "alice")
        second, ids2, t2 = _retrieve(rag, "alice")
        assert t1["retrieval_cache_hit"] == 0.0 and t2["retrieval_cache_hit"] == 1.0
        assert second == first
        # a hit is a fresh decision of the current policy, audited like any other
        assert ids2["access.documents"] and ids2["access.documents"] != ids1["access.documents"]
        audit = (hb / ".ragconf" / "audit.jsonl").read_text()
        assert ids2["access.documents"] in audit and ids2["access.filter"] in audit
        # carol (a contractor without the sre group) never gets alice's entry
        carol, _, t3 = _retrieve(rag, "carol")
        assert t3["retrieval_cache_hit"] == 0.0
        confidential = {d.id for d in rag.store.filter_documents() if d.meta.get("classification") == "confidential"}
        assert set(first) & confidential and not set(carol) & confidential
        assert rag._retrieval_cache.stats()["hits"] == 1
    finally:
        rag.close()


def test_a_write_to_the_index_or_a_policy_change_misses(hb: Path) -> None:
    rag = RagApp.from_overrides(["tracking=disabled"])
    try:
        first, _, _ = _retrieve(rag, "alice")
        assert _retrieve(rag, "alice")[2]["retrieval_cache_hit"] == 1.0
        # revoke the top document (another process could do this: the version lives in the store file)
        top = next(d for d in rag.store.filter_documents() if d.id == first[0])
        rag.store.delete_docs(rag.spec.corpus.name, [top.meta["doc_id"]])
        after, _, t = _retrieve(rag, "alice")
        assert t["retrieval_cache_hit"] == 0.0 and first[0] not in after
        assert _retrieve(rag, "alice")[2]["retrieval_cache_hit"] == 1.0
    finally:
        rag.close()
    # a policy edit (new bundle revision): a new app over the same store and a copy of the bundle
    bundle = hb / "edited"
    shutil.copytree(Path(__file__).resolve().parents[1] / "policies", bundle)
    (bundle / "ragconf" / "routing" / "data.json").write_text(
        json.dumps({**json.loads((bundle / "ragconf" / "routing" / "data.json").read_text()), "note": "edited"})
    )
    rag = RagApp.from_overrides(["tracking=disabled"])
    try:
        _retrieve(rag, "alice")
        rev = rag.policy.bundle_revision
        assert _retrieve(rag, "alice")[2]["retrieval_cache_hit"] == 1.0
        rag.spec.policy.bundle = str(bundle)
        rag.reload_policies()
        assert rag.policy.bundle_revision != rev
        assert _retrieve(rag, "alice")[2]["retrieval_cache_hit"] == 0.0
    finally:
        rag.close()


def test_cache_off(hb: Path) -> None:
    rag = RagApp.from_overrides(["tracking=disabled", "cache.retrieval=0"])
    try:
        _retrieve(rag, "alice")
        assert "retrieval_cache_hit" not in _retrieve(rag, "alice")[2]
    finally:
        rag.close()


def test_answer_cache_reuses_only_identical_inputs(hb: Path) -> None:
    """cache.answers: the same question over the same passages, profile and rules reuses the answer (no
    generator run, decisions still made); another user whose guard leaves other passages gets a fresh one."""
    rag = RagApp.from_overrides(["tracking=disabled", "cache.answers=16"])
    try:
        first = rag.ask(Q, "alice")
        second = rag.ask(Q, "alice")
        assert first.timings_ms["answer_cache_hit"] == 0.0 and second.timings_ms["answer_cache_hit"] == 1.0
        assert second.answer == first.answer and second.citations == first.citations
        assert second.decision_ids["routing"] != first.decision_ids["routing"]  # decided again
        ran = {s["name"] for s in first.trace} - {s["name"] for s in second.trace}
        assert "component.answer" in ran  # the generator did not run for the hit
        carol = rag.ask(Q, "carol")  # her guard leaves other passages: another key
        assert carol.timings_ms["answer_cache_hit"] == 0.0
        assert not {d["chunk_id"] for d in carol.documents} & {
            d["chunk_id"] for d in first.documents if d["meta"].get("classification") == "confidential"
        }
    finally:
        rag.close()
    off = RagApp.from_overrides(["tracking=disabled"])
    try:
        off.ask(Q, "alice")
        assert "answer_cache_hit" not in off.ask(Q, "alice").timings_ms  # off by default
    finally:
        off.close()
