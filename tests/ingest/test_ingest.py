"""Ingestion: every source format, access mapping, chunking, and incremental / idempotent / crash-safe sync
into the real store, with a real (deterministic, hashing) embedder."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from ragconf.errors import IngestError
from ragconf.ingest import chunk_text, ingest, iter_source, load_qrels, load_queries
from ragconf.spec.models import CorpusSpec
from ragconf.store import open_store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DIM = 16


def hashing_embed(texts: list[str]) -> np.ndarray:
    """Bag-of-words hashing vectorizer: deterministic, no model needed."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % DIM] += 1.0
    return out


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in Helvetica (hand-written objects, valid xref)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


@pytest.fixture()
def corpus_dir(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "guide.md").write_text(
        "---\ntitle: Guide\nclassification: internal\ngroups: eng, sre\n---\n# Guide\n\n"
        "## Setup\nInstall the agent first.\n\n## Usage\nRun the agent daily.\n"
    )
    (d / "notes.txt").write_text("---\ntenant: acme\n---\nNotes\n\nPlain text notes about the cafeteria menu.\n")
    (d / "sub" / "page.html").write_text(
        "<html><head><title>Page</title><meta name='tenant' content='acme'>"
        "<script>evil()</script></head><body><nav>menu</nav><h1>Heading</h1>"
        "<p>Visible paragraph text.</p></body></html>"
    )
    (d / "sub" / "page.html.meta.yaml").write_text("classification: public\n")
    (d / "report.pdf").write_bytes(pdf_with_info(minimal_pdf("Quarterly revenue grew strongly"), groups="finance"))
    return d


def pdf_with_info(pdf: bytes, **info: str) -> bytes:
    """``pdf`` with custom document-information entries (what PDF tools write as custom properties)."""
    import io

    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(pdf))
    writer.add_metadata({f"/{k}": v for k, v in info.items()})
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def spec(path: Path, **kw: object) -> CorpusSpec:
    data = {
        "name": "t",
        "sources": [{"type": "files", "path": str(path)}],
        "access": {"acl_groups": "groups", "tenant": "tenant", "classification": "classification"},
        "chunking": {"strategy": "markdown", "size": 50, "overlap": 10},
    }
    data.update(kw)
    return CorpusSpec.model_validate(data)


def test_every_format_parsed_with_metadata(corpus_dir: Path) -> None:
    errors: list = []
    docs = {d.doc_id: d for d in iter_source(spec(corpus_dir).sources[0], spec(corpus_dir).access, errors)}
    assert errors == []
    assert set(docs) == {"guide.md", "notes.txt", "sub/page.html", "report.pdf"}
    md = docs["guide.md"]
    assert md.title == "Guide" and md.meta["acl_groups"] == ["eng", "sre"] and md.meta["classification"] == "internal"
    assert "title" not in md.meta and "---" not in md.text
    html = docs["sub/page.html"]
    assert html.title == "Page" and "evil" not in html.text and "menu" not in html.text
    assert "Visible paragraph text." in html.text
    assert html.meta["tenant"] == "acme" and html.meta["classification"] == "public"  # sidecar
    assert "Quarterly revenue grew strongly" in docs["report.pdf"].text
    assert docs["report.pdf"].meta["acl_groups"] == ["finance"]  # PDF document information
    assert docs["notes.txt"].title == "Notes" and docs["notes.txt"].meta["tenant"] == "acme"  # .txt front matter
    assert "---" not in docs["notes.txt"].text


