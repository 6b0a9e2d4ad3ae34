"""RagApp: principal -> access policy -> retrieval -> guard -> routing -> generation -> output policy."""

from __future__ import annotations

import copy
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from ragconf import spans
from ragconf.compile import GUARD_NAME, BuildContext, BuiltStage, build_stage
from ragconf.errors import SpecError
from ragconf.spec.loader import LoadedConfig, load_config, load_profile
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
    require_citations: bool = False  # the output policy requires citations (uncited answers are replaced)
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


@dataclass(frozen=True)
class _Governed:
    policy: Any
    retrieval: BuiltStage
    #: components of the retrieval stage with a ``route_gate`` input (e.g. ``llm_ranker``), found once per build
    gated: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        from ragconf.compile import input_sockets

        found = tuple(n for n, inst in self.retrieval.pipeline.walk() if "route_gate" in input_sockets(inst))
        object.__setattr__(self, "gated", found)


def _reply_text(reply: Any) -> str:
    if isinstance(reply, list):
        reply = reply[0] if reply else ""
    text = getattr(reply, "text", reply)
    return str(text or "")


class RagApp:
    """One configured ragconf application, safe to share between threads.

    Routing profiles are resolved when the app is created (no Hydra composition during a request). Heavy parts
    (store, models, policies, built stages) are created once, on first use, under a lock. The policy service
    and the retrieval stage that embeds it are swapped together by :meth:`reload_policies`; a request uses
    the pair it started with."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        config_dir: str | Path | None = None,
        profiles: dict[str, GeneratorSpec] | None = None,
    ) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.config_dir = config_dir
        self.workdir = Path(self.spec.project.workdir)
        self._lock = threading.RLock()
        self._parts: dict[str, Any] = {}
        self._generators: dict[str, BuiltStage] = {}
        self.profiles: dict[str, GeneratorSpec] = profiles if profiles is not None else self._resolve_profiles()
        from ragconf.cache import LRUCache

        self._retrieval_cache = LRUCache("retrieval", self.spec.cache.retrieval)
        self._answer_cache = LRUCache("answers", self.spec.cache.answers)

    @classmethod
    def from_overrides(cls, overrides: list[str] | None = None, config_dir: str | Path | None = None) -> RagApp:
        return cls(load_config(config_dir, overrides or []), config_dir=config_dir)

    def _resolve_profiles(self) -> dict[str, GeneratorSpec]:
        """The configured generator plus every `routing.profiles` option, by name (composed once, here)."""
        out = {self.spec.generator.name: self.spec.generator}
        for name in self.spec.routing.profiles:
            if name in out:
                continue
            other = load_profile(self.loaded, name, self.config_dir)  # generator.* overrides stay with ours
            out[other.spec.generator.name] = other.spec.generator
        return out

    # ----- parts (created once, under the lock) --------------------------------------------------------
    def _part(self, name: str, build: Callable[[], Any]) -> Any:
        part = self._parts.get(name)
        if part is not None:
            return part
        with self._lock:
            part = self._parts.get(name)
            if part is None:
                part = build()
                self._parts[name] = part
            return part

    @property
    def embedder(self) -> Any:
        def build() -> Any:
            from ragconf.components.embedders import OnnxEmbedder

            e = self.spec.embedder
            return OnnxEmbedder(model=e.model, batch_size=e.batch_size, max_length=e.max_length, threads=e.threads)

        return self._part("embedder", build)

    @property
    def store(self) -> Any:
        def build() -> Any:
            from ragconf._fs import private_workdir
            from ragconf.store import open_store

            cfg = self.spec.store.model_dump()
            private_workdir(self.workdir)  # 0700; the sqlite store creates its own folder and files private
            return open_store(cfg, embedding_dim=self.embedder.dim)

        return self._part("store", build)

    @property
    def directory(self) -> Any:
        def build() -> Any:
            from ragconf.identity import Directory

            return Directory(self.spec.identity)

        return self._part("directory", build)

    def _build_policy(self) -> Any:
        from ragconf.policy import build_policy_service

        return build_policy_service(
            self.spec.policy.model_dump(),
            workdir=self.workdir,
            attributes=tuple(self.spec.corpus.access.attributes),
        )

    def _ctx(self, policy: Any) -> BuildContext:
        return BuildContext(
            store=self.store, embedder=self.spec.embedder, policy=policy, source_of=self.loaded.source_of
        )

    def _governed(self) -> _Governed:
        """The policy service and the retrieval stage built on it (one consistent pair)."""

        def build() -> _Governed:
            policy = self._build_policy()
            return _Governed(policy, build_stage(self.spec.pipeline, "pipeline", self._ctx(policy), guard=True))

        return cast(_Governed, self._part("governed", build))

    @property
    def policy(self) -> Any:
        return self._governed().policy

    @property
    def retrieval(self) -> BuiltStage:
        return self._governed().retrieval

    def reload_policies(self) -> str:
        """Load the policy bundle again and swap it in atomically; returns the new bundle revision. A bundle
        that does not load raises (PolicyError/SpecError) and the old policies keep serving."""
        policy = self._build_policy()
        stage = build_stage(self.spec.pipeline, "pipeline", self._ctx(policy), guard=True)
        with self._lock:
            old = self._parts.get("governed")
            self._parts["governed"] = _Governed(policy, stage)
        if old is not None and old.policy is not policy:
            old.policy.audit.close()  # reopened on the next write, if an in-flight request still logs
        return str(policy.bundle_revision)

    def generation(self, profile: str) -> BuiltStage:
        stage = self._generators.get(profile)
        if stage is not None:
            return stage
        spec = self.profiles.get(profile)
        if spec is None:
            raise SpecError(
                f"routing chose unknown profile '{profile}'",
                key="routing.profiles",
                valid=self.profiles,
                got=profile,
            )
        with self._lock:
            stage = self._generators.get(profile)
            if stage is None:
                stage = build_stage(spec, "generator", self._ctx(self.policy))
                self._generators[profile] = stage
            return stage

    # ----- operations --------------------------------------------------------------------------------
    def principal(self, user: str | Principal | None) -> Principal:
        """A user id from the identity config (or an already resolved Principal)."""
        if isinstance(user, Principal):
            return user
        return cast(Principal, self.directory.resolve(user))

    def retrieve(
        self, question: str, principal: Principal, *, top_k: int | None = None, governed: _Governed | None = None
    ) -> tuple[list[Any], dict[str, str], dict[str, float]]:
        """Policy filter -> retrieval stage -> access guard. Returns (documents, decision ids, timings)."""
        g = governed or self._governed()
        timings: dict[str, float] = {}
        request = {"query": question, "action": "retrieve"}
        t0 = time.perf_counter()
        with spans.span("policy.access.filter") as sp:
            filt = g.policy.retrieval_filter(principal, request)  # raises AccessDenied when undefined
            sp.set_tag("decision_id", filt.decision_id)
        timings["policy_filter_ms"] = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        key = self._retrieval_key(question, top_k, principal, g)
        cached = self._retrieval_cache.get(key) if key is not None else None
        if cached is not None:
            # the cache skips the retrievers, never a policy decision: every cached document is checked again
            # by the current policy for this principal (a fresh, audited decision)
            with spans.span("retrieval", cache="hit") as sp:
                decision = g.policy.check_documents(principal, list(cached), request)
                docs = decision.allowed
                ids = {"access.filter": filt.decision_id, "access.documents": decision.decision_id}
                sp.set_tag("decision_ids", dict(ids))
                sp.set_tag("document_ids", [d.id for d in docs])
            timings["retrieval_ms"] = (time.perf_counter() - t1) * 1000
            timings["retrieval_cache_hit"] = 1.0
            return list(docs), ids, timings
        # one filter object per retriever: the stage pipeline deep-copies an input given to several sockets
        # leaf by leaf (~0.3 ms for the shipped filter), a plain deep copy here costs a tenth of that
        extra: dict[str, dict[str, Any]] = {
            name: {"filters": filt.filters if i == 0 else copy.deepcopy(filt.filters)}
            for i, name in enumerate(g.retrieval.retrievers)
        }
        extra[GUARD_NAME] = {"principal": principal, "request": request}
        for name in g.gated:  # components that send passages elsewhere ask the routing policy first
            extra[name] = {"route_gate": functools.partial(route_to, g.policy, principal, question, "rerank")}
        if top_k is not None:
            pre_comp = self._pre_guard_output(g.retrieval)
            if pre_comp is not None:
                extra.setdefault(pre_comp, {})["top_k"] = top_k
        with spans.span("retrieval") as sp:
            docs, result = g.retrieval.run({"query": question}, extra=extra)
            guard_out = result.get(GUARD_NAME, {})
            ids = {"access.filter": filt.decision_id, "access.documents": guard_out.get("decision_id", "")}
            sp.set_tag("decision_ids", dict(ids))
            sp.set_tag("document_ids", [d.id for d in docs or []])
        timings["retrieval_ms"] = (time.perf_counter() - t1) * 1000
        if key is not None:
            self._retrieval_cache.put(key, tuple(docs or []), timings["retrieval_ms"])
            timings["retrieval_cache_hit"] = 0.0
        return list(docs or []), ids, timings

    def _retrieval_key(self, question: str, top_k: int | None, principal: Principal, g: _Governed) -> str | None:
        """The retrieval cache key (None: not cacheable): question, top_k, the whole principal as the policy sees
        it, the index version read *before* retrieving (a write in between can only make the entry newer than
        its key, never older) and the policy bundle revision."""
        if self._retrieval_cache.size <= 0:
            return None
        version = getattr(self.store, "index_version", None)
        if version is None:
            return None
        return _cache_key(question, top_k, principal.to_input(), version(), getattr(g.policy, "bundle_revision", None))

    def _pre_guard_output(self, stage: BuiltStage) -> str | None:
        from ragconf.compile import input_sockets

        comp = self.spec.pipeline.output.split(".", 1)[0]
        inst = stage.pipeline.get_component(comp)
        return comp if "top_k" in input_sockets(inst) else None

    def ask(
        self,
        question: str,
        user: str | Principal | None,
        *,
        profile: str | None = None,
        top_k: int | None = None,
        on_documents: Callable[[list[dict[str, Any]], dict[str, bool]], None] | None = None,
        on_delta: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer ``question`` for ``user`` with numbered citations, enforcing every policy decision.

        ``profile`` is the caller's preferred generator profile (the routing policy decides); ``top_k`` caps
        retrieval. ``on_documents`` receives the passages the generator will see and the output rules
        (``redact_pii``, ``require_citations``), ``on_delta`` the answer text
        as the generator produces it (tokens or sentences, raw: the caller applies the output policy, see
        :class:`ragconf.service.RagService`). The answer carries the request's trace (spans per step and per
        pipeline component)."""
        with spans.collect("ask", user=getattr(user, "id", user)) as trace:
            answer = self._ask(question, user, profile, top_k, on_documents, on_delta)
        answer.trace = trace
        return answer

    def _ask(
        self,
        question: str,
        user: str | Principal | None,
        profile: str | None,
        top_k: int | None,
        on_documents: Callable[[list[dict[str, Any]], dict[str, bool]], None] | None,
        on_delta: Callable[[str], None] | None,
    ) -> Answer:
        from ragconf.components.citations import extract_citations
        from ragconf.components.generators import NO_ANSWER

        start = time.perf_counter()
        g = self._governed()
        principal = self.principal(user)
        docs, ids, timings = self.retrieve(question, principal, top_k=top_k, governed=g)
        request: dict[str, Any] = {"query": question, "action": "answer"}
        if profile:
            request["profile"] = profile
        t0 = time.perf_counter()
        with spans.span("policy.routing") as sp:
            profiles = [self._profile_input(p) for p in self.profiles.values()]
            route = g.policy.route(principal, request, docs, profiles)
            ids["routing"] = route.decision_id
            sp.set_tags({"decision_id": route.decision_id, "profile": route.profile, "refused": route.refused})
        with spans.span("policy.output") as sp:
            out_rules = g.policy.output_rules(principal, request, docs)
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
        records = [_doc_record(d) for d in passages]
        if out_rules.redact_pii:
            # the passages travel with the answer (ask --json, the SSE documents event, chat citations): what
            # the output policy removes from the answer must not be readable next to it. The generator still
            # gets the stored text; its output is redacted below.
            from ragconf.policy.redact import redact

            with spans.span("policy.redaction.documents", passages=len(records)):
                for rec in records:
                    rec["content"], _ = redact(rec["content"] or "")
        if on_documents is not None:
            rules = {"redact_pii": bool(out_rules.redact_pii), "require_citations": bool(out_rules.require_citations)}
            on_documents(records, rules)
        akey = self._answer_key(question, route.profile, out_rules, passages)
        cached = self._answer_cache.get(akey) if akey is not None else None
        t1 = time.perf_counter()
        if cached is not None:
            text, usage = cached, {"prompt_tokens": 0, "completion_tokens": 0}
            with spans.span("generation", profile=route.profile, passages=len(passages), cache="hit"):
                if on_delta is not None:
                    on_delta(text)
            timings["answer_cache_hit"] = 1.0
        else:
            stage = self.generation(route.profile)
            extra = _streaming_inputs(stage, on_delta) if on_delta is not None else None
            with spans.span("generation", profile=route.profile, passages=len(passages)):
                replies, gen_out = stage.run({"query": question, "documents": passages}, extra=extra)
            usage = _token_usage(gen_out)
            text = _reply_text(replies)
            if akey is not None:
                self._answer_cache.put(akey, text, (time.perf_counter() - t1) * 1000)
                timings["answer_cache_hit"] = 0.0
        timings["generation_ms"] = (time.perf_counter() - t1) * 1000
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
            records,
            ids,
            route.profile,
            False,
            route.reason,
            redacted,
            timings,
            usage=usage,
            redact_logs=bool(out_rules.redact_pii),
            require_citations=bool(out_rules.require_citations),
        )

    def _answer_key(self, question: str, profile: str, rules: Any, passages: list[Any]) -> str | None:
        """The answer cache key (None: off): everything the generated text depends on (the question, the chosen
        profile and the exact passages, ids and text) and the output rules applied to it."""
        if self._answer_cache.size <= 0:
            return None
        return _cache_key(
            question,
            profile,
            [bool(rules.require_citations), int(rules.max_passages or 0), bool(rules.redact_pii)],
            [[d.id, d.content or "", (d.meta or {}).get("title")] for d in passages],
        )

    @staticmethod
    def _profile_input(spec: GeneratorSpec) -> dict[str, Any]:
        return {"name": spec.name, "locality": spec.locality, "provider": spec.provider, "region": spec.region}

    def ingest(self, progress: Any = None) -> Any:
        from ragconf.ingest import ingest

        return ingest(
            self.spec.corpus,
            self.store,
            self.embedder.embed,
            corpus_name=self.spec.corpus.name,
            progress=progress,
            source_of=self.loaded.source_of,
        )

    def close(self) -> None:
        with self._lock:
            store = self._parts.pop("store", None)
        if store is not None:
            store.close()


