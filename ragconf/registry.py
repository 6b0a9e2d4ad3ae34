"""Component registry: YAML names aliases, or Haystack's own components by class path from an allowlist.

Built-in aliases map to Haystack classes or ragconf components; third-party packages add aliases through the
``ragconf.components`` entry-point group (``alias = "package.module:Class"``). A ``type`` that is a dotted class
path (``haystack.components.rankers.MetaFieldGroupingRanker``) is accepted only inside :data:`ALLOWED_MODULES`
(Haystack's components and installed integrations), and only when it resolves to a Haystack component class whose
real module is inside the allowlist too: YAML can never import an arbitrary module.

What a component *is* comes from its capabilities, not from a kind string: a component whose constructor takes a
``document_store`` is a retriever wherever it comes from (ragconf injects the store and feeds it the access filter;
see :mod:`ragconf.compile`).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ragconf.errors import RegistryError

__all__ = ["ComponentEntry", "Registry", "default_registry"]

KINDS = ("retriever", "text_embedder", "joiner", "ranker", "builder", "generator", "other")

#: Module prefixes a component ``type`` may name by class path (module, dot, class name).
ALLOWED_MODULES = ("haystack.components", "haystack_integrations.components")
_CLASS_PATH = re.compile(r"(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*")


@dataclass(frozen=True)
class ComponentEntry:
    """One alias: where its class lives, what kind it is, and defaults applied before YAML params."""

    alias: str
    target: str  # "module:Class", resolved lazily
    kind: str = "other"
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    extra: str | None = None  # the pip extra that provides the dependency, for install hints

    def load(self) -> Callable[..., Any]:
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = (
                f"pip install 'ragconf[{self.extra}]'" if self.extra else f"install the package providing {module_name}"
            )
            raise RegistryError(
                f"component '{self.alias}' needs a package that is not installed ({exc.name or exc})", hint=hint
            ) from None
        try:
            return getattr(module, attr)
        except AttributeError:
            raise RegistryError(f"component '{self.alias}': {self.target} not found") from None

    def init_params(self) -> list[str] | None:
        """The constructor's parameter names, or None when it takes **kwargs."""
        cls = self.load()
        sig = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls)
        names = []
        for name, p in sig.parameters.items():
            if name == "self":
                continue
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                return None
            names.append(name)
        return names

    def takes_document_store(self) -> bool:
        """Whether the constructor names a ``document_store`` parameter (the capability that makes a retriever)."""
        cls = self.load()
        try:
            sig = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls)
        except (TypeError, ValueError):
            return False
        return "document_store" in sig.parameters

    def describe(self) -> dict[str, Any]:
        """Alias, kind, description, constructor parameters (type, default, required) and the sockets the class
        declares (inputs from ``run``; outputs from ``@component.output_types``; components that set their
        sockets in ``__init__``, such as the prompt builder, add more at build time)."""
        out: dict[str, Any] = {
            "alias": self.alias,
            "kind": self.kind,
            "description": self.description,
            "class": self.target.replace(":", "."),
        }
        try:
            cls = self.load()
        except RegistryError as exc:
            out["error"] = exc.message
            return out
        out["retriever"] = self.takes_document_store()
        params: dict[str, Any] = {}
        sig = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls)
        for name, p in sig.parameters.items():
            if name == "self" or p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            required = p.default is inspect.Parameter.empty and name not in self.defaults
            info: dict[str, Any] = {"type": _type_name(p.annotation), "required": required}
            if name in self.defaults:
                info["default"] = self.defaults[name]
            elif p.default is not inspect.Parameter.empty:
                info["default"] = _jsonable(p.default)
            if name == "document_store":
                info["injected"] = True  # ragconf passes the configured store
            params[name] = info
        out["params"] = params
        inputs, outputs = class_sockets(cls)
        out["inputs"] = inputs
        out["outputs"] = outputs
        return out


