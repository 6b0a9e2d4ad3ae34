"""The application layer: one :class:`RagApp` and one tracker behind every caller (CLI, Python, server).

Each operation (ask, retrieve, ingest, evaluate, reproduce, feedback) opens a tracked MLflow run, logs the run
manifest (config, hash, model/index/policy fingerprints, pipeline), applies the output policy's log redaction
and records the trace. ``ask`` can stream: ``on_event`` receives the documents and answer deltas, with the
output policy applied before anything is handed out (PII redaction per sentence).

    >>> from ragconf.service import RagService
    >>> with RagService.from_overrides(["pipeline=bm25"]) as svc:
    ...     answer = svc.ask("How do I fail over the database?", "alice")   # a tracked ask run
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from ragconf.errors import RagconfError, SpecError, TrackingError
from ragconf.policy.audit import run_context
from ragconf.runtime import NO_CITED_ANSWER, Answer, RagApp
from ragconf.types import Principal

__all__ = [
    "NO_CITED_ANSWER",
    "EventCallback",
    "IngestResult",
    "RagService",
    "Retrieval",
    "error_status",
    "mask_secrets",
    "summary_dict",
    "summary_metrics",
]

#: ``on_event(name, data)``: ``documents`` ({"documents": [...]}) then ``delta`` ({"text": ...}) events.
EventCallback = Callable[[str, dict[str, Any]], None]

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")
SECRET_KEYS = ("sha256", "secret", "token", "password", "api_key")


@dataclass
class Retrieval:
    """What ``retrieve`` returns: the allowed documents, the decision ids and timings, the run key."""

    question: str
    user: str
    documents: list[dict[str, Any]]
    decision_ids: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IngestResult:
    """What ``ingest`` returns: the ingest summary and the run key of the tracked ``ingest`` run."""

    summary: Any
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(summary_dict(self.summary), run_id=self.run_id)


def summary_dict(summary: Any) -> dict[str, Any]:
    """An ingest summary as a JSON-ready dict."""
    if hasattr(summary, "to_dict"):
        return dict(summary.to_dict())
    data = asdict(summary) if is_dataclass(summary) and not isinstance(summary, type) else dict(summary)
    data["errors"] = [str(e) for e in data.get("errors") or []]
    return data


def summary_metrics(summary: Any) -> dict[str, float]:
    """Numeric fields of an ingest summary, plus the number of errors / quarantined / withdrawn documents."""
    data = summary_dict(summary)
    out = {k: float(v) for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    out.update(
        {k: float(len(data[k])) for k in ("errors", "quarantined", "withdrawn") if isinstance(data.get(k), list)}
    )
    return out


def mask_secrets(data: Any) -> Any:
    """A copy of a config with values under secret-looking keys (``sha256``, ``secret``...) masked: a string
    under any key containing one of :data:`SECRET_KEYS`, a number under a key ending in one (a numeric
    ``password: 123456``, but not ``max_tokens: 256``)."""
    if isinstance(data, dict):
        return {k: "<masked>" if _secret_value(str(k).lower(), v) else mask_secrets(v) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_secrets(v) for v in data]
    return data


def _secret_value(key: str, value: Any) -> bool:
    if isinstance(value, str):
        return any(s in key for s in SECRET_KEYS)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return key.endswith(SECRET_KEYS)
    return False


class _DeltaGate:
    """Applies the output policy to streamed text: with redaction required, text is released sentence by
    sentence, each one redacted first; otherwise deltas pass through as they come."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.redact = False
        self.buffer = ""

    def __call__(self, delta: str) -> None:
        if not self.redact:
            self.emit(delta)
            return
        self.buffer += delta
        last = None
        for m in _SENTENCE_END.finditer(self.buffer):
            last = m
        if last is not None:
            done, self.buffer = self.buffer[: last.end()], self.buffer[last.end() :]
            self._release(done)

    def _release(self, text: str) -> None:
        from ragconf.policy.redact import redact

        out = []
        start = 0
        for m in _SENTENCE_END.finditer(text):
            out.append(redact(text[start : m.start()])[0] + text[m.start() : m.end()])
            start = m.end()
        if start < len(text):
            out.append(redact(text[start:])[0])
        self.emit("".join(out))

    def close(self) -> None:
        if self.redact and self.buffer:
            text, self.buffer = self.buffer, ""
            self._release(text)


