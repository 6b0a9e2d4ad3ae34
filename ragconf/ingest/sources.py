"""Sources: folders of Markdown / text / HTML / PDF files, and BEIR corpora, as SourceDocuments."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragconf.errors import IngestError

__all__ = [
    "SIDECAR_SUFFIXES",
    "SourceDocument",
    "SourceError",
    "SourceUnavailable",
    "iter_source",
    "normalize",
    "split_access",
]


class SourceUnavailable(IngestError):
    """A source root that cannot be listed at all: the run stops before changing anything."""

    exit_code = 1


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
#: A line that looks like an access key, in text that did not yield front matter (unparsed metadata must never
#: leave a document looking unlabeled, so that defaults would apply to it).
_ACCESS_LINE = re.compile(
    r"^[^\w\n]*(acl(?:[^\w\n]|_)?groups?|tenant|classification)[^\w\n]*[ \t]*[:=]", re.IGNORECASE | re.MULTILINE
)


@dataclass
class SourceDocument:
    doc_id: str
    text: str
    title: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    format: str = "text"
    #: Where the document was read (a file path or `corpus.jsonl:LINE`), for messages.
    origin: str = ""
    #: sha256 of the exact bytes the text and metadata were read from (files only): the indexing pipeline's
    #: ``sources`` input reads the file again and refuses bytes that changed since (docs/ingest.md).
    raw_sha256: str | None = None
    #: Whether the document carried access fields itself (False: the corpus defaults, or public by opt-in).
    labeled: bool = True

    @property
    def content_hash(self) -> str:
        blob = json.dumps({"t": self.title, "x": self.text, "m": self.meta}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class SourceError:
    """A file or record that was not indexed; reported, not fatal.

    ``kind`` is ``error`` (unreadable, or invalid access metadata) or ``quarantined`` (no access metadata and no
    declared defaults). ``doc_id`` is the id the item would have had, when known, so that an older indexed
    version of it is withdrawn.
    """

    where: str
    reason: str
    doc_id: str | None = None
    kind: str = "error"

    def __str__(self) -> str:
        where = self.where.replace("\n", "\\n").replace("\r", "\\r")
        reason = self.reason.removeprefix(f"{self.where}: ").replace("\n", " ")
        return f"{where}: {reason}"


def normalize(text: str) -> str:
    """Unicode NFC, unified newlines, trailing spaces and runs of blank lines collapsed."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _flatten(meta: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Descriptive (non-access) metadata as flat scalar keys; access fields never pass through here."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if not isinstance(k, str):
            raise IngestError(f"the metadata key {k!r} is not a string (quote it)")
        if isinstance(v, float) and not math.isfinite(v):
            raise IngestError(f"the metadata key '{prefix}{k}' holds the non-finite number {v!r}")
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


def _front_matter(raw: str, where: str) -> tuple[str, dict[str, Any]]:
    """(text without the front matter, its mapping) of a Markdown / text file."""
    from ragconf.yamlsafe import safe_load

    body = raw.lstrip("\ufeff").replace("\r\n", "\n").lstrip()
    m = _FRONT_MATTER.match(body)
    if not m:
        first = body.split("\n", 1)[0].strip()
        if first.startswith(("---", "+++")):
            raise IngestError(
                f"{where}: the file starts with '{first[:3]}' but has no YAML front matter closed by '---' "
                "at the start of a line",
                hint="front matter is YAML between a first line '---' and a line '---'",
            )
        head = "\n".join(body.split("\n", 40)[:40])
        hit = _ACCESS_LINE.search(head)
        if hit:
            raise IngestError(
                f"{where}: '{hit.group(0).strip()}' looks like access metadata outside YAML front matter",
                hint="put access fields in front matter at the top of the file (--- ... ---) or in a sidecar",
            )
        return raw, {}
    loaded = safe_load(m.group(1), "front matter", error=IngestError, unique_keys=True)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise IngestError(f"{where}: front matter must be a mapping of keys to values")
    rest = body[m.end() :]
    if not any(isinstance(k, str) and _ACCESS_LINE.match(f"{k}:") for k in loaded):
        # front matter without access keys: access lines further down (a second front matter block, a
        # 'Classification: restricted' header) would otherwise leave the document looking unlabeled
        head = "\n".join(rest.lstrip().split("\n", 40)[:40])
        hit = _ACCESS_LINE.search(head)
        if hit:
            raise IngestError(
                f"{where}: '{hit.group(0).strip()}' looks like access metadata after the front matter, "
                "which holds no access field",
                hint="put access fields in the first front matter block (--- ... ---) or in a sidecar",
            )
    return rest, loaded


