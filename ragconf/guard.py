"""The access guard: a Haystack component ragconf appends to every retrieval stage.

It asks the access policy which of the retrieved documents the principal may see, so nothing the policy
denies can reach a prompt, an answer, a citation or a log (defence in depth behind the pushed-down filter).
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
        revision = getattr(self.policy, "bundle_revision", None)
        return {"type": "ragconf.guard.AccessGuard", "init_parameters": {"policy_revision": revision}}
