"""Policy as code: OPA Rego engines, the decision service, audit log, tests and PII redaction."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ragconf.policy.audit import AuditLog, query_audit, run_context, set_run_id
from ragconf.policy.engine import OpaServerEngine, PolicyEngine, RegoEngine, bundle_revision, load_engine
from ragconf.policy.service import (
    DocsDecision,
    FilterDecision,
    OutputDecision,
    PolicyService,
    RouteDecision,
)
from ragconf.policy.testing import PolicyTestReport, run_policy_tests

__all__ = [
    "AuditLog",
    "DocsDecision",
    "FilterDecision",
    "OpaServerEngine",
    "OutputDecision",
    "PolicyEngine",
    "PolicyService",
    "PolicyTestReport",
    "RegoEngine",
    "RouteDecision",
    "build_policy_service",
    "query_audit",
    "run_context",
    "set_run_id",
    "bundle_revision",
    "load_engine",
    "run_policy_tests",
]


def build_policy_service(cfg: Mapping[str, Any], *, workdir: Path, attributes: tuple[str, ...] = ()) -> PolicyService:
    """The PolicyService the `policy` config describes (engine, bundle, audit sink). ``attributes`` are the
    corpus's declared access attributes (``corpus.access.attributes``), shown to the policy besides tenant,
    classification and acl_groups."""
    from ragconf.policy.service import DEFAULT_DOCUMENT_FIELDS

    audit_cfg = cfg.get("audit") or {}
    path = None
    if audit_cfg.get("sink", "file") == "file":
        path = audit_cfg.get("path") or str(Path(workdir) / "audit.jsonl")
    audit = AuditLog(path, max_bytes=int(audit_cfg.get("max_bytes") or 0), keep=int(audit_cfg.get("keep") or 5))
    fields = (*DEFAULT_DOCUMENT_FIELDS, *(a for a in attributes if a not in DEFAULT_DOCUMENT_FIELDS))
    return PolicyService(load_engine(cfg), audit, cfg.get("bundle"), document_fields=fields)