def _read_utf8(path: Path, data: bytes | None = None) -> str:
    try:
        if data is None:
            return path.read_text(encoding="utf-8")
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # what read_text gives
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _title(meta: dict[str, Any]) -> str:
    title = meta.pop("title", "")
    return title.strip() if isinstance(title, str) else ("" if title is None else str(title))


def _read_markdown(path: Path, data: bytes | None = None) -> tuple[str, str, dict[str, Any]]:
    raw, meta = _front_matter(_read_utf8(path, data), str(path))
    title = _title(meta)
    if not title:
        h = re.search(r"^#\s+(.+)$", raw, re.MULTILINE)
        title = h.group(1).strip() if h else path.stem
    return raw, title, meta


def _read_text(path: Path, data: bytes | None = None) -> tuple[str, str, dict[str, Any]]:
    raw, meta = _front_matter(_read_utf8(path, data), str(path))
    title = _title(meta)
    if not title:
        first = raw.strip().split("\n", 1)[0].strip()
        title = first if 0 < len(first) <= 120 else path.stem
    return raw, title, meta


def _read_html(path: Path, data: bytes | None = None) -> tuple[str, str, dict[str, Any]]:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(_read_utf8(path, data))
    meta: dict[str, Any] = {}
    # only the document's <head> carries metadata: a <meta> in the body is content anyone could have written
    head = tree.head
    for node in head.css("meta") if head is not None else []:
        attrs = node.attributes
        name = next((attrs.get(a) for a in ("name", "property", "itemprop", "http-equiv") if attrs.get(a)), None)
        content = attrs.get("content")
        if not name:
            continue
        name = name.strip()
        if name in meta:  # a repeated <meta name>: all values, so a repeated access field is never half-read
            prev = meta[name]
            meta[name] = [*(prev if isinstance(prev, list) else [prev]), content]
        else:
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


#: Document-information keys every PDF writer sets; everything else in the info dictionary is custom metadata.
_PDF_STANDARD_INFO = {"Title", "Author", "Subject", "Keywords", "Creator", "Producer", "CreationDate", "ModDate"}


def _read_pdf(path: Path, data: bytes | None = None) -> tuple[str, str, dict[str, Any]]:
    import io

    from pypdf import PdfReader

    reader = PdfReader(str(path) if data is None else io.BytesIO(data))
    pages = [(p.extract_text() or "") for p in reader.pages]
    info: Any = reader.metadata or {}
    meta: dict[str, Any] = {}
    # custom document-information entries (/acl_groups, /tenant, ...), then XMP pdfx custom properties,
    # which win: both are what PDF tools write as "custom properties"
    for key, value in dict(info).items():
        name = str(key).lstrip("/")
        if name not in _PDF_STANDARD_INFO and name != "Trapped":
            meta[name] = _pdf_value(value)
    xmp = reader.xmp_metadata
    if xmp is not None:
        _check_xmp_namespaces(xmp)
        meta.update({str(k): v for k, v in xmp.custom_properties.items()})
    title = str(info.get("/Title") or "") or path.stem
    meta["pages"] = len(pages)
    return "\n\n".join(pages), title, meta


def _pdf_value(value: Any) -> Any:
    """A PDF object as a plain value: strings stay strings, arrays become lists, anything else is kept as its
    Python form (a number, a name, null) so that the access schema rejects it rather than a string of it."""
    from pypdf.generic import ArrayObject, IndirectObject, NullObject

    if isinstance(value, IndirectObject):
        value = value.get_object()
    if isinstance(value, str):
        return str(value)
    if isinstance(value, ArrayObject):
        return [_pdf_value(v) for v in value]
    if isinstance(value, NullObject) or value is None:
        return None
    if isinstance(value, bool | int | float):
        return value
    return {"pdf_object": type(value).__name__}