def class_sockets(cls: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input sockets a component class declares through its ``run`` signature (type, required, default) and
    its output sockets from ``@component.output_types``."""
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    run = getattr(cls, "run", None)
    if run is None:
        return inputs, outputs
    try:
        import typing

        hints = typing.get_type_hints(run)
    except Exception:
        hints = {}
    for name, p in inspect.signature(run).parameters.items():
        if name == "self" or p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        info: dict[str, Any] = {"type": _type_name(hints.get(name, p.annotation))}
        info["required"] = p.default is inspect.Parameter.empty
        if p.default is not inspect.Parameter.empty:
            info["default"] = _jsonable(p.default)
        inputs[name] = info
    for name, sock in (getattr(run, "_output_types_cache", None) or {}).items():
        outputs[name] = {"type": _type_name(getattr(sock, "type", Any))}
    return inputs, outputs


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "Any"
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("haystack.dataclasses.document.", "")


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def class_path_entry(path: str) -> ComponentEntry | None:
    """An entry for a Haystack component named by class path, or None when ``path`` is not a class path inside
    :data:`ALLOWED_MODULES`. Raises RegistryError for an allowed path that does not resolve to a component."""
    if not _CLASS_PATH.fullmatch(path) or not any(path.startswith(m + ".") for m in ALLOWED_MODULES):
        return None
    module_name, _, attr = path.rpartition(".")
    if attr.startswith("_"):
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or module_name
        raise RegistryError(
            f"cannot import '{module_name}' for component type '{path}' ({missing} is not installed)",
            hint="install the Haystack integration that provides it, or check the class path",
        ) from None
    cls = getattr(module, attr, None)
    from haystack.core.component.component import ComponentMeta

    real_module = getattr(cls, "__module__", "") or ""
    if not isinstance(cls, ComponentMeta) or not any(real_module.startswith(m + ".") for m in ALLOWED_MODULES):
        raise RegistryError(f"'{path}' is not a Haystack component class", hint="name a class decorated @component")
    doc = (inspect.getdoc(cls) or "").strip().splitlines()
    return ComponentEntry(path, f"{module_name}:{attr}", "other", doc[0] if doc else f"Haystack component {attr}")


_BUILTINS: list[ComponentEntry] = [
    ComponentEntry(
        "bm25_retriever",
        "ragconf.store.components:StoreBM25Retriever",
        "retriever",
        "BM25 over the configured store (filters pushed down)",
    ),
    ComponentEntry(
        "embedding_retriever",
        "ragconf.store.components:StoreEmbeddingRetriever",
        "retriever",
        "dense retrieval over the configured store (filters pushed down)",
    ),
    ComponentEntry(
        "hybrid_retriever",
        "ragconf.store.components:StoreHybridRetriever",
        "retriever",
        "BM25 + dense + reciprocal-rank fusion in one store call (filters pushed into both branches)",
    ),
    ComponentEntry(
        "text_embedder",
        "ragconf.components.embedders:RagconfTextEmbedder",
        "text_embedder",
        "embeds the query with the configured embedder",
    ),
    ComponentEntry(
        "rrf_joiner",
        "haystack.components.joiners:DocumentJoiner",
        "joiner",
        "reciprocal-rank fusion of several retrievers",
        {"join_mode": "reciprocal_rank_fusion"},
    ),
    ComponentEntry(
        "joiner",
        "haystack.components.joiners:DocumentJoiner",
        "joiner",
        "concatenate / merge / distribution-based fusion of document lists",
    ),
    ComponentEntry(
        "lost_in_the_middle",
        "haystack.components.rankers:LostInTheMiddleRanker",
        "ranker",
        "reorders documents so the best are at the edges of the prompt",
    ),
    ComponentEntry(
        "diversity_ranker",
        "ragconf.components.rankers:DiversityRanker",
        "embedding_ranker",
        "maximal marginal relevance on the configured embedder: pushes near-duplicate passages down",
    ),
    ComponentEntry(
        "query_adapter",
        "ragconf.components.adapters:QueryAdapter",
        "other",
        "maps the query embedding with a linear adapter fitted on training qrels (`ragconf tune --adapter`)",
    ),
    ComponentEntry(
        "llm_ranker",
        "ragconf.components.rankers:LLMRanker",
        "ranker",
        "listwise reranking by a chat model behind any OpenAI-compatible endpoint (routed by the routing policy)",
    ),
    ComponentEntry(
        "meta_field_ranker",
        "haystack.components.rankers:MetaFieldRanker",
        "ranker",
        "reranks by a metadata field (e.g. recency)",
    ),
    ComponentEntry(
        "prompt_builder",
        "haystack.components.builders:PromptBuilder",
        "builder",
        "Jinja2 prompt from the query and numbered documents",
        {"template": "@default_prompt"},
    ),
    ComponentEntry(
        "extractive_answer",
        "ragconf.components.generators:ExtractiveAnswerComposer",
        "generator",
        "offline extractive answer with numbered citations (no model server)",
    ),
    ComponentEntry(
        "openai",
        "ragconf.components.generators:OpenAICompatibleGenerator",
        "generator",
        "any OpenAI-compatible chat endpoint (base_url, model, API key from an env var)",
    ),
    ComponentEntry(
        "llama_cpp",
        "ragconf.components.generators:LlamaCppGenerator",
        "generator",
        "local GGUF model through llama.cpp",
        extra="llama",
    ),
]


class Registry:
    """Alias -> component entry; ``create`` validates params against the constructor."""

    def __init__(self, entries: list[ComponentEntry] | None = None, *, load_plugins: bool = True) -> None:
        self._entries: dict[str, ComponentEntry] = {e.alias: e for e in (entries or [])}
        self._plugins_loaded = not load_plugins

    def register(self, entry: ComponentEntry) -> None:
        self._entries[entry.alias] = entry

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group="ragconf.components"):
            if ep.name in self._entries:
                continue  # built-ins win; a plugin cannot shadow them
            self._entries[ep.name] = ComponentEntry(ep.name, ep.value, "other", f"plugin from {ep.value}")

    def aliases(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def get(self, alias: str, *, key: str | None = None, source: str | None = None) -> ComponentEntry:
        self._load_plugins()
        entry = self._entries.get(alias)
        if entry is not None:
            return entry
        try:
            by_path = class_path_entry(alias)
        except RegistryError as exc:
            raise RegistryError(exc.message, key=key, source=source, hint=exc.hint) from None
        if by_path is not None:
            return by_path
        hint = None
        if "." in alias:
            hint = "a class path must be a Haystack component under " + " or ".join(f"{m}.*" for m in ALLOWED_MODULES)
        raise RegistryError(
            f"unknown component type '{alias}'", key=key, source=source, valid=self._entries, got=alias, hint=hint
        ) from None

    def entries(self) -> list[ComponentEntry]:
        self._load_plugins()
        return [self._entries[a] for a in sorted(self._entries)]


def default_registry() -> Registry:
    """A registry with the built-in aliases and installed plugins."""
    return Registry(list(_BUILTINS))
