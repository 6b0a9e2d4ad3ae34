"""RagApp: principal -> access policy -> retrieval -> guard -> routing -> generation -> output policy."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ragconf import spans
from ragconf.compile import GUARD_NAME, BuildContext, BuiltStage, build_stage
from ragconf.errors import SpecError
from ragconf.spec.loader import LoadedConfig, load_config
from ragconf.spec.models import GeneratorSpec
from ragconf.types import Principal

__all__ = ["Answer", "RagApp"]

REFUSAL = "I cannot answer this request: {reason}"
NO_CITED_ANSWER = "No answer with citations could be produced from the documents you can access."


@dataclass
class Answer:
    """What `ask` returns (and `ask --json` prints)."""

    question: str
    user: str
    answer: str
    citations: list[dict[str, Any]]
    documents: list[dict[str, Any]]
    decision_ids: dict[str, str] = field(default_factory=dict)
    route: str | None = None
    refused: bool = False
    reason: str = ""
    redacted: list[str] = field(default_factory=list)  # PII entity types masked in the answer
    timings_ms: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    usage: dict[str, int] = field(default_factory=dict)  # generator tokens: prompt_tokens, completion_tokens
    redact_logs: bool = False  # the output policy requires PII redaction of answers and logs
    trace: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self, *, include_trace: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not include_trace:
            out.pop("trace")
        return out


def _doc_record(doc: Any) -> dict[str, Any]:
    meta = dict(doc.meta or {})
    return {
        "doc_id": meta.get("doc_id"),
        "chunk_id": doc.id,
        "score": doc.score,
        "source": meta.get("source"),
        "title": meta.get("title"),
        "content": doc.content,
        "meta": meta,
    }


def _token_usage(outputs: Any) -> dict[str, int]:
    """Sum the token counts generators report in their ``meta`` (OpenAI and llama.cpp ``usage``)."""
    totals = {"prompt_tokens": 0, "completion_tokens": 0}
    for comp_out in (outputs or {}).values():
        metas = comp_out.get("meta") if isinstance(comp_out, dict) else None
        for m in metas if isinstance(metas, list) else []:
            usage = m.get("usage") if isinstance(m, dict) else None
            if isinstance(usage, dict):
                for k in totals:
                    if isinstance(usage.get(k), int):
                        totals[k] += usage[k]
    return totals


def _reply_text(reply: Any) -> str:
    if isinstance(reply, list):
        reply = reply[0] if reply else ""
    text = getattr(reply, "text", reply)
    return str(text or "")


class RagApp:
    """One configured ragconf application. Heavy parts (store, models, policies) load on first use."""

    def __init__(self, loaded: LoadedConfig, *, config_dir: str | Path | None = None) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.config_dir = config_dir
        self.workdir = Path(self.spec.project.workdir)

    @classmethod
    def from_overrides(cls, overrides: list[str] | None = None, config_dir: str | Path | None = None) -> RagApp:
        return cls(load_config(config_dir, overrides or []), config_dir=config_dir)

    # ----- parts -------------------------------------------------------------------------------------
    @cached_property
    def embedder(self) -> Any:
        from ragconf.components.embedders import OnnxEmbedder

        e = self.spec.embedder
        return OnnxEmbedder(model=e.model, batch_size=e.batch_size, max_length=e.max_length, threads=e.threads)

    @cached_property
    def store(self) -> Any:
        from ragconf._fs import private_workdir
        from ragconf.store import open_store

        cfg = self.spec.store.model_dump()
        private_workdir(self.workdir)  # 0700; the sqlite store creates its own folder and files private
        return open_store(cfg, embedding_dim=self.embedder.dim)

    @cached_property
    def directory(self) -> Any:
        from ragconf.identity import Directory

        return Directory(self.spec.identity)

    @cached_property
    def policy(self) -> Any:
        from ragconf.policy import build_policy_service

        return build_policy_service(self.spec.policy.model_dump(), workdir=self.workdir)

    def _ctx(self) -> BuildContext:
        return BuildContext(
            store=self.store, embedder=self.spec.embedder, policy=self.policy, source_of=self.loaded.source_of
        )

    @cached_property
    def retrieval(self) -> BuiltStage:
        return build_stage(self.spec.pipeline, "pipeline", self._ctx(), guard=True)

    @cached_property
    def profiles(self) -> dict[str, GeneratorSpec]:
        """The configured generator plus every `routing.profiles` option, by name."""
        out = {self.spec.generator.name: self.spec.generator}
        for name in self.spec.routing.profiles:
            if name in out:
                continue
            other = load_config(self.config_dir, [*self.loaded.overrides, f"generator={name}"])
            out[other.spec.generator.name] = other.spec.generator
        return out

    _generators: dict[str, BuiltStage]

    def generation(self, profile: str) -> BuiltStage:
        cache = self.__dict__.setdefault("_generators", {})
        if profile not in cache:
            spec = self.profiles.get(profile)
            if spec is None:
                raise SpecError(
                    f"routing chose unknown profile '{profile}'",
                    key="routing.profiles",
                    valid=self.profiles,
                    got=profile,
                )
            cache[profile] = build_stage(spec, "generator", self._ctx())
        return cache[profile]

    # ----- operations --------------------------------------------------------------------------------
    def principal(self, user: str | Principal | None) -> Principal:
        """A user id from the identity config (or an already resolved Principal)."""
        if isinstance(user, Principal):
            return user
        return self.directory.resolve(user)

    def retrieve(
        self, question: str, principal: Principal, *, top_k: int | None = None
    ) -> tuple[list[Any], dict[str, str], dict[str, float]]:
        """Policy filter -> retrieval stage -> access guard. Returns (documents, decision ids, timings)."""
        timings: dict[str, float] = {}
        request = {"query": question, "action": "retrieve"}
        t0 = time.perf_counter()
        with spans.span("policy.access.filter") as sp:
            filt = self.policy.retrieval_filter(principal, request)  # raises AccessDenied when undefined
            sp.set_tag("decision_id", filt.decision_id)
        timings["policy_filter_ms"] = (time.perf_counter() - t0) * 1000
        extra: dict[str, dict[str, Any]] = {name: {"filters": filt.filters} for name in self.retrieval.retrievers}
        extra[GUARD_NAME] = {"principal": principal, "request": request}
        if top_k is not None:
            pre_comp = self._pre_guard_output()
            if pre_comp is not None:
                extra.setdefault(pre_comp, {})["top_k"] = top_k
        t1 = time.perf_counter()
        with spans.span("retrieval") as sp:
            docs, result = self.retrieval.run({"query": question}, extra=extra)
            guard_out = result.get(GUARD_NAME, {})
            ids = {"access.filter": filt.decision_id, "access.documents": guard_out.get("decision_id", "")}
            sp.set_tag("decision_ids", dict(ids))
            sp.set_tag("document_ids", [d.id for d in docs or []])
        timings["retrieval_ms"] = (time.perf_counter() - t1) * 1000
        return list(docs or []), ids, timings

    def _pre_guard_output(self) -> str | None:
        from ragconf.compile import input_sockets

        comp = self.spec.pipeline.output.split(".", 1)[0]
        inst = self.retrieval.pipeline.get_component(comp)
        return comp if "top_k" in input_sockets(inst) else None

    def ask(self, question: str, user: str | Principal | None) -> Answer:
        """Answer ``question`` for ``user`` with numbered citations, enforcing every policy decision.
        The answer carries the request's trace (spans per step and per pipeline component)."""
        with spans.collect("ask", user=getattr(user, "id", user)) as trace:
            answer = self._ask(question, user)
        answer.trace = trace
        return answer

    def _ask(self, question: str, user: str | Principal | None) -> Answer:
        from ragconf.components.citations import extract_citations
        from ragconf.components.generators import NO_ANSWER

        start = time.perf_counter()
        principal = self.principal(user)
        docs, ids, timings = self.retrieve(question, principal)
        request = {"query": question, "action": "answer"}
        t0 = time.perf_counter()
        with spans.span("policy.routing") as sp:
            profiles = [self._profile_input(p) for p in self.profiles.values()]
            route = self.policy.route(principal, request, docs, profiles)
            ids["routing"] = route.decision_id
            sp.set_tags({"decision_id": route.decision_id, "profile": route.profile, "refused": route.refused})
        with spans.span("policy.output") as sp:
            out_rules = self.policy.output_rules(principal, request, docs)
            ids["output"] = out_rules.decision_id
            sp.set_tag("decision_id", out_rules.decision_id)
        timings["policy_route_output_ms"] = (time.perf_counter() - t0) * 1000
        if route.refused or not route.profile:
            return Answer(
                question,
                principal.id,
                REFUSAL.format(reason=route.reason or "refused by policy"),
                [],
                [],
                ids,
                None,
                True,
                route.reason,
                timings_ms=timings,
                redact_logs=bool(out_rules.redact_pii),
            )
        passages = docs[: max(0, int(out_rules.max_passages))] if out_rules.max_passages else docs
        t1 = time.perf_counter()
        with spans.span("generation", profile=route.profile, passages=len(passages)):
            replies, gen_out = self.generation(route.profile).run({"query": question, "documents": passages})
        timings["generation_ms"] = (time.perf_counter() - t1) * 1000
        usage = _token_usage(gen_out)
        text = _reply_text(replies)
        citations = extract_citations(text, passages)
        redacted: list[str] = []
        if out_rules.require_citations and not citations and text.strip() != NO_ANSWER:
            text = NO_CITED_ANSWER
        if out_rules.redact_pii:
            from ragconf.policy.redact import redact

            with spans.span("policy.redaction") as sp:
                text, redacted = redact(text)
                sp.set_tag("redacted", list(redacted))
        timings["total_ms"] = (time.perf_counter() - start) * 1000
        return Answer(
            question,
            principal.id,
            text,
            citations,
            [_doc_record(d) for d in passages],
            ids,
            route.profile,
            False,
            route.reason,
            redacted,
            timings,
            usage=usage,
            redact_logs=bool(out_rules.redact_pii),
        )

    @staticmethod
    def _profile_input(spec: GeneratorSpec) -> dict[str, Any]:
        return {"name": spec.name, "locality": spec.locality, "provider": spec.provider, "region": spec.region}

    def ingest(self, progress: Any = None) -> Any:
        from ragconf.ingest import ingest

        return ingest(
            self.spec.corpus, self.store, self.embedder.embed, corpus_name=self.spec.corpus.name, progress=progress
        )

    def close(self) -> None:
        store = self.__dict__.get("store")
        if store is not None:
            store.close()
