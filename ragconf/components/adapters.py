"""The ``query_adapter`` component: maps the query embedding with an adapter file (see :mod:`ragconf.adapter`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from haystack import component

__all__ = ["QueryAdapter"]


@component
class QueryAdapter:
    """``embedding -> normalise(W @ embedding)``, ``W`` from ``model`` (an adapter file written by ``ragconf tune
    --adapter``). Sits between the query embedder and the dense (or hybrid) retriever; the store's passage
    vectors are unchanged. The file is read when the pipeline is built: a missing or malformed one is a config
    error naming the component's ``model`` key."""

    def __init__(self, model: str) -> None:
        from ragconf.adapter import load_adapter

        self.model = model
        self.W, self.meta = load_adapter(model, key="model")

    @component.output_types(embedding=list[float])
    def run(self, embedding: list[float]) -> dict[str, Any]:
        x = np.asarray(embedding, dtype=np.float32)
        if x.shape != (self.W.shape[1],):
            from ragconf.errors import SpecError

            raise SpecError(
                f"query adapter '{self.model}' maps {self.W.shape[1]}-d vectors, the embedder made {x.shape}",
                key="model",
                hint="fit an adapter for this embedder: ragconf tune --adapter",
            )
        y = self.W @ x
        n = float(np.linalg.norm(y))
        return {"embedding": (y / n if n > 0 else y).tolist()}