def test_bad_classification_and_corrupt_files_are_reported_not_fatal(corpus_dir: Path) -> None:
    (corpus_dir / "bad.md").write_text("---\nclassification: secret\n---\ntext\n")
    (corpus_dir / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (corpus_dir / "badfm.md").write_text("---\n: [unclosed\n---\ntext\n")
    errors: list = []
    docs = list(iter_source(spec(corpus_dir).sources[0], spec(corpus_dir).access, errors))
    where = {Path(e.where).name: e.reason for e in errors}
    assert "bad.md" in where and "secret" in where["bad.md"] and "restricted" in where["bad.md"]
    assert "broken.pdf" in where and "badfm.md" in where
    assert len(docs) == 4


def test_markdown_chunks_keep_section_path() -> None:
    chunks = chunk_text("# Title\n\nIntro.\n\n## A\nAlpha text.\n\n### A1\nDeep.\n\n## B\nBeta.", "markdown", 50, 0)
    assert [(c.section, c.text) for c in chunks] == [
        ("Title", "Intro."),
        ("Title > A", "Alpha text."),
        ("Title > A > A1", "Deep."),
        ("Title > B", "Beta."),
    ]


def test_recursive_chunking_respects_size_and_overlap() -> None:
    text = "\n\n".join(f"Sentence number {i} is here." for i in range(40))
    chunks = chunk_text(text, "recursive", 20, 5)
    assert all(len(c.text.split()) <= 20 for c in chunks)
    assert len(chunks) > 5
    assert chunks[0].text.split("\n\n")[-1] == chunks[1].text.split("\n\n")[0]  # overlap carried
    assert chunk_text(text, "none")[0].text == text


def test_incremental_sync(corpus_dir: Path, tmp_path: Path) -> None:
    store = open_store({"type": "sqlite", "path": str(tmp_path / "s.sqlite")}, embedding_dim=DIM)
    cs = spec(corpus_dir)
    first = ingest(cs, store, hashing_embed)
    assert (first.added, first.updated, first.deleted, first.unchanged) == (4, 0, 0, 0)
    chunk = store.filter_documents({"field": "meta.doc_id", "operator": "==", "value": "guide.md"})[0]
    assert {
        "doc_id",
        "source",
        "title",
        "position",
        "content_hash",
        "chunk_hash",
        "ingested_at",
        "corpus",
        "acl_groups",
        "classification",
        "section",
    } <= set(chunk.meta)
    again = ingest(cs, store, hashing_embed)
    assert (again.added, again.updated, again.unchanged, again.chunks_written) == (0, 0, 4, 0)
    (corpus_dir / "notes.txt").write_text("---\ntenant: acme\n---\nNotes\n\nThe menu changed.\n")
    (corpus_dir / "report.pdf").unlink()
    shutil.copy(corpus_dir / "guide.md", corpus_dir / "guide-copy.md")
    third = ingest(cs, store, hashing_embed)
    assert (third.added, third.updated, third.deleted, third.duplicates) == (0, 2, 1, 1)
    assert "report.pdf" not in store.doc_hashes("t")
    assert "guide-copy.md" not in store.doc_hashes("t")
    kept = store.filter_documents({"field": "meta.doc_id", "operator": "==", "value": "guide.md"})[0]
    assert kept.meta["duplicate_ids"] == ["guide-copy.md"]
    store.close()


def test_interrupted_ingest_resumes_cleanly(tmp_path: Path) -> None:
    d = tmp_path / "many"
    d.mkdir()
    for i in range(30):
        (d / f"doc{i:02}.txt").write_text(f"Document {i}\n\nContent number {i} about topic {i % 3}.\n")
    store = open_store({"type": "sqlite", "path": str(tmp_path / "s.sqlite")}, embedding_dim=DIM)
    calls = {"n": 0}
    acc = {"defaults": {"tenant": "acme"}}

    def flaky(texts: list[str]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return hashing_embed(texts)

    with pytest.raises(KeyboardInterrupt):
        ingest(
            spec(d, chunking={"strategy": "none", "size": 100, "overlap": 0}, access=acc), store, flaky, batch_docs=5
        )
    assert len(store.doc_hashes("t")) == 10  # two committed batches survived
    rerun = ingest(spec(d, chunking={"strategy": "none", "size": 100, "overlap": 0}, access=acc), store, hashing_embed)
    assert (rerun.added, rerun.unchanged, rerun.deleted) == (20, 10, 0)
    assert store.count_documents() == 30
    store.close()


def test_unreadable_source_path_is_an_error_and_deletes_nothing(tmp_path: Path, corpus_dir: Path) -> None:
    store = open_store({"type": "sqlite", "path": str(tmp_path / "s.sqlite")}, embedding_dim=DIM)
    ingest(spec(corpus_dir), store, hashing_embed)
    with pytest.raises(IngestError, match="does not exist"):
        ingest(spec(tmp_path / "gone"), store, hashing_embed)
    assert len(store.doc_hashes("t")) == 4
    store.close()


def test_beir_fixture_and_loaders(tmp_path: Path) -> None:
    root = FIXTURES / "scifact_mini"
    cs = CorpusSpec.model_validate(
        {
            "name": "sf",
            "sources": [{"type": "beir", "path": str(root)}],
            "access": {"unlabeled": "public"},
            "chunking": {"strategy": "none", "size": 512, "overlap": 0},
        }
    )
    store = open_store({"type": "sqlite", "path": str(tmp_path / "s.sqlite")}, embedding_dim=DIM)
    summary = ingest(cs, store, hashing_embed)
    assert summary.added == 300 and not summary.errors
    qrels = load_qrels(root, "test")
    queries = load_queries(root)
    assert set(qrels) <= set(queries)
    some_doc = next(iter(next(iter(qrels.values()))))
    assert some_doc in store.doc_hashes("sf")  # BEIR _id kept as doc_id
    store.close()


def test_malformed_beir_lines_reported(tmp_path: Path) -> None:
    root = tmp_path / "beir"
    root.mkdir()
    (root / "corpus.jsonl").write_text('{"_id": "1", "text": "ok"}\n{broken\n{"text": "no id"}\n')
    errors: list = []
    cs = CorpusSpec.model_validate(
        {"name": "b", "sources": [{"type": "beir", "path": str(root)}], "access": {"unlabeled": "public"}}
    )
    docs = list(iter_source(cs.sources[0], cs.access, errors))
    assert [d.doc_id for d in docs] == ["1"]
    assert [e.where.rsplit(":", 1)[1] for e in errors] == ["2", "3"]
