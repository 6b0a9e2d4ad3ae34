"""Query adapters: a linear map of query embeddings learned from an evaluation set's training qrels.

The configured embedder stays as it is (the store's vectors do not change); only the query side is mapped,
``q' = normalise((I + D) q)``, so that training questions land nearer the passages judged relevant to them. It is
fitted by :func:`fit_adapter` (numpy, no torch): a softmax over every candidate passage (the positives and the
retrievers' candidates of all training questions) at temperature ``tau``, an L2 penalty on ``D`` (the map stays
near the identity), full-batch Adam, and early stopping on held-out training questions. ``ragconf tune
--adapter`` runs it and writes the file that the ``query_adapter`` component loads.

File: an ``.npz`` (no pickles) with ``W`` (float32, dim x dim) and ``meta`` (UTF-8 JSON: format, embedder,
training split, questions, steps, scores).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragconf.errors import SpecError

__all__ = ["FORMAT", "AdapterFit", "fit_adapter", "load_adapter", "save_adapter"]

FORMAT = 1


@dataclass
class AdapterFit:
    #: refitted on every question (the one to write)
    W: np.ndarray
    #: fitted without the held-out questions (score them with this one)
    W_fit: np.ndarray
    steps: int
    holdout_loss: float
    losses: list[tuple[int, float, float]]


def _loss_grad(W: np.ndarray, X: np.ndarray, E: np.ndarray, Y: np.ndarray, tau: float) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(normalise(X W^T) E^T / tau) against target distributions ``Y``."""
    U = X @ W.T
    n = np.linalg.norm(U, axis=1, keepdims=True)
    n = np.where(n == 0, 1.0, n)
    Q = U / n
    S = Q @ E.T / tau
    S -= S.max(axis=1, keepdims=True)
    P = np.exp(S)
    P /= P.sum(axis=1, keepdims=True)
    loss = float(-(Y * np.log(np.clip(P, 1e-30, None))).sum(axis=1).mean())
    dQ = (P - Y) @ E / tau
    dU = (dQ - Q * (Q * dQ).sum(axis=1, keepdims=True)) / n
    return loss, dU.T @ X / len(X)


def fit_adapter(
    X: np.ndarray,
    Y: np.ndarray,
    E: np.ndarray,
    holdout: np.ndarray,
    *,
    tau: float = 0.05,
    l2: float = 1e-3,
    lr: float = 1e-3,
    max_steps: int = 400,
    every: int = 20,
    patience: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> AdapterFit:
    """Fit ``W = I + D`` on the questions ``X`` (unit rows) whose relevant candidates are the rows of ``Y``
    (a distribution over the candidate passages ``E``); questions where ``holdout`` is true only pick the step
    count (the lowest held-out loss, checked every ``every`` steps, stopping after ``patience`` checks without
    a new low). Then ``W`` is refitted on every question for that many steps. Deterministic: no sampling."""
    dim = X.shape[1]
    X, Y, E = X.astype(np.float32), Y.astype(np.float32), E.astype(np.float32)
    fit, held = ~holdout, holdout

    def run(rows: np.ndarray, steps: int, watch: np.ndarray | None) -> tuple[np.ndarray, int, float, list]:
        D = np.zeros((dim, dim), dtype=np.float32)
        m = np.zeros_like(D)
        v = np.zeros_like(D)
        b1, b2, eps = 0.9, 0.999, 1e-8
        best = (np.inf, D.copy(), 0)
        log: list[tuple[int, float, float]] = []
        for t in range(1, steps + 1):
            loss, g = _loss_grad(np.eye(dim, dtype=np.float32) + D, X[rows], E, Y[rows], tau)
            g = g + 2 * l2 * D
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            D -= (lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)).astype(np.float32)
            if watch is not None and t % every == 0:
                held_loss = _loss_grad(np.eye(dim, dtype=np.float32) + D, X[watch], E, Y[watch], tau)[0]
                log.append((t, loss, held_loss))
                if held_loss < best[0]:
                    best = (held_loss, D.copy(), t)
                elif t - best[2] >= patience * every:
                    break
            if progress:
                progress(t, steps)
        if watch is None:
            return np.eye(dim) + D, steps, float("nan"), log
        return np.eye(dim) + best[1], best[2], best[0], log

    if held.any() and fit.any():
        W_fit, steps, held_loss, log = run(np.flatnonzero(fit), max_steps, np.flatnonzero(held))
    else:
        W_fit, steps, held_loss, log = None, max_steps // 4, float("nan"), []
    W, _, _, _ = run(np.arange(len(X)), max(steps, 1), None)
    return AdapterFit(W.astype(np.float32), (W if W_fit is None else W_fit).astype(np.float32), steps, held_loss, log)


def save_adapter(path: str | Path, W: np.ndarray, meta: dict[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"format": FORMAT, **meta}, sort_keys=True, default=str).encode()
    with p.open("wb") as f:
        np.savez(f, W=W.astype(np.float32), meta=np.frombuffer(data, dtype=np.uint8))
    return p


def load_adapter(path: str | Path, *, key: str = "model") -> tuple[np.ndarray, dict[str, Any]]:
    """(W, meta) of an adapter file; a missing or malformed file is a SpecError naming ``key``."""
    p = Path(path)
    hint = "`ragconf tune --adapter` writes one"
    try:
        with np.load(p, allow_pickle=False) as z:
            W = np.asarray(z["W"], dtype=np.float32)
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
    except FileNotFoundError:
        raise SpecError(f"no query adapter file at '{p}'", key=key, hint=hint) from None
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise SpecError(f"'{p}' is not a query adapter file ({type(exc).__name__})", key=key, hint=hint) from None
    if W.ndim != 2 or W.shape[0] != W.shape[1] or not np.isfinite(W).all() or not isinstance(meta, dict):
        raise SpecError(f"'{p}' is not a query adapter file (W must be a finite square matrix)", key=key, hint=hint)
    if meta.get("format") != FORMAT:
        raise SpecError(f"'{p}' has adapter format {meta.get('format')!r}; this ragconf reads {FORMAT}", key=key)
    return W, meta