def _check_xmp_namespaces(xmp: Any) -> None:
    """Access-looking XMP properties outside the pdfx custom-property namespace are ambiguous: reject."""
    from ragconf.access import ACCESS_FIELDS

    pdfx = "http://ns.adobe.com/pdfx/1.3/"
    wanted = {_norm(f) for f in ACCESS_FIELDS}
    stack = [xmp.rdf_root]
    while stack:
        node = stack.pop()
        attrs = getattr(node, "attributes", None)
        for attr in list(attrs.values()) if attrs else []:
            if _norm(attr.localName or "") in wanted and attr.namespaceURI != pdfx:
                raise IngestError(f"XMP property '{attr.name}' looks like an access field outside the pdfx namespace")
        if node.nodeType == node.ELEMENT_NODE and _norm(node.localName or "") in wanted and node.namespaceURI != pdfx:
            raise IngestError(f"XMP property '{node.tagName}' looks like an access field outside the pdfx namespace")
        stack.extend(node.childNodes)


def _norm(key: str) -> str:
    return re.sub(r"[\W_]+", "_", key.strip().lower()).strip("_")


_READERS = {
    ".md": ("markdown", _read_markdown),
    ".markdown": ("markdown", _read_markdown),
    ".txt": ("text", _read_text),
    ".html": ("html", _read_html),
    ".htm": ("html", _read_html),
    ".pdf": ("pdf", _read_pdf),
}

#: ``<file>.meta.yaml`` (or .yml / .json) beside any source file: its keys win over the file's own metadata.
SIDECAR_SUFFIXES = (".meta.yaml", ".meta.yml", ".meta.json")


def _sidecar(path: Path) -> dict[str, Any]:
    from ragconf.yamlsafe import safe_load

    found = [path.with_name(path.name + s) for s in SIDECAR_SUFFIXES if os.path.lexists(path.with_name(path.name + s))]
    if not found:
        return {}
    if len(found) > 1:
        raise IngestError(f"{path}: more than one sidecar ({', '.join(p.name for p in found)}); keep one")
    side = found[0]
    if not side.is_file():  # a dangling link, a FIFO, a folder: never fall back to the file's own labels
        raise IngestError(f"{path}: the sidecar {side.name} is not a readable regular file")
    data = safe_load(_read_utf8(side), str(side), error=IngestError, unique_keys=True)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IngestError(f"{side}: a sidecar must hold a mapping of keys to values")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins key by key, nested mappings merged the same way (so a dotted access key survives)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _matches(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p.removeprefix("**/")) for p in patterns)


def _take(meta: dict[str, Any], key: str) -> tuple[bool, Any]:
    """Remove ``key`` from ``meta`` (a dotted key also walks nested mappings); (present, value)."""
    if key in meta:
        return True, meta.pop(key)
    head, _, tail = key.partition(".")
    if tail and isinstance(meta.get(head), dict):
        inner = dict(meta[head])
        present, value = _take(inner, tail)
        if present:
            meta[head] = inner
            if not inner:
                meta.pop(head)
        return present, value
    return False, None