class RagService:
    """One configured application and its tracker; thread-safe, shared by every request of a server.

    ``source`` tags each run with its caller (``cli``, ``python``, ``server``)."""

    def __init__(self, rag: RagApp, *, tracker: Any = None, source: str = "python") -> None:
        self.rag = rag
        self.source = source
        self._tracker = tracker
        self._lock = threading.Lock()
        self._ingest_lock = threading.Lock()
        self._run_config_cache: tuple[tuple[int, str], tuple[dict[str, Any], list[str], str]] | None = None

    @classmethod
    def from_overrides(
        cls, overrides: list[str] | None = None, config_dir: str | Path | None = None, *, source: str = "python"
    ) -> RagService:
        return cls(RagApp.from_overrides(overrides, config_dir), source=source)

    def __enter__(self) -> RagService:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- plumbing ------------------------------------------------------------------------------------
    @property
    def spec(self) -> Any:
        return self.rag.spec

    @property
    def tracker(self) -> Any:
        if self._tracker is None:
            with self._lock:
                if self._tracker is None:
                    from ragconf.tracking import make_tracker

                    self._tracker = make_tracker(
                        self.spec.tracking.model_dump(),
                        workdir=self.rag.workdir,
                        spool=self.source == "cli",  # a CLI process spools ask runs and exits at once
                        writer=self._ask_writer(),
                    )
        return self._tracker

    def tracking_config(self) -> dict[str, Any]:
        return dict(self.spec.tracking.model_dump(), workdir=str(self.rag.workdir))

    def config_hash(self) -> str:
        """The hash tagged on every run: of the resolved config with paths under the built-in root, the config
        dir and the current dir written relative to them, so another clone of the same commit reproduces it."""
        return portable_hash(self.rag.loaded.data, self.rag.config_dir)

    def _run_config(self) -> tuple[dict[str, Any], list[str], str]:
        """(config with secrets masked, masked overrides, config hash) every run of this service logs; made
        once (a server logs them on every ask) and again only if the config or the current dir changes."""
        loaded = self.rag.loaded
        key = (id(loaded), os.getcwd())
        cached = self._run_config_cache
        if cached is None or cached[0] != key:
            value = (mask_secrets(loaded.data), [_mask_override(o) for o in loaded.overrides], self.config_hash())
            cached = self._run_config_cache = (key, value)
        return cached[1]

    @contextlib.contextmanager
    def _start(self, kind: str, **kw: Any) -> Iterator[Any]:
        """A tracked run of ``kind`` with the config (secrets masked), its overrides and the tags runs are
        filtered by in one project experiment (``ragconf.pipeline/corpus/generator``, ``policy.revision``)."""
        config, overrides, digest = self._run_config()
        with self.tracker.start_run(kind, config=config, overrides=overrides, config_hash=digest, **kw) as run:
            try:
                yield run
            finally:  # after the work: the policy revision it used is known by then
                run.set_tags(self.run_tags())

    def run_tags(self) -> dict[str, str]:
        spec = self.spec
        tags = {
            "ragconf.pipeline": spec.pipeline.name,
            "ragconf.corpus": spec.corpus.name,
            "ragconf.generator": spec.generator.name,
            "ragconf.project": spec.project.name,
        }
        policy = self.rag._parts.get("governed")  # the revision when policies are loaded (no load just for a tag)
        if policy is not None:
            tags["policy.revision"] = policy.policy.bundle_revision
        return tags

    def log_manifest(self, run: Any) -> None:
        """Model, index and policy fingerprints plus the Haystack pipeline YAML."""
        rag = self.rag
        run.log_model_fingerprint(rag.spec.embedder.model, rag.embedder.model_files())
        run.log_index_fingerprint(rag.store.fingerprint())
        run.log_policy_revision(rag.policy.bundle_revision)
        run.log_text(rag.retrieval.pipeline.dumps(), "pipeline.yaml")

    @staticmethod
    def _warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    def _ask_writer(self) -> str:
        """``tracking.ask_writer``; ``auto``: the spool writer process for a server (MLflow's Python would
        share the interpreter lock with the requests), a background thread for Python callers."""
        mode = str(self.spec.tracking.ask_writer)
        if mode == "auto":
            return "process" if self.source in ("server", "cli") else "thread"
        return mode

    def _asks_tracked(self) -> bool:
        return bool(self.spec.tracking.enabled and self.spec.tracking.log_asks)

    # ----- operations ----------------------------------------------------------------------------------
    def principal(self, user: str | Principal | None) -> Principal:
        return self.rag.principal(user)

    def ask(
        self,
        question: str,
        user: str | Principal | None,
        *,
        profile: str | None = None,
        top_k: int | None = None,
        on_event: EventCallback | None = None,
    ) -> Answer:
        """A cited answer for ``user``, tracked as an ``ask`` run (``answer.run_id``).

        With ``on_event``, ``documents`` is reported before generation and ``delta`` events carry the answer
        text as it is produced, already redacted per sentence when the output policy requires it. The
        returned answer is final: when citations are required and the generated text has none, it is the
        replacement notice (``answer.answer == NO_CITED_ANSWER``) and clients must render that instead."""
        on_documents = on_delta = None
        gate: _DeltaGate | None = None
        if on_event is not None:
            emit = on_event
            gate = _DeltaGate(lambda text: emit("delta", {"text": text}) if text else None)

            def on_documents_cb(records: list[dict[str, Any]], rules: dict[str, bool]) -> None:
                assert gate is not None
                gate.redact = bool(rules.get("redact_pii"))
                emit("documents", {"documents": records, "rules": dict(rules)})

            def on_delta_cb(text: str) -> None:  # a function: Haystack deep-copies inputs, functions stay shared
                assert gate is not None
                gate(text)

            on_documents, on_delta = on_documents_cb, on_delta_cb
        if not self._asks_tracked():
            answer = self.rag.ask(
                question, user, profile=profile, top_k=top_k, on_documents=on_documents, on_delta=on_delta
            )
            if gate is not None:
                gate.close()
            return answer
        # the run is opened first so every audit line of this ask carries its run id
        with self._start("ask") as run, run_context(run.run_id):
            answer = self.rag.ask(
                question, user, profile=profile, top_k=top_k, on_documents=on_documents, on_delta=on_delta
            )
            if gate is not None:
                gate.close()
            answer.run_id = str(run.run_id) if run.run_id else None
            self._log_ask(run, answer)
        return answer

    def _log_ask(self, run: Any, answer: Answer) -> None:
        try:
            run.set_tags({f"decision.{k}": v for k, v in answer.decision_ids.items()})
            run.set_tags(
                {
                    "ragconf.user": answer.user,
                    "ragconf.source": self.source,
                    "ragconf.redact_logs": str(answer.redact_logs).lower(),
                    "ragconf.refused": str(answer.refused).lower(),
                }
            )
            run.log_metrics(dict(answer.timings_ms))
            run.log_metrics({f"usage.{k}": v for k, v in answer.usage.items()})
            if answer.trace:
                inputs, outputs = self.trace_content(
                    answer.question,
                    answer.redact_logs,
                    answer=answer.answer,
                    document_ids=[d["chunk_id"] for d in answer.documents],
                    citations=[c["chunk_id"] for c in answer.citations],
                    user=answer.user,
                )
                run.log_trace("ask", answer.trace, inputs=inputs, outputs=outputs)
            run.log_dict(
                {
                    "question": self._loggable(answer.question, answer.redact_logs),
                    "user": answer.user,
                    "documents": [d["chunk_id"] for d in answer.documents],
                    "citations": answer.citations,
                    "route": answer.route,
                },
                "ask.json",
            )
        except Exception as exc:  # tracking never loses the answer
            self._warn(f"tracking failed: {exc}")

    def trace_content(
        self,
        question: str,
        redact_logs: bool,
        *,
        answer: str | None = None,
        document_ids: list[str] | None = None,
        citations: list[str] | None = None,
        user: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Root-span inputs and outputs of a request's trace per ``tracking.trace_content``: ``ids`` (default:
        user, question length, document / citation ids), ``redacted`` (plus question and answer with PII
        redacted), ``full`` (plus the raw text, when the output policy did not require redaction for this
        request; otherwise redacted, and ``content`` says so)."""
        mode = self.spec.tracking.trace_content
        inputs: dict[str, Any] = {"user": user, "question_chars": len(question)}
        outputs: dict[str, Any] = {"document_ids": list(document_ids or [])}
        if citations is not None:
            outputs["citations"] = list(citations)
        if mode == "ids":
            return inputs, outputs
        redact = mode == "redacted" or redact_logs
        inputs["content"] = outputs["content"] = "redacted" if redact else "full"
        inputs["question"] = self._loggable(question, True) if redact else question
        if answer is not None:
            outputs["answer"] = self._loggable(answer, True) if redact else answer
        return inputs, outputs

    @staticmethod
    def _loggable(text: str, redact_logs: bool) -> str:
        if not redact_logs:
            return text
        from ragconf.policy.redact import redact

        return redact(text)[0]

    def retrieve(self, question: str, user: str | Principal | None, *, top_k: int | None = None) -> Retrieval:
        """The documents the access policy lets ``user`` see for ``question`` (tracked as a ``retrieve`` run)."""
        from ragconf import spans
        from ragconf.runtime import _doc_record

        principal = self.rag.principal(user)
        if not self._asks_tracked():
            docs, ids, timings = self.rag.retrieve(question, principal, top_k=top_k)
            return Retrieval(question, principal.id, [_doc_record(d) for d in docs], ids, timings)
        with self._start("retrieve") as run, run_context(run.run_id):
            with spans.collect("retrieve", user=principal.id) as trace:
                docs, ids, timings = self.rag.retrieve(question, principal, top_k=top_k)
            run.set_tags({f"decision.{k}": v for k, v in ids.items()})
            run.set_tags({"ragconf.user": principal.id, "ragconf.source": self.source})
            run.log_metrics(timings)
            inputs, outputs = self.trace_content(question, False, document_ids=[d.id for d in docs], user=principal.id)
            run.log_trace("retrieve", trace, inputs=inputs, outputs=outputs)
            run.log_dict({"user": principal.id, "documents": [d.id for d in docs]}, "retrieve.json")
        run_id = str(run.run_id) if run.run_id else None
        return Retrieval(question, principal.id, [_doc_record(d) for d in docs], ids, timings, run_id)

    def ingest(self, progress: Callable[[int, int], None] | None = None) -> IngestResult:
        """Incremental ingest of the configured corpus, tracked as an ``ingest`` run (one ingest at a time
        per service)."""
        if getattr(self.tracker, "spool", False):
            self.tracker.warm_up()  # mlflow's import overlaps the ingest
        with self._ingest_lock, self._start("ingest") as run:
            summary = self.rag.ingest(progress=progress)
            self.log_manifest(run)
            run.set_tags({"ragconf.source": self.source})
            run.log_metrics(summary_metrics(summary))
            run_id = run.run_id
        return IngestResult(summary, str(run_id) if run_id else None)

    def start_sweep(self, overrides: list[str]) -> Any:
        """The parent run of a sweep (``eval -m``); pass its ``run_id`` to :meth:`evaluate` and close it with
        ``close("FAILED")`` when a child failed (``close()`` = FINISHED)."""
        return self.tracker.start_parent("sweep", overrides=[_mask_override(o) for o in overrides])

    def evaluate(
        self,
        *,
        user: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        parent_run_id: str | None = None,
        explain: float | None = None,
    ) -> Any:
        """The configured evaluation set through the pipeline, tracked as an ``eval`` run (with the dataset
        fingerprint and ``eval.json``). Returns an :class:`ragconf.experiment.EvalResult`. ``explain``: a
        threshold; every query with nDCG@10 below it is classified (:mod:`ragconf.eval.explain`) and the
        counts are logged (``explain.*`` metrics, ``eval/explain.json``, the per-query table's ``failure``)."""
        from ragconf.eval.report import log_eval_report
        from ragconf.experiment import preflight, run_eval

        preflight(self.rag)  # user mistakes (no eval set, empty store) fail at once, before mlflow is touched
        tracker = self.tracker
        if getattr(tracker, "spool", False):
            tracker.warm_up()  # opens the tracking store in the background while the evaluation runs
        if parent_run_id is not None:
            tracker.parent_run_id = parent_run_id
        try:
            result = run_eval(self.rag, user=user, progress=progress)
            if explain is not None:
                from ragconf.eval.explain import explain as explain_failures

                explain_failures(self.rag, result, threshold=explain)
        except BaseException as exc:
            if parent_run_id is not None:  # a sweep shows the child that failed, and why
                with contextlib.suppress(BaseException), self._start("eval") as run:
                    run.set_tags({"ragconf.source": self.source, "ragconf.error": str(exc)[:500]})
                    raise exc
            raise
        if result.top_k_override is not None:
            self._warn(
                f"eval.top_k={result.top_k_override} overrides the top_k of the pipeline's output component "
                "(set eval.top_k=null to evaluate what users get)"
            )
        with self._start("eval") as run:
            run.log_metrics(result.metrics)
            run.set_tags({"ragconf.user": result.user, "ragconf.source": self.source})
            run.set_tags({"ragconf.gates": "passed" if result.passed else "failed"})
            if result.top_k_override is not None:
                run.set_tags({"eval.top_k_override": result.top_k_override})
            root = result.dataset
            digest = None
            if root is not None:
                digest = run.log_dataset_fingerprint(root.name, sorted(p for p in root.rglob("*") if p.is_file()))
            self.log_manifest(run)
            run.log_dict(result.to_dict(), "eval.json")
            # the evaluation set as a dataset input, the per-query table and plots (ragconf.eval.report)
            log_eval_report(run, result, digest=digest, split=self.rag.spec.eval.split)
            if result.judged:  # the judge's verdict counts per query (no rationale: it may quote passages)
                run.log_dict(result.judged, "eval/judge.json")
            if result.explanation is not None:
                run.log_metrics(result.explanation.metrics())
                run.log_dict(result.explanation.to_dict(), "eval/explain.json")
            run.log_query_traces(self._query_traces(result))
            result.run_id = str(run.run_id) if run.run_id else None
        return result

    def _query_traces(self, result: Any) -> list[dict[str, Any]]:
        """One trace per evaluated query: its spans, tagged with the query id, content per trace_content."""
        out = []
        for qid, spans_ in result.traces.items():
            text = result.query_texts.get(qid, "")
            inputs, outputs = self.trace_content(text, False, document_ids=result.retrieved.get(qid, []))
            inputs.pop("user", None)
            trace: dict[str, Any] = {
                "spans": spans_,
                "tags": {"ragconf.query_id": str(qid), "ragconf.user": result.user},
                "inputs": {"query_id": qid, **inputs},
                "outputs": outputs,
            }
            verdicts = {
                k: v
                for k, v in (result.judged.get(qid) or {}).items()
                if k in ("faithfulness", "citation_correctness", "answer_relevance") and v is not None
            }
            if verdicts:  # the judge's scores as LLM_JUDGE assessments on the query's trace
                judge = self.rag.spec.eval.judge
                trace["judge"] = {"verdicts": verdicts, "model": judge.model if judge else "judge"}
            out.append(trace)
        return out

    def reproduce(self, run_id: str) -> dict[str, Any]:
        """Re-run a tracked eval run with its exact logged config and compare the retrieval metrics exactly.

        The logged overrides are re-applied to the built-in configs (``config_dir=None``) and, failing that, to
        this app's config dir; the rebuilt config must hash to the run's logged ``config_hash``. Returns
        ``{"new_run_id", "match", "metrics": {name: (old, new)}}``."""
        import json

        from ragconf.eval.metrics import METRICS
        from ragconf.spec import load_config
        from ragconf.spec.loader import config_hash
        from ragconf.tracking import get_run, load_run_artifact, load_run_config

        cfg = self.tracking_config()
        config, overrides = load_run_config(cfg, run_id)
        old = get_run(cfg, run_id)
        if old["kind"] != "eval":
            raise TrackingError(f"run '{run_id}' is a '{old['kind']}' run; only eval runs can be reproduced")
        logged = json.loads(load_run_artifact(cfg, run_id, "eval.json") or "{}")
        want = old["tags"].get("config_hash") or config_hash(config)
        loaded, config_dir, errors = None, None, []
        for candidate in dict.fromkeys([None, self.rag.config_dir]):
            try:
                attempt = load_config(candidate, overrides)
            except SpecError as exc:
                errors.append(str(exc).splitlines()[0])
                continue
            if want in (portable_hash(attempt.data, candidate), attempt.hash):
                loaded, config_dir = attempt, candidate
                break
            errors.append(
                f"config dir {candidate or '(built-in)'} gives config hash {attempt.hash[:12]}, not {want[:12]}"
            )
        if loaded is None:
            raise TrackingError(
                f"cannot rebuild the exact config of run '{run_id}' from its overrides {overrides}: "
                + "; ".join(errors),
                hint="pass the --config-dir the run was made with",
            )
        with RagService(RagApp(loaded, config_dir=config_dir), source=self.source) as again:
            result = again.evaluate(user=logged.get("user") or None)
        old_metrics = logged.get("metrics") or {}
        names = [m for m in METRICS if m in old_metrics or m in result.metrics]
        pairs = {m: (old_metrics.get(m, old["metrics"].get(m.replace("@", "_"))), result.metrics.get(m)) for m in names}
        match = bool(pairs) and all(a is not None and b is not None and float(a) == float(b) for a, b in pairs.values())
        return {"new_run_id": result.run_id, "match": match, "metrics": pairs}

    def feedback(self, run_id: str, rating: int, comment: str | None, user: str) -> dict[str, Any]:
        """Record a rating (and comment) on the ``ask`` run ``run_id`` of ``user``. Only the user who asked
        may rate the run (AccessDenied otherwise); the comment is redacted when the ask's logs were."""
        from ragconf.errors import AccessDenied

        tags = self.tracker.run_tags(run_id)
        if tags.get("ragconf.kind") != "ask" or tags.get("ragconf.user") != user:
            raise AccessDenied(f"run '{run_id}' is not an ask run of user '{user}'")
        text = self._loggable(comment or "", tags.get("ragconf.redact_logs") == "true")
        mlflow_id = self.tracker.annotate(
            run_id,
            metrics={"feedback.rating": float(rating)},
            tags={"feedback.rating": rating, "feedback.comment": text[:500]},
            artifacts={"feedback.json": {"rating": rating, "comment": text, "user": user}},
        )
        out: dict[str, Any] = {"run_id": run_id, "mlflow_run_id": mlflow_id, "recorded": True}
        trace_id = tags.get("ragconf.trace_id")
        if trace_id:  # the rating as an MLflow assessment on the ask's trace (Traces tab)
            out["trace_id"] = trace_id
            out["assessment_id"] = self.tracker.log_feedback(trace_id, rating=rating, comment=text, user=user)
        return out

    def reload_policies(self) -> dict[str, Any]:
        """Load the policy bundle again and swap it in atomically. A bundle that does not load raises and
        the old policies keep serving."""
        old = self.rag.policy.bundle_revision
        new = self.rag.reload_policies()
        return {"reloaded": True, "previous_revision": old, "revision": new}

    def readiness(self) -> dict[str, Any]:
        """Whether the store is open and policies are loaded (raises the underlying error otherwise)."""
        return {
            "store_documents": int(self.rag.store.count_documents()),
            "policy_revision": self.rag.policy.bundle_revision,
            "users": len(self.rag.directory.ids()),
        }

    def close(self) -> None:
        self.rag.close()


def portable_hash(data: dict[str, Any], config_dir: str | Path | None) -> str:
    """:func:`ragconf.tracking.portable_config_hash` with ragconf's roots (built-in files, config dir, cwd)."""
    from ragconf.spec.loader import BUILTIN_ROOT
    from ragconf.tracking.mlflow_tracker import portable_config_hash

    roots = {"${rc_root:}": BUILTIN_ROOT, "${rc_config_dir:}": config_dir, "${cwd:}": Path.cwd()}
    return portable_config_hash(data, roots)


def _mask_override(item: str) -> str:
    key, eq, value = item.partition("=")
    if eq and any(s in key.lower() for s in SECRET_KEYS):
        return f"{key}=<masked>"
    return item


def error_status(exc: RagconfError) -> int:
    """The HTTP status a ragconf error maps to (shared by the server and any other front end)."""
    from ragconf.errors import PolicyError

    if isinstance(exc, PolicyError):
        return 403
    if exc.exit_code == 2:
        return 422
    return 500
