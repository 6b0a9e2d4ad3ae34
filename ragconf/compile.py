"""Build Haystack pipelines from validated stage specs, in code, with add_component/connect.

Static checks happen here so a bad spec fails before any document is touched: unknown aliases, unknown
constructor parameters, unknown sockets, bad connections, stage inputs/outputs that do not exist, and
retrievers that could not take the access filter.

A retriever is recognised by capability, wherever it comes from (a built-in alias, a plugin entry point or an
allowed Haystack class path): a component whose constructor takes a ``document_store`` gets the configured store
injected, must have a ``filters`` input (the access filter is fed there on every run) and cannot have that input
connected; otherwise the spec is rejected.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ragconf.errors import CompileError, RagconfError, StoreError
from ragconf.registry import Registry, default_registry
from ragconf.spec.models import EmbedderSpec, StageSpec

__all__ = ["BuildContext", "BuiltStage", "GUARD_NAME", "build_stage", "input_sockets", "output_sockets"]

GUARD_NAME = "access_guard"


@dataclass
class BuildContext:
    """What components need injected: the store, the embedder settings, the policy service."""

    store: Any = None
    embedder: EmbedderSpec | None = None
    policy: Any = None
    registry: Registry = field(default_factory=default_registry)
    source_of: Callable[[str], str] = lambda key: "<config>"


@dataclass
class BuiltStage:
    name: str
    pipeline: Any  # haystack.Pipeline
    inputs: dict[str, list[tuple[str, str]]]
    output: tuple[str, str]
    retrievers: list[str]
    guarded: bool

    def run(self, values: dict[str, Any], *, extra: dict[str, dict[str, Any]] | None = None) -> Any:
        """Run with the stage inputs in ``values`` plus per-component ``extra`` inputs; return the output."""
        data: dict[str, dict[str, Any]] = {}
        for name, targets in self.inputs.items():
            if name not in values:
                continue
            for comp, sock in targets:
                data.setdefault(comp, {})[sock] = values[name]
        for comp, kw in (extra or {}).items():
            data.setdefault(comp, {}).update(kw)
        out_comp, out_sock = self.output
        from haystack.core.errors import PipelineError, PipelineRuntimeError

        try:
            # no snapshot callback writing files: a failed run's snapshot holds pre-guard candidates
            result = self.pipeline.run(data, include_outputs_from={out_comp}, snapshot_callback=_drop_snapshot)
        except RagconfError:
            raise
        except (PipelineRuntimeError, PipelineError) as exc:
            err = self._explain(exc)
            if err.__traceback__ is not None:  # the component's own error, re-raised as itself
                raise err from None
            raise err from exc
        return result.get(out_comp, {}).get(out_sock), result

    def _explain(self, exc: BaseException) -> RagconfError:
        """A component's own RagconfError (Haystack wraps it in PipelineRuntimeError) surfaces as itself; any
        other failure becomes one line naming the stage and the component (a StoreError for retrievers)."""
        cause: BaseException = exc
        component = getattr(exc, "component_name", None)
        seen = {id(exc)}
        while True:
            if isinstance(cause, RagconfError):
                return cause
            component = component or getattr(cause, "component_name", None)
            nxt = cause.__cause__
            if nxt is None or id(nxt) in seen:
                break
            seen.add(id(nxt))
            cause = nxt
        root = cause if cause is not exc else None
        if root is None:  # a pipeline problem, not a component's: Haystack's message without its preamble
            detail = _one_line(str(exc).split("Error:", 1)[-1])
        else:
            detail = f"{type(root).__name__}: {_one_line(str(root))}" if str(root).strip() else type(root).__name__
        where = f"component '{component}' of stage '{self.name}'" if component else f"stage '{self.name}'"
        cls: type[RagconfError] = StoreError if component in self.retrievers else RagconfError
        err = cls(f"{where} failed: {detail}")
        err.component = component  # type: ignore[attr-defined]
        return err


def _drop_snapshot(snapshot: Any) -> None:
    return None


_IMMUTABLE = (str, bytes, int, float, bool, type(None))
_STAGE_PIPELINE: list[type] = []


def _stage_pipeline() -> Any:
    """A new ``haystack.Pipeline`` for a stage; see :func:`_stage_pipeline_class`."""
    if not _STAGE_PIPELINE:
        _STAGE_PIPELINE.append(_stage_pipeline_class())
    return _STAGE_PIPELINE[0]()


_ATOMIC = frozenset(_IMMUTABLE)


def fast_deepcopy(obj: Any) -> Any:
    """Haystack's ``_deepcopy_with_exceptions``, faster and with the same result: plain lists, tuples, sets and
    dicts are walked here (a container of only strings, numbers, booleans and None is copied in one step: such
    items deep-copy to themselves), those items are returned as they are, a Haystack ``Document`` goes straight
    to ``copy.deepcopy`` (it is no Component, Tool or Toolset, so Haystack would do the same after its checks);
    anything else (subclasses, components, tools, other objects) takes Haystack's own function. Haystack copies
    every component's inputs before running it, checking each leaf against the ``Component`` protocol: a
    384-float query embedding took 2-12 ms per ask on this machine."""
    kind = type(obj)
    if kind in _ATOMIC:
        return obj
    if kind is list or kind is tuple or kind is set:
        if all(type(v) in _ATOMIC for v in obj):
            return kind(obj)
        return kind(fast_deepcopy(v) for v in obj)
    if kind is dict:
        return {k: fast_deepcopy(v) for k, v in obj.items()}
    if kind is _document_class():
        return _copy_document(obj)
    from haystack.core.pipeline.utils import _deepcopy_with_exceptions

    return _deepcopy_with_exceptions(obj)


def _copy_document(doc: Any) -> Any:
    """``copy.deepcopy`` of a Haystack ``Document`` (a plain dataclass: no ``__slots__``, ``__setstate__`` or
    ``__deepcopy__``; deepcopy rebuilds it with ``object.__new__`` and its deep-copied ``__dict__``), without
    ``deepcopy``'s per-value dispatch: the fused list alone holds 200 documents per ask, ~1,800 deepcopy calls.
    Plain values are copied here, anything else (a blob, a sparse embedding, other objects in meta) by
    ``copy.deepcopy``."""
    new = object.__new__(type(doc))
    new.__dict__.update({k: _plain_copy(v, 0) for k, v in doc.__dict__.items()})
    return new


def _plain_copy(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind in _ATOMIC:
        return value
    if depth > 32:  # deep (or self-referencing) data: deepcopy's memo handles it
        return copy.deepcopy(value)
    if kind is list:
        if all(type(v) in _ATOMIC for v in value):
            return list(value)
        return [_plain_copy(v, depth + 1) for v in value]
    if kind is dict:
        return {(k if type(k) in _ATOMIC else copy.deepcopy(k)): _plain_copy(v, depth + 1) for k, v in value.items()}
    return copy.deepcopy(value)


@functools.cache
def _document_class() -> type:
    from haystack import Document

    return Document


def _install_fast_deepcopy() -> None:
    """Point Haystack's pipeline modules at :func:`fast_deepcopy` (once; only over Haystack's own function)."""
    from haystack.core.pipeline import base, pipeline, utils

    for module in (base, pipeline):
        if getattr(module, "_deepcopy_with_exceptions", None) is utils._deepcopy_with_exceptions:
            module._deepcopy_with_exceptions = fast_deepcopy  # type: ignore[attr-defined]


def _stage_pipeline_class() -> type:
    from haystack import Pipeline
    from haystack.core.pipeline.utils import _deepcopy_with_exceptions

    _install_fast_deepcopy()

    class StagePipeline(Pipeline):
        """Haystack's Pipeline, minus one defensive copy of the run's inputs.

        ``Pipeline.run`` deep-copies every input value when it files the inputs, and again for each component
        when it runs it (``_run_component``: a component always gets its own copy, so it can never change what
        another component, the caller or a tracer sees). Haystack's deep copy checks every leaf against the
        ``Component`` protocol, which costs ~15 us per leaf on Python 3.11: the access filter pushed into each
        retriever (~20 leaves) and the guard's inputs cost about 1 ms per ask in that first copy alone. Here a
        value handed to exactly one socket is filed as given (it still reaches its component as a copy); a value
        handed to several sockets is copied for each, as Haystack does; strings and numbers are never copied.
        Flat (non-nested) inputs take Haystack's own path."""

        def _prepare_component_input_data(self, data: Any, *args: Any, **kwargs: Any) -> Any:
            nodes = self.graph.nodes
            if not data or not all(isinstance(v, dict) and k in nodes for k, v in data.items()):
                return super()._prepare_component_input_data(data, *args, **kwargs)
            uses: dict[int, int] = {}
            for inputs in data.values():
                for v in inputs.values():
                    uses[id(v)] = uses.get(id(v), 0) + 1
            return {
                comp: {
                    k: v if isinstance(v, _IMMUTABLE) or uses[id(v)] == 1 else _deepcopy_with_exceptions(v)
                    for k, v in inputs.items()
                }
                for comp, inputs in data.items()
            }

    return StagePipeline


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def input_sockets(instance: Any) -> dict[str, Any]:
    return dict(instance.__haystack_input__._sockets_dict)


