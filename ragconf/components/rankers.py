"""Rankers that run inside the retrieval stage, before ragconf's access guard (so they only ever see candidates
the pushed-down access filter let through, and the guard still checks whatever they return)."""

from __future__ import annotations

from typing import Any

import numpy as np
from haystack import Document, component

__all__ = ["DiversityRanker"]


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
