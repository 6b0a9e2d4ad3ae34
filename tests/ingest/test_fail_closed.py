"""Fail closed at the data boundary (docs/ingest.md): access metadata of every JSON type, in every format
(.md, .txt front matter, HTML <meta>, PDF document information, sidecars, BEIR metadata), ingested through the
real CLI, retrieved through the real pipeline, store and Rego policy, and compared with oracles written from
the docs (tests/ingest/oracle.py for the schema, tests/policy/test_engine.py::visible for visibility).

No user may receive a document, citation, answer text or trace id they may not see; every rejected or
quarantined document is reported; revocation removes what is gone or no longer valid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragconf.runtime import RagApp
from tests.conftest import run_cli
from tests.ingest.oracle import (
    COMMON,
    USERS,
    expected_access,
    minimal_pdf,
    principal_input,
    write_beir,
    write_corpus,
    write_users,
)
from tests.policy.test_engine import visible


def _overrides(work: Path, *extra: str) -> list[str]:
    return [
        f"identity.users_dir={work / 'users'}",
        f"project.workdir={work / 'state'}",
        "tracking=disabled",
        *extra,
    ]


def _ingest(work: Path, *extra: str, strict: bool = False) -> tuple[int, dict]:
    args = ["ingest", *_overrides(work, *extra), "--json"] + (["--strict"] if strict else [])
    proc = run_cli(*args, cwd=work)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _stored_meta(work: Path, *corpus_args: str) -> dict[str, dict]:
    """doc_id -> chunk metadata of what the store holds (first chunk of each document)."""
    rag = RagApp.from_overrides(_overrides(work, *corpus_args))
    try:
        return {x.meta["doc_id"]: x.meta for x in rag.store.filter_documents()}
    finally:
        rag.close()


def _where_ids(items: list[str]) -> set[str]:
    """Document ids named in `ingest --json` errors / quarantined lines ('<path or file:line>: reason')."""
    out = set()
    for item in items:
        where = item.split(": ", 1)[0]
        out.add(Path(where.rsplit(":", 1)[0] if where.endswith(tuple("0123456789")) else where).name)
    return out


def _check_world(work: Path, docs: dict, corpus_args: list[str], *, unlabeled: str = "quarantine") -> None:
    """Ingest through the CLI, then, for every user, retrieve and ask: compare with the oracles."""
    code, summary = _ingest(work, *corpus_args)
    expected = {d: expected_access(g.raw, unlabeled=unlabeled) for d, g in docs.items()}
    indexed = {d for d, acc in expected.items() if acc is not None}
    # every document the oracle rejects or quarantines is reported (by file or BEIR line), none is indexed
    assert summary["added"] == len(indexed), (summary, sorted(indexed))
    reported = len(summary["errors"]) + len(summary["quarantined"])
    assert reported == len(docs) - len(indexed), summary
    assert code == (1 if summary["errors"] else 0)
    rag = RagApp.from_overrides([*_overrides(work, *corpus_args)])
    try:
        store_ids = {d.meta["doc_id"]: d.meta for d in rag.store.filter_documents()}
        assert set(store_ids) == indexed
        for doc_id in indexed:  # stored exactly as the schema says: never flattened, stringified or dropped
            got = {
                f: store_ids[doc_id][f] for f in ("acl_groups", "tenant", "classification") if f in store_ids[doc_id]
            }
            assert got == expected[doc_id], (doc_id, docs[doc_id].raw)
        for uid in USERS:
            p = principal_input(uid)
            may_see = {d for d in indexed if visible(p, expected[d])}
            found, _, _ = rag.retrieve(COMMON, rag.principal(uid), top_k=200)
            got_ids = {d.meta["doc_id"] for d in found}
            assert got_ids == may_see, (uid, sorted(got_ids ^ may_see))
            answer = rag.ask(f"{COMMON} alpha", uid)
            blob = json.dumps({k: v for k, v in answer.to_dict().items() if k != "question"})
            for doc_id, g in docs.items():
                if doc_id not in may_see:
                    assert g.canary not in blob, (uid, doc_id)
            allowed_chunks = {d.id for d in found}
            for sp in answer.trace:
                for cid in sp["attributes"].get("document_ids") or []:
                    assert cid in allowed_chunks, (uid, sp["name"])
    finally:
        rag.close()


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_files_of_every_format_with_odd_access_metadata(tmp_path_factory: pytest.TempPathFactory, seed: int) -> None:
    work = tmp_path_factory.mktemp("files")
    write_users(work / "users")
    docs = write_corpus(work / "docs", 32, seed)
    _check_world(work, docs, ["corpus=files", f"corpus.path={work / 'docs'}"])


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_beir_rows_with_odd_metadata(tmp_path_factory: pytest.TempPathFactory, seed: int) -> None:
    work = tmp_path_factory.mktemp("beir")
    write_users(work / "users")
    docs = write_beir(work / "beir", 40, seed)
    _check_world(work, docs, ["corpus=beir", f"corpus.path={work / 'beir'}"], unlabeled="public")


# ----- the cases of the issue, verbatim ---------------------------------------------------------------------
VERBATIM = [
    ("acl_groups: []", "indexed-nobody"),
    ('acl_groups: ""', "rejected"),
    ('acl_groups: " , "', "rejected"),
    ("acl_groups: {}", "rejected"),
    ("acl_groups: {g: hr}", "rejected"),
    ('acl_groups: [["hr"]]', "rejected"),
    ("acl_groups: [null]", "rejected"),
    ("acl_groups: 5", "rejected"),
    ("acl_groups: true", "rejected"),
    ("classification: {level: public}", "rejected"),
    ("classification: restricted-hr", "rejected"),
    ("classification: Public", "rejected"),
    ("classification: null", "rejected"),
    ("tenant: {id: acme}", "rejected"),
    ("tenant: 42", "rejected"),
    ('tenant: ""', "rejected"),
    ("tenant: null", "rejected"),
]


@pytest.fixture(scope="module")
def verbatim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("verbatim")
    write_users(work / "users")
    d = work / "docs"
    d.mkdir()
    for i, (line, _) in enumerate(VERBATIM):
        (d / f"v{i:02d}.md").write_text(f"---\n{line}\n---\n# Case {i}\n\n{COMMON} VERBATIM{i:02d} text.\n")
    (d / "plain.txt").write_text(f"Plain\n\n{COMMON} PLAINCANARY without any access metadata.\n")
    code, summary = _ingest(work, "corpus=files", f"corpus.path={d}")
    return work, {"code": code, **summary}


@pytest.mark.parametrize("i", range(len(VERBATIM)), ids=[c for c, _ in VERBATIM])
def test_issue_cases_verbatim(verbatim: tuple[Path, dict], i: int) -> None:
    _, summary = verbatim
    line, outcome = VERBATIM[i]
    name = f"v{i:02d}.md"
    rejected = [e for e in summary["errors"] if f"/{name}: " in e]
    if outcome == "rejected":
        assert len(rejected) == 1, summary["errors"]
        field = line.split(":", 1)[0]
        assert f"'{field}'" in rejected[0] and "expected" in rejected[0]  # names the file, the field, what is valid
    else:
        assert not rejected


def test_empty_acl_list_admits_nobody_and_unlabeled_is_quarantined(verbatim: tuple[Path, dict]) -> None:
    work, summary = verbatim
    assert summary["code"] == 1 and summary["added"] == 1  # only `acl_groups: []`
    assert any("plain.txt" in q for q in summary["quarantined"])
    rag = RagApp.from_overrides(_overrides(work, "corpus=files", f"corpus.path={work / 'docs'}"))
    try:
        assert [d.meta["acl_groups"] for d in rag.store.filter_documents()] == [[]]
        for uid in USERS:
            found, _, _ = rag.retrieve(COMMON, rag.principal(uid), top_k=50)
            assert found == [], uid
    finally:
        rag.close()


# ----- formats ----------------------------------------------------------------------------------------------
def test_each_format_carries_access_metadata_and_sidecars_win(tmp_path: Path) -> None:
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("---\ntenant: acme\nacl_groups: [hr]\n---\n# A\n\nzebrafinch markdown.\n")
    (d / "b.txt").write_text("---\ntitle: Bee\ntenant: acme\nclassification: confidential\n---\nzebrafinch text.\n")
    (d / "c.html").write_text(
        '<html><head><title>C</title><meta name="tenant" content="globex">'
        '<meta name="acl_groups" content="sales, hr"></head><body><p>zebrafinch html.</p></body></html>'
    )
    (d / "d.pdf").write_bytes(minimal_pdf("zebrafinch pdf", {"tenant": "acme", "classification": "restricted"}))
    (d / "e.pdf").write_bytes(minimal_pdf("zebrafinch pdf two", {"tenant": "acme"}))
    (d / "e.pdf.meta.yaml").write_text("tenant: globex\nacl_groups: []\n")  # wins over the PDF's own tenant
    (d / "f.txt").write_text("zebrafinch no metadata, but a sidecar\n")
    (d / "f.txt.meta.json").write_text('{"tenant": "acme", "classification": "public"}')
    code, summary = _ingest(tmp_path, "corpus=files", f"corpus.path={d}")
    assert code == 0 and summary["added"] == 6, summary
    meta = _stored_meta(tmp_path, "corpus=files", f"corpus.path={d}")
    access = {k: {f: v[f] for f in ("tenant", "acl_groups", "classification") if f in v} for k, v in meta.items()}
    assert access == {
        "a.md": {"tenant": "acme", "acl_groups": ["hr"]},
        "b.txt": {"tenant": "acme", "classification": "confidential"},
        "c.html": {"tenant": "globex", "acl_groups": ["hr", "sales"]},
        "d.pdf": {"tenant": "acme", "classification": "restricted"},
        "e.pdf": {"tenant": "globex", "acl_groups": []},
        "f.txt": {"tenant": "acme", "classification": "public"},
    }
    assert meta["b.txt"]["title"] == "Bee"


def test_pdf_xmp_custom_properties_are_read(tmp_path: Path) -> None:
    import io

    from pypdf import PdfReader, PdfWriter
    from pypdf.xmp import XmpInformation

    from ragconf.ingest.sources import _read_pdf

    xmp = (
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:pdfx="http://ns.adobe.com/pdfx/1.3/">'
        "<pdfx:classification>restricted</pdfx:classification><pdfx:acl_groups>hr</pdfx:acl_groups>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )
    from pypdf.generic import ContentStream

    writer = PdfWriter(clone_from=io.BytesIO(minimal_pdf("zebrafinch", {"classification": "public"})))
    stream = ContentStream(None, None)
    stream.set_data(xmp.encode())
    writer.xmp_metadata = XmpInformation(stream)
    path = tmp_path / "x.pdf"
    buf = io.BytesIO()
    writer.write(buf)
    path.write_bytes(buf.getvalue())
    assert PdfReader(str(path)).xmp_metadata is not None
    _, _, meta = _read_pdf(path)
    assert meta["classification"] == "restricted" and meta["acl_groups"] == "hr"  # XMP wins over document info


# ----- revocation -------------------------------------------------------------------------------------------
def test_revocation_first_even_when_other_files_are_broken(tmp_path: Path) -> None:
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    (d / "keep.md").write_text("---\ntenant: acme\n---\nzebrafinch keep.\n")
    (d / "gone.md").write_text("---\ntenant: acme\n---\nzebrafinch gone.\n")
    (d / "flip.md").write_text("---\ntenant: acme\nclassification: public\n---\nzebrafinch flip.\n")
    (d / "strip.md").write_text("---\ntenant: acme\n---\nzebrafinch strip.\n")
    args = ("corpus=files", f"corpus.path={d}")
    code, first = _ingest(tmp_path, *args)
    assert code == 0 and first["added"] == 4
    (d / "gone.md").unlink()  # deleted while another file is broken
    (d / "broken.md").write_bytes(b"---\ntenant: acme\n---\n\xff\xfe not utf-8")
    (d / "flip.md").write_text("---\ntenant: acme\nclassification: restricted-hr\n---\nzebrafinch flip.\n")
    (d / "strip.md").write_text("zebrafinch strip, its access metadata removed.\n")
    code, second = _ingest(tmp_path, *args, strict=True)
    assert code == 1
    assert second["deleted"] == 1 and second["withdrawn"] == ["flip.md", "strip.md"]
    assert any("broken.md" in e and "UTF-8" in e for e in second["errors"])
    assert any("flip.md" in e and "restricted-hr" in e for e in second["errors"])
    assert any("strip.md" in q for q in second["quarantined"])
    rag = RagApp.from_overrides(_overrides(tmp_path, *args))
    try:
        assert set(rag.store.doc_hashes(rag.spec.corpus.name)) == {"keep.md"}
        found, _, _ = rag.retrieve(COMMON, rag.principal("no_tenant"), top_k=50)
        assert {x.meta["doc_id"] for x in found} == set()  # keep.md is acme's; no_tenant sees tenant-less only
        found, _, _ = rag.retrieve(COMMON, rag.principal("all_acme"), top_k=50)
        assert {x.meta["doc_id"] for x in found} == {"keep.md"}
    finally:
        rag.close()
    # fixing the files brings them back; without --strict quarantine alone exits 0
    (d / "flip.md").write_text("---\ntenant: acme\nclassification: internal\n---\nzebrafinch flip.\n")
    (d / "broken.md").unlink()
    code, third = _ingest(tmp_path, *args)
    assert code == 0 and third["added"] == 1 and len(third["quarantined"]) == 1


def test_a_source_root_that_cannot_be_listed_changes_nothing(tmp_path: Path) -> None:
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("---\ntenant: acme\n---\nzebrafinch a.\n")
    code, _ = _ingest(tmp_path, "corpus=files", f"corpus.path={d}")
    assert code == 0
    shutil.move(d, tmp_path / "elsewhere")
    proc = run_cli("ingest", *_overrides(tmp_path, "corpus=files", f"corpus.path={d}"), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr and "nothing was changed" in proc.stderr
    shutil.move(tmp_path / "elsewhere", d)
    code, again = _ingest(tmp_path, "corpus=files", f"corpus.path={d}")
    assert code == 0 and again["unchanged"] == 1 and again["deleted"] == 0


def test_access_defaults_and_mapping_are_validated_at_config_time(tmp_path: Path) -> None:
    bad = [
        ("+corpus.access.defaults={tenant: 42}", "tenant"),
        ("+corpus.access.defaults={acl_groups: [[hr]]}", "acl_groups"),
        ("+corpus.access.defaults={classification: Secret}", "classification"),
        ("+corpus.access.classification_map={Secret: top}", "top"),
    ]
    for override, needle in bad:
        proc = run_cli("validate", "corpus=files", f"corpus.path={tmp_path}", override, cwd=tmp_path)
        assert proc.returncode == 2, (override, proc.stderr)
        assert "Traceback" not in proc.stderr and needle in proc.stderr and "corpus.access" in proc.stderr


def test_classification_map_maps_source_values(tmp_path: Path) -> None:
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("---\ntenant: acme\nclassification: Secret\n---\nzebrafinch a.\n")
    cfg = yaml.safe_dump({"Secret": "restricted"}, default_flow_style=True).strip()
    args = ("corpus=files", f"corpus.path={d}", f"+corpus.access.classification_map={cfg}")
    code, summary = _ingest(tmp_path, *args)
    assert code == 0 and summary["added"] == 1, summary
    assert next(iter(_stored_meta(tmp_path, *args).values()))["classification"] == "restricted"


def test_declared_access_attributes_are_strict_and_reach_the_policy(tmp_path: Path) -> None:
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("---\ntenant: acme\nregion: [eu, us]\n---\nzebrafinch a.\n")
    (d / "b.md").write_text("---\ntenant: acme\nregion: {name: eu}\n---\nzebrafinch b.\n")
    (d / "c.md").write_text("---\ntenant: acme\nregion: 7\n---\nzebrafinch c.\n")
    args = ("corpus=files", f"corpus.path={d}", "+corpus.access.attributes=[region]")
    code, summary = _ingest(tmp_path, *args)
    assert code == 1 and summary["added"] == 1
    assert sorted(_where_ids(summary["errors"])) == ["b.md", "c.md"]
    assert all("'region'" in e for e in summary["errors"])
    rag = RagApp.from_overrides(_overrides(tmp_path, *args))
    try:
        assert rag.store.filter_documents()[0].meta["region"] == ["eu", "us"]  # kept as a list, not flattened
        assert "region" in rag.policy.document_fields
    finally:
        rag.close()


def test_bad_input_corpus_gives_clean_errors_and_no_traceback(tmp_path: Path) -> None:
    """Binary, empty, invalid UTF-8, huge, broken PDF/HTML, a directory named like a file, a symlink loop, and a
    BEIR folder with broken JSON lines, odd ids and duplicates: one clean line each, no traceback."""
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    ok = "---\ntenant: acme\n---\n"
    (d / "good.md").write_text(ok + "zebrafinch good.\n")
    (d / "binary.md").write_bytes(bytes(range(256)) * 4)
    (d / "empty.md").write_bytes(b"")
    (d / "latin1.txt").write_bytes(ok.encode() + "caf\xe9 zebrafinch".encode("latin-1"))
    (d / "huge.txt").write_text(ok + ("zebrafinch " * 20 + "\n\n") * 400)
    (d / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n")
    (d / "zero.pdf").write_bytes(b"")
    (d / "bad.html").write_bytes(b"<html><head><meta name='tenant' content='acme'>\xff\xfe</head></html>")
    (d / "dir.md").mkdir()
    (d / "loop.md").symlink_to(d / "loop.md")
    (d / "badfm.md").write_text("---\ntenant: [unclosed\n---\nzebrafinch\n")
    (d / "listfm.md").write_text("---\n- a\n- b\n---\nzebrafinch\n")
    (d / "side.md").write_text(ok + "zebrafinch side.\n")
    (d / "side.md.meta.yaml").write_text("- not a mapping\n")
    code, summary = _ingest(tmp_path, "corpus=files", f"corpus.path={d}")
    assert code == 1
    assert summary["added"] == 2, summary  # good.md, huge.txt
    bad = {"binary.md", "latin1.txt", "broken.pdf", "zero.pdf", "bad.html", "badfm.md", "listfm.md", "side.md"}
    assert bad <= _where_ids(summary["errors"]), summary["errors"]
    assert any("empty.md" in q for q in summary["quarantined"])
    assert all("Traceback" not in e and "\n" not in e for e in summary["errors"])

    beir = tmp_path / "beir"
    beir.mkdir()
    rows = [
        '{"_id": "1", "text": "zebrafinch one"}',
        "{broken",
        '{"text": "no id"}',
        '{"_id": null, "text": "null id"}',
        '{"_id": {"a": 1}, "text": "object id"}',
        '{"_id": "1", "text": "zebrafinch one"}',
        '{"_id": "2", "text": "zebrafinch", "metadata": {"acl_groups": 5}}',
        '{"_id": "3", "text": "zebrafinch", "metadata": "tenant=acme"}',
        '["a", "list"]',
        '{"_id": "4", "text": ' + "[" * 5000 + "]" * 5000 + "}",
    ]
    rows += ['{"_id": "6", "text": "zebrafinch six"}', '{"_id": "6", "text": "zebrafinch six, other"}']
    (beir / "corpus.jsonl").write_bytes(("\n".join(rows) + "\n").encode() + b'{"_id": "5", "text": "\xff"}\n')
    code, summary = _ingest(tmp_path, "corpus=beir", f"corpus.path={beir}", "project.workdir=beirstate")
    assert code == 1 and summary["added"] == 1 and summary["duplicates"] == 1, summary
    conflicts = [e for e in summary["errors"] if "the id '6' also comes from" in e]
    assert len(conflicts) == 1  # one id, two different rows: neither is indexed
    lines = sorted(int(e.split(": ", 1)[0].rsplit(":", 1)[1]) for e in summary["errors"] if e not in conflicts)
    assert lines == [2, 3, 4, 5, 7, 8, 9, 10, 13], summary["errors"]
    assert any("'acl_groups'" in e and "number 5" in e for e in summary["errors"])


# ----- red-team findings: each of these was a leak, a fail-open or a crash ----------------------------------
HOSTILE = {
    # F1: front matter unclosed, TOML, inside a comment: must not fall back to defaults
    "unclosed.md": "---\ntenant: acme\nacl_groups: [hr]\nzebrafinch\n",
    "toml.md": "+++\ntenant = 'acme'\nacl_groups = ['hr']\n+++\nzebrafinch\n",
    "comment.md": "<!--\n---\ntenant: acme\nacl_groups: [hr]\n---\n-->\nzebrafinch\n",
    # F2: case and spelling variants of access keys
    "case.md": "---\ntenant: acme\nClassification: restricted\nACL_Groups: [hr]\n---\nzebrafinch\n",
    "dash.md": "---\ntenant: acme\nacl-groups: [hr]\n---\nzebrafinch\n",
    "singular.md": "---\ntenant: acme\nacl_group: hr\n---\nzebrafinch\n",
    "typo.md": "---\ntenant: acme\nclasification: restricted\n---\nzebrafinch\n",
    "case.html": '<html><head><meta name="tenant" content="acme"><meta name="Classification" content="restricted">'
    "</head><body><p>zebrafinch</p></body></html>",
    "property.html": '<html><head><meta name="tenant" content="acme"><meta property="acl_groups" content="">'
    "</head><body><p>zebrafinch</p></body></html>",
    # F7: non-string keys; F8: non-finite numbers; F11: duplicate keys
    "intkey.md": "---\ntenant: acme\n1: x\n---\nzebrafinch\n",
    "nan.md": "---\ntenant: acme\nscore: .nan\n---\nzebrafinch\n",
    "dupkey.md": "---\ntenant: acme\nclassification: restricted\nclassification: public\n---\nzebrafinch\n",
}


def test_red_team_hostile_files_are_rejected(tmp_path: Path) -> None:
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    for name, text in HOSTILE.items():
        (d / name).write_text(text)
    (d / "control.md").write_text("---\ntenant: acme\n---\nzebrafinch control\n")
    # F1: front matter after a blank line, a BOM or leading spaces is read, not skipped
    (d / "blank.md").write_text("\n---\ntenant: acme\nacl_groups: [hr]\n---\nzebrafinch\n")
    (d / "bom.md").write_text("\ufeff ---\r\ntenant: acme\r\nacl_groups: [hr]\r\n---\r\nzebrafinch\r\n")
    # F1 with the shipped handbook-style defaults: unparsed metadata must not become `internal`, tenant-less
    args = ("corpus=files", f"corpus.path={d}", "+corpus.access.defaults={classification: internal}")
    code, summary = _ingest(tmp_path, *args)
    assert code == 1 and summary["added"] == 3, summary
    meta = _stored_meta(tmp_path, *args)
    assert meta["blank.md"]["acl_groups"] == meta["bom.md"]["acl_groups"] == ["hr"]
    assert _where_ids(summary["errors"]) == set(HOSTILE), sorted(set(HOSTILE) - _where_ids(summary["errors"]))
    # F13: one line each, the path once
    for e in summary["errors"]:
        where = e.split(": ", 1)[0]
        assert e.count(where) == 1, e


def test_red_team_links_and_sidecars(tmp_path: Path) -> None:
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    (d / "public").mkdir(parents=True)
    (d / "hr").mkdir()
    outside = tmp_path / "outside.md"
    outside.write_text("---\ntenant: acme\nacl_groups: [hr]\nclassification: restricted\n---\nzebrafinch OUTSIDE\n")
    (d / "hr" / "pay.md").write_text("---\ntenant: acme\nacl_groups: [hr]\n---\nzebrafinch PAY\n")
    # F3: a link plus a sidecar would relabel the target
    (d / "public" / "steal.md").symlink_to(outside)
    (d / "public" / "steal.md.meta.yaml").write_text("acl_groups: [eng]\nclassification: public\n")
    (d / "public" / "copy.md").symlink_to(d / "hr" / "pay.md")
    # F4: a sidecar that exists but is not readable must not fall back to the embedded labels
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.md.meta.yaml").write_text("access: {groups: [hr], level: restricted}\n")
    (d / "public" / "a.md").write_text("---\naccess: {tenant: acme}\n---\nzebrafinch SIDEGONE\n")
    (d / "public" / "a.md.meta.yaml").symlink_to(labels / "a.md.meta.yaml")
    # F5: a partial sidecar merges into nested metadata key by key
    (d / "public" / "n.md").write_text(
        "---\naccess: {tenant: acme, groups: [hr], level: restricted}\n---\nzebrafinch\n"
    )
    (d / "public" / "n.md.meta.yaml").write_text("access:\n  tenant: acme\n")
    args = (
        "corpus=files",
        f"corpus.path={d}",
        "corpus.access.tenant=access.tenant",
        "corpus.access.acl_groups=access.groups",
        "corpus.access.classification=access.level",
    )
    code, summary = _ingest(tmp_path, *args)
    assert {"steal.md", "copy.md"} <= _where_ids(summary["errors"]), summary
    meta = _stored_meta(tmp_path, *args)
    assert meta["public/n.md"]["acl_groups"] == ["hr"] and meta["public/n.md"]["classification"] == "restricted"
    assert "public/steal.md" not in meta and "public/copy.md" not in meta
    # the labels disappear: the document is withdrawn, not served with its embedded (weaker) labels
    shutil.move(labels, tmp_path / "labels.gone")
    code, again = _ingest(tmp_path, *args)
    assert code == 1 and "public/a.md" in again["withdrawn"], again


def test_red_team_revocation_survives_a_crashing_file_and_non_string_keys(tmp_path: Path) -> None:
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    (d / "keep.md").write_text("---\ntenant: acme\n---\nzebrafinch keep\n")
    (d / "gone.md").write_text("---\ntenant: acme\n---\nzebrafinch gone\n")
    args = ("corpus=files", f"corpus.path={d}")
    assert _ingest(tmp_path, *args)[0] == 0
    (d / "gone.md").unlink()
    (d / "bad.md").write_text("---\ntenant: acme\nnull: x\n---\nzebrafinch\n")
    (d / "bad.md.meta.yaml").write_text("true: 1\n")
    code, summary = _ingest(tmp_path, *args)
    assert code == 1 and summary["deleted"] == 1, summary


def test_red_team_concurrent_ingest_is_refused(tmp_path: Path) -> None:
    import fcntl
    import os

    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("---\ntenant: acme\n---\nzebrafinch\n")
    args = ("corpus=files", f"corpus.path={d}")
    assert _ingest(tmp_path, *args)[0] == 0
    locks = list((tmp_path / "state").rglob("*.ingest.lock"))
    assert len(locks) == 1
    fd = os.open(locks[0], os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = run_cli("ingest", *_overrides(tmp_path, *args), cwd=tmp_path)
    finally:
        os.close(fd)
    assert proc.returncode == 1 and "another ingest" in proc.stderr and "Traceback" not in proc.stderr


def test_red_team_pdf_beir_attributes_duplicates(tmp_path: Path) -> None:
    from pypdf.generic import ArrayObject, NameObject, NumberObject, TextStringObject

    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    (d / "one").mkdir(parents=True)
    (d / "two").mkdir()
    # F9: PDF values that are not strings are rejected, never stringified
    import io

    from pypdf import PdfReader, PdfWriter

    for name, info in (
        ("arr.pdf", {"/acl_groups": ArrayObject([TextStringObject("hr")]), "/tenant": TextStringObject("acme")}),
        ("num.pdf", {"/tenant": NumberObject(42)}),
    ):
        w = PdfWriter(clone_from=PdfReader(io.BytesIO(minimal_pdf("zebrafinch pdf"))))
        w._info.get_object().update({NameObject(k): v for k, v in info.items()})  # type: ignore[union-attr]
        buf = io.BytesIO()
        w.write(buf)
        (d / "one" / name).write_bytes(buf.getvalue())
    # F10: a declared attribute alone is not access metadata
    (d / "one" / "attr.md").write_text("---\ndepartment: hr\n---\nzebrafinch\n")
    # F12: two sources, one relative path, different documents
    (d / "one" / "readme.md").write_text("---\ntenant: acme\n---\nzebrafinch public readme\n")
    (d / "two" / "readme.md").write_text("---\ntenant: acme\nacl_groups: [hr]\n---\nzebrafinch hr readme\n")
    sources = f"corpus.sources=[{{type: files, path: {d / 'one'}}}, {{type: files, path: {d / 'two'}}}]"
    args = ("corpus=files", f"corpus.path={d}", sources, "+corpus.access.attributes=[department]")
    code, summary = _ingest(tmp_path, *args)
    assert code == 1 and summary["added"] == 1, json.dumps(summary, indent=1)  # arr.pdf: a list of strings
    assert {"num.pdf", "readme.md"} <= _where_ids(summary["errors"]), summary["errors"]
    assert any("attr.md" in q for q in summary["quarantined"])
    # F2/F8/F11 in BEIR: top-level access keys, NaN, duplicate keys, one id with two different rows
    b = tmp_path / "beir"
    b.mkdir()
    (b / "corpus.jsonl").write_text(
        '{"_id": "1", "text": "zebrafinch", "tenant": "acme"}\n'
        '{"_id": "2", "text": "zebrafinch", "metadata": {"tenant": "acme", "score": NaN}}\n'
        '{"_id": "3", "text": "zebrafinch", "metadata": {"classification": "restricted", "classification": "public"}}\n'
        '{"_id": "4", "text": "zebrafinch", "metadata": {"tenant": "acme"}}\n'
        '{"_id": "4", "text": "zebrafinch", "metadata": {"tenant": "acme", "acl_groups": ["hr"]}}\n'
        '{"_id": "5", "text": "zebrafinch five"}\n'
    )
    code, summary = _ingest(tmp_path, "corpus=beir", f"corpus.path={b}")
    assert code == 1 and summary["added"] == 1, summary  # row 5 only
    assert len(summary["errors"]) == 4, summary["errors"]


def _visible_ids(work: Path, args: tuple[str, ...], user: str) -> set[str]:
    rag = RagApp.from_overrides(_overrides(work, *args))
    try:
        found, _, _ = rag.retrieve(COMMON, rag.principal(user), top_k=50)
        return {x.meta["doc_id"] for x in found}
    finally:
        rag.close()


def test_with_defaults_nested_or_late_labels_are_rejected_not_defaulted(tmp_path: Path) -> None:
    """A corpus with access.defaults (as `ragconf init` writes): labels the reader does not take (nested under
    another key, in a second front matter block, a header line after front matter) must reject the document,
    never leave it looking unlabeled so that the defaults apply."""
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    (d / "nested.md").write_text("---\nmeta: {acl_groups: [hr], classification: restricted}\n---\nzebrafinch n.\n")
    (d / "deep.md").write_text("---\nextra: [{info: {tenant: globex}}]\n---\nzebrafinch d.\n")
    (d / "second.md").write_text("---\ntitle: x\n---\n---\nacl_groups: [hr]\n---\nzebrafinch s.\n")
    (d / "header.txt").write_text("---\ntitle: y\n---\nClassification: restricted\nzebrafinch h.\n")
    (d / "plain.md").write_text("---\ntitle: ok\nauthor: {name: kim}\n---\nzebrafinch plain.\n")
    args = ("corpus=files", f"corpus.path={d}", "+corpus.access.defaults={tenant: acme, classification: internal}")
    code, summary = _ingest(tmp_path, *args)
    assert code == 1 and summary["added"] == 1, summary
    assert _where_ids(summary["errors"]) == {"nested.md", "deep.md", "second.md", "header.txt"}
    assert any("nested.md" in e and "meta.acl_groups" in e for e in summary["errors"])
    assert _visible_ids(tmp_path, args, "all_acme") == {"plain.md"}


def test_losing_labels_under_defaults_withdraws_until_labeled_again(tmp_path: Path) -> None:
    """docs/ingest.md: a document that lost its access metadata is withdrawn, not re-indexed under the
    corpus defaults (which would widen who sees it); it stays out until it carries labels again."""
    write_users(tmp_path / "users")
    d = tmp_path / "docs"
    d.mkdir()
    (d / "page.md").write_text("---\ntenant: acme\nacl_groups: [hr]\nclassification: restricted\n---\nzebrafinch p.\n")
    (d / "same.md").write_text("---\ntenant: acme\nclassification: internal\n---\nzebrafinch s.\n")
    (d / "pdfside.pdf").write_bytes(minimal_pdf("zebrafinch pdf body"))
    (d / "pdfside.pdf.meta.yaml").write_text("tenant: acme\nacl_groups: [hr]\n")
    args = ("corpus=files", f"corpus.path={d}", "+corpus.access.defaults={tenant: acme, classification: internal}")
    code, first = _ingest(tmp_path, *args)
    assert code == 0 and first["added"] == 3, first
    assert _visible_ids(tmp_path, args, "eng_acme") == {"same.md"}  # not in hr
    # labels removed: the sidecar deleted, the front matter stripped; same.md keeps values equal to the defaults
    (d / "pdfside.pdf.meta.yaml").unlink()
    (d / "page.md").write_text("zebrafinch p, labels gone.\n")
    (d / "same.md").write_text("zebrafinch s, labels gone too.\n")
    code, second = _ingest(tmp_path, *args, strict=True)
    assert code == 1 and second["withdrawn"] == ["page.md", "pdfside.pdf"], second
    assert second["updated"] == 1  # same.md: its access does not change
    assert sum("lost its access metadata" in e for e in second["errors"]) == 2
    assert _visible_ids(tmp_path, args, "eng_acme") == {"same.md"}
    # still unlabeled on the next runs (even edited): still withdrawn, never served under the defaults
    (d / "page.md").write_text("zebrafinch p, edited, still without labels.\n")
    code, third = _ingest(tmp_path, *args)
    assert third["withdrawn"] == ["page.md", "pdfside.pdf"] and third["added"] == 0, third
    assert _visible_ids(tmp_path, args, "eng_acme") == {"same.md"}
    # labeled again (even with the defaults' values): indexed
    (d / "page.md").write_text("---\ntenant: acme\nclassification: internal\n---\nzebrafinch p relabeled.\n")
    code, fourth = _ingest(tmp_path, *args)
    assert code == 1 and fourth["withdrawn"] == ["pdfside.pdf"], fourth
    assert _visible_ids(tmp_path, args, "eng_acme") == {"same.md", "page.md"}
