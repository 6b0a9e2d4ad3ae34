"""``ragconf tune``: fusion weights (and candidate depth) of the hybrid ranker fitted on an evaluation set's
training qrels, written as a pipeline config and logged to MLflow as a ``tune`` run.

The BM25 and dense branches are retrieved once per training query (with the tuning user's access filter, as
at query time) to the deepest candidate depth of the grid; every grid point is then a weighted reciprocal-rank
fusion of those lists, scored with the same nDCG@10 as ``ragconf eval``. The best point (ties: the one nearest
equal weights, then the shallower depth) is written into a copy of the configured pipeline, which must fuse
with a ``hybrid_retriever`` or an ``rrf_joiner`` component.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragconf.errors import EvalError, SpecError

__all__ = ["DEFAULT_CANDIDATES", "DEFAULT_WEIGHTS", "TuneResult", "fuse_grid", "tune", "write_pipeline"]

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
    from ragconf.ingest.beir import load_qrels, load_queries

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
    root = Path(spec.eval.path)
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise EvalError(f"no {split} qrels at {qrels_path}", hint="tune on the split you will not report")
    qrels = load_qrels(root, split)
    queries = load_queries(root / "queries.jsonl")
    qids = [q for q in qrels if q in queries][: max_queries or None]
    qrels = {q: qrels[q] for q in qids}
    if not qids:
        raise EvalError(f"no query of {qrels_path} is in {root / 'queries.jsonl'}")

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
    from ragconf.service import mask_secrets

    masked = mask_secrets({o.split("=", 1)[0]: o.split("=", 1)[1] for o in rag.loaded.overrides if "=" in o})
    with service.tracker.start_run(
        "tune",
        config=mask_secrets(rag.loaded.data),
        overrides=[f"{k}={v}" for k, v in masked.items()],
        config_hash=service.config_hash(),
    ) as run:
        run.log_params({"tune.split": split, "tune.component": comp, "tune.queries": len(qids)})
        run.log_params({f"tune.best.{k}": v for k, v in result.best.items()})
        run.log_metrics({"tune.ndcg@10": result.best_ndcg, "tune.default_ndcg@10": default})
        run.log_dict({"grid": grid}, "tune_grid.json")
        if result.output:
            run.log_text(Path(result.output).read_text(encoding="utf-8"), "tuned_pipeline.yaml")
        run.set_tags(service.run_tags())
        result.run_id = getattr(run, "run_id", None)
    return result


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
