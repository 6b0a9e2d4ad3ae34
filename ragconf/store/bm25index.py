"""In-memory BM25 index: precomputed per-(term, chunk) impact scores in a term-major sparse matrix.

A query sums the posting lists of its (distinct) terms and takes the top-k, so it costs the length of those
posting lists, never a scan of the corpus or a per-match SQL row. Scores are FTS5's ``bm25()`` (k1=1.2,
b=0.75, idf = ln((N - n + 0.5) / (n + 0.5)) floored at 1e-6), computed over the same analysed terms
(:func:`ragconf.store.text.analyze`) that the store keeps in its FTS5 table, so rankings match the SQLite
store's durable index. The index is built from SQLite (the source of truth) and rebuilt after a write.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

__all__ = ["BM25Index"]

K1 = 1.2
B = 0.75
_BATCH = 50_000


class BM25Index:
    """BM25 over ``rowids`` (sorted ascending); ``search`` returns positions into ``rowids``."""

    def __init__(self, rowids: np.ndarray, vocab: dict[str, int], indptr: np.ndarray, indices: np.ndarray,
                 data: np.ndarray) -> None:  # fmt: skip
        self.rowids = rowids
        self.vocab = vocab
        self.indptr = indptr
        self.indices = indices
        self.data = data

    @property
    def size(self) -> int:
        return len(self.rowids)

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str]]) -> BM25Index:
        """From ``(rowid, "term term ...")`` rows in ascending rowid order (the store's FTS5 ``terms``)."""
        from scipy import sparse

        ids: defaultdict[str, int] = defaultdict(itertools.count().__next__)  # a new term: the next id
        term_id = ids.__getitem__
        rowids: list[int] = []
        lengths: list[int] = []
        parts: list[np.ndarray] = []
        texts: list[str] = []

        def flush() -> None:  # a batch of rows: split, then map terms to ids at C speed (no per-token Python)
            toks = [t.split() if t else [] for t in texts]
            counts = list(map(len, toks))
            lengths.extend(counts)
            flat = itertools.chain.from_iterable(toks)
            parts.append(np.fromiter(map(term_id, flat), dtype=np.int32, count=sum(counts)))
            texts.clear()

        for rid, text in rows:
            rowids.append(rid)
            texts.append(text)
            if len(texts) >= _BATCH:
                flush()
        flush()
        vocab = dict(ids)  # a plain dict: looking a query term up must never add it
        n = len(rowids)
        dl = np.asarray(lengths, dtype=np.float64)
        terms = np.concatenate(parts)
        docs = np.repeat(np.arange(n, dtype=np.int32), dl.astype(np.int64))
        # term-major counts; duplicates (a term repeated in a chunk) are summed into the term frequency
        tf = sparse.csr_matrix(
            (np.ones(len(terms), dtype=np.float32), (terms, docs)), shape=(len(vocab), n), dtype=np.float32
        )
        del terms, docs
        tf.sum_duplicates()
        df = np.diff(tf.indptr).astype(np.float64)
        idf = np.log((n - df + 0.5) / (df + 0.5))
        idf[idf <= 0] = 1e-6
        avgdl = float(dl.mean()) if n and dl.sum() > 0 else 1.0
        norm = K1 * (1 - B + B * dl / avgdl)
        t = tf.data.astype(np.float64)
        term_of = np.repeat(np.arange(len(vocab)), np.diff(tf.indptr))
        data = (idf[term_of] * t * (K1 + 1) / (t + norm[tf.indices])).astype(np.float32)
        return cls(np.asarray(rowids, dtype=np.int64), vocab, tf.indptr.astype(np.int64), tf.indices, data)

    def search(self, terms: Iterable[str], top_k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(positions, scores) of the best ``top_k`` chunks containing any of ``terms`` (each counted once),
        best first, ties by ascending rowid; ``mask`` (bool per position) keeps only the allowed chunks *before*
        top-k."""
        ids = sorted({self.vocab[t] for t in terms if t in self.vocab})
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
        if not ids or top_k <= 0:
            return empty
        idx = np.concatenate([self.indices[self.indptr[i] : self.indptr[i + 1]] for i in ids])
        val = np.concatenate([self.data[self.indptr[i] : self.indptr[i + 1]] for i in ids])
        if mask is not None:
            keep = mask[idx]
            idx, val = idx[keep], val[keep]
        if len(idx) == 0:
            return empty
        cand: np.ndarray
        scores: np.ndarray
        if len(ids) == 1:
            cand, scores = idx.astype(np.int64), val.astype(np.float64)
        elif len(idx) * 16 < self.size:
            cand, inverse = np.unique(idx, return_inverse=True)
            scores = np.bincount(inverse, weights=val, minlength=len(cand))
        else:
            full = np.bincount(idx, weights=val, minlength=self.size)
            cand = np.flatnonzero(full)
            scores = full[cand]
        if top_k < len(cand):
            kth = np.partition(scores, len(scores) - top_k)[len(scores) - top_k]
            sel = scores >= kth  # every tie of the k-th score, then ordered by (score desc, rowid asc)
            cand, scores = cand[sel], scores[sel]
        order = np.lexsort((cand, -scores))[:top_k]
        return cand[order].astype(np.int64), scores[order]
