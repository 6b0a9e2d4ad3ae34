"""``ragconf tune``: fusion weights (and candidate depth) of the hybrid ranker fitted on an evaluation set's
training qrels, written as a pipeline config and logged to MLflow as a ``tune`` run.

The BM25 and dense branches are retrieved once per training query (with the tuning user's access filter, as
at query time) to the deepest candidate depth of the grid; every grid point is then a weighted reciprocal-rank
fusion of those lists, scored with the same nDCG@10 as ``ragconf eval``. The best point (ties: the one nearest
equal weights, then the shallower depth) is written into a copy of the configured pipeline, which must fuse
with a ``hybrid_retriever`` or an ``rrf_joiner`` component.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragconf.errors import EvalError, SpecError

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_WEIGHTS",
    "TuneResult",
    "fuse_grid",
    "tune",
    "tune_adapter",
    "write_pipeline",
]

#: BM25 weights tried (the dense weight is 1 - w).
DEFAULT_WEIGHTS = (0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)
DEFAULT_CANDIDATES = (50, 100, 200)
_FUSERS = ("hybrid_retriever", "rrf_joiner")


@dataclass
class TuneResult:
    pipeline: str
    component: str
    split: str
    queries: int
    best: dict[str, Any]
    best_ndcg: float
    default_ndcg: float
    grid: list[dict[str, Any]] = field(default_factory=list)
    output: str | None = None
    run_id: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fuse_grid(
    lists: dict[str, tuple[list[str], list[str]]],
    qrels: dict[str, dict[str, int]],
    weights: Sequence[float],
    candidates: Sequence[int],
) -> list[dict[str, Any]]:
    """nDCG@10 of weighted RRF over each query's (BM25, dense) doc-id lists at every grid point."""
    from ragconf.eval.metrics import evaluate_run
    from ragconf.store.fusion import rrf

    grid = []
    for depth in sorted(set(candidates)):
        for w in weights:
            run: dict[str, dict[str, float]] = {}
            for qid, (lex, dense) in lists.items():
                fused = rrf([lex[:depth], dense[:depth]], 10, [w, 1.0 - w])
                run[qid] = {d: s for d, s in fused}
            grid.append({"bm25_weight": w, "candidates": depth, "ndcg@10": evaluate_run(qrels, run)["ndcg@10"]})
    return grid


def _fuser(pipeline: dict[str, Any], name: str) -> tuple[str, str]:
    found = [(n, c.get("type")) for n, c in pipeline.get("components", {}).items() if c.get("type") in _FUSERS]
    if not found:
        types = sorted({str(c.get("type")) for c in pipeline.get("components", {}).values()})
        raise SpecError(
            f"pipeline '{name}' has no fusion component to tune (component types: {', '.join(types)})",
            hint=f"tune a pipeline with one of: {', '.join(_FUSERS)} (e.g. pipeline=hybrid_fast)",
        )
    if len(found) > 1:
        raise SpecError(f"pipeline '{name}' has {len(found)} fusion components; tune needs exactly one")
    return found[0][0], str(found[0][1])


