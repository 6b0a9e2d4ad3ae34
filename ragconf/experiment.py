"""Evaluation: an evaluation set through the configured pipeline, metrics, leakage, gates. Tracking the run
(and reproducing a tracked one) is the service layer's job: :meth:`ragconf.service.RagService.evaluate`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragconf.errors import EvalError, SpecError

if TYPE_CHECKING:
    from ragconf.eval.judge import AnswerJudge

__all__ = ["EvalResult", "preflight", "run_eval"]


@dataclass
class EvalResult:
    metrics: dict[str, float]
    gates: list[Any] = field(default_factory=list)
    per_persona: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: str | None = None
    user: str = ""
    queries: int = 0
    # the scored run and the judgements it was scored against (authorised documents only), for re-scoring
    run: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    dataset: Path | None = None  # the evaluation set's folder (fingerprinted by the tracked run)
    top_k_override: int | None = None  # eval.top_k, when it overrode the pipeline's output top_k
    # per evaluated query: its request spans, its text and the ids of the chunks retrieved (visible to the user)
    traces: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    query_texts: dict[str, str] = field(default_factory=dict, repr=False)
    retrieved: dict[str, list[str]] = field(default_factory=dict, repr=False)
    latency_ms: dict[str, float] = field(default_factory=dict, repr=False)
    # per judged query (a relevant document visible to the user): each retrieval metric
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    # every evaluated query's judgements as the evaluation set has them (all documents, for the dataset input)
    judgements: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    # query id -> the judge's verdicts on its answer (``eval.judge``), or why it was not judged
    judged: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    # query id -> failure category, filled by ragconf.eval.explain (``eval --explain``)
    failures: dict[str, str] = field(default_factory=dict, repr=False)
    explanation: Any = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "per_persona": self.per_persona,
            "gates": [
                {"gate": str(g.gate), "value": g.value, "passed": g.passed, "margin": g.margin} for g in self.gates
            ],
            "passed": self.passed,
            "run_id": self.run_id,
            "user": self.user,
            "queries": self.queries,
        } | ({"explain": self.explanation.to_dict()} if self.explanation is not None else {})


def _dataset(path: str | None, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]], Path]:
    from ragconf.ingest.beir import load_qrels, load_queries

    if not path:
        raise SpecError(
            "no evaluation set configured",
            key="eval.path",
            hint="choose one: eval=beir eval.path=DIR, or eval=handbook",
        )
    root = Path(path)
    if not (root / "queries.jsonl").is_file():
        raise EvalError(f"'{root}' has no queries.jsonl (BEIR format: queries.jsonl + qrels/{split}.tsv)")
    if not (root / "qrels" / f"{split}.tsv").is_file():
        raise EvalError(f"'{root}' has no qrels/{split}.tsv", hint="set eval.split to one of the files in qrels/")
    queries = load_queries(root / "queries.jsonl")
    qrels = load_qrels(root, split=split)
    return queries, qrels, root


def _answers(root: Path, explicit: str | None) -> dict[str, str]:
    import json

    path = Path(explicit) if explicit else root / "answers.jsonl"
    if not path.is_file():
        if explicit:
            raise EvalError(f"answers file '{path}' does not exist")
        return {}
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[str(row["_id"])] = str(row["answer"])
        except (ValueError, KeyError) as exc:
            raise EvalError(f'{path}:{i}: expected {{"_id": ..., "answer": ...}} ({exc})') from None
    return out


def _forbidden(root: Path, explicit: str | None) -> dict[str, dict[str, Any]]:
    """The evaluation set's ground truth of what each persona must never see (``forbidden.jsonl``: one line per
    user, ``{"user", "doc_ids": [...], "canaries": [...]}``), written independently of the policy."""
    import json

    path = Path(explicit) if explicit else root / "forbidden.jsonl"
    if not path.is_file():
        if explicit:
            raise EvalError(f"forbidden file '{path}' does not exist", hint="set eval.forbidden to a JSONL file")
        return {}
    out: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            user = str(row["user"])
            ids = row.get("doc_ids") or []
            canaries = row.get("canaries") or []
            if not isinstance(ids, list) or not isinstance(canaries, list):
                raise ValueError("doc_ids and canaries must be lists")
        except (ValueError, KeyError, TypeError) as exc:
            raise EvalError(f'{path}:{i}: expected {{"user", "doc_ids": [...], "canaries": [...]}} ({exc})') from None
        entry = out.setdefault(user, {"doc_ids": set(), "canaries": []})
        entry["doc_ids"] |= {str(d) for d in ids}
        entry["canaries"] += [str(c) for c in canaries]
    return out


def _visible_doc_ids(rag: Any, principal: Any, doc_ids: set[str]) -> set[str]:
    """Of ``doc_ids``, those with at least one chunk the access policy lets ``principal`` see."""
    if not doc_ids:
        return set()
    chunks = rag.store.filter_documents({"field": "meta.doc_id", "operator": "in", "value": sorted(doc_ids)})
    if not chunks:
        return set()
    decision = rag.policy.check_documents(principal, chunks, {"action": "evaluate"})
    return {d.meta.get("doc_id") for d in decision.allowed}


def _leaks(rag: Any, principal: Any, docs: list[Any]) -> int:
    """Documents in an answer that an independent re-check says the principal may not see: a fresh policy
    decision and the pure-Python evaluation of the policy's filter must both allow each one."""
    from ragconf.policy.filters import matches

    if not docs:
        return 0
    allowed = {d.id for d in rag.policy.check_documents(principal, docs, {"action": "audit"}).allowed}
    filt = rag.policy.retrieval_filter(principal, {"action": "audit"}).filters
    return sum(1 for d in docs if d.id not in allowed or not matches(filt, {"meta": d.meta, **d.meta}))


