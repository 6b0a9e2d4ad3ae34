"""Haystack components shipped with ragconf (embedders, generators, citation parsing)."""

__all__: list[str] = []