def split_access(meta: dict[str, Any], mapping: Any, where: str) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(access fields, the other metadata, whether the document carried any access field itself).

    Access values are validated with the strict schema (:mod:`ragconf.access`); an invalid one raises an
    IngestError naming ``where``, the field and what would be valid. Missing fields take
    ``corpus.access.defaults``. Nothing is flattened, stringified or dropped.
    """
    from ragconf.access import ACCESS_FIELDS, AccessValueError, validate_field

    rest = dict(meta)
    for key in rest:
        if not isinstance(key, str):
            raise IngestError(f"{where}: the metadata key {key!r} is not a string (quote it)")
    fields: dict[str, str | None] = {f: getattr(mapping, f, f) for f in ACCESS_FIELDS}
    for attr in getattr(mapping, "attributes", None) or []:
        fields[attr] = attr
    _reject_lookalikes(rest, fields, where)
    for target, src in fields.items():
        if src != target and target in rest:
            reads = f"from the key '{src}'" if src else f"from nowhere (corpus.access.{target} is null)"
            raise IngestError(
                f"{where}: has the access field '{target}', but this corpus reads {target} {reads}",
                hint=f"rename the key to '{src}' or change corpus.access.{target}" if src else None,
            )
    cmap = getattr(mapping, "classification_map", None) or {}
    access: dict[str, Any] = {}
    for target, src in fields.items():
        if not src:
            continue
        present, value = _take(rest, src)
        if not present:
            continue
        try:
            access[target] = validate_field(target, value, classification_map=cmap)
        except AccessValueError as exc:
            source_key = f" (read from the key '{src}')" if src != target else ""
            raise IngestError(f"{where}: {exc}{source_key}") from None
    labeled = any(f in access for f in ACCESS_FIELDS)  # attributes alone do not restrict anything
    for target, value in (getattr(mapping, "defaults", None) or {}).items():
        access.setdefault(target, value)
    for key in list(rest):
        if any(key.startswith(f + ".") for f in fields):
            raise IngestError(f"{where}: the key '{key}' would shadow the access field '{key.split('.')[0]}'")
    return access, rest, labeled


def _reject_lookalikes(meta: dict[str, Any], fields: dict[str, str | None], where: str) -> None:
    """A key that is not a configured access key but looks like one (another case or spelling, a singular,
    a close typo) is ambiguous: the author meant to restrict the document. Reject rather than ignore it."""
    import difflib

    exact = {src.split(".")[0] for src in fields.values() if src}
    names: set[str] = set()
    for target, src in fields.items():
        for n in (target, src):
            if n:
                base = _norm(n.split(".")[-1])
                names |= {base, base.rstrip("s"), base.replace("_", "")}

    def walk(value: Any, path: str, depth: int) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item, path, depth)
            return
        if not isinstance(value, dict):
            return
        for key, inner in value.items():
            if depth == 0 and key in exact:
                continue
            name = f"{path}{key}"
            norm = _norm(str(key))
            if norm in names or norm.rstrip("s") in names or norm.replace("_", "") in names:
                nested = " (nested access fields are not read: put them at the top level)" if depth else ""
                raise IngestError(
                    f"{where}: the key '{name}' looks like an access field but is not one this corpus reads{nested}"
                )
            close = difflib.get_close_matches(norm, sorted(names), n=1, cutoff=0.85)
            if close and len(norm) >= 5:
                raise IngestError(f"{where}: the key '{name}' looks like the access field '{close[0]}' (a typo?)")
            walk(inner, name + ".", depth + 1)

    walk(meta, "", 0)


def _document_meta(raw: dict[str, Any], access: Any, where: str, errors: list[SourceError], doc_id: str) -> Any:
    """(validated metadata, whether it carried access fields itself) for one document, or None when it was
    rejected or quarantined (reported)."""
    try:
        acc, rest, labeled = split_access(raw, access, where)
        flat = _flatten(rest)
    except IngestError as exc:
        errors.append(SourceError(where, exc.message, doc_id))
        return None
    except Exception as exc:  # one odd document never aborts the run (and its revocations)
        errors.append(SourceError(where, f"invalid metadata: {type(exc).__name__}: {exc}", doc_id))
        return None
    defaults = getattr(access, "defaults", None) or {}
    if not labeled and not defaults and getattr(access, "unlabeled", "quarantine") != "public":
        errors.append(
            SourceError(
                where,
                "no access metadata (acl_groups / tenant / classification) and the corpus declares no "
                "access.defaults: not indexed; add front matter / <meta> / a sidecar, set corpus.access.defaults, "
                "or corpus.access.unlabeled: public",
                doc_id,
                "quarantined",
            )
        )
        return None
    return {**flat, **acc}, labeled


def iter_source(spec: Any, access: Any, errors: list[SourceError]) -> Iterator[SourceDocument]:
    """Documents of one source spec (`corpus.sources[i]`).

    Items that cannot be read or whose access metadata is invalid are appended to ``errors`` (kind
    ``error``), items without any access metadata when the corpus declares no defaults with kind
    ``quarantined``; each carries its document id so the sync can withdraw an older indexed version.
    Raises :class:`SourceUnavailable` when the source root cannot be listed at all.
    """
    root = Path(spec.path)
    if not root.exists():
        raise SourceUnavailable(
            f"source path '{root}' does not exist; nothing was changed in the index",
            hint="check corpus.sources[].path / corpus.path",
        )
    if spec.type == "beir":
        yield from _iter_beir(root, access, errors)
        return
    try:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    except OSError as exc:
        raise SourceUnavailable(f"cannot list source path '{root}': {exc.strerror or exc}") from None
    for path in files:
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        if path.name.endswith(SIDECAR_SUFFIXES) or not _matches(rel, spec.include) or _matches(rel, spec.exclude):
            continue
        fmt, reader = _READERS.get(path.suffix.lower(), (None, None))
        if fmt is None or reader is None:
            continue
        if path.is_symlink():
            # a link could relabel a file it points to (its own sidecar wins) or reach outside the root
            errors.append(SourceError(str(path), "a symbolic link: not followed (copy the file instead)", rel))
            continue
        try:
            data = path.read_bytes()  # one read: the text, the metadata and raw_sha256 come from these bytes
            text, title, meta = reader(path, data)
            meta = _merge(meta, _sidecar(path))
        except IngestError as exc:
            errors.append(SourceError(str(path), exc.message.removeprefix(f"{path}: "), rel))
            continue
        except Exception as exc:  # any parser failure: report the file, keep going
            errors.append(SourceError(str(path), f"cannot read: {type(exc).__name__}: {exc}", rel))
            continue
        checked = _document_meta(meta, access, str(path), errors, rel)
        if checked is None:
            continue
        digest = hashlib.sha256(data).hexdigest()
        yield SourceDocument(rel, normalize(text), title, str(path), checked[0], fmt, str(path), digest, checked[1])


def _iter_beir(root: Path, access: Any, errors: list[SourceError]) -> Iterator[SourceDocument]:
    for lineno, row in _beir_rows(root, errors):
        where = f"{root / 'corpus.jsonl'}:{lineno}"
        doc_id = row["_id"]
        raw = row.get("metadata")
        if raw is None:
            raw = {}
        stray = [k for k in row if _norm(k) in {_norm(f) for f in ("acl_groups", "tenant", "classification")}]
        if stray:
            errors.append(SourceError(where, f"'{stray[0]}' belongs inside the row's 'metadata' object", doc_id))
            continue
        if not isinstance(raw, dict):
            errors.append(SourceError(where, f"'metadata' must be an object, got {_json_type(raw)}", doc_id))
            continue
        checked = _document_meta(raw, access, where, errors, doc_id)
        if checked is None:
            continue
        title, text = row.get("title"), row.get("text")
        yield SourceDocument(
            doc_id,
            normalize(text if isinstance(text, str) else ""),
            title if isinstance(title, str) else "",
            root.name,
            checked[0],
            "beir",
            where,
            labeled=checked[1],
        )


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key '{k}' appears twice")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _line_id(line: str) -> str | None:
    """The `_id` of a line that failed to parse, when it can still be read (so an older version is withdrawn)."""
    m = re.search(r'"_id"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+))', line)
    if not m:
        return None
    return m.group(1) if m.group(1) is not None else m.group(2)


def _beir_rows(root: Path, errors: list[SourceError]) -> Iterator[tuple[int, dict[str, Any]]]:
    path = root / "corpus.jsonl"
    if not path.is_file():
        raise SourceUnavailable(f"'{root}' is not a BEIR folder: corpus.jsonl is missing; nothing was changed")
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise SourceUnavailable(f"cannot read '{path}': {exc.strerror or exc}") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.append(SourceError(where, f"not UTF-8 (byte {exc.start}: {exc.reason})"))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=_unique_object, parse_constant=_no_constant)
            except ValueError as exc:
                errors.append(SourceError(where, f"invalid JSON ({getattr(exc, 'msg', exc)})", _line_id(line)))
                continue
            except RecursionError:
                errors.append(SourceError(where, "invalid JSON (nested too deeply)"))
                continue
            if not isinstance(row, dict) or "_id" not in row:
                errors.append(SourceError(where, "missing '_id'"))
                continue
            doc_id = row["_id"]
            if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or not str(doc_id).strip():
                errors.append(SourceError(where, f"'_id' must be a non-empty string or integer, got {doc_id!r:.40}"))
                continue
            row["_id"] = str(doc_id)
            yield lineno, row
