"""Query adapters: the fit learns a map that held-out questions benefit from, its gradient is right, the file
round-trips and bad files are config errors (`ragconf tune --adapter` through the CLI: tests/test_tune.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragconf.adapter import _loss_grad, fit_adapter, load_adapter, save_adapter
from ragconf.errors import SpecError


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def test_the_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    X, E = unit(rng.normal(size=(5, 6))), unit(rng.normal(size=(9, 6)))
    Y = np.zeros((5, 9), dtype=np.float32)
    Y[np.arange(5), rng.integers(0, 9, 5)] = 1.0
    W = np.eye(6) + 0.1 * rng.normal(size=(6, 6))
    _, g = _loss_grad(W, X.astype(np.float64), E.astype(np.float64), Y.astype(np.float64), 0.1)
    num = np.zeros_like(W)
    for i in range(6):
        for j in range(6):
            d = np.zeros_like(W)
            d[i, j] = 1e-6
            up = _loss_grad(W + d, X.astype(np.float64), E.astype(np.float64), Y.astype(np.float64), 0.1)[0]
            down = _loss_grad(W - d, X.astype(np.float64), E.astype(np.float64), Y.astype(np.float64), 0.1)[0]
            num[i, j] = (up - down) / 2e-6
    assert np.allclose(g, num, atol=1e-5)


def test_the_fit_learns_a_map_that_held_out_questions_benefit_from() -> None:
    """Questions are a fixed rotation of their passage plus noise: exact search with raw questions finds few
    of them; with the adapter fitted on other questions it finds most."""
    rng = np.random.default_rng(1)
    dim, n_docs, n_q = 16, 300, 240
    E = unit(rng.normal(size=(n_docs, dim)))
    R, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    rot = np.eye(dim) * 0.4 + 0.6 * R  # a partial rotation: raw questions still point somewhat the right way
    target = rng.integers(0, n_docs, n_q)
    X = unit(E[target] @ rot.T + 0.05 * rng.normal(size=(n_q, dim)))
    Y = np.zeros((n_q, n_docs), dtype=np.float32)
    Y[np.arange(n_q), target] = 1.0
    test = np.arange(n_q) >= 180  # never seen by the fit
    held = (np.arange(n_q) % 5 == 0) & ~test
    train = ~test
    fit = fit_adapter(X[train], Y[train], E, held[train], lr=1e-2, max_steps=300)

    def hits(W: np.ndarray) -> float:
        Q = unit(X[test] @ W.T)
        return float(np.mean(np.argmax(Q @ E.T, axis=1) == target[test]))

    base, adapted = hits(np.eye(dim)), hits(fit.W)
    assert adapted >= base + 0.2 and adapted >= 0.8, (base, adapted)
    assert 0 < fit.steps <= 300 and np.isfinite(fit.holdout_loss)
    assert fit.W.dtype == np.float32 and fit.W.shape == (dim, dim)


def test_the_file_round_trips_and_bad_files_are_config_errors(tmp_path: Path) -> None:
    W = np.eye(4, dtype=np.float32) * 2
    p = save_adapter(tmp_path / "a" / "x.npz", W, {"split": "train"})
    got, meta = load_adapter(p)
    assert np.array_equal(got, W) and meta["split"] == "train" and meta["format"] == 1
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    for path, match in ((tmp_path / "missing.npz", "no query adapter file"), (bad, "not a query adapter file")):
        with pytest.raises(SpecError, match=match) as err:
            load_adapter(path)
        assert err.value.key == "model"
    with pytest.raises(SpecError, match="square"):
        load_adapter(save_adapter(tmp_path / "r.npz", np.ones((2, 3), dtype=np.float32), {}))
    with pytest.raises(SpecError, match="square"):
        load_adapter(save_adapter(tmp_path / "n.npz", np.full((2, 2), np.nan, dtype=np.float32), {}))


def test_the_component_maps_and_normalises_and_checks_the_size(tmp_path: Path) -> None:
    from ragconf.components.adapters import QueryAdapter

    p = save_adapter(tmp_path / "x.npz", np.diag([2.0, 0.0, 0.0]).astype(np.float32), {})
    out = QueryAdapter(model=str(p)).run(embedding=[0.6, 0.8, 0.0])["embedding"]
    assert out == pytest.approx([1.0, 0.0, 0.0])
    with pytest.raises(SpecError, match="maps 3-d vectors"):
        QueryAdapter(model=str(p)).run(embedding=[1.0, 0.0])
