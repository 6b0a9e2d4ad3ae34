"""What an ingested document's access fields become, written from docs/ingest.md (not from the code), and a
generator of corpora with access metadata of every JSON type in every format. Shared by the fail-closed tests
and benchmarks/bench_leakage.py.

Visibility itself is the policy oracle of tests/policy/test_engine.py (`visible`), written from
docs/policies.md."""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LEVELS = ("public", "internal", "confidential", "restricted")
FIELDS = ("acl_groups", "tenant", "classification")
GROUPS = ["hr", "sre", "eng", "sales"]
TENANTS = ["acme", "globex"]
COMMON = "zebrafinch"  # a word every generated document contains, so one query can reach them all


def expected_access(raw: dict[str, Any], *, defaults: dict[str, Any] | None = None, unlabeled: str = "quarantine"):
    """The access fields docs/ingest.md says the document is indexed with, or None when it is not indexed.

    - acl_groups: a list of non-empty strings, or a comma string split into one; [] admits nobody;
      anything else (blank string, mapping, number, boolean, null, nested list, null item) rejects the document.
    - tenant: a non-empty string, else rejected.
    - classification: exactly one of the levels (no case folding), else rejected.
    - no access field at all: the declared defaults; with none, quarantined unless `unlabeled: public`.
    Surrounding whitespace of strings is removed.
    """
    out: dict[str, Any] = {}
    for f in FIELDS:
        if f not in raw:
            continue
        v = raw[f]
        if f == "acl_groups":
            if isinstance(v, str):
                parts = [p.strip() for p in v.split(",")]
                if not v.strip() or not all(parts):
                    return None
                v = parts
            elif isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v):
                v = [x.strip() for x in v]
            else:
                return None
            out[f] = sorted(set(v))
        elif f == "tenant":
            if not (isinstance(v, str) and v.strip()):
                return None
            out[f] = v.strip()
        else:
            if not (isinstance(v, str) and v in LEVELS):
                return None
            out[f] = v
    if not out and not defaults:
        return {} if unlabeled == "public" else None
    return {**(defaults or {}), **out}


# ----- generated values of every JSON type ------------------------------------------------------------------
_ODD_STRINGS = ["", " ", " , ", ",", "hr,", "HR", "Confidential", "restricted-hr", "None", "null", "['hr']", "*"]


def _scalar(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, 5, -3, 42])
    if kind == 3:
        return rng.choice([0.0, 1.5, -2.25])
    if kind == 4:
        return rng.choice(_ODD_STRINGS)
    return rng.choice([*GROUPS, *TENANTS, *LEVELS])


def odd_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value: scalars, lists (with nulls, numbers, nested lists) and mappings."""
    kind = rng.randrange(4) if depth < 2 else 0
    if kind <= 1:
        return _scalar(rng)
    if kind == 2:
        return [odd_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["g", "level", "id"]): odd_value(rng, depth + 1) for _ in range(rng.randint(0, 2))}


def valid_value(rng: random.Random, f: str) -> Any:
    if f == "acl_groups":
        groups = rng.sample(GROUPS, rng.randint(0, 2))
        return ", ".join(groups) if groups and rng.random() < 0.3 else groups
    if f == "tenant":
        return rng.choice(TENANTS)
    return rng.choice(LEVELS)


def access_values(rng: random.Random, *, strings_only: bool = False, odd: float = 0.3) -> dict[str, Any]:
    """A random subset of the access fields, each valid or (with probability ``odd``) of an odd type."""
    out: dict[str, Any] = {}
    for f in FIELDS:
        if rng.random() < 0.25:
            continue
        v = odd_value(rng) if rng.random() < odd else valid_value(rng, f)
        if strings_only:
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                v = ",".join(v)
            elif not isinstance(v, str):
                v = rng.choice(_ODD_STRINGS) if v is None or rng.random() < 0.5 else json.dumps(v)
        out[f] = v
    return out


# ----- files of every format --------------------------------------------------------------------------------
def minimal_pdf(text: str, info: dict[str, str] | None = None) -> bytes:
    """A one-page PDF with ``text``, and custom document-information entries ``info`` (via pypdf)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    safe = text.replace("\\", " ").replace("(", " ").replace(")", " ")
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 10 Tf 40 700 Td ({safe}) Tj ET".encode("latin-1", "replace"))
    page[NameObject("/Contents")] = writer._add_object(stream)
    if info:
        writer.add_metadata({f"/{k}": v for k, v in info.items()})
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def _html(title: str, body: str, meta: dict[str, str]) -> str:
    tags = "".join(f'<meta name="{k}" content="{_attr(v)}">' for k, v in meta.items())
    return f"<html><head><title>{title}</title>{tags}</head><body><h1>{title}</h1><p>{body}</p></body></html>"


