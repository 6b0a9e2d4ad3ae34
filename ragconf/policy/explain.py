"""`ragconf policy explain`: why a principal can or cannot see a document.

For the document's chunks in the store it reports, each as an audited decision with its id:

- the filter decision: the principal's retrieval filter and whether the store matches each chunk with it (the
  store's own evaluation), with the top-level filter conditions a chunk fails;
- the per-document decision: what the access guard decides (``allowed_ids``, the decision retrieval uses);
- which condition denied it: the policy's ``denied_by`` (tenant, clearance, groups, principal); a denial that
  ``denied_by`` does not explain is reported as a custom rule.

The CLI, the Python API and the server share this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ragconf.errors import PolicyError, SpecError, closest
from ragconf.policy.filters import matches

__all__ = ["ChunkExplanation", "Explanation", "explain_document"]

#: Conditions the shipped access policy names in ``denied_by``.
KNOWN_CONDITIONS = ("principal", "tenant", "clearance", "groups")


@dataclass
class ChunkExplanation:
    chunk_id: str
    access: dict[str, Any]
    filter_matches: bool
    failed_conditions: list[dict[str, Any]]
    allowed: bool
    denied_by: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id,
            "access": self.access,
            "filter_matches": self.filter_matches,
            "failed_filter_conditions": self.failed_conditions,
            "allowed": self.allowed,
            "denied_by": self.denied_by,
        }


@dataclass
class Explanation:
    user: str
    doc_id: str
    query: str | None
    filter: dict[str, Any] | None
    chunks: list[ChunkExplanation]
    decision_ids: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def visible(self) -> bool:
        """Whether retrieval can return the document: the filter matches and the guard allows (any chunk)."""
        return any(c.filter_matches and c.allowed for c in self.chunks)

    @property
    def denied_by(self) -> list[str]:
        seen: dict[str, None] = {}
        for c in self.chunks:
            if not (c.filter_matches and c.allowed):
                for d in c.denied_by:
                    seen[d] = None
        return list(seen)

    @property
    def consistent(self) -> bool:
        """filter and the per-document decision agree on every chunk."""
        return all(c.filter_matches == c.allowed for c in self.chunks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "doc_id": self.doc_id,
            "query": self.query,
            "visible": self.visible,
            "denied_by": self.denied_by,
            "consistent": self.consistent,
            "filter": self.filter,
            "chunks": [c.to_dict() for c in self.chunks],
            "decision_ids": self.decision_ids,
            "errors": self.errors,
        }

    def lines(self) -> list[str]:
        verdict = "VISIBLE" if self.visible else "NOT VISIBLE"
        out = [f"{verdict}: user '{self.user}', document '{self.doc_id}' ({len(self.chunks)} chunks)"]
        if not self.visible:
            out.append(f"  denied by: {', '.join(self.denied_by) or '(nothing the policy names)'}")
        if self.filter is None:
            out.append("  filter:    undefined for this user: nothing is retrieved (deny)")
        else:
            n = sum(c.filter_matches for c in self.chunks)
            out.append(f"  filter:    the store matches {n} of {len(self.chunks)} chunks")
        n_ok = sum(c.allowed for c in self.chunks)
        out.append(f"  document:  the access guard allows {n_ok} of {len(self.chunks)} chunks")
        if not self.consistent:
            out.append("  WARNING:   filter and per-document decision disagree (run `ragconf policy test`)")
        for c in self.chunks:
            out.append(
                f"  chunk {c.chunk_id[:12]}  filter {'match' if c.filter_matches else 'no match'}, "
                f"{'allowed' if c.allowed else 'denied'}"
                + (f" by {', '.join(c.denied_by)}" if c.denied_by and not c.allowed else "")
                + f"  access {json.dumps(c.access, sort_keys=True)}"
            )
            for cond in c.failed_conditions:
                out.append(f"      fails filter condition {json.dumps(cond, sort_keys=True)}")
        for e in self.errors:
            out.append(f"  error:     {e}")
        out.append("  decisions: " + ", ".join(f"{k}={v}" for k, v in self.decision_ids.items()))
        return out


def _chunk_ids(docs: list[Any]) -> set[str]:
    return {str(d.id) for d in docs}


def doc_chunks(store: Any, doc_id: str, corpus: str | None = None) -> list[Any]:
    """The chunks of ``doc_id`` in ``store`` (by ``meta.doc_id``); SpecError naming a close id when none."""
    chunks = store.filter_documents({"field": "meta.doc_id", "operator": "==", "value": doc_id})
    if chunks:
        return sorted(chunks, key=lambda d: ((d.meta or {}).get("position", 0), str(d.id)))
    known: list[str] = []
    if corpus is not None and hasattr(store, "doc_hashes"):
        known = list(store.doc_hashes(corpus))
    match = closest(doc_id, known) if known else None
    raise SpecError(
        f"document '{doc_id}' is not in the store" + (f"; did you mean '{match}'?" if match else ""),
        key="--doc",
        hint="use a doc_id as `ask --json` prints it (citations[].doc_id), after `ragconf ingest`",
    )


def _failed_conditions(flt: dict[str, Any], doc: dict[str, Any]) -> list[dict[str, Any]]:
    if flt.get("operator") == "AND" and isinstance(flt.get("conditions"), list):
        return [c for c in flt["conditions"] if not matches(c, doc)]
    return [] if matches(flt, doc) else [flt]


def explain_document(
    policy: Any,
    store: Any,
    principal: Any,
    doc_id: str,
    *,
    query: str | None = None,
    corpus: str | None = None,
) -> Explanation:
    """Explain ``principal``'s access to ``doc_id`` (see the module docstring). Every decision is audited."""
    from ragconf.store.filters import combine

    chunks = doc_chunks(store, doc_id, corpus)
    p = principal.to_input() if hasattr(principal, "to_input") else dict(principal)
    request = {"query": query or "", "action": "explain"}
    exp = Explanation(str(p.get("id")), doc_id, query, None, [])
    flt, exp.decision_ids["access.filter"] = policy.decide(
        "ragconf/access/filter", {"principal": p, "request": request}, p.get("id")
    )
    in_store: set[str] = set()
    if isinstance(flt, dict) and flt:
        exp.filter = flt
        scope = {"field": "meta.doc_id", "operator": "==", "value": doc_id}
        in_store = _chunk_ids(store.filter_documents(combine(flt, scope)))
    docs = policy.check_documents(principal, chunks, request)
    exp.decision_ids["access.documents"] = docs.decision_id
    allowed = _chunk_ids(docs.allowed)
    reasons: dict[str, list[str]] = {}
    for chunk in chunks:
        meta = policy.document_access(chunk)
        key = json.dumps(meta, sort_keys=True, default=str)
        if key not in reasons:
            data = {"principal": p, "request": request, "document": {"meta": meta}}
            try:
                value, did = policy.decide("ragconf/access/denied_by", data, p.get("id"))
            except PolicyError as exc:
                value, did = None, ""
                exp.errors.append(str(exc))
            exp.decision_ids[f"access.denied_by.{len(reasons)}"] = did
            reasons[key] = sorted(str(v) for v in value) if isinstance(value, list) else []
        cid = str(chunk.id)
        ok = cid in allowed
        named = reasons[key]
        if not ok and not named:
            named = ["custom rule"]  # denied, but not by a condition the policy names
        exp.chunks.append(
            ChunkExplanation(
                cid,
                meta,
                cid in in_store,
                _failed_conditions(flt, {"meta": chunk.meta or {}}) if exp.filter else [],
                ok,
                [] if ok else named,
            )
        )
    return exp
