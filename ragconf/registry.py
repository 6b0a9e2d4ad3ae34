"""Component registry: YAML names aliases, never import paths.

Built-in aliases map to Haystack classes or ragconf components; third-party packages add aliases through the
``ragconf.components`` entry-point group (``alias = "package.module:Class"``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ragconf.errors import RegistryError

__all__ = ["ComponentEntry", "Registry", "default_registry"]

KINDS = ("retriever", "text_embedder", "joiner", "ranker", "builder", "generator", "other")


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
        try:
            return self._entries[alias]
        except KeyError:
            raise RegistryError(
                f"unknown component type '{alias}'", key=key, source=source, valid=self._entries, got=alias
            ) from None

    def entries(self) -> list[ComponentEntry]:
        self._load_plugins()
        return [self._entries[a] for a in sorted(self._entries)]


def default_registry() -> Registry:
    """A registry with the built-in aliases and installed plugins."""
    return Registry(list(_BUILTINS))