def _attr(v: str) -> str:
    return v.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


@dataclass
class GeneratedDoc:
    doc_id: str
    fmt: str
    canary: str
    raw: dict[str, Any] = field(default_factory=dict)  # the access values as the source says them (after sidecar)


def write_corpus(root: Path, n: int, seed: int, *, formats: tuple[str, ...] = ("md", "txt", "html", "pdf")):
    """``n`` files of the given formats with random (often odd) access metadata, some with a sidecar that wins
    per key. Returns {doc_id: GeneratedDoc}. Every document contains its canary and the COMMON word."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    docs: dict[str, GeneratedDoc] = {}
    for i in range(n):
        fmt = formats[i % len(formats)]
        canary = f"CANARY{seed % 1000:03d}x{i:04d}"
        name = f"d{i:04d}.{fmt}"
        body = f"{COMMON} {canary} " + " ".join(rng.choice(["alpha", "bravo", "delta", "kilo"]) for _ in range(12))
        embedded = access_values(rng, strings_only=fmt in ("html", "pdf"))
        title = f"Doc {i}"
        path = root / name
        if fmt in ("md", "txt"):
            fm = yaml.safe_dump({"title": title, **embedded}, sort_keys=False) if embedded or rng.random() < 0.5 else ""
            head = f"---\n{fm}---\n" if fm else ""
            path.write_text(head + (f"# {title}\n\n" if fmt == "md" else f"{title}\n\n") + body + ".\n")
        elif fmt == "html":
            path.write_text(_html(title, body, embedded))
        else:
            path.write_bytes(minimal_pdf(body, embedded))
        raw = dict(embedded)
        if rng.random() < 0.25:
            side = access_values(rng)
            path.with_name(name + ".meta.yaml").write_text(yaml.safe_dump(side) if side else "{}\n")
            raw.update(side)
        docs[name] = GeneratedDoc(name, fmt, canary, raw)
    return docs


def write_beir(root: Path, n: int, seed: int) -> dict[str, GeneratedDoc]:
    """A BEIR folder whose rows carry random `metadata` (any JSON type, or no metadata at all)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    docs: dict[str, GeneratedDoc] = {}
    with (root / "corpus.jsonl").open("w") as fh:
        for i in range(n):
            doc_id = f"b{i:04d}"
            canary = f"CANARY{seed % 1000:03d}b{i:04d}"
            raw = access_values(rng) if rng.random() < 0.8 else {}
            row: dict[str, Any] = {"_id": doc_id, "title": f"Row {i}", "text": f"{COMMON} {canary} beir row."}
            if raw or rng.random() < 0.5:
                row["metadata"] = {**raw, "year": 2020 + i % 5}
            fh.write(json.dumps(row) + "\n")
            docs[doc_id] = GeneratedDoc(doc_id, "beir", canary, raw)
    return docs


USERS: dict[str, dict[str, Any]] = {
    "hr_acme": {"groups": ["hr"], "tenant": "acme", "clearance": "confidential"},
    "eng_acme": {"groups": ["eng", "sre"], "tenant": "acme", "clearance": "restricted"},
    "nobody_acme": {"groups": [], "tenant": "acme", "clearance": "public"},
    "hr_globex": {"groups": ["hr", "sales"], "tenant": "globex", "clearance": "restricted"},
    "no_tenant": {"groups": ["hr", "sre", "eng", "sales"], "clearance": "restricted"},
    "all_acme": {"groups": ["hr", "sre", "eng", "sales"], "tenant": "acme", "clearance": "internal"},
}


def write_users(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for uid, spec in USERS.items():
        (root / f"{uid}.yaml").write_text(yaml.safe_dump(spec))
    return root


def principal_input(uid: str) -> dict[str, Any]:
    spec = USERS[uid]
    return {"id": uid, "groups": spec["groups"], "tenant": spec.get("tenant"), "clearance": spec["clearance"]}
