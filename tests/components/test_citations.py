"""Citation marker parsing."""

from __future__ import annotations

from haystack import Document

from ragconf.components.citations import citation_numbers, extract_citations, strip_invalid_citations

DOCS = [
    Document(id="c1", content="a", meta={"doc_id": "d1", "source": "a.md", "title": "A"}, score=2.0),
    Document(id="c2", content="b", meta={"doc_id": "d2", "source": "b.md"}, score=1.0),
    Document(id="c3", content="c", meta={}),
]


def test_numbers_forms() -> None:
    assert citation_numbers("x [1]. y [2, 3] z [1-2] [4–5] [abc] [10;1] [ 6 ]") == [1, 2, 3, 4, 5, 10, 6]
    assert citation_numbers("no markers (1) here") == []
    assert citation_numbers("") == []


def test_extract_maps_to_documents_in_first_cited_order() -> None:
    cites = extract_citations("Second [2]. First and third [1, 3]. Again [2][1].", DOCS)
    assert [c["n"] for c in cites] == [2, 1, 3]
    assert cites[0] == {"n": 2, "doc_id": "d2", "chunk_id": "c2", "source": "b.md", "title": None, "score": 1.0}
    assert cites[1]["doc_id"] == "d1" and cites[1]["source"] == "a.md" and cites[1]["score"] == 2.0
    assert cites[2]["doc_id"] == "c3"  # no meta.doc_id: the chunk id


def test_out_of_range_ignored() -> None:
    assert [c["n"] for c in extract_citations("x [0] y [4] z [2] w [99]", DOCS)] == [2]
    assert extract_citations("x [1]", []) == []


def test_strip_invalid() -> None:
    assert strip_invalid_citations("x [2]. y [1, 7] z [9]. w [3-4]!", 2) == "x [2]. y [1] z. w!"
    assert strip_invalid_citations("ok [1].", 2) == "ok [1]."
    assert strip_invalid_citations("none [5].", 0) == "none."