def preflight(rag: Any) -> None:
    """The mistakes to report before any work: no or malformed evaluation set or gates, an empty store."""
    from ragconf.eval.gates import parse_gates

    spec = rag.spec.eval
    parse_gates(spec.gates)
    _dataset(spec.path, spec.split)
    if rag.store.count_documents() == 0:
        where = rag.spec.store.model_dump().get("path") or rag.spec.store.type
        raise EvalError(
            f"the store at {where} is empty: nothing was ingested for this config",
            hint="run `ragconf ingest` first, with the same overrides (corpus=..., store=...), then `ragconf eval`",
        )


def _is_text_embedder(span: dict[str, Any]) -> bool:
    kind = str(span.get("attributes", {}).get("type") or "")
    return span.get("name", "").startswith("component.") and kind.endswith("TextEmbedder")


def _embeds(trace: list[dict[str, Any]] | None) -> int:
    return sum(1 for s in trace or [] if _is_text_embedder(s))


def run_eval(rag: Any, *, user: str | None = None, progress: Any = None) -> EvalResult:
    """Run the configured evaluation set through ``rag`` and check the gates (untracked; the service layer's
    ``RagService.evaluate`` tracks it)."""
    from ragconf import spans
    from ragconf.eval.answer_metrics import citation_precision, reference_overlap
    from ragconf.eval.gates import check_gates, parse_gates
    from ragconf.eval.metrics import METRICS, evaluate_run, per_query

    spec = rag.spec.eval
    preflight(rag)
    gates = parse_gates(spec.gates)  # syntax errors before any work
    queries, qrels, root = _dataset(spec.path, spec.split)
    qids = [q for q in queries if q in qrels]
    if spec.max_queries:
        qids = qids[: spec.max_queries]
    if not qids:
        raise EvalError(f"no query in {root}/queries.jsonl has judgements in qrels/{spec.split}.tsv")
    references = _answers(root, spec.answers)
    judge = None
    if spec.judge is not None:
        from ragconf.eval.judge import AnswerJudge

        judge = AnswerJudge(spec.judge)
    verdicts: dict[str, dict[str, Any]] = {}
    uid = user or spec.user or rag.spec.identity.default_user or "anonymous"
    principal = rag.principal(uid)
    judged = {d for q in qids for d in qrels[q]}
    visible = _visible_doc_ids(rag, principal, judged)
    run: dict[str, dict[str, float]] = {}
    latencies: list[float] = []
    overlap_f1: list[float] = []
    cite_prec: list[float] = []
    tokens: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0}
    embedding_calls = 0
    traces: dict[str, list[dict[str, Any]]] = {}
    latency_ms: dict[str, float] = {}
    retrieved: dict[str, list[str]] = {}
    for i, qid in enumerate(qids):
        t0 = time.perf_counter()
        with spans.collect("eval.query", query_id=qid) as trace:
            docs, _, _ = rag.retrieve(queries[qid], principal, top_k=spec.top_k)
        latencies.append((time.perf_counter() - t0) * 1000)
        embedding_calls += _embeds(trace)
        traces[qid], latency_ms[qid] = trace, latencies[-1]
        retrieved[qid] = [str(d.id) for d in docs]
        scores: dict[str, float] = {}
        n = len(docs)
        for rank, d in enumerate(docs):
            did = str(d.meta.get("doc_id"))
            # chunk -> document: keep the best rank; scores strictly decreasing in rank
            scores.setdefault(did, float(n - rank))
        run[qid] = scores
        if qid in references or judge is not None:
            ans = rag.ask(queries[qid], uid)
            embedding_calls += _embeds(ans.trace)
            for k, v in ans.usage.items():
                tokens[k] = tokens.get(k, 0) + v
            if qid in references:
                overlap_f1.append(reference_overlap(ans.answer, references[qid])["f1"])
                cite_prec.append(citation_precision(ans.answer, [d["content"] for d in ans.documents]))
            if judge is not None:
                verdicts[qid] = _judge_answer(rag, judge, principal, queries[qid], ans)
        if progress is not None:
            progress(i + 1, len(qids))
    visible_qrels = {q: {d: r for d, r in qrels[q].items() if d in visible} for q in qids}
    visible_qrels = {q: rels for q, rels in visible_qrels.items() if any(r > 0 for r in rels.values())}
    # no visible judged query scores 0 on every metric (gates then fail on the value, not on a missing name)
    metrics = evaluate_run(visible_qrels, {q: run[q] for q in visible_qrels}) if visible_qrels else {}
    metrics = {m: 0.0 for m in METRICS} | {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    lat = sorted(latencies)
    metrics["p50_ms"] = lat[len(lat) // 2]
    metrics["p95_ms"] = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
    metrics["queries"] = float(len(qids))
    metrics["judged_queries"] = float(len(visible_qrels))
    metrics.update({k: float(v) for k, v in tokens.items()})  # cost counters (0 for the extractive generator)
    if overlap_f1:
        metrics["answer_f1"] = sum(overlap_f1) / len(overlap_f1)
        metrics["citation_precision"] = sum(cite_prec) / len(cite_prec)
    if judge is not None:
        metrics.update(_judge_metrics(verdicts, spec.judge.metrics))
    per_persona: dict[str, dict[str, float]] = {}
    forbidden = _forbidden(root, spec.forbidden)
    total_leak = total_truth = 0
    for persona in spec.personas or [uid]:
        p = rag.principal(persona)
        leaked = truth = 0
        answers = 0
        must_not = forbidden.get(persona, {"doc_ids": set(), "canaries": []})
        for qid in qids:
            ans = rag.ask(queries[qid], persona) if spec.personas else None
            with spans.collect("eval.leakage", query_id=qid) as trace:
                docs, _, _ = rag.retrieve(queries[qid], p, top_k=spec.top_k)
            embedding_calls += _embeds(trace) + (_embeds(ans.trace) if ans is not None else 0)
            leaked += _leaks(rag, p, docs)
            truth += sum(1 for d in docs if str(d.meta.get("doc_id")) in must_not["doc_ids"])
            if ans is not None:
                answers += 1
                cited = {c["chunk_id"] for c in ans.citations}
                used = [d for d in docs if d.id in cited] + _docs_by_id(rag, ans, cited)
                leaked += _leaks(rag, p, used)
                given = {str(d.get("doc_id")) for d in ans.documents} | {str(c["doc_id"]) for c in ans.citations}
                truth += len(given & must_not["doc_ids"])
                truth += sum(1 for c in must_not["canaries"] if c and c in ans.answer)
        row = {"leakage_policy_recheck": float(leaked), "answers": float(answers)}
        row["leakage"] = float(truth) if forbidden else float(leaked)
        per_persona[persona] = row
        total_leak += leaked
        total_truth += truth
    # against the evaluation set's own ground truth when it has one (a wrong policy fails the gate); otherwise
    # the policy re-check, which can only catch a guard that did not apply the policy
    metrics["leakage"] = float(total_truth) if forbidden else float(total_leak)
    metrics["leakage_policy_recheck"] = float(total_leak)
    metrics["leakage_ground_truth"] = 1.0 if forbidden else 0.0
    # every query embedder run of this evaluation (metric queries, reference answers, persona checks), counted
    # from the spans of the requests
    metrics["embedding_calls"] = float(embedding_calls)
    results = check_gates(gates, metrics)
    result = EvalResult(
        metrics,
        results,
        per_persona,
        None,
        uid,
        len(qids),
        run,
        visible_qrels,
        root,
        spec.top_k,
        traces,
        {q: queries[q] for q in qids},
        retrieved,
        latency_ms,
    )
    result.per_query = per_query(visible_qrels, {q: run[q] for q in visible_qrels})
    result.judgements = {q: dict(qrels[q]) for q in qids}
    result.judged = verdicts
    return result


def _judge_answer(rag: Any, judge: AnswerJudge, principal: Any, question: str, ans: Any) -> dict[str, Any]:
    """The judge's verdicts on one answer, if the routing policy lets its passages go to the judge (the judge
    is routed like a generator profile; a refusal or another profile's choice means it is not judged)."""
    from types import SimpleNamespace

    from ragconf.runtime import route_to

    if ans.refused:
        return {"skipped": "refused"}
    docs = [SimpleNamespace(meta=d.get("meta") or {}) for d in ans.documents]
    allowed, reason, decision_id = route_to(rag.policy, principal, question, "judge", docs, judge.profile())
    if not allowed:
        return {"skipped": "policy", "reason": reason, "decision_id": decision_id}
    verdict = judge.judge(question, ans.answer, [str(d.get("content") or "") for d in ans.documents])
    return verdict.to_dict() | {"decision_id": decision_id}


def _judge_metrics(judged: dict[str, dict[str, Any]], wanted: list[str]) -> dict[str, float]:
    """Means of the judged metrics over the answers the judge could score, and the judge's counters."""
    out: dict[str, float] = {}
    for name in wanted:
        vals = [float(v[name]) for v in judged.values() if v.get(name) is not None]
        if vals:  # no verdict at all: no metric (a gate on it then names the missing metric)
            out[f"judge_{name}"] = sum(vals) / len(vals)
    out["judge_answers"] = float(sum(1 for v in judged.values() if "skipped" not in v))
    out["judge_skipped_by_policy"] = float(sum(1 for v in judged.values() if v.get("skipped") == "policy"))
    out["judge_calls"] = float(sum(int(v.get("calls", 0)) for v in judged.values()))
    out["judge_errors"] = float(sum(int(v.get("errors", 0)) for v in judged.values()))
    return out


def _docs_by_id(rag: Any, ans: Any, cited: set[str]) -> list[Any]:
    """The stored chunks behind an answer's documents (so leakage is checked on stored metadata)."""
    ids = sorted({d["chunk_id"] for d in ans.documents} | cited)
    if not ids:
        return []
    return list(rag.store.filter_documents({"field": "id", "operator": "in", "value": ids}))
