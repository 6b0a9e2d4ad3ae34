"""Indexing pipelines in YAML (corpus.indexing): the default reproduces the old ingest exactly; Haystack's
cleaner/splitter/converters by alias and class path; the PII and language enrichers; the writer's access re-check
against hostile enrichers (only ever more restrictive); errors naming the dotted key, the file and valid options."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from haystack import Document, component

from ragconf.errors import CompileError, RegistryError
from ragconf.ingest import ingest, iter_source
from ragconf.ingest.chunking import chunk_text
from ragconf.ingest.pipeline import INDEXING_COMPONENTS, build_indexing
from ragconf.registry import ComponentEntry
from ragconf.spec.models import CorpusSpec
from ragconf.store import open_store
from tests.conftest import ROOT, run_cli
from tests.ingest.oracle import minimal_pdf
from tests.ingest.test_ingest import DIM, hashing_embed

FIXTURES = ROOT / "tests" / "fixtures"
HANDBOOK = {
    "name": "handbook",
    "sources": [{"type": "files", "path": str(ROOT / "examples" / "handbook" / "docs")}],
    "access": {"defaults": {"classification": "internal"}},
    "chunking": {"strategy": "markdown", "size": 120, "overlap": 20},
}
SCIFACT_MINI = {
    "name": "scifact_mini",
    "sources": [{"type": "beir", "path": str(FIXTURES / "scifact_mini")}],
    "access": {"unlabeled": "public"},
    "chunking": {"strategy": "none", "size": 512, "overlap": 0},
}


def _digest(doc: Any) -> str:
    meta = {k: v for k, v in doc.meta.items() if k != "ingested_at"}
    blob = json.dumps({"c": doc.content, "m": meta, "e": [float(x) for x in doc.embedding]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _ingest(data: dict[str, Any], path: Path, embed: Any = hashing_embed) -> tuple[Any, dict[str, Any]]:
    store = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    summary = ingest(CorpusSpec.model_validate(data), store, embed)
    chunks = {d.id: d for d in store.filter_documents(None)}
    store.close()
    return summary, chunks


def legacy_chunks(data: dict[str, Any]) -> dict[str, str]:
    """The ingest before indexing pipelines existed (sync._chunks + its embedding text), frozen here."""
    spec = CorpusSpec.model_validate(data)
    out: dict[str, str] = {}
    errors: list = []
    for doc in (d for s in spec.sources for d in iter_source(s, spec.access, errors)):
        ch = spec.chunking
        pieces = chunk_text(doc.text, ch.strategy, ch.size, ch.overlap)
        for pos, piece in enumerate(pieces):
            chunk_hash = hashlib.sha256(piece.text.encode()).hexdigest()
            cid = hashlib.sha256(f"{spec.name}\x00{doc.doc_id}\x00{pos}\x00{chunk_hash}".encode()).hexdigest()
            meta = {
                **doc.meta,
                "doc_id": doc.doc_id,
                "source": doc.source,
                "title": doc.title,
                "position": pos,
                "chunks_total": len(pieces),
                "content_hash": doc.content_hash,
                "chunk_hash": chunk_hash,
                "corpus": spec.name,
                "format": doc.format,
            }
            if piece.section:
                meta["section"] = piece.section
            text = (f"{doc.title}\n" if doc.title else "") + piece.text
            vec = hashing_embed([text])[0]
            norm = float(np.linalg.norm(vec))
            vec = vec / norm if norm > 0 else vec  # what the store keeps
            out[cid] = _digest(Document(id=cid, content=piece.text, meta=meta, embedding=[float(x) for x in vec]))
    assert not errors
    return out


def test_default_pipeline_reproduces_the_old_ingest_exactly(tmp_path: Path) -> None:
    _, hb = _ingest(HANDBOOK, tmp_path / "hb.sqlite")
    assert {cid: _digest(d) for cid, d in hb.items()} == legacy_chunks(HANDBOOK)
    # scifact_mini against chunk ids / metadata / embedding inputs recorded with the code before this change
    golden = json.loads((FIXTURES / "scifact_mini_chunks_golden.json").read_text())
    _, sf = _ingest(SCIFACT_MINI, tmp_path / "sf.sqlite")
    assert {cid: _digest(d) for cid, d in sf.items()} == golden
    assert len(golden) == 300


@pytest.fixture()
def labeled(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "secret.md").write_text(
        "---\nclassification: confidential\nacl_groups: [hr, finance]\ntenant: acme\n---\n# Salaries\n\n"
        "Salary bands are reviewed every spring by the committee, and they are not shared with the teams.\n"
    )
    (d / "open.md").write_text(
        "---\nclassification: public\ntenant: acme\n---\n# Lunch\n\n"
        "The cafeteria opens at noon, and it is the best in the town.\n"
    )
    return d


def _spec(path: Path, indexing: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
    data = {
        "name": "t",
        "sources": [{"type": "files", "path": str(path)}],
        "chunking": {"strategy": "markdown", "size": 50, "overlap": 10},
        "indexing": indexing,
    }
    data.update(kw)
    return data


def _linear(*components: tuple[str, str, dict[str, Any]], inputs: str = "documents") -> dict[str, Any]:
    names = [n for n, _, _ in components]
    return {
        "components": {n: {"type": t, "params": p} for n, t, p in components},
        "connections": [
            {"sender": f"{a}.documents", "receiver": f"{b}.documents"} for a, b in zip(names, names[1:], strict=False)
        ],
        "inputs": {inputs: [f"{names[0]}.documents"]},
        "output": f"{names[-1]}.documents",
    }


def test_haystack_cleaner_and_splitter_by_alias_and_class_path(labeled: Path, tmp_path: Path) -> None:
    (labeled / "long.txt").write_text(
        "---\ntenant: acme\nclassification: internal\n---\nHandbook\n\n"
        + " ".join(f"word{i}" for i in range(95))
        + "\n\n\n\n   spaced    out   text  \n"
    )
    indexing = _linear(
        ("clean", "haystack.components.preprocessors.DocumentCleaner", {}),
        ("split", "document_splitter", {"split_by": "word", "split_length": 40, "split_overlap": 5}),
        ("lang", "language_tagger", {}),
    )
    summary, chunks = _ingest(_spec(labeled, indexing), tmp_path / "s.sqlite")
    assert (summary.added, summary.errors) == (3, [])
    by_doc: dict[str, list[Any]] = {}
    for c in chunks.values():
        by_doc.setdefault(c.meta["doc_id"], []).append(c)
    long = sorted(by_doc["long.txt"], key=lambda c: c.meta["position"])
    assert len(long) == 3 and [c.meta["position"] for c in long] == [0, 1, 2]
    assert all(c.meta["chunks_total"] == 3 and len(c.content.split()) <= 40 for c in long)
    assert "    " not in long[-1].content  # the cleaner ran
    assert not any(k.startswith("_") for c in long for k in c.meta)  # Haystack's private keys dropped
    secret = by_doc["secret.md"][0].meta
    assert (secret["classification"], secret["acl_groups"], secret["tenant"]) == (
        "confidential",
        ["finance", "hr"],
        "acme",
    )
    assert secret["language"] == "en" and len(secret["chunk_hash"]) == 64
    assert all(c.embedding is not None and len(c.embedding) == DIM for c in chunks.values())  # writer embedded


def test_pdf_bytes_through_a_haystack_converter_keep_ragconf_labels(tmp_path: Path) -> None:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "r.pdf").write_bytes(minimal_pdf("Quarterly revenue grew strongly", {"classification": "restricted"}))
    (d / "n.md").write_text("---\ntenant: acme\n---\n# Notes\n\nPlain notes.\n")
    indexing = {
        "components": {
            "pdf": {"type": "pdf_converter"},
            "join": {"type": "joiner"},
            "chunk": {"type": "ragconf_chunker"},
            "embed": {"type": "ragconf_embedder"},
        },
        "connections": [
            {"sender": "pdf.documents", "receiver": "join.documents"},
            {"sender": "join.documents", "receiver": "chunk.documents"},
            {"sender": "chunk.documents", "receiver": "embed.documents"},
        ],
        "inputs": {"pdf_sources": ["pdf.sources"], "documents": ["join.documents"]},
        "output": "embed.documents",
    }
    summary, chunks = _ingest(_spec(d, indexing), tmp_path / "s.sqlite")
    assert summary.errors == [] and summary.added == 2
    pdf = next(c for c in chunks.values() if c.meta["doc_id"] == "r.pdf")
    assert "Quarterly revenue" in pdf.content and pdf.meta["classification"] == "restricted"
    assert pdf.meta["format"] == "pdf"

    # bytes that changed after the access metadata was read are refused
    spec = CorpusSpec.model_validate(_spec(d, indexing))
    pipe = build_indexing(spec)
    docs = list(iter_source(spec.sources[0], spec.access, []))
    (d / "r.pdf").write_bytes(minimal_pdf("Now public text", {"classification": "public"}))
    produced, failed = pipe.run(docs)
    assert "changed while it was being ingested" in failed["r.pdf"] and "n.md" in produced


@component
class Hostile:
    """An enricher that rewrites access fields (what the writer must refuse) or tightens them (allowed)."""

    def __init__(self, mode: str = "lower") -> None:
        self.mode = mode

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        out = []
        for doc in documents:
            meta = dict(doc.meta)
            if meta.get("doc_id") == "secret.md" or self.mode == "raise":
                if self.mode == "lower":
                    meta["classification"] = "public"
                elif self.mode == "drop_groups":
                    meta.pop("acl_groups")
                elif self.mode == "widen":
                    meta["acl_groups"] = ["hr", "finance", "everyone"]
                elif self.mode == "tenant":
                    meta["tenant"] = "globex"
                elif self.mode == "mistyped":
                    meta["classification"] = "Secret"
                elif self.mode == "steal":  # attribute the chunk to a public document of the batch
                    meta.update(doc_id="open.md", classification="public", acl_groups=None)
                    meta.pop("acl_groups")
                elif self.mode == "raise":
                    meta["classification"] = "restricted"
                    if "acl_groups" in meta:
                        meta["acl_groups"] = ["hr"]
            out.append(Document(content=doc.content, meta=meta))
        return {"documents": out}


@pytest.fixture()
def hostile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "ragconf.ingest.pipeline.INDEXING_COMPONENTS",
        [*INDEXING_COMPONENTS, ComponentEntry("hostile", f"{__name__}:Hostile")],
    )


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("lower", "lowers classification from 'confidential' to 'public'"),
        ("drop_groups", "lost the access field 'acl_groups'"),
        ("widen", "widens acl_groups"),
        ("tenant", "changes the access field 'tenant'"),
        ("mistyped", "'Secret'"),
        ("steal", "claims to belong to the document the string 'open.md'"),
    ],
)
def test_hostile_enricher_is_refused_and_the_old_version_withdrawn(
    hostile: None, labeled: Path, tmp_path: Path, mode: str, reason: str
) -> None:
    path = tmp_path / "s.sqlite"
    first, _ = _ingest(_spec(labeled, None), path)  # the default pipeline indexes both
    assert first.added == 2
    indexing = _linear(("evil", "hostile", {"mode": mode}), ("chunk", "ragconf_chunker", {}))
    summary, chunks = _ingest(_spec(labeled, indexing), path)
    assert [e.doc_id for e in summary.errors] == ["secret.md"]
    assert reason in summary.errors[0].reason
    assert summary.withdrawn == ["secret.md"]
    assert {c.meta["doc_id"] for c in chunks.values()} == {"open.md"}  # never a less restricted secret chunk
    assert all(c.meta["classification"] == "public" and "Salary" not in c.content for c in chunks.values())


def test_enricher_may_tighten(hostile: None, labeled: Path, tmp_path: Path) -> None:
    indexing = _linear(("tight", "hostile", {"mode": "raise"}), ("chunk", "ragconf_chunker", {}))
    summary, chunks = _ingest(_spec(labeled, indexing), tmp_path / "s.sqlite")
    assert summary.errors == []
    meta = {c.meta["doc_id"]: c.meta for c in chunks.values()}
    assert meta["secret.md"]["classification"] == "restricted" and meta["secret.md"]["acl_groups"] == ["hr"]
    assert meta["open.md"]["classification"] == "restricted" and "acl_groups" not in meta["open.md"]


def test_pii_enricher_raises_classification_by_rule(tmp_path: Path) -> None:
    pytest.importorskip("presidio_analyzer")
    d = tmp_path / "docs"
    d.mkdir()
    (d / "card.md").write_text(
        "---\nclassification: internal\ntenant: acme\n---\n# Refund\n\nRefund to card 4111 1111 1111 1111 today.\n"
    )
    (d / "mails.md").write_text(
        "---\nclassification: public\n---\n# Contacts\n\nWrite to anna@example.com or bob@example.com.\n"
    )
    (d / "plain.md").write_text("---\nclassification: confidential\n---\n# Plan\n\nThe roadmap is on the wiki.\n")
    rules = [
        {"entities": ["US_SSN", "CREDIT_CARD"], "min_score": 0.6, "classification": "restricted"},
        {"entities": ["EMAIL_ADDRESS"], "min_count": 3, "classification": "confidential"},
        {"entities": ["EMAIL_ADDRESS"], "min_count": 2, "classification": "internal"},
    ]
    indexing = _linear(("pii", "pii_classifier", {"rules": rules}), ("chunk", "ragconf_chunker", {}))
    summary, chunks = _ingest(_spec(d, indexing), tmp_path / "s.sqlite")
    assert summary.errors == []
    meta = {c.meta["doc_id"]: c.meta for c in chunks.values()}
    assert meta["card.md"]["classification"] == "restricted" and "CREDIT_CARD" in meta["card.md"]["pii_entities"]
    assert meta["mails.md"]["classification"] == "internal"  # two e-mails: the 2-rule, not the 3-rule
    assert meta["mails.md"]["pii_entities"] == ["EMAIL_ADDRESS"]
    assert meta["plain.md"]["classification"] == "confidential"  # nothing found: unchanged, never lowered
    assert "4111" not in json.dumps(meta)  # only entity types are recorded


def test_changing_the_pipeline_reindexes_unchanged_documents(labeled: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    _ingest(_spec(labeled, None), path)
    indexing = _linear(("lang", "language_tagger", {}), ("chunk", "ragconf_chunker", {}))
    summary, chunks = _ingest(_spec(labeled, indexing), path)
    assert (summary.updated, summary.unchanged) == (2, 0)
    assert all(c.meta["language"] == "en" for c in chunks.values())
    again, _ = _ingest(_spec(labeled, indexing), path)
    assert (again.updated, again.unchanged) == (0, 2)


def test_embedder_failure_stops_the_run_and_withdraws_nothing(labeled: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    _ingest(_spec(labeled, None), path)
    (labeled / "open.md").write_text("---\nclassification: public\n---\n# Lunch\n\nNow at one.\n")

    def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("model file missing")

    with pytest.raises(RuntimeError, match="model file missing"):
        _ingest(_spec(labeled, None), path, broken)
    store = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    assert set(store.doc_hashes("t")) == {"open.md", "secret.md"}
    store.close()


@pytest.mark.parametrize(
    ("indexing", "key", "words"),
    [
        (
            _linear(("chunk", "ragconf_chunkr", {})),
            "corpus.indexing.components.chunk.type",
            ["did you mean 'ragconf_chunker'", "document_splitter"],
        ),
        (
            _linear(("split", "document_splitter", {"split_lenght": 5})),
            "corpus.indexing.components.split.params.split_lenght",
            ["split_length"],
        ),
        (
            _linear(("chunk", "ragconf_chunker", {"strategy": "sentences"})),
            "corpus.indexing.components.chunk.params.strategy",
            ["'markdown', 'recursive' or 'none'"],
        ),
        (
            _linear(("chunk", "ragconf_chunker", {}), inputs="pdf_files"),
            "corpus.indexing.inputs.pdf_files",
            ["pdf_sources"],
        ),
        (
            _linear(("w", "haystack.components.writers.DocumentWriter", {})),
            "corpus.indexing.components.w.type",
            ["the writer is ragconf's"],
        ),
        (
            _linear(("pii", "pii_classifier", {"rules": [{"entities": ["US_SSN"], "classification": "secret"}]})),
            "corpus.indexing.components.pii",
            ["rules[0].classification", "restricted"],
        ),
    ],
)
def test_config_mistakes_name_the_key_and_valid_options(
    labeled: Path, indexing: dict[str, Any], key: str, words: list[str]
) -> None:
    spec = CorpusSpec.model_validate(_spec(labeled, indexing))
    with pytest.raises((CompileError, RegistryError)) as info:
        build_indexing(spec, source_of=lambda k: "team/corpus/kb.yaml")
    text = str(info.value)
    assert f"config key '{key}'" in text and "team/corpus/kb.yaml" in text
    for w in words:
        assert w in text


def test_cli_error_names_the_corpus_file_and_changes_nothing(labeled: Path, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "corpus").mkdir(parents=True)
    builtin = (ROOT / "configs" / "config.yaml").read_text()
    (conf / "config.yaml").write_text(builtin.replace("corpus: handbook", "corpus: kb"))
    data = _spec(labeled, _linear(("clean", "document_cleaner", {"remove_empty_line": True})))
    data["access"] = {"defaults": {"classification": "internal"}}
    (conf / "corpus" / "kb.yaml").write_text(json.dumps(data))
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli("ingest", "tracking=disabled", "--config-dir", str(conf), cwd=work)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "corpus.indexing.components.clean.params.remove_empty_line" in out
    assert str(conf / "corpus" / "kb.yaml") in out and "remove_empty_lines" in out
    assert "Traceback" not in out


def test_language_tagger_on_a_few_languages() -> None:
    from ragconf.components.enrichers import detect_language

    samples = {
        "en": "The server is restarted every night and the data are copied to the backup if it is not too late.",
        "de": "Der Server wird jeden Abend neu gestartet, und die Daten werden auf das Backup kopiert.",
        "fr": "Le serveur est redémarré chaque soir et les données sont copiées sur la sauvegarde avec le script.",
        "es": "El servidor se reinicia cada noche y los datos se copian en la copia de seguridad para el equipo.",
        "nl": "De server wordt elke avond opnieuw gestart en de gegevens worden naar de back-up gekopieerd.",
    }
    assert {lang: detect_language(text)[0] for lang, text in samples.items()} == {k: k for k in samples}
    assert detect_language("4111 1111 1111 1111")[0] == "und"
    assert detect_language(samples["de"], ["en", "fr"])[0] in ("und", "en", "fr")


def test_shipped_files_pii_config_builds(labeled: Path) -> None:
    from ragconf.spec.loader import load_config

    loaded = load_config(None, ["corpus=files_pii", f"corpus.path={labeled}"])
    pipe = build_indexing(loaded.spec.corpus, source_of=loaded.source_of, warm_up=False)
    assert pipe.declared and pipe.routes["pdf"] == ("pdf_sources", "sources")
    assert pipe.routes["markdown"] == ("documents", "documents") and pipe.fingerprint
