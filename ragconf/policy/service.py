"""PolicyService: the decisions a request needs, each evaluated by the engine, audited, failing closed."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ragconf.errors import AccessDenied, PolicyError
from ragconf.policy.audit import AuditLog
from ragconf.types import Principal

__all__ = ["DocsDecision", "FilterDecision", "OutputDecision", "PolicyService", "RouteDecision"]

#: Document metadata the access policy sees by default (never the content: nothing a document says can
#: reach a decision).
DEFAULT_DOCUMENT_FIELDS = ("tenant", "classification", "acl_groups")


@dataclass
class FilterDecision:
    filters: dict[str, Any]
    decision_id: str


@dataclass
class DocsDecision:
    allowed: list[Any]
    denied: int
    decision_id: str


@dataclass
class RouteDecision:
    profile: str | None
    refused: bool
    reason: str
    decision_id: str


@dataclass
class OutputDecision:
    require_citations: bool
    max_passages: int
    redact_pii: bool
    decision_id: str


def _principal_input(principal: Any) -> dict[str, Any]:
    if principal is None:
        return {}
    if isinstance(principal, Principal):
        return principal.to_input()
    return dict(principal)


class PolicyService:
    """Access filter, per-document check, routing and output rules over one engine."""

    def __init__(
        self,
        engine: Any,
        audit: AuditLog | None = None,
        bundle_dir: str | Path | None = None,
        document_fields: tuple[str, ...] = DEFAULT_DOCUMENT_FIELDS,
    ) -> None:
        self.engine = engine
        self.audit = audit or AuditLog(None)
        self.bundle_dir = Path(bundle_dir) if bundle_dir else None
        self.bundle_revision = _revision(engine, self.bundle_dir) if self.bundle_dir else ""
        self.document_fields = tuple(document_fields)
        #: ``(value, reused)`` from engines that remember pure decisions (the embedded engine)
        self._engine_decide = getattr(engine, "decide", None)

    # ----- plumbing ------------------------------------------------------------------------------------
    def _decide(
        self,
        path: str,
        data: dict[str, Any],
        principal_id: str | None,
        summarize: Any = None,
        masked: tuple[str, ...] = (),
    ) -> tuple[Any, str]:
        decision_id = str(uuid.uuid4())
        started = time.perf_counter()
        error = None
        reused = False
        try:
            if self._engine_decide is not None:
                result, reused = self._engine_decide(path, data)
            else:
                result = self.engine.evaluate(path, data)
        except PolicyError as exc:
            result, error = None, str(exc)
        record = {
            "decision_id": decision_id,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "policy": path.rsplit("/", 1)[0].replace("/", "."),
            "rule": path.rsplit("/", 1)[-1],
            "bundle_revision": self.bundle_revision,
            "principal": principal_id,
            "input_sha256": hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest(),
            "masked_fields": list(masked),
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            # the engine had evaluated this rule for an input equal in everything the policy reads
            "reused": reused,
        }
        if error:
            record["error"] = error
        record.update(summarize(result) if summarize else {"result": result})
        self.audit.write(record)
        if error:
            raise PolicyError(f"{error} (decision {decision_id}; treated as deny)")
        return result, decision_id

    def _doc_input(self, doc: Any) -> dict[str, Any]:
        meta = doc.meta or {}
        return {f: meta[f] for f in self.document_fields if f in meta}

    def document_access(self, doc: Any) -> dict[str, Any]:
        """The metadata of ``doc`` the access policy sees (``document.meta``)."""
        return self._doc_input(doc)

    def decide(self, path: str, data: dict[str, Any], principal_id: str | None = None) -> tuple[Any, str]:
        """Evaluate rule ``path`` for ``data``, audited: (value, decision id). An engine error raises
        PolicyError (deny); undefined is None."""
        return self._decide(path, data, principal_id, masked=("request.query",) if "request" in data else ())

    # ----- decisions -----------------------------------------------------------------------------------
    def retrieval_filter(self, principal: Any, request: dict[str, Any]) -> FilterDecision:
        """The filter pushed into every retriever. Undefined or malformed: AccessDenied (fail closed)."""
        p = _principal_input(principal)
        result, did = self._decide(
            "ragconf/access/filter",
            {"principal": p, "request": _request(request)},
            p.get("id"),
            masked=("request.query",),
        )
        if not isinstance(result, dict) or not result:
            raise AccessDenied(
                f"the access policy gave no retrieval filter for user '{p.get('id')}' (decision {did}); "
                "an undefined decision means deny",
                hint="check the user's identity entry (id, groups, tenant, clearance) and policies/ragconf/access",
            )
        return FilterDecision(result, did)

    def check_documents(self, principal: Any, documents: list[Any], request: dict[str, Any]) -> DocsDecision:
        """Which of ``documents`` the principal may see: one evaluation over the distinct access signatures."""
        p = _principal_input(principal)
        if not documents:
            return DocsDecision([], 0, "")
        metas: dict[str, dict[str, Any]] = {}
        doc_sigs = []
        for d in documents:
            meta = self._doc_input(d)
            sig = json.dumps(meta, sort_keys=True, default=str)
            metas.setdefault(sig, meta)
            doc_sigs.append(sig)
        # one entry per distinct access signature, in a canonical order (ids are positions in it): the same set
        # of signatures is the same policy input whatever the ranking, so the engine can reuse the decision
        signatures = {sig: i for i, sig in enumerate(sorted(metas))}
        unique = [{"id": str(i), "meta": metas[sig]} for sig, i in signatures.items()]
        keys = [signatures[sig] for sig in doc_sigs]

        def summary(result: Any) -> dict[str, Any]:
            ok = {str(x) for x in (result or [])}
            allowed_ids = [str(d.id) for d, k in zip(documents, keys, strict=True) if str(k) in ok]
            denied_ids = [str(d.id) for d, k in zip(documents, keys, strict=True) if str(k) not in ok]
            return {
                "allowed": len(allowed_ids),
                "denied": len(denied_ids),
                "signatures": len(unique),
                # chunk ids (opaque hashes, never titles or paths): `ragconf audit --doc` finds decisions by them
                "allowed_ids": allowed_ids,
                "denied_ids": denied_ids,
            }

        result, did = self._decide(
            "ragconf/access/allowed_ids",
            {"principal": p, "request": _request(request), "documents": unique},
            p.get("id"),
            summary,
            masked=("request.query",),
        )
        ok = {str(x) for x in (result or [])}
        allowed = [d for d, k in zip(documents, keys, strict=True) if str(k) in ok]
        return DocsDecision(allowed, len(documents) - len(allowed), did)

    def route(
        self, principal: Any, request: dict[str, Any], documents: list[Any], profiles: list[dict[str, Any]]
    ) -> RouteDecision:
        p = _principal_input(principal)
        data = {
            "principal": p,
            "request": _request(request),
            "profiles": profiles,
            "documents": [{"classification": (d.meta or {}).get("classification")} for d in documents],
        }
        result, did = self._decide("ragconf/routing/decision", data, p.get("id"), masked=("request.query",))
        if not isinstance(result, dict):
            return RouteDecision(None, True, "the routing policy made no decision (undefined means refuse)", did)
        return RouteDecision(result.get("profile"), bool(result.get("refused")), str(result.get("reason", "")), did)

    def output_rules(self, principal: Any, request: dict[str, Any], documents: list[Any]) -> OutputDecision:
        p = _principal_input(principal)
        data = {
            "principal": p,
            "request": _request(request),
            "documents": [{"classification": (d.meta or {}).get("classification")} for d in documents],
        }
        result, did = self._decide("ragconf/output/decision", data, p.get("id"), masked=("request.query",))
        if not isinstance(result, dict):
            raise AccessDenied(f"the output policy made no decision (decision {did}); undefined means deny")
        return OutputDecision(
            bool(result.get("require_citations", True)),
            int(result.get("max_passages") or 0),
            bool(result.get("redact_pii", False)),
            did,
        )


def _revision(engine: Any, bundle_dir: Path) -> str:
    """The revision the engine loaded (the embedded engine hashes the bytes it read: a file replaced after it
    loaded cannot relabel its decisions), else the bundle's files as they are now."""
    from ragconf.policy.engine import bundle_revision

    loaded = getattr(engine, "revision", None)
    engine_dir = getattr(engine, "bundle", None)
    if isinstance(loaded, str) and isinstance(engine_dir, Path) and engine_dir.resolve() == bundle_dir.resolve():
        return loaded
    return bundle_revision(bundle_dir) if bundle_dir.is_dir() else ""


def _request(request: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (request or {}).items() if isinstance(v, str | int | float | bool) or v is None}
