"""One definition of visibility: the access policy's ``filter`` (as the store evaluates it) and its ``allow`` /
``allowed_ids`` must agree.

The check generates principals x documents from the access values actually in the configured store (distinct
tenants, classifications, acl groups), the identity directory's users and edge cases (missing and null fields,
empty and unknown groups, unknown levels, tenant-less principals, unusable principals), then compares for each
pair:

- ``filter``, evaluated the way the store evaluates it: the SQL ragconf's SQLite store runs
  (:func:`ragconf.store.filters.to_sql` over the documents' JSON metadata) and ragconf's Python matcher
  (:func:`ragconf.policy.filters.matches`), an undefined filter meaning "nothing visible";
- ``allow`` for the one document (the per-document decision);
- ``allowed_ids`` for the batch (what the access guard asks).

Any disagreement is a counterexample (principal, document metadata, what each side said).
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragconf.errors import PolicyError, StoreError
from ragconf.policy.filters import matches
from ragconf.types import CLASSIFICATIONS

__all__ = ["ConsistencyReport", "Counterexample", "check_visibility", "store_access_values"]

#: Access fields the generated documents vary.
ACCESS_FIELDS = ("tenant", "classification", "acl_groups")
UNKNOWN_TENANT = "tenant-not-in-store"
UNKNOWN_GROUP = "group-not-in-store"
UNKNOWN_LEVEL = "level-not-configured"
_MISSING = object()


@dataclass
class Counterexample:
    principal: dict[str, Any]
    meta: dict[str, Any]
    filter_says: bool
    allow_says: bool
    allowed_ids_says: bool
    matcher_says: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "document_meta": self.meta,
            "filter": self.filter_says,
            "allow": self.allow_says,
            "allowed_ids": self.allowed_ids_says,
            "python_matcher": self.matcher_says,
        }

    def lines(self) -> list[str]:
        def word(v: bool) -> str:
            return "visible" if v else "not visible"

        return [
            f"  principal      {json.dumps(self.principal, sort_keys=True)}",
            f"  document meta  {json.dumps(self.meta, sort_keys=True)}",
            f"  filter (as the store evaluates it) says {word(self.filter_says)}, allow says {word(self.allow_says)}, "
            f"allowed_ids says {word(self.allowed_ids_says)}"
            + ("" if self.matcher_says == self.filter_says else f", python matcher says {word(self.matcher_says)}"),
        ]


@dataclass
class ConsistencyReport:
    cases: int = 0
    possible_cases: int = 0
    principals: int = 0
    documents: int = 0
    store_signatures: int = 0
    mismatches: int = 0
    seconds: float = 0.0
    counterexamples: list[Counterexample] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "cases": self.cases,
            "possible_cases": self.possible_cases,
            "principals": self.principals,
            "documents": self.documents,
            "store_signatures": self.store_signatures,
            "mismatches": self.mismatches,
            "seconds": round(self.seconds, 3),
            "counterexamples": [c.to_dict() for c in self.counterexamples],
            "skipped": self.skipped,
        }

    def summary(self) -> str:
        if self.skipped:
            return f"visibility check skipped: {self.skipped}"
        scope = (
            f"{self.cases} cases ({self.principals} principals x {self.documents} documents, "
            f"{self.store_signatures} access signatures from the store"
            + (f", sampled from {self.possible_cases}" if self.possible_cases > self.cases else "")
            + f") in {self.seconds:.1f}s"
        )
        if self.ok:
            return f"visibility: filter, allow and allowed_ids agree on {scope}"
        return f"visibility MISMATCH: filter and allow disagree on {self.mismatches} of {scope}"


# ----- access values in the store -------------------------------------------------------------------------
def store_access_values(store_cfg: Mapping[str, Any], fields: Iterable[str] = ACCESS_FIELDS) -> list[dict[str, Any]]:
    """The distinct access signatures (``{field: value}``, missing fields absent) of the configured store, read
    without opening it for writing. Empty when the store does not exist yet or is not a SQLite store."""
    path = store_cfg.get("path")
    if store_cfg.get("type", "sqlite") != "sqlite" or not path or not Path(path).is_file():
        return []
    fields = list(fields)
    cols = ", ".join(f"json_type(meta, '$.{f}'), meta -> '$.{f}'" for f in fields)
    try:
        db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            rows = db.execute(f"SELECT DISTINCT {cols} FROM chunks").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read access values from store '{path}': {exc}") from None
    out = []
    for row in rows:
        meta = {}
        for i, f in enumerate(fields):
            kind, value = row[2 * i], row[2 * i + 1]
            if kind is not None:
                meta[f] = json.loads(value)
        out.append(meta)
    return out


# ----- generation --------------------------------------------------------------------------------------------
def _strings(values: Iterable[Any]) -> list[str]:
    return sorted({v for v in values if isinstance(v, str) and v})


def _groups_of(signatures: list[dict[str, Any]]) -> list[str]:
    found: set[str] = set()
    for meta in signatures:
        g = meta.get("acl_groups")
        if isinstance(g, str) and g:
            found.add(g)
        elif isinstance(g, list):
            found.update(x for x in g if isinstance(x, str) and x)
    return sorted(found)


def _attribute_values(signatures: list[dict[str, Any]], attributes: Iterable[str]) -> dict[str, list[str]]:
    """Declared attribute -> the string values the store holds for it (a list value contributes each item)."""
    out: dict[str, list[str]] = {}
    for name in attributes:
        seen: set[str] = set()
        for meta in signatures:
            v = meta.get(name)
            seen.update(x for x in (v if isinstance(v, list) else [v]) if isinstance(x, str) and x)
        out[name] = sorted(seen)
    return out


def generate_principals(
    signatures: list[dict[str, Any]],
    users: list[dict[str, Any]],
    levels: tuple[str, ...],
    attributes: Iterable[str] = (),
) -> list[dict[str, Any]]:
    tenants = _strings([m.get("tenant") for m in signatures] + [u.get("tenant") for u in users])
    groups = sorted(set(_groups_of(signatures)) | {g for u in users for g in u.get("groups") or []})
    group_sets: list[list[str]] = [[], [UNKNOWN_GROUP], *([g] for g in groups)]
    if len(groups) > 1:
        group_sets.append(list(groups))
    out: list[dict[str, Any]] = [dict(u) for u in users]
    n = 0
    for tenant in [*tenants, None, UNKNOWN_TENANT]:
        for clearance in [*levels, UNKNOWN_LEVEL]:
            for gs in group_sets:
                n += 1
                out.append({"id": f"p{n}", "groups": gs, "tenant": tenant, "clearance": clearance, "attributes": {}})
    top = levels[-1] if levels else "restricted"
    # declared attributes (corpus.access.attributes): principals holding each stored value, an unknown one,
    # a list of all of them, with the widest other rights, so a rule on an attribute decides alone
    for name, values in _attribute_values(signatures, attributes).items():
        for value in [*values, UNKNOWN_GROUP, *([values] if len(values) > 1 else [])]:
            for tenant in [*tenants, None]:
                n += 1
                attrs = {name: value}
                out.append({"id": f"p{n}", "groups": groups, "tenant": tenant, "clearance": top, "attributes": attrs})
    out += [
        {"id": "", "groups": groups, "tenant": None, "clearance": top, "attributes": {}},  # empty id
        {"id": "nogroups", "tenant": None, "clearance": top, "attributes": {}},  # groups missing
        {"id": "nullgroups", "groups": None, "tenant": None, "clearance": top, "attributes": {}},
        {"id": "noclearance", "groups": groups, "tenant": None, "attributes": {}},
    ]
    return out


def generate_documents(
    signatures: list[dict[str, Any]], levels: tuple[str, ...], attributes: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The store's own signatures first, then every combination of edge values per field, then the store's
    signatures with each declared attribute missing, null, unknown or holding each stored value."""
    tenants = _strings(m.get("tenant") for m in signatures)
    groups = _groups_of(signatures)
    tenant_vals: list[Any] = [_MISSING, None, *tenants, UNKNOWN_TENANT]
    level_vals: list[Any] = [_MISSING, None, *levels, UNKNOWN_LEVEL]
    group_vals: list[Any] = [_MISSING, None, [], [UNKNOWN_GROUP], *([g] for g in groups)]
    if groups:
        group_vals += [[groups[0], UNKNOWN_GROUP], groups[0]]  # a list with an unknown member; a bare string
    if len(groups) > 1:
        group_vals.append(list(groups))
    seen: set[str] = set()
    out: list[dict[str, Any]] = []

    def add(meta: dict[str, Any]) -> None:
        key = json.dumps(meta, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(meta)

    for meta in signatures:
        add(dict(meta))
    for t in tenant_vals:
        for c in level_vals:
            for g in group_vals:
                meta = {}
                for name, v in (("tenant", t), ("classification", c), ("acl_groups", g)):
                    if v is not _MISSING:
                        meta[name] = v
                add(meta)
    for name, values in _attribute_values(signatures, attributes).items():
        for meta in signatures:
            for v in [_MISSING, None, UNKNOWN_GROUP, *values, *([values] if len(values) > 1 else [])]:
                variant = {k: x for k, x in meta.items() if k != name}
                if v is not _MISSING:
                    variant[name] = v
                add(variant)
    return out


# ----- the check ---------------------------------------------------------------------------------------------
class _SqlFilter:
    """The generated documents in an in-memory table shaped like the SQLite store's (``c.id``, ``c.meta``),
    queried with the store's own filter translation."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE TABLE c (id TEXT PRIMARY KEY, content TEXT, meta TEXT)")
        self.db.executemany("INSERT INTO c VALUES (?, '', ?)", [(str(i), json.dumps(m)) for i, m in enumerate(docs)])

    def visible(self, flt: dict[str, Any]) -> set[int]:
        from ragconf.store.filters import to_sql

        params: list[Any] = []
        where = to_sql(flt, params)
        return {int(r[0]) for r in self.db.execute(f"SELECT c.id FROM c WHERE {where}", params)}

    def close(self) -> None:
        self.db.close()


def check_visibility(
    engine: Any,
    *,
    signatures: list[dict[str, Any]] | None = None,
    users: list[dict[str, Any]] | None = None,
    levels: tuple[str, ...] = CLASSIFICATIONS,
    max_cases: int = 6000,
    max_examples: int = 5,
    seed: int = 0,
    attributes: Iterable[str] = (),
) -> ConsistencyReport:
    """Compare ``filter`` (store semantics), ``allow`` and ``allowed_ids`` on generated principals x documents
    (declared ``attributes`` varied on both sides)."""
    started = time.perf_counter()
    signatures = signatures or []
    attributes = list(attributes)
    report = ConsistencyReport(store_signatures=len(signatures))
    principals = generate_principals(signatures, list(users or []), levels, attributes)
    docs = generate_documents(signatures, levels, attributes)
    report.principals, report.documents = len(principals), len(docs)
    report.possible_cases = len(principals) * len(docs)
    # every principal meets every store signature; the edge documents are sampled to stay within max_cases
    n_store = len({json.dumps(m, sort_keys=True) for m in signatures})
    rng = random.Random(seed)
    edge = list(range(n_store, len(docs)))
    per_principal = max(1, (max_cases // max(1, len(principals))) - n_store)
    sql = _SqlFilter(docs)
    try:
        for p in principals:
            chosen = list(range(n_store))
            chosen += edge if per_principal >= len(edge) else sorted(rng.sample(edge, per_principal))
            flt = engine.evaluate("ragconf/access/filter", {"principal": p})
            filter_ok: set[int] = set()
            if isinstance(flt, dict) and flt:
                try:
                    filter_ok = sql.visible(flt)
                except StoreError as exc:
                    raise PolicyError(
                        f"ragconf.access.filter for {json.dumps(p)} is not a valid filter: {exc}"
                    ) from None
            batch = engine.evaluate(
                "ragconf/access/allowed_ids",
                {"principal": p, "documents": [{"id": str(i), "meta": docs[i]} for i in chosen]},
            )
            batch_ok = {str(x) for x in (batch or [])}
            for i in chosen:
                meta = docs[i]
                allow = engine.evaluate("ragconf/access/allow", {"principal": p, "document": {"meta": meta}}) is True
                says_filter = i in filter_ok
                says_batch = str(i) in batch_ok
                says_matcher = bool(flt) and isinstance(flt, dict) and matches(flt, {"meta": meta})
                report.cases += 1
                if not (says_filter == allow == says_batch == says_matcher):
                    report.mismatches += 1
                    if len(report.counterexamples) < max_examples:
                        report.counterexamples.append(
                            Counterexample(dict(p), dict(meta), says_filter, allow, says_batch, says_matcher)
                        )
    finally:
        sql.close()
    report.seconds = time.perf_counter() - started
    return report


def check_configured(spec: Any, engine: Any, *, max_cases: int = 6000) -> ConsistencyReport:
    """:func:`check_visibility` for a loaded config: its store's access values and its identity's users."""
    from ragconf.identity import Directory

    attributes = list(getattr(spec.corpus.access, "attributes", None) or [])
    signatures = store_access_values(spec.store.model_dump(), [*ACCESS_FIELDS, *attributes])
    users: list[dict[str, Any]] = []
    try:
        directory = Directory(spec.identity)
        users = [directory.resolve(uid).to_input() for uid in directory.ids()]
    except Exception:  # an identity problem is reported by the commands that use it, not here  # noqa: BLE001
        users = []
    return check_visibility(engine, signatures=signatures, users=users, max_cases=max_cases, attributes=attributes)