def route_to(
    policy: Any, principal: Principal, question: str, action: str, documents: list[Any], profile: dict[str, Any]
) -> tuple[bool, str, str]:
    """The routing policy's decision on sending ``documents`` (objects with ``meta``) to one endpoint described
    like a generator profile (a reranker, the evaluation judge): (allowed, reason, decision id); audited like
    every decision."""
    request = {"query": question, "action": action, "profile": profile["name"]}
    with spans.span(f"policy.routing.{action}", profile=profile["name"]) as sp:
        route = policy.route(principal, request, documents, [profile])
        sp.set_tags({"decision_id": route.decision_id, "refused": route.refused})
    return not route.refused and route.profile == profile["name"], route.reason, route.decision_id


def _cache_key(*parts: Any) -> str:
    """sha256 of ``parts`` as canonical JSON: the key of the retrieval and answer caches."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _streaming_inputs(stage: BuiltStage, on_delta: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """``streaming_callback`` for every component of ``stage`` that takes one (ragconf generators call it
    with text deltas: tokens, or sentences for the extractive composer)."""
    from ragconf.compile import input_sockets

    out: dict[str, dict[str, Any]] = {}
    for name, inst in stage.pipeline.walk():
        if "streaming_callback" in input_sockets(inst):
            out[name] = {"streaming_callback": on_delta}
    return out
