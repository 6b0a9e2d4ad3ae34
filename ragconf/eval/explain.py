"""Failure analysis of an evaluation (``ragconf eval --explain``): why each query scored below a threshold.

Every query whose nDCG@10 is below the threshold (a query without any relevant document visible to the user
scores 0) gets one category, from its relevant documents (judged grade > 0):

- ``not_in_index``: no chunk of the document is stored. The corpus sources are scanned with ingest's own reader
  to say why: ``never ingested`` (valid in the sources: run ingest), ``quarantined`` / ``rejected`` (the reason
  ingest reports), ``not in the corpus sources``.
- ``stale_version``: the stored document's hash (``store.doc_hashes``) differs from what ingest would store for
  the current source (the document changed since the last ingest).
- ``hidden_by_policy``: stored, but the access policy lets the evaluating user see none of its chunks (the
  policy's allow on the stored metadata). Its id is never printed or logged.
- ``dropped_by_fusion``: a retriever of the pipeline returned it within its own ``top_k`` (re-run with the
  user's policy filter), but the fused output did not keep it.
- ``ranked_below_cutoff``: retrieved, but too low: in the output below the rank the threshold needs, or by a
  retriever only below its ``top_k`` (probed ``depth`` deep).
- ``split_across_chunks``: found by no retriever within the probe depth, and the document is stored as several
  chunks none of which holds all the query terms the document holds together.
- ``not_retrieved``: found by no retriever within the probe depth.

A query's category comes from its relevant documents the user may see (highest grade, then best rank); only
when there is none, from the others. Retrievers are re-run with the user's policy filter and their output goes
through the policy's allow again before anything is compared, so only ids the user may see are ever reported.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CATEGORIES", "Explanation", "QueryFailure", "explain", "format_explanation"]

CATEGORIES = (
    "not_in_index",
    "stale_version",
    "hidden_by_policy",
    "dropped_by_fusion",
    "ranked_below_cutoff",
    "split_across_chunks",
    "not_retrieved",
)


@dataclass
class QueryFailure:
    query_id: str
    score: float
    category: str
    detail: str
    #: the relevant document the category is about (None when the user may not see it)
    doc_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "ndcg@10": self.score,
            "category": self.category,
            "detail": self.detail,
            "doc_id": self.doc_id,
        }


@dataclass
class Explanation:
    threshold: float
    queries: int
    failures: list[QueryFailure] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(f.category for f in self.failures)
        return {k: c.get(k, 0) for k in CATEGORIES}

    def to_dict(self, examples: int = 3) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "metric": "ndcg@10",
            "queries": self.queries,
            "below_threshold": len(self.failures),
            "counts": self.counts,
            "examples": {k: [f.to_dict() for f in self.failures if f.category == k][:examples] for k in CATEGORIES},
            "failures": [f.to_dict() for f in self.failures],
        }

    def metrics(self) -> dict[str, float]:
        out = {f"explain.{k}": float(v) for k, v in self.counts.items()}
        out["explain.below_threshold"] = float(len(self.failures))
        out["explain.threshold"] = float(self.threshold)
        return out


def _source_status(rag: Any, doc_ids: set[str]) -> dict[str, tuple[str, str | None]]:
    """For ``doc_ids``: (status, reason or expected stored hash) from a scan of the corpus sources with ingest's
    reader: ``valid`` (with the hash ingest would store), ``quarantined``, ``rejected``; absent = not in the
    sources. Only the ids asked about are kept."""
    from ragconf.ingest.sources import SourceError, iter_source

    corpus = rag.spec.corpus
    errors: list[SourceError] = []
    found: dict[str, Any] = {}
    by_hash: dict[str, list[str]] = {}
    try:
        for source in corpus.sources:
            for doc in iter_source(source, corpus.access, errors):
                by_hash.setdefault(doc.content_hash, []).append(doc.doc_id)
                if doc.doc_id in doc_ids:
                    found[doc.doc_id] = doc
    except Exception as exc:  # a source root that cannot be listed: every missing document says so
        return {d: ("unreadable", f"the corpus sources cannot be read ({exc})") for d in doc_ids}
    fp = None
    if corpus.indexing is not None:  # ragconf.ingest.pipeline.IndexingPipeline.doc_hash
        blob = json.dumps(corpus.indexing.model_dump(), sort_keys=True, default=str)
        fp = hashlib.sha256(blob.encode()).hexdigest()
    out: dict[str, tuple[str, str | None]] = {}
    for e in errors:
        if e.doc_id in doc_ids:
            out[e.doc_id] = ("quarantined" if e.kind == "quarantined" else "rejected", e.reason)
    for did, doc in found.items():
        if did in out:
            continue
        h = doc.content_hash if fp is None else hashlib.sha256(f"{doc.content_hash}|indexing:{fp}".encode()).hexdigest()
        others = sorted(d for d in by_hash.get(doc.content_hash, []) if d != did)
        if others:  # identical documents: ingest stores one of them with the others' ids in its hash
            h = hashlib.sha256((h + "|" + ",".join(others)).encode()).hexdigest()
        out[did] = ("valid", h)
    return out


def _ranks(ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, d in enumerate(ids, 1):
        out.setdefault(d, i)
    return out


def _retriever_ranks(rag: Any, principal: Any, query: str, depth: int) -> dict[str, tuple[int, dict[str, int]]]:
    """Each retriever of the pipeline re-run (through the pipeline, so its inputs are what it really gets) with
    the user's policy filter and top_k raised to ``depth``; its output re-checked by the policy's allow.
    Returns retriever -> (its configured top_k, doc id -> best rank)."""
    from ragconf.compile import GUARD_NAME, _drop_snapshot

    stage = rag.retrieval
    request = {"query": query, "action": "evaluate"}
    filt = rag.policy.retrieval_filter(principal, request)
    configured: dict[str, int] = {}
    data: dict[str, dict[str, Any]] = {}
    for name, targets in stage.inputs.items():
        if name == "query":
            for comp, sock in targets:
                data.setdefault(comp, {})[sock] = query
    for name in stage.retrievers:
        inst = stage.pipeline.get_component(name)
        configured[name] = int(getattr(inst, "top_k", None) or 10)
        data.setdefault(name, {}).update({"filters": filt.filters, "top_k": max(depth, configured[name])})
    data[GUARD_NAME] = {"principal": principal, "request": request}
    result = stage.pipeline.run(data, include_outputs_from=set(stage.retrievers), snapshot_callback=_drop_snapshot)
    out: dict[str, tuple[int, dict[str, int]]] = {}
    for name in stage.retrievers:
        docs = list((result.get(name) or {}).get("documents") or [])
        allowed = {d.id for d in rag.policy.check_documents(principal, docs, request).allowed} if docs else set()
        ids = [str(d.meta.get("doc_id")) for d in docs if d.id in allowed]
        out[name] = (configured[name], _ranks(ids))
    return out


def _split(rag: Any, query: str, doc_id: str) -> bool:
    """The document is stored as several chunks and no chunk holds every query term the document holds."""
    from ragconf.store.text import analyze

    chunks = rag.store.filter_documents({"field": "meta.doc_id", "operator": "==", "value": doc_id})
    if len(chunks) < 2:
        return False
    terms = set(analyze(query))
    per_chunk = [terms & set(analyze(f"{c.meta.get('title') or ''} {c.content or ''}")) for c in chunks]
    together = set().union(*per_chunk)
    return len(together) >= 2 and max(len(p) for p in per_chunk) < len(together)


def explain(rag: Any, result: Any, *, threshold: float = 0.5, depth: int = 200, user: str | None = None) -> Explanation:
    """Classify every query of ``result`` (an :class:`ragconf.experiment.EvalResult` of ``rag``) whose nDCG@10
    is below ``threshold``; fills ``result.failures`` (the per-query table's ``failure`` column)."""
    principal = rag.principal(user or result.user)
    below = {
        q: float(result.per_query.get(q, {}).get("ndcg@10", 0.0))
        for q in result.query_texts
        if float(result.per_query.get(q, {}).get("ndcg@10", 0.0)) < threshold
    }
    exp = Explanation(threshold, len(result.query_texts))
    result.failures, result.explanation = {}, exp
    if not below:
        return exp
    relevant = {q: {d: g for d, g in result.judgements.get(q, {}).items() if g > 0} for q in below}
    wanted = {d for rels in relevant.values() for d in rels}
    corpus = rag.spec.corpus.name
    stored = rag.store.doc_hashes(corpus)
    chunks = rag.store.filter_documents({"field": "meta.doc_id", "operator": "in", "value": sorted(wanted)})
    in_index = {str(c.meta.get("doc_id")) for c in chunks}
    allowed = rag.policy.check_documents(principal, chunks, {"action": "evaluate"}).allowed if chunks else []
    visible = {str(c.meta.get("doc_id")) for c in allowed}
    missing = wanted - in_index
    status = _source_status(rag, missing | (visible & set(stored))) if wanted else {}
    for qid, score in below.items():
        rels = relevant[qid]
        if not rels:
            exp.failures.append(QueryFailure(qid, score, "not_retrieved", "no relevant document is judged"))
            continue
        output = _ranks([d for d, _ in sorted(result.run.get(qid, {}).items(), key=lambda kv: -kv[1])])
        seen = sorted((d for d in rels if d in visible), key=lambda d: (-rels[d], output.get(d, 10**9), d))
        if seen:
            exp.failures.append(
                _classify_visible(rag, principal, result, qid, score, seen[0], output, depth, stored, status)
            )
            continue
        gone = sorted(d for d in rels if d in missing)
        if gone:
            d = gone[0]
            state, why = status.get(d, ("absent", None))
            detail = {
                "valid": "in the sources but never ingested (run `ragconf ingest`)",
                "quarantined": f"quarantined by ingest: {why}",
                "rejected": f"rejected by ingest: {why}",
                "absent": f"not in the corpus sources of '{corpus}'",
            }.get(state, str(why))
            exp.failures.append(QueryFailure(qid, score, "not_in_index", detail, d))
            continue
        exp.failures.append(
            QueryFailure(qid, score, "hidden_by_policy", f"{len(rels)} relevant document(s), none visible to the user")
        )
    result.failures = {f.query_id: f.category for f in exp.failures}
    return exp


def _classify_visible(
    rag: Any,
    principal: Any,
    result: Any,
    qid: str,
    score: float,
    doc: str,
    output: dict[str, int],
    depth: int,
    stored: dict[str, str],
    status: dict[str, tuple[str, str | None]],
) -> QueryFailure:
    state, expected = status.get(doc, ("", None))
    if state == "valid" and doc in stored and expected != stored[doc]:
        return QueryFailure(qid, score, "stale_version", "the source changed since it was ingested", doc)
    if state in ("quarantined", "rejected"):
        return QueryFailure(qid, score, "stale_version", f"an old version is indexed; the source is {state}", doc)
    if doc in output:
        return QueryFailure(qid, score, "ranked_below_cutoff", f"rank {output[doc]} in the pipeline's output", doc)
    query = result.query_texts[qid]
    branches = _retriever_ranks(rag, principal, query, depth)
    within = {n: r[doc] for n, (k, r) in branches.items() if doc in r and r[doc] <= k}
    if within:
        where = ", ".join(f"{n} rank {r}" for n, r in sorted(within.items()))
        return QueryFailure(qid, score, "dropped_by_fusion", f"{where}; not kept by fusion", doc)
    deeper = {n: (r[doc], k) for n, (k, r) in branches.items() if doc in r}
    if deeper:
        where = ", ".join(f"{n} rank {r} (top_k {k})" for n, (r, k) in sorted(deeper.items()))
        return QueryFailure(qid, score, "ranked_below_cutoff", where, doc)
    if _split(rag, query, doc):
        return QueryFailure(
            qid, score, "split_across_chunks", "no chunk holds all the query terms the document has", doc
        )
    names = ", ".join(sorted(branches)) or "the pipeline"
    return QueryFailure(qid, score, "not_retrieved", f"not in the top {depth} of {names}", doc)


def format_explanation(exp: Explanation, examples: int = 3) -> list[str]:
    """Lines for the terminal: counts per category, then a few examples of each."""
    lines = [f"explain: {len(exp.failures)} of {exp.queries} queries below nDCG@10 {exp.threshold:g}"]
    for k, n in exp.counts.items():
        if not n:
            continue
        lines.append(f"  {k:20} {n}")
        for f in [f for f in exp.failures if f.category == k][:examples]:
            doc = f" doc {f.doc_id}:" if f.doc_id else ""
            lines.append(f"      query {f.query_id} (nDCG@10 {f.score:.3f}){doc} {f.detail}")
    return lines
