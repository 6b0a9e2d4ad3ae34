"""Haystack components for ragconf: embedders, generators and citation parsing.

Submodules are imported lazily (``ragconf.components.embedders`` etc.), so importing this package is cheap.
"""

from __future__ import annotations

__all__ = ["citations", "embedders", "generators"]