def output_sockets(instance: Any) -> dict[str, Any]:
    return dict(instance.__haystack_output__._sockets_dict)


def _split_ref(ref: str, key: str, source: str, components: dict[str, Any]) -> tuple[str, str]:
    comp, dot, sock = ref.partition(".")
    if not dot or not comp or not sock:
        raise CompileError(f"'{ref}' must look like 'component.socket'", key=key, source=source)
    if comp not in components:
        raise CompileError(f"no component named '{comp}'", key=key, source=source, valid=components, got=comp)
    return comp, sock


def _check_socket(comp: str, sock: str, side: str, key: str, source: str, components: dict[str, Any]) -> None:
    """``sock`` must be an ``side`` ("input"/"output") socket of component ``comp``."""
    sockets = (input_sockets if side == "input" else output_sockets)(components[comp])
    if sock not in sockets:
        raise CompileError(f"'{comp}' has no {side} '{sock}'", key=key, source=source, valid=sockets, got=sock)


def _resolve_param(value: Any) -> Any:
    if value == "@default_prompt":
        from ragconf.components.generators import DEFAULT_PROMPT_TEMPLATE

        return DEFAULT_PROMPT_TEMPLATE
    return value


def _instantiate(name: str, spec: Any, prefix: str, ctx: BuildContext) -> tuple[Any, str]:
    key = f"{prefix}.components.{name}"
    source = ctx.source_of(key)
    entry = ctx.registry.get(spec.type, key=f"{key}.type", source=source)
    params = {k: _resolve_param(v) for k, v in {**entry.defaults, **spec.params}.items()}
    accepted = entry.init_params()
    injected: dict[str, Any] = {}
    retriever = entry.takes_document_store()
    if retriever:
        if ctx.store is None:
            raise CompileError(
                f"component '{name}' ({spec.type}) takes a document_store, but no store is configured here",
                key=key,
                source=source,
            )
        injected["document_store"] = ctx.store
    if entry.kind in ("text_embedder", "embedding_ranker") and ctx.embedder is not None:  # the configured model
        for k, v in ctx.embedder.model_dump().items():
            if accepted is None or k in accepted:
                params.setdefault(k, v)
    if accepted is not None:
        for p in params:
            if p not in accepted or p in injected:
                raise CompileError(
                    f"component '{name}' ({spec.type}) has no parameter '{p}'",
                    key=f"{key}.params.{p}",
                    source=source,
                    valid=[a for a in accepted if a not in injected],
                    got=p,
                )
    _check_param_types(entry.load(), params, key, source, spec.type)
    if retriever and params.get("filters"):
        from ragconf.store.filters import to_sql

        try:
            to_sql(params["filters"], [])
        except StoreError as exc:
            raise CompileError(exc.message, key=f"{key}.params.filters", source=source) from None
    try:
        return entry.load()(**params, **injected), "retriever" if retriever else entry.kind
    except RagconfError:
        raise
    except (TypeError, ValueError) as exc:
        raise CompileError(f"cannot create component '{name}' ({spec.type}): {exc}", key=key, source=source) from None
    except ImportError as exc:  # Haystack's lazy imports: an optional dependency of the component is missing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        missing = getattr(exc, "name", None)
        raise CompileError(
            f"component '{name}' ({spec.type}) needs a package that is not installed: {first}",
            key=f"{key}.type",
            source=source,
            hint=f"pip install {missing}" if missing else "install the package the message names",
        ) from None


