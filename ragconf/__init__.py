"""ragconf: declarative, governed, reproducible retrieval-augmented generation on Haystack."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragconf.errors import (
    AccessDenied,
    CompileError,
    PolicyError,
    RagconfError,
    RegistryError,
    SpecError,
    StoreError,
    TrackingError,
)

if TYPE_CHECKING:
    from ragconf.runtime import Answer, RagApp
    from ragconf.service import RagService
    from ragconf.spec import LoadedConfig, load_config

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "Answer",
    "CompileError",
    "LoadedConfig",
    "PolicyError",
    "RagApp",
    "RagService",
    "RagconfError",
    "RegistryError",
    "SpecError",
    "StoreError",
    "TrackingError",
    "__version__",
    "load_config",
]

_LAZY = {
    "Answer": "ragconf.runtime",
    "RagApp": "ragconf.runtime",
    "RagService": "ragconf.service",
    "LoadedConfig": "ragconf.spec",
    "load_config": "ragconf.spec",
}


def __getattr__(name: str) -> Any:
    """Import heavy parts on first use so `import ragconf` stays cheap."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ragconf' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)
