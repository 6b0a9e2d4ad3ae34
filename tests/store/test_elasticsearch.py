"""The Elasticsearch store: filter rewriting (always) and a real server round trip when RAGCONF_TEST_ES_URL is set."""

from __future__ import annotations

import os
import uuid

import pytest
from haystack import Document

from ragconf.policy.filters import matches
from ragconf.store.elasticsearch import es_filter

ES_URL = os.environ.get("RAGCONF_TEST_ES_URL")


@pytest.mark.parametrize("meta", [{}, {"tenant": None}, {"tenant": "acme"}, {"tenant": "globex"}])
def test_null_in_lists_rewritten_to_missing_checks(meta: dict) -> None:
    for op in ("in", "not in"):
        flt = {"field": "meta.tenant", "operator": op, "value": [None, "acme"]}
        rewritten = es_filter(flt)
        assert all(
            None not in (c.get("value") or [1]) for c in rewritten["conditions"] if c["operator"] in ("in", "not in")
        )
        assert matches(rewritten, {"meta": meta}) == matches(flt, {"meta": meta})


@pytest.mark.es_server
@pytest.mark.skipif(not ES_URL, reason="set RAGCONF_TEST_ES_URL to an Elasticsearch server")
def test_round_trip_against_a_real_server() -> None:
    from ragconf.store import open_store

    store = open_store(
        {"type": "elasticsearch", "hosts": ES_URL, "index": f"ragconf-test-{uuid.uuid4().hex[:8]}"}, embedding_dim=4
    )
    docs = [
        Document(
            id="a",
            content="failover runbook",
            embedding=[1, 0, 0, 0],
            meta={"doc_id": "a", "corpus": "t", "content_hash": "h", "chunks_total": 1, "tenant": "acme"},
        ),
        Document(
            id="b",
            content="failover notes",
            embedding=[0, 1, 0, 0],
            meta={"doc_id": "b", "corpus": "t", "content_hash": "h2", "chunks_total": 1},
        ),
    ]
    store.replace_docs("t", [("a", "h", docs[:1]), ("b", "h2", docs[1:])])
    flt = {"field": "meta.tenant", "operator": "in", "value": [None, "globex"]}
    assert [d.id for d in store.bm25_retrieval("failover", filters=flt)] == ["b"]
    assert [d.id for d in store.embedding_retrieval([1, 0, 0, 0], filters=flt, top_k=5)] == ["b"]
    assert store.doc_hashes("t") == {"a": "h", "b": "h2"}
    assert store.delete_docs("t", ["a"]) == 1
    store.close()


def test_to_dict_round_trips_through_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exported Elasticsearch retriever loads back: the store serialises its constructor's parameters, the
    key only as the name of its variable (the client connects lazily: no server needed)."""
    pytest.importorskip("haystack_integrations.document_stores.elasticsearch")
    from ragconf.store.elasticsearch import ElasticsearchChunkStore

    monkeypatch.setenv("RAGCONF_TEST_ES_KEY", "es-secret-key")
    store = ElasticsearchChunkStore("http://127.0.0.1:9", "idx", 4, api_key_env="RAGCONF_TEST_ES_KEY")
    data = store.to_dict()
    assert data["init_parameters"] == {
        "hosts": "http://127.0.0.1:9",
        "index": "idx",
        "embedding_dim": 4,
        "api_key_env": "RAGCONF_TEST_ES_KEY",
    }
    assert "es-secret-key" not in str(data)
    again = ElasticsearchChunkStore.from_dict(data)
    assert again.to_dict() == data
