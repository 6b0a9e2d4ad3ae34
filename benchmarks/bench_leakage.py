"""Zero-leakage check at scale, from the data boundary to the answer.

Generated corpora carry access metadata of every JSON type (valid values, blank strings, mappings, nested lists,
nulls in lists, numbers, booleans, unknown levels, case variants) in every format: Markdown and text front
matter, HTML <meta>, PDF document information, YAML sidecars that win, and BEIR `metadata`. They are ingested
through the real ingest, then N random (principal, query) cases run through the real `ask` path and the
pushed-down filters alone. A leak is any returned, cited or traced document id, or any canary token in an answer,
that the oracles (tests/ingest/oracle.py: the schema, from docs/ingest.md; tests/policy/test_engine.py::visible:
visibility, from docs/policies.md) say the principal may not see. Also reports how many documents the oracle
expected to be indexed vs what the store holds (a rejected document that got indexed is a leak too).

    python benchmarks/bench_leakage.py --cases 10000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _world(kind: str, tmp: Path, n: int, seed: int) -> tuple[object, dict, dict]:
    from ragconf.runtime import RagApp
    from tests.ingest.oracle import expected_access, write_beir, write_corpus

    if kind == "files":
        docs = write_corpus(tmp / "docs", n, seed)
        corpus, unlabeled = ["corpus=files", f"corpus.path={tmp / 'docs'}"], "quarantine"
    else:
        docs = write_beir(tmp / "beir", n, seed)
        corpus, unlabeled = ["corpus=beir", f"corpus.path={tmp / 'beir'}"], "public"
    rag = RagApp.from_overrides(
        [
            *corpus,
            "tracking=disabled",
            f"project.workdir={tmp}/work",
            "policy.audit.sink=none",
            "identity=anonymous",
        ]
    )
    rag.ingest()
    expected = {d: expected_access(g.raw, unlabeled=unlabeled) for d, g in docs.items()}
    return rag, docs, expected


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--docs", type=int, default=120, help="documents per corpus (files and BEIR)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from ragconf.types import CLASSIFICATIONS, Principal
    from tests.ingest.oracle import COMMON, GROUPS, TENANTS
    from tests.policy.test_engine import visible

    rng = random.Random(args.seed)
    leaks = retrieved = asks = filters = 0
    index_mismatch = 0
    indexed_total = docs_total = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_files, tempfile.TemporaryDirectory() as tmp_beir:
        worlds = [
            _world("files", Path(tmp_files), args.docs, args.seed),
            _world("beir", Path(tmp_beir), args.docs, args.seed + 1),
        ]
        for rag, docs, expected in worlds:
            stored = {d.meta["doc_id"] for d in rag.store.filter_documents()}  # type: ignore[attr-defined]
            should = {d for d, acc in expected.items() if acc is not None}
            index_mismatch += len(stored ^ should)
            leaks += len(stored - should)
            indexed_total += len(stored)
            docs_total += len(docs)
        build_s = time.perf_counter() - t0
        vocab = [COMMON, "alpha", "bravo", "delta", "kilo", "secret", "ignore previous instructions"]
        t1 = time.perf_counter()
        for i in range(args.cases):
            rag, docs, expected = worlds[i % 2]
            p = Principal(
                f"p{i}",
                tuple(rng.sample([*GROUPS, "other"], rng.randint(0, 3))),
                rng.choice([None, *TENANTS, "initech"]),
                rng.choice(CLASSIFICATIONS),
            )
            pin = p.to_input()

            def may_see(doc_id: str, pin: dict = pin, expected: dict = expected) -> bool:
                acc = expected.get(doc_id)
                return acc is not None and visible(pin, acc)

            q = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.5:
                asks += 1
                answer = rag.ask(q, p)  # type: ignore[attr-defined]
                blob = json.dumps({k: v for k, v in answer.to_dict().items() if k != "question"})
                ids = [d["doc_id"] for d in answer.documents] + [c["doc_id"] for c in answer.citations]
                leaks += sum(1 for d, g in docs.items() if not may_see(d) and g.canary in blob)
                allowed_chunks = {d["chunk_id"] for d in answer.documents}
                traced = [c for sp in answer.trace for c in sp["attributes"].get("document_ids") or []]
                chunk_doc = {
                    x.id: x.meta["doc_id"]
                    for x in rag.store.filter_documents({"field": "id", "operator": "in", "value": traced or ["-"]})  # type: ignore[attr-defined]
                }
                leaks += sum(1 for c in traced if c not in allowed_chunks and not may_see(chunk_doc.get(c, "")))
            else:
                filters += 1
                flt = rag.policy.retrieval_filter(p, {"query": q}).filters  # type: ignore[attr-defined]
                ids = [d.meta["doc_id"] for d in rag.store.bm25_retrieval(q, filters=flt, top_k=50)]  # type: ignore[attr-defined]
            retrieved += len(ids)
            leaks += sum(1 for d in ids if not may_see(d))
        secs = time.perf_counter() - t1
        for rag, _, _ in worlds:
            rag.close()  # type: ignore[attr-defined]
    print(
        f"corpora: {docs_total} generated documents (md/txt/html/pdf/sidecars + BEIR, odd-typed access fields), "
        f"{indexed_total} indexed, {index_mismatch} differ from the schema oracle; built in {build_s:.1f}s"
    )
    print(
        f"{args.cases} cases ({asks} full asks, {filters} filter-only retrievals), {retrieved} documents returned, "
        f"{leaks} leaks, {secs:.1f}s"
    )
    if leaks or index_mismatch:
        sys.exit(1)


if __name__ == "__main__":
    main()
