"""Zero leakage through HTTP: a generated corpus with access metadata of every JSON type in every format
(tests/ingest/oracle.py), ingested through the real CLI and served by a real `ragconf serve`. For every persona,
/v1/retrieve returns exactly what the oracles (schema from docs/ingest.md, visibility from docs/policies.md) say
they may see, and no answer, citation, stream event or chat completion carries a canary of anything else."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ROOT, run_cli
from tests.ingest.oracle import COMMON, USERS, expected_access, principal_input, write_corpus, write_users
from tests.policy.test_engine import visible
from tests.server.conftest import Server, start, stop

#: The same corpus served from the store's index files and HNSW graph (thresholds at 1 row, never exact search
#: for a filter): written by the ingest process, loaded by the server process.
INDEX_FILES = [
    "+store.index_files.min_rows=1",
    "+store.ann.mode=on",
    "+store.ann.min_rows=1",
    "+store.ann.exact_rows=0",
    "+store.ann.exact_below=0",
]


@pytest.fixture(scope="module", params=["sqlite", "index_files"])
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[tuple[Server, dict]]:
    work = tmp_path_factory.mktemp("http_leak")
    write_users(work / "users")
    shutil.copytree(ROOT / "policies", work / "policies")
    docs = write_corpus(work / "docs", 40, seed=20261125)
    keys = {u: f"hk-{u}-{hashlib.sha256(u.encode()).hexdigest()[:24]}" for u in USERS}
    (work / "keys.yaml").write_text(
        "".join(f"- {{sha256: {hashlib.sha256(k.encode()).hexdigest()}, user: {u}}}\n" for u, k in keys.items())
    )
    overrides = [
        "corpus=files",
        f"corpus.path={work / 'docs'}",
        f"project.workdir={work / 'state'}",
        f"identity.users_dir={work / 'users'}",
        f"policy.bundle={work / 'policies'}",
        f"serve.auth.api_keys_file={work / 'keys.yaml'}",
        "tracking=disabled",
        *(INDEX_FILES if request.param == "index_files" else []),
    ]
    run_cli("ingest", *overrides, cwd=work)  # exit 1: some generated documents are rejected, as they must be
    if request.param == "index_files":
        files = {p.name for p in (work / "state").rglob("*") if p.is_file() and ".idx" in str(p)}
        assert {"meta.json", "bm25.npz", "dense.npy"} <= files and any(f.startswith("hnsw-") for f in files), files
    srv = start(work, keys, overrides)
    try:
        yield srv, docs
    finally:
        stop(srv)


def _may_see(uid: str, docs: dict) -> set[str]:
    p = principal_input(uid)
    out = set()
    for doc_id, g in docs.items():
        acc = expected_access(g.raw)
        if acc is not None and visible(p, acc):
            out.add(doc_id)
    return out


@pytest.mark.parametrize("uid", sorted(USERS))
def test_retrieve_returns_exactly_what_the_oracle_allows(world: tuple[Server, dict], uid: str) -> None:
    srv, docs = world
    r = httpx.post(
        srv.url + "/v1/retrieve", json={"question": COMMON, "top_k": 50}, headers=srv.headers(uid), timeout=60
    )
    assert r.status_code == 200, r.text
    got = {d["doc_id"] for d in r.json()["documents"]}
    assert got == _may_see(uid, docs)


@pytest.mark.parametrize("uid", sorted(USERS))
def test_answers_streams_and_chat_carry_no_foreign_canary(world: tuple[Server, dict], uid: str) -> None:
    srv, docs = world
    forbidden = [g.canary for d, g in docs.items() if d not in _may_see(uid, docs)]
    assert forbidden  # not vacuous: every persona is denied something in this corpus
    h = srv.headers(uid)
    bodies = []
    statuses = []
    r = httpx.post(srv.url + "/v1/ask", json={"question": f"{COMMON} alpha"}, headers=h, timeout=60)
    bodies.append(r.text)
    statuses.append(r.status_code)
    with httpx.stream(
        "POST", srv.url + "/v1/ask", json={"question": f"{COMMON} kilo", "stream": True}, headers=h, timeout=60
    ) as s:
        bodies.append("".join(s.iter_text()))
        statuses.append(s.status_code)
    chat = {"model": "ragconf", "messages": [{"role": "user", "content": f"{COMMON} bravo delta"}]}
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat, headers=h, timeout=60)
    bodies.append(r.text)
    statuses.append(r.status_code)
    # answered, or refused by the routing policy (403 with its reason): never an error that hides nothing
    assert all(code in (200, 403) for code in statuses), (uid, statuses, bodies)
    assert all('"refused":true' in b for code, b in zip(statuses, bodies, strict=True) if code == 403)
    for canary in forbidden:
        for body in bodies:
            assert canary not in body, (uid, canary)
    asked = json.loads(bodies[0]) if bodies[0].startswith("{") else {}
    for d in asked.get("documents", []):
        assert d["doc_id"] in _may_see(uid, docs)


def test_the_corpus_exercises_rejection_and_every_format(world: tuple[Server, dict]) -> None:
    _, docs = world
    rejected = [d for d, g in docs.items() if expected_access(g.raw) is None]
    assert rejected and len(rejected) < len(docs)
    assert {g.fmt for g in docs.values()} == {"md", "txt", "html", "pdf"}