def write_pipeline(
    pipeline: dict[str, Any],
    component: str,
    best: dict[str, Any],
    path: Path,
    note: str,
    source_config_dir: str | Path | None = None,
) -> Path:
    """A copy of ``pipeline`` with the tuned parameters of ``component``, as a pipeline group YAML file; in a
    ``pipeline/`` folder of a directory without ``config.yaml``, that directory becomes a config dir (the
    defaults list of ``source_config_dir`` or the built-in one is copied there)."""
    import yaml

    out = {k: v for k, v in pipeline.items() if v is not None}
    comps = {n: dict(c) for n, c in out["components"].items()}
    if component:
        params = dict(comps[component].get("params") or {})
        params["weights"] = [round(best["bm25_weight"], 4), round(1.0 - best["bm25_weight"], 4)]
        if comps[component].get("type") == "hybrid_retriever":
            params["candidates"] = int(best["candidates"])
        comps[component]["params"] = params
    out["components"] = comps
    out["name"] = path.stem
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.parent
    if path.parent.name == "pipeline" and not (root / "config.yaml").is_file():
        # a config dir needs its defaults list: the one of the config dir the tune ran with
        src = Path(source_config_dir) if source_config_dir else _builtin_configs()
        (root / "config.yaml").write_text((src / "config.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    header = "".join(f"# {line}\n" for line in note.splitlines())
    path.write_text(header + yaml.safe_dump(out, sort_keys=False), encoding="utf-8")
    return path


def tune(
    service: Any,
    *,
    split: str = "train",
    user: str | None = None,
    output: str | Path | None = None,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    candidates: Sequence[int] = DEFAULT_CANDIDATES,
    max_queries: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TuneResult:
    """Grid-search the fusion of ``service``'s pipeline on the eval set's ``split`` qrels (a RagService)."""
    t_start = time.perf_counter()
    rag = service.rag
    spec = rag.spec
    pipe = spec.pipeline.model_dump()
    comp, kind = _fuser(pipe, spec.pipeline.name)
    if not spec.eval.path or spec.eval.name == "none":
        raise EvalError("tune needs an evaluation set with training qrels", hint="e.g. eval=beir eval.path=DIR")
    if any(not 0.0 <= w <= 1.0 for w in weights) or not weights:
        raise EvalError(f"tune weights must be BM25 weights in [0, 1], got {list(weights)}")
    if not candidates or any(c <= 0 for c in candidates):
        raise EvalError(f"tune candidates must be positive depths, got {list(candidates)}")
    root, qrels, queries, qids = _training_set(spec, split, max_queries)

    principal = rag.principal(user or spec.eval.user or spec.identity.default_user)
    store = rag.store
    depth = max(candidates)
    embeddings = rag.embedder.embed([queries[q] for q in qids])
    lists: dict[str, tuple[list[str], list[str]]] = {}
    for i, qid in enumerate(qids):
        flt = rag.policy.retrieval_filter(principal, {"query": queries[qid], "action": "retrieve"}).filters
        lex = store.bm25_retrieval(queries[qid], filters=flt, top_k=depth)
        dense = store.embedding_retrieval(embeddings[i].tolist(), filters=flt, top_k=depth)
        lists[qid] = (_doc_ids(lex), _doc_ids(dense))
        if progress:
            progress(i + 1, len(qids))
    grid = fuse_grid(lists, qrels, weights, candidates)
    current = _current(pipe, comp, kind)
    default = fuse_grid(lists, qrels, [current[0]], [min(current[1], depth)])[0]["ndcg@10"]
    best = max(grid, key=lambda g: (round(g["ndcg@10"], 6), -abs(g["bm25_weight"] - 0.5), -g["candidates"]))
    result = TuneResult(
        pipeline=spec.pipeline.name,
        component=comp,
        split=split,
        queries=len(qids),
        best={"bm25_weight": best["bm25_weight"], "candidates": best["candidates"]},
        best_ndcg=best["ndcg@10"],
        default_ndcg=default,
        grid=grid,
    )
    if output is not None:
        note = (
            f"ragconf tune: {spec.pipeline.name} fusion tuned on {root.name} {split} qrels ({len(qids)} queries):\n"
            f"nDCG@10 {default:.4f} (current) -> {best['ndcg@10']:.4f}. Use: pipeline={Path(output).stem} with\n"
            f"--config-dir {Path(output).parent.parent} (this file is pipeline/{Path(output).name} there)."
        )
        result.output = str(write_pipeline(pipe, comp, best, Path(output), note, rag.config_dir))
    result.seconds = time.perf_counter() - t_start
    params = {"tune.split": split, "tune.component": comp, "tune.queries": len(qids)}
    metrics = {"tune.ndcg@10": result.best_ndcg, "tune.default_ndcg@10": default}
    result.run_id = _log_run(service, result, params, metrics, {"grid": grid})
    return result


def _log_run(
    service: Any,
    result: TuneResult,
    params: dict[str, Any],
    metrics: dict[str, float],
    grid: dict[str, Any],
    artifacts: Sequence[Path] = (),
) -> str | None:
    """The ``tune`` MLflow run: parameters, the best point, scores, the grid and the written files."""
    from ragconf.service import mask_secrets

    rag = service.rag
    masked = mask_secrets({o.split("=", 1)[0]: o.split("=", 1)[1] for o in rag.loaded.overrides if "=" in o})
    with service.tracker.start_run(
        "tune",
        config=mask_secrets(rag.loaded.data),
        overrides=[f"{k}={v}" for k, v in masked.items()],
        config_hash=service.config_hash(),
    ) as run:
        run.log_params(params)
        run.log_params({f"tune.best.{k}": v for k, v in result.best.items()})
        run.log_metrics(metrics)
        run.log_dict(grid, "tune_grid.json")
        if result.output:
            run.log_text(Path(result.output).read_text(encoding="utf-8"), "tuned_pipeline.yaml")
        for path in artifacts:
            run.log_artifact(str(path))
        run.set_tags(service.run_tags())
        return getattr(run, "run_id", None)


#: BM25 weights tried after adapting the queries (an adapted dense branch often wants less BM25).
ADAPTER_WEIGHTS = (0.0, 0.1, *DEFAULT_WEIGHTS)


def tune_adapter(
    service: Any,
    *,
    split: str = "train",
    user: str | None = None,
    output: str | Path | None = None,
    holdout: float = 0.2,
    candidates: int = 100,
    max_queries: int | None = None,
    max_passages: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
) -> TuneResult:
    """Fit a query adapter (:mod:`ragconf.adapter`) on the eval set's ``split`` qrels, then the fusion weights
    with adapted queries, and write both: the adapter file and a pipeline with a ``query_adapter`` after the
    query embedder.

    What the tuning user may see is all it learns from: every question's candidates (BM25 and dense top
    ``candidates``) and its relevant passages are read through that user's access filter. A share ``holdout``
    of the questions (chosen by a hash of their ids) picks the number of training steps and the fusion weight
    and gives the reported before/after nDCG@10; the adapter written is then refitted on every question."""
    import hashlib

    import numpy as np

    from ragconf.adapter import fit_adapter, save_adapter
    from ragconf.store.filters import combine

    t_start = time.perf_counter()
    rag = service.rag
    spec = rag.spec
    pipe = spec.pipeline.model_dump()
    embedder = _query_embedder(pipe, spec.pipeline.name)
    fusers = [n for n, c in pipe.get("components", {}).items() if c.get("type") in _FUSERS]
    comp, kind = _fuser(pipe, spec.pipeline.name) if fusers else ("", "")
    if not 0.0 <= holdout < 1.0:
        raise EvalError(f"tune holdout must be a fraction in [0, 1), got {holdout}")
    root, qrels, queries, qids = _training_set(spec, split, max_queries)
    principal = rag.principal(user or spec.eval.user or spec.identity.default_user)
    store = rag.store
    X = np.asarray(rag.embedder.embed([queries[q] for q in qids]), dtype=np.float32)
    filters: list[Any] = []
    lists: list[tuple[list[str], list[str]]] = []  # (BM25, dense) document ids of the unadapted question
    cand: dict[str, None] = {}
    for i, qid in enumerate(qids):
        flt = rag.policy.retrieval_filter(principal, {"query": queries[qid], "action": "retrieve"}).filters
        lex = store.bm25_retrieval(queries[qid], filters=flt, top_k=candidates)
        dense = store.embedding_retrieval(X[i].tolist(), filters=flt, top_k=candidates)
        filters.append(flt)
        lists.append((_doc_ids(lex), _doc_ids(dense)))
        cand.update((d.id, None) for d in [*lex, *dense])
        if progress:
            progress(i + 1, len(qids))
    # the passages: every candidate and every chunk of a relevant document the tuning user may see
    chunks: dict[str, Any] = {}
    wanted = sorted({d for q in qids for d in qrels[q]})
    ids = list(cand)[:max_passages]
    for flt in {json.dumps(f, sort_keys=True): f for f in filters}.values():
        for field_, values in (("meta.doc_id", wanted), ("id", ids)):
            for part in range(0, len(values), 500):
                cond = {"field": field_, "operator": "in", "value": values[part : part + 500]}
                for d in store.filter_documents(combine(flt, cond)):
                    chunks[d.id] = d
    docs = [d for d in chunks.values() if d.embedding is not None]
    E = np.asarray([d.embedding for d in docs], dtype=np.float32)
    columns: dict[str, list[int]] = {}
    for j, d in enumerate(docs):
        columns.setdefault(str((d.meta or {}).get("doc_id")), []).append(j)
    Y = np.zeros((len(qids), len(docs)), dtype=np.float32)
    for n, qid in enumerate(qids):
        rel = [j for doc_id, grade in qrels[qid].items() if grade > 0 for j in columns.get(doc_id, [])]
        if rel:
            Y[n, rel] = 1.0 / len(rel)
    usable = Y.sum(axis=1) > 0
    if int(usable.sum()) < 10:
        raise EvalError(
            f"only {int(usable.sum())} of {len(qids)} {split} questions have a relevant passage the tuning user "
            "may see; an adapter needs at least 10",
            hint="tune as a user who may see the training documents (--user)",
        )
    keep = np.flatnonzero(usable)
    qids = [qids[i] for i in keep]
    X, Y = X[keep], Y[keep]
    lists = [lists[i] for i in keep]
    filters = [filters[i] for i in keep]
    held = np.array([int(hashlib.sha256(q.encode()).hexdigest(), 16) % 1000 < holdout * 1000 for q in qids])
    fit = fit_adapter(X, Y, E, held)

    # fusion weights (and the before/after score) on the held-out questions, with the adapter fitted without them
    rows = np.flatnonzero(held) if held.any() else np.arange(len(qids))
    held_qrels = {qids[i]: qrels[qids[i]] for i in rows}
    before_lists = {qids[i]: lists[i] for i in rows}
    after_lists = {}
    for row in rows.tolist():
        q = fit.W_fit @ X[row]
        q = q / (np.linalg.norm(q) or 1.0)
        dense = store.embedding_retrieval(q.tolist(), filters=filters[row], top_k=candidates)
        after_lists[qids[row]] = (lists[row][0], _doc_ids(dense))
    current = _current(pipe, comp, kind) if comp else (0.0, candidates)
    before = fuse_grid(before_lists, held_qrels, [current[0]], [candidates])[0]["ndcg@10"]
    weights = ADAPTER_WEIGHTS if comp else (0.0,)
    grid = fuse_grid(after_lists, held_qrels, weights, [candidates])
    best = max(grid, key=lambda g: (round(g["ndcg@10"], 6), -abs(g["bm25_weight"] - 0.5)))
    result = TuneResult(
        pipeline=spec.pipeline.name,
        component=comp or embedder,
        split=split,
        queries=len(qids),
        best={"bm25_weight": best["bm25_weight"], "candidates": candidates, "steps": fit.steps},
        best_ndcg=best["ndcg@10"],
        default_ndcg=before,
        grid=grid,
    )
    out = Path(output) if output is not None else Path("tuned") / "pipeline" / f"{spec.pipeline.name}_adapted.yaml"
    adapter_file = out.parent.parent / "adapters" / f"{out.stem}.npz"
    save_adapter(
        adapter_file,
        fit.W,
        {
            "embedder": rag.embedder.fingerprint(),
            "eval_set": root.name,
            "split": split,
            "questions": len(qids),
            "holdout_questions": int(held.sum()),
            "passages": len(docs),
            "steps": fit.steps,
            "holdout_ndcg@10": {"before": before, "after": best["ndcg@10"]},
        },
    )
    note = (
        f"ragconf tune --adapter: {spec.pipeline.name} with a query adapter fitted on {root.name} {split} qrels "
        f"({len(qids)} questions);\nheld-out nDCG@10 {before:.4f} -> {best['ndcg@10']:.4f}. Use: "
        f"pipeline={out.stem} with --config-dir {out.parent.parent}."
    )
    tuned = _with_adapter(pipe, embedder, str(adapter_file.resolve()))
    result.output = str(
        write_pipeline(tuned, comp, best, out, note, rag.config_dir) if comp else _write(tuned, out, note, rag)
    )
    result.seconds = time.perf_counter() - t_start
    params = {
        "tune.mode": "adapter",
        "tune.split": split,
        "tune.queries": len(qids),
        "tune.holdout_queries": int(held.sum()),
        "tune.passages": len(docs),
    }
    metrics = {"tune.ndcg@10": result.best_ndcg, "tune.default_ndcg@10": before}
    if np.isfinite(fit.holdout_loss):
        metrics["tune.holdout_loss"] = float(fit.holdout_loss)
    result.run_id = _log_run(service, result, params, metrics, {"grid": grid}, [adapter_file])
    return result


def _query_embedder(pipeline: dict[str, Any], name: str) -> str:
    found = [n for n, c in pipeline.get("components", {}).items() if c.get("type") == "text_embedder"]
    if len(found) != 1:
        raise SpecError(
            f"pipeline '{name}' has {len(found)} query embedders (text_embedder); an adapter needs exactly one",
            hint="tune --adapter a pipeline with a dense branch (e.g. pipeline=hybrid)",
        )
    if any(c.get("type") == "query_adapter" for c in pipeline["components"].values()):
        raise SpecError(f"pipeline '{name}' already has a query_adapter", hint="tune the pipeline it was made from")
    return found[0]


def _with_adapter(pipeline: dict[str, Any], embedder: str, path: str) -> dict[str, Any]:
    """``pipeline`` with a ``query_adapter`` (named ``adapter``) taking every edge out of ``embedder.embedding``."""
    out = dict(pipeline)
    comps: dict[str, Any] = {}
    for n, c in pipeline["components"].items():
        comps[n] = dict(c)
        if n == embedder:
            comps["adapter"] = {"type": "query_adapter", "params": {"model": path}}
    out["components"] = comps
    src = f"{embedder}.embedding"
    conns = [dict(c, sender="adapter.embedding") if c.get("sender") == src else dict(c) for c in
             pipeline.get("connections") or []]  # fmt: skip
    out["connections"] = [{"sender": src, "receiver": "adapter.embedding"}, *conns]
    return out


def _write(pipeline: dict[str, Any], out: Path, note: str, rag: Any) -> Path:
    """Write ``pipeline`` as is (no fusion to tune) the way :func:`write_pipeline` does."""
    return write_pipeline(pipeline, "", {}, out, note, rag.config_dir)


def _training_set(
    spec: Any, split: str, max_queries: int | None
) -> tuple[Path, dict[str, dict[str, int]], dict[str, str], list[str]]:
    """(eval root, qrels, questions, query ids) of the eval set's ``split``, with clean errors."""
    from ragconf.ingest.beir import load_qrels, load_queries

    if not spec.eval.path or spec.eval.name == "none":
        raise EvalError("tune needs an evaluation set with training qrels", hint="e.g. eval=beir eval.path=DIR")
    root = Path(spec.eval.path)
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise EvalError(f"no {split} qrels at {qrels_path}", hint="tune on the split you will not report")
    qrels = load_qrels(root, split)
    queries = load_queries(root / "queries.jsonl")
    qids = [q for q in qrels if q in queries][: max_queries or None]
    if not qids:
        raise EvalError(f"no query of {qrels_path} is in {root / 'queries.jsonl'}")
    return root, {q: qrels[q] for q in qids}, queries, qids


def _current(pipe: dict[str, Any], comp: str, kind: str) -> tuple[float, int]:
    """The configured (BM25 weight, candidate depth) of the fusion component."""
    params = pipe["components"][comp].get("params") or {}
    w = params.get("weights")
    bm25_w = float(w[0]) / float(sum(w)) if w and sum(w) else 0.5
    if kind == "hybrid_retriever":
        return bm25_w, int(params.get("candidates", 100))
    tops = [
        int((c.get("params") or {}).get("top_k", 10))
        for c in pipe["components"].values()
        if c.get("type") in ("bm25_retriever", "embedding_retriever")
    ]
    return bm25_w, min(tops) if tops else 100


def _builtin_configs() -> Path:
    from ragconf.spec.loader import _builtin_root

    return _builtin_root() / "configs"


def _doc_ids(docs: list[Any]) -> list[str]:
    """Document ids in rank order (a document's first chunk stands for it)."""
    seen: set[str] = set()
    out = []
    for d in docs:
        did = str((d.meta or {}).get("doc_id", d.id))
        if did not in seen:
            seen.add(did)
            out.append(did)
    return out