def _check_param_types(cls: Any, params: dict[str, Any], key: str, source: str, alias: str) -> None:
    """Validate YAML param values against the constructor's type hints (lax, like pydantic)."""
    import typing

    from pydantic import TypeAdapter, ValidationError

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: leave it to the constructor
        return
    for name, value in params.items():
        hint = hints.get(name)
        if hint is None or hint is typing.Any:
            continue
        try:
            adapter = TypeAdapter(hint, config={"arbitrary_types_allowed": True})
            adapter.validate_python(value)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise CompileError(
                f"{msg} (got {value!r}) for parameter '{name}' of {alias}", key=f"{key}.params.{name}", source=source
            ) from None
        except Exception:  # type not expressible for pydantic: skip
            continue


def build_stage(stage: StageSpec, prefix: str, ctx: BuildContext, *, guard: bool = False) -> BuiltStage:
    """Build one stage (``prefix`` is its config key: ``pipeline`` or ``generator``)."""
    from haystack.core.errors import PipelineConnectError

    pipe = _stage_pipeline()
    instances: dict[str, Any] = {}
    retrievers: list[str] = []
    for name, cspec in stage.components.items():
        if name == GUARD_NAME:
            raise CompileError(
                f"'{GUARD_NAME}' is reserved for ragconf's access guard",
                key=f"{prefix}.components.{name}",
                source=ctx.source_of(prefix),
            )
        instance, kind = _instantiate(name, cspec, prefix, ctx)
        pipe.add_component(name, instance)
        instances[name] = instance
        if kind == "retriever":
            if not guard:
                key = f"{prefix}.components.{name}"
                raise CompileError(
                    f"component '{name}' ({cspec.type}) takes a document_store: a retriever belongs in the retrieval "
                    "pipeline, where ragconf applies the access filter and the access guard",
                    key=key,
                    source=ctx.source_of(key),
                )
            retrievers.append(name)

    for i, conn in enumerate(stage.connections):
        key = f"{prefix}.connections[{i}]"
        source = ctx.source_of(key)
        s_comp, s_sock = _split_ref(conn.sender, f"{key}.sender", source, instances)
        r_comp, r_sock = _split_ref(conn.receiver, f"{key}.receiver", source, instances)
        _check_socket(s_comp, s_sock, "output", f"{key}.sender", source, instances)
        _check_socket(r_comp, r_sock, "input", f"{key}.receiver", source, instances)
        if r_comp in retrievers and r_sock == "filters":
            raise CompileError(
                "retriever filters come from the access policy and cannot be connected",
                key=f"{key}.receiver",
                source=source,
            )
        try:
            pipe.connect(conn.sender, conn.receiver)
        except PipelineConnectError as exc:
            raise CompileError(str(exc), key=key, source=source) from None

    inputs: dict[str, list[tuple[str, str]]] = {}
    for in_name, targets in stage.inputs.items():
        for j, ref in enumerate(targets):
            key = f"{prefix}.inputs.{in_name}[{j}]"
            comp, sock = _split_ref(ref, key, ctx.source_of(key), instances)
            _check_socket(comp, sock, "input", key, ctx.source_of(key), instances)
            if comp in retrievers and sock == "filters":
                raise CompileError(
                    "retriever filters come from the access policy and cannot be a stage input",
                    key=key,
                    source=ctx.source_of(key),
                )
            inputs.setdefault(in_name, []).append((comp, sock))

    okey = f"{prefix}.output"
    out_comp, out_sock = _split_ref(stage.output, okey, ctx.source_of(okey), instances)
    _check_socket(out_comp, out_sock, "output", okey, ctx.source_of(okey), instances)

    for name in retrievers:
        if "filters" not in input_sockets(instances[name]):
            key = f"{prefix}.components.{name}"
            raise CompileError(
                f"retriever '{name}' ({stage.components[name].type}) takes a document_store but has no 'filters' "
                "input, so ragconf could not apply the access filter to it",
                key=key,
                source=ctx.source_of(key),
                hint="a component that reads the store must accept `filters` in run()",
            )
    if guard:
        from ragconf.guard import AccessGuard

        pipe.add_component(GUARD_NAME, AccessGuard(ctx.policy))
        pipe.connect(f"{out_comp}.{out_sock}", f"{GUARD_NAME}.documents")
        out_comp, out_sock = GUARD_NAME, "documents"
    return BuiltStage(stage.name, pipe, inputs, (out_comp, out_sock), retrievers, guard)
