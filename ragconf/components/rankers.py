"""Rankers that run inside the retrieval stage, before ragconf's access guard (so they only ever see candidates
the pushed-down access filter let through, and the guard still checks whatever they return)."""

from __future__ import annotations

from typing import Any

import numpy as np
from haystack import Document, component

__all__ = ["DiversityRanker", "LLMRanker", "RouteGate"]

#: ``route_gate(documents, profile) -> (allowed, reason, decision_id)``: the routing policy's decision on sending
#: ``documents`` to an endpoint described like a generator profile. ragconf passes one to every retrieval-stage
#: component with a ``route_gate`` input (see RagApp.retrieve).
RouteGate = Any


@component
class DiversityRanker:
    """Maximal marginal relevance (MMR) on the configured embedder: picks ``top_k`` documents one at a time,
    each maximising ``lambda_mult * sim(query, doc) - (1 - lambda_mult) * max sim(doc, already picked)``
    (cosine similarities). ``lambda_mult=1`` keeps the relevance order; lower values push near-duplicates
    (the same passage in several chunks or documents) down in favour of documents that add something.

    Documents keep their scores; only their order and number change. A document's stored embedding is used
    when it has one of the embedder's size, otherwise its text is embedded (``title\\ncontent``)."""

    def __init__(
        self,
        top_k: int = 10,
        lambda_mult: float = 0.7,
        model: str = "minilm-int8",
        batch_size: int = 32,
        max_length: int = 256,
        threads: int | None = None,
    ) -> None:
        if top_k <= 0:
            raise ValueError(f"top_k must be > 0, got {top_k}")
        if not 0.0 <= lambda_mult <= 1.0:
            raise ValueError(f"lambda_mult must be between 0 and 1, got {lambda_mult}")
        from ragconf.components.embedders import get_embedder

        self.top_k = top_k
        self.lambda_mult = lambda_mult
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads
        self.embedder = get_embedder(model, batch_size, max_length, threads)

    def warm_up(self) -> None:
        self.embedder.warm_up()

    def _vectors(self, documents: list[Document]) -> np.ndarray:
        from ragconf.components.embedders import _doc_text

        dim = self.embedder.dim
        out = np.zeros((len(documents), dim), dtype=np.float32)
        missing = []
        for i, d in enumerate(documents):
            if d.embedding is not None and len(d.embedding) == dim:
                out[i] = np.asarray(d.embedding, dtype=np.float32)
            else:
                missing.append(i)
        if missing:
            out[missing] = self.embedder.embed([_doc_text(documents[i], True) for i in missing])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, Any]:
        k = min(top_k or self.top_k, len(documents))
        if k <= 0:
            return {"documents": []}
        vecs = self._vectors(documents)
        q = np.asarray(self.embedder.embed([query])[0], dtype=np.float32)
        q = q / (np.linalg.norm(q) or 1.0)
        relevance = vecs @ q
        picked: list[int] = []
        closest = np.full(len(documents), -np.inf, dtype=np.float32)  # max sim to the picked ones
        left = np.ones(len(documents), dtype=bool)
        lam = self.lambda_mult
        for _ in range(k):
            score = lam * relevance - (1.0 - lam) * closest if picked else lam * relevance
            score = np.where(left, score, -np.inf)
            best = int(np.argmax(score))
            picked.append(best)
            left[best] = False
            closest = np.maximum(closest, vecs @ vecs[best])
        return {"documents": [documents[i] for i in picked]}


RANK_PROMPT = """Rate how well each passage answers the query, from 0 (unrelated) to 10 (answers it fully).
Reply with JSON only: {{"scores": [s1, s2, ...]}}, one number per passage, in passage order.

Query: {query}

{passages}"""


@component
class LLMRanker:
    """Listwise reranking by a chat model behind any OpenAI-compatible endpoint (vLLM, llama.cpp server,
    OpenAI, a gateway): the first ``candidates`` documents are sent in one request, the model scores each 0-10,
    and they are reordered by that score (ties keep their order); the rest follow unchanged.

    Governed like a generator: before anything is sent, the routing policy decides whether these passages may
    go to this endpoint (``locality``, ``provider``, ``region``, as a generator profile named ``reranker``;
    with the default bundle, confidential or restricted passages only go to a ``local`` ranker). When it
    refuses, or the reply is not the requested JSON, or the endpoint fails, the documents keep their order
    (the ``rerank`` output says why). Scores land in ``meta.llm_score``."""

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        locality: str = "remote",
        provider: str = "openai",
        region: str | None = None,
        candidates: int = 20,
        top_k: int = 10,
        max_chars: int = 1200,
        timeout: float = 30.0,
    ) -> None:
        if locality not in ("local", "remote"):
            raise ValueError(f"locality must be 'local' or 'remote', got {locality!r}")
        if candidates <= 0 or top_k <= 0 or max_chars <= 0:
            raise ValueError("candidates, top_k and max_chars must be > 0")
        from ragconf.components.generators import OpenAICompatibleGenerator

        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.locality = locality
        self.provider = provider
        self.region = region
        self.candidates = candidates
        self.top_k = top_k
        self.max_chars = max_chars
        self.timeout = timeout
        self._llm = OpenAICompatibleGenerator(
            model=model,
            base_url=base_url,
            api_key_env=api_key_env,
            generation_kwargs={"temperature": 0},
            timeout=timeout,
            max_retries=0,
        )

    def profile(self) -> dict[str, Any]:
        return {"name": "reranker", "locality": self.locality, "provider": self.provider, "region": self.region}

    def _scores(self, query: str, docs: list[Document]) -> list[float] | None:
        import json
        import re

        passages = "\n\n".join(f"[{i}] {(d.content or '')[: self.max_chars]}" for i, d in enumerate(docs, start=1))
        reply = self._llm.run(prompt=RANK_PROMPT.format(query=query, passages=passages))["replies"]
        text = reply[0] if reply else ""
        m = re.search(r"\{.*\}", text, re.S)
        try:
            scores = json.loads(m.group(0))["scores"] if m else None
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(scores, list) or len(scores) != len(docs):
            return None
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in scores):
            return None
        return [float(x) for x in scores]

    @component.output_types(documents=list[Document], rerank=dict)
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        route_gate: RouteGate | None = None,
    ) -> dict[str, Any]:
        from dataclasses import replace

        from ragconf.errors import RagconfError

        k = top_k or self.top_k
        head, tail = list(documents[: self.candidates]), list(documents[self.candidates :])
        info: dict[str, Any] = {"applied": False, "candidates": len(head)}
        if not head:
            return {"documents": [], "rerank": info}
        if route_gate is None:  # outside ragconf's runtime nobody decided where these passages may go
            info["reason"] = "no routing decision (not run by ragconf): not sent"
            return {"documents": (head + tail)[:k], "rerank": info}
        allowed, reason, decision_id = route_gate(head, self.profile())
        info.update(decision_id=decision_id, reason=reason)
        if not allowed:
            return {"documents": (head + tail)[:k], "rerank": info}
        try:
            scores = self._scores(query, head)
        except RagconfError as exc:
            info["reason"] = f"endpoint failed: {exc.message}"
            return {"documents": (head + tail)[:k], "rerank": info}
        if scores is None:
            info["reason"] = "the reply was not the requested JSON scores"
            return {"documents": (head + tail)[:k], "rerank": info}
        order = sorted(range(len(head)), key=lambda i: (-scores[i], i))
        ranked = [replace(head[i], meta={**(head[i].meta or {}), "llm_score": scores[i]}) for i in order]
        info["applied"] = True
        return {"documents": (ranked + tail)[:k], "rerank": info}
