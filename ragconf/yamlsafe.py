"""YAML from users, loaded with bounded alias expansion.

``yaml.safe_load`` shares the object behind an alias, so a "billion laughs" document loads cheaply, and then
explodes in whatever walks it (OmegaConf, pydantic, ``json.dumps``, metadata flattening). Every YAML a user
hands ragconf (config folders, front matter, ``.meta.yaml`` sidecars, identity user files) goes through
:func:`safe_load` (or :func:`check` for files another library parses), which composes the node graph first and
refuses a document whose aliases would add more than :data:`MAX_NODES` nodes to it, that uses more than
:data:`MAX_ALIASES` aliases, or whose aliases are recursive. Documents without aliases are never limited
(their size is their text's size).

Every problem is one :class:`~ragconf.errors.RagconfError` line naming ``where`` (a path or a description), the
line and column; the error class is the caller's choice (SpecError for configs, IngestError for sources).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ragconf.errors import RagconfError, SpecError

__all__ = ["MAX_ALIASES", "MAX_NODES", "YamlLimitError", "check", "safe_load", "safe_load_file"]

#: Most nodes aliases may add to a document (its expanded tree, every alias counted in full, minus its own nodes).
MAX_NODES = 100_000
#: Most alias uses (``*name``) in one document.
MAX_ALIASES = 10_000

# the pure-Python loader (what yaml.safe_load uses): libyaml's composer recurses in C and crashes the process on
# deeply nested input, where this one raises RecursionError
_Loader = yaml.SafeLoader


class YamlLimitError(ValueError):
    """Raised by :func:`expanded_size` when a node graph is too large or recursive."""


def _mark(exc: BaseException) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _describe(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    text = str(problem if problem else exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__) + _mark(exc)


def expanded_size(root: yaml.Node, *, max_nodes: int = MAX_NODES, max_aliases: int = MAX_ALIASES) -> int:
    """Nodes in the tree ``root`` expands to (aliases counted in full). Raises :class:`YamlLimitError` when
    aliases are recursive, more than ``max_aliases``, or add more than ``max_nodes`` nodes to the document."""
    # pass 1: the distinct nodes in post-order (each once); the open nodes are the current node's ancestors,
    # so meeting one again is a recursive alias
    order: list[yaml.Node] = []
    visited: set[int] = set()
    open_ids: set[int] = set()
    edges = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            open_ids.discard(id(node))
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        open_ids.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            edges += 1
            if id(child) in open_ids:
                raise YamlLimitError("an alias refers to a node that contains it (recursive alias)")
            if id(child) not in visited:
                stack.append((child, False))
    aliases = edges - (len(order) - 1)
    if aliases == 0:
        return len(order)  # a plain tree: its size is the text's size
    if aliases > max_aliases:
        raise YamlLimitError(f"{aliases:,} aliases (at most {max_aliases:,})")
    # pass 2: expanded sizes bottom-up, stopping as soon as the aliases add too much
    limit = len(order) + max_nodes
    sizes: dict[int, int] = {}
    for node in order:
        total = 1
        for child in _children(node):
            total += sizes[id(child)]
            if total > limit:
                raise YamlLimitError(f"aliases expand the document by more than {max_nodes:,} nodes")
        sizes[id(node)] = total
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class _SyntaxError(Exception):
    def __init__(self, error: RagconfError) -> None:
        self.error = error


def _compose(text: str, where: str, error: type[RagconfError]) -> tuple[Any, yaml.Node | None]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            expanded_size(node)
        return loader, node
    except YamlLimitError as exc:
        loader.dispose()
        raise error(
            f"{where}: refusing YAML whose aliases are too large: {exc}",
            hint="write the values out, or use fewer anchors/aliases (&name / *name)",
        ) from None
    except yaml.YAMLError as exc:
        loader.dispose()
        raise _SyntaxError(error(f"{where}: invalid YAML: {_describe(exc)}")) from None
    except RecursionError:  # a limit, not a syntax error: no YAML library can load it
        loader.dispose()
        raise error(f"{where}: refusing YAML nested too deeply") from None


def check(text: str, where: str, *, error: type[RagconfError] = SpecError, syntax: bool = True) -> None:
    """Raise ``error`` when ``text`` is not YAML or its aliases expand too far (nothing is constructed).
    With ``syntax=False`` only the alias limits are enforced (a parse error is left to whoever loads it)."""
    try:
        loader, _ = _compose(text, where, error)
    except _SyntaxError as exc:
        if syntax:
            raise exc.error from None
        return
    loader.dispose()


def _duplicate_key(root: yaml.Node) -> tuple[str, yaml.Node] | None:
    """The first mapping key that appears twice in one mapping (merge keys ``<<`` aside), if any."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    sig = (k.tag, k.value)
                    if sig in keys:
                        return k.value, k
                    keys.add(sig)
        stack.extend(_children(node))
    return None


def safe_load(text: str, where: str, *, error: type[RagconfError] = SpecError, unique_keys: bool = False) -> Any:
    """Like ``yaml.safe_load`` (one document, plain types) with bounded alias expansion.

    ``where`` names the source in the message (a path, or e.g. ``"front matter of docs/a.md"``). Raises
    ``error`` (default :class:`~ragconf.errors.SpecError`, exit code 2) with one line naming ``where``.
    With ``unique_keys`` a key repeated in one mapping is an error (YAML would silently keep the last one).
    """
    try:
        loader, node = _compose(text, where, error)
    except _SyntaxError as exc:
        raise exc.error from None
    if unique_keys and node is not None:
        dup = _duplicate_key(node)
        if dup is not None:
            loader.dispose()
            mark = dup[1].start_mark
            raise error(f"{where}: the key '{dup[0]}' appears twice (line {mark.line + 1}); keep one")
    try:
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise error(f"{where}: invalid YAML: {_describe(exc)}") from None
    except RecursionError:
        raise error(f"{where}: refusing YAML nested too deeply") from None
    finally:
        loader.dispose()


def read_text(path: str | Path, *, error: type[RagconfError] = SpecError) -> str:
    """A file's UTF-8 text, or ``error`` naming the path (unreadable, not UTF-8)."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise error(f"{p}: cannot read: {exc.strerror or exc}") from None


def safe_load_file(path: str | Path, *, error: type[RagconfError] = SpecError) -> Any:
    """:func:`safe_load` of a file's UTF-8 text; unreadable and non-UTF-8 files are ``error`` too."""
    return safe_load(read_text(path, error=error), str(path), error=error)
