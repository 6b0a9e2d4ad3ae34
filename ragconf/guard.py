"""The access guard: a Haystack component ragconf appends to every retrieval stage.

It asks the access policy which of the retrieved documents the principal may see, so nothing the policy
denies can reach a prompt, an answer, a citation or a log (defence in depth behind the pushed-down filter).
It round-trips through Haystack serialization (``ragconf export`` -> ``haystack.Pipeline.loads``): the loaded guard
enforces the exported policy bundle; ``principal`` is then a mapping (id, groups, tenant, clearance, attributes).
"""

from __future__ import annotations

from typing import Any

from haystack import Document, component

__all__ = ["AccessGuard"]


@component
class AccessGuard:
    """Drops every document the access policy does not allow for ``principal`` (fails closed)."""

    def __init__(self, policy: Any = None) -> None:
        self.policy = policy

    @component.output_types(documents=list[Document], decision_id=str, denied=int)
    def run(self, documents: list[Document], principal: Any, request: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.policy is None or principal is None:
            # no policy service or no principal: nothing may pass
            return {"documents": [], "decision_id": "", "denied": len(documents)}
        decision = self.policy.check_documents(principal, documents, request or {})
        return {"documents": decision.allowed, "decision_id": decision.decision_id, "denied": decision.denied}

    def to_dict(self) -> dict[str, Any]:
        """The policy bundle (folder and revision) and the document fields it sees: enough for :meth:`from_dict`
        to enforce the same policy in a pipeline loaded with plain Haystack (an embedded engine over the bundle)."""
        bundle = getattr(self.policy, "bundle_dir", None)
        fields = getattr(self.policy, "document_fields", None)
        return {
            "type": "ragconf.guard.AccessGuard",
            "init_parameters": {
                "policy_revision": getattr(self.policy, "bundle_revision", None),
                "bundle": str(bundle) if bundle else None,
                "document_fields": list(fields) if fields else None,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccessGuard:
        """Load the guard :meth:`to_dict` wrote. With a bundle, the embedded Rego engine enforces it, and a bundle
        whose revision differs from the exported one is refused; without one the guard lets nothing through."""
        params = dict(data.get("init_parameters") or {})
        bundle, revision = params.get("bundle"), params.get("policy_revision")
        if not bundle:
            return cls(None)  # fails closed: no policy, no documents
        from pathlib import Path

        from ragconf.errors import PolicyConfigError
        from ragconf.policy.engine import load_engine
        from ragconf.policy.service import DEFAULT_DOCUMENT_FIELDS, PolicyService

        if not Path(bundle).is_dir():
            raise PolicyConfigError(f"access guard: policy bundle '{bundle}' does not exist")
        fields = tuple(params.get("document_fields") or DEFAULT_DOCUMENT_FIELDS)
        policy = PolicyService(load_engine({"engine": "embedded", "bundle": bundle}), None, bundle, fields)
        if revision and policy.bundle_revision != revision:
            raise PolicyConfigError(
                f"access guard: policy bundle '{bundle}' is at revision {policy.bundle_revision[:12]}, the pipeline "
                f"was exported with {str(revision)[:12]}; export it again"
            )
        return cls(policy)
