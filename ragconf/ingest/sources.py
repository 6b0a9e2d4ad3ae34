"""Sources: folders of Markdown / text / HTML / PDF files, and BEIR corpora, as SourceDocuments."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragconf.errors import IngestError
from ragconf.types import CLASSIFICATIONS

__all__ = ["SourceDocument", "SourceError", "apply_access", "iter_source", "normalize"]

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.DOTALL)


@dataclass
class SourceDocument:
    doc_id: str
    text: str
    title: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    format: str = "text"

    @property
    def content_hash(self) -> str:
        blob = json.dumps({"t": self.title, "x": self.text, "m": self.meta}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class SourceError:
    """A file or record that could not be read; reported, not fatal."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def normalize(text: str) -> str:
    """Unicode NFC, unified newlines, trailing spaces and runs of blank lines collapsed."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _flatten(meta: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = [x if isinstance(x, str | int | float | bool) or x is None else str(x) for x in v]
        elif isinstance(v, str | int | float | bool) or v is None:
            out[key] = v
        else:
            out[key] = str(v)
    return out


def _read_markdown(path: Path) -> tuple[str, str, dict[str, Any]]:
    import yaml

    raw = path.read_text(encoding="utf-8")
    meta: dict[str, Any] = {}
    m = _FRONT_MATTER.match(raw)
    if m:
        try:
            loaded = yaml.safe_load(m.group(1)) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"invalid YAML front matter: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError("front matter must be a mapping")
        meta = loaded
        raw = raw[m.end() :]
    title = str(meta.pop("title", "") or "")
    if not title:
        h = re.search(r"^#\s+(.+)$", raw, re.MULTILINE)
        title = h.group(1).strip() if h else path.stem
    return raw, title, meta


def _read_html(path: Path) -> tuple[str, str, dict[str, Any]]:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(path.read_text(encoding="utf-8", errors="replace"))
    meta: dict[str, Any] = {}
    for node in tree.css("meta[name]"):
        name, content = node.attributes.get("name"), node.attributes.get("content")
        if name and content is not None:
            meta[name] = content
    title_node = tree.css_first("title") or tree.css_first("h1")
    title = title_node.text(strip=True) if title_node else path.stem
    for tag in ("script", "style", "nav", "header", "footer", "noscript"):
        for node in tree.css(tag):
            node.decompose()
    body = tree.body or tree.root
    blocks = []
    for node in body.css("h1, h2, h3, h4, h5, h6, p, li, pre, td, blockquote") if body else []:
        text = node.text(separator=" ", strip=True)
        if text:
            tag = node.tag or ""
            blocks.append(("#" * int(tag[1]) + " " + text) if tag[:1] == "h" and tag[1:].isdigit() else text)
    text = "\n\n".join(blocks) if blocks else (body.text(separator="\n") if body else "")
    return text, title, meta


def _read_pdf(path: Path) -> tuple[str, str, dict[str, Any]]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    pages = [(p.extract_text() or "") for p in reader.pages]
    info: Any = reader.metadata or {}
    title = str(info.get("/Title") or "") or path.stem
    return "\n\n".join(pages), title, {"pages": len(pages)}


_READERS = {
    ".md": ("markdown", _read_markdown),
    ".markdown": ("markdown", _read_markdown),
    ".txt": ("text", None),
    ".html": ("html", _read_html),
    ".htm": ("html", _read_html),
    ".pdf": ("pdf", _read_pdf),
}


def _sidecar(path: Path) -> dict[str, Any]:
    import yaml

    for suffix in (".meta.yaml", ".meta.yml", ".meta.json"):
        side = path.with_name(path.name + suffix)
        if side.is_file():
            data = yaml.safe_load(side.read_text(encoding="utf-8")) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{side.name} must hold a mapping")
            return data
    return {}


def _matches(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p.removeprefix("**/")) for p in patterns)


def apply_access(meta: dict[str, Any], mapping: Any, where: str) -> dict[str, Any]:
    """Map source metadata keys onto acl_groups / tenant / classification, with defaults and validation."""
    out = dict(meta)
    for target in ("acl_groups", "tenant", "classification"):
        src = getattr(mapping, target, None) if mapping is not None else target
        value = out.pop(src, None) if src else None
        if src and src != target:
            out.pop(target, None)
        if value is None and mapping is not None:
            value = mapping.defaults.get(target)
        if value is None:
            out.pop(target, None)
            continue
        if target == "acl_groups":
            if isinstance(value, str):
                value = [g.strip() for g in value.split(",") if g.strip()]
            value = sorted({str(g) for g in value})
            if not value:
                continue
        elif target == "classification":
            value = str(value).lower()
            if value not in CLASSIFICATIONS:
                raise IngestError(f"{where}: classification '{value}' is not one of {', '.join(CLASSIFICATIONS)}")
        else:
            value = str(value)
        out[target] = value
    return out


def iter_source(spec: Any, access: Any, errors: list[SourceError]) -> Iterator[SourceDocument]:
    """Documents of one source spec (`corpus.sources[i]`); unreadable items are appended to ``errors``."""
    root = Path(spec.path)
    if not root.exists():
        raise IngestError(f"source path '{root}' does not exist", hint="check corpus.sources[].path / corpus.path")
    if spec.type == "beir":
        for lineno, row in _beir_rows(root, errors):
            where = f"{root / 'corpus.jsonl'}:{lineno}"
            meta = _flatten(row.get("metadata") or {}) if isinstance(row.get("metadata"), dict) else {}
            try:
                meta = apply_access(meta, access, where)
            except IngestError as exc:
                errors.append(SourceError(where, exc.message))
                continue
            yield SourceDocument(
                str(row["_id"]),
                normalize(str(row.get("text") or "")),
                str(row.get("title") or ""),
                root.name,
                meta,
                "beir",
            )
        return
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        if ".meta." in path.name or not _matches(rel, spec.include) or _matches(rel, spec.exclude):
            continue
        fmt, reader = _READERS.get(path.suffix.lower(), (None, None))
        if fmt is None:
            continue
        try:
            if reader is None:
                text, title, meta = path.read_text(encoding="utf-8"), "", {}
                first = text.strip().split("\n", 1)[0].strip()
                title = first if 0 < len(first) <= 120 else path.stem
            else:
                text, title, meta = reader(path)
            meta = {**_flatten(meta), **_flatten(_sidecar(path))}
            meta = apply_access(meta, access, str(path))
        except IngestError as exc:
            errors.append(SourceError(str(path), exc.message))
            continue
        except Exception as exc:  # any parser failure: report the file, keep going
            errors.append(SourceError(str(path), f"{type(exc).__name__}: {exc}"))
            continue
        text = normalize(text)
        yield SourceDocument(rel, text, title, str(path), meta, fmt)


def _beir_rows(root: Path, errors: list[SourceError]) -> Iterator[tuple[int, dict[str, Any]]]:
    import json as _json

    path = root / "corpus.jsonl"
    if not path.is_file():
        raise IngestError(f"'{root}' is not a BEIR folder: corpus.jsonl is missing")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = _json.loads(line)
            except _json.JSONDecodeError as exc:
                errors.append(SourceError(f"{path}:{lineno}", f"invalid JSON ({exc.msg})"))
                continue
            if not isinstance(row, dict) or "_id" not in row:
                errors.append(SourceError(f"{path}:{lineno}", "missing '_id'"))
                continue
            yield lineno, row
