"""`tune --adapter` learns only from what the tuning user may see: every passage the tuner reads from the store
(candidates and relevant chunks) passes that user's access, checked against the policy oracle written from
docs/policies.md; an authorised user's tuning does read the restricted documents (the check is not vacuous).
Real store, real policy engine, real embedder; the store's read methods are observed, not replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.policy.test_engine import visible

MINI = ROOT / "tests" / "fixtures" / "scifact_mini"
USERS = {
    "outsider": {"groups": ["staff"], "tenant": "acme", "clearance": "internal"},
    "insider": {"groups": ["secret-team"], "tenant": "acme", "clearance": "internal"},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A copy of the mini SciFact set where every third document (some relevant to test questions) is
    restricted to the group secret-team, and a users dir with a member and a non-member."""
    work = tmp_path_factory.mktemp("tune_restricted")
    data = work / "data"
    shutil.copytree(MINI, data)
    rows = [json.loads(line) for line in (MINI / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    restricted = set()
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["metadata"] = {"acl_groups": ["secret-team"]}
            restricted.add(str(row["_id"]))
    (data / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    users = work / "users"
    users.mkdir()
    for uid, entry in USERS.items():
        (users / f"{uid}.yaml").write_text(json.dumps(entry), encoding="utf-8")
    return work, restricted


def _tune_as(work: Path, user: str) -> tuple[list[Any], Any]:
    from ragconf.service import RagService
    from ragconf.tune import tune_adapter

    overrides = [
        "corpus=beir",
        f"corpus.path={work / 'data'}",
        "eval=beir",
        f"eval.path={work / 'data'}",
        "pipeline=hybrid_fast",
        f"identity.users_dir={work / 'users'}",
        f"project.workdir={work / 'state'}",
        "tracking=disabled",
    ]
    seen: list[Any] = []
    with RagService.from_overrides(overrides) as svc:
        svc.ingest()
        store = svc.rag.store
        for name in ("bm25_retrieval", "embedding_retrieval", "filter_documents"):
            real = getattr(store, name)

            def observed(*a: Any, _real: Any = real, **k: Any) -> Any:
                out = _real(*a, **k)
                seen.extend(out)
                return out

            setattr(store, name, observed)
        result = tune_adapter(svc, split="test", user=user, output=work / f"tuned-{user}")
    return seen, result


def test_the_adapter_reads_only_what_the_tuning_user_may_see(world: tuple[Path, set[str]]) -> None:
    work, restricted = world
    seen, result = _tune_as(work, "outsider")
    principal = {"id": "outsider", **USERS["outsider"]}
    assert seen and result.queries >= 10
    leaked = {d.meta.get("doc_id") for d in seen if not visible(principal, d.meta)}
    assert not leaked
    assert not {d.meta.get("doc_id") for d in seen} & restricted

    seen_in, _ = _tune_as(work, "insider")  # a member's tuning reads them: the restriction was in play
    assert {d.meta.get("doc_id") for d in seen_in} & restricted
