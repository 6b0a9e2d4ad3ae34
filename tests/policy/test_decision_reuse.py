"""Decision reuse in the embedded engine, attacked: a remembered decision must always be the decision a fresh
evaluation of the same input gives (the oracle: the same engine with reuse off), whatever the bundle does to read
its input, and a bundle the analysis does not understand is never reused."""

from __future__ import annotations

import json
import shutil
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from ragconf.errors import PolicyConfigError, PolicyError
from ragconf.policy import AuditLog, PolicyService, RegoEngine
from ragconf.policy.engine import (
    DECISION_MEMO_MAX_RESULT,
    PURE_BUILTINS,
    UNREPEATABLE_BUILTINS,
    bundle_revision,
    request_fields_read,
)
from ragconf.policy.lint import check_forbidden, plan_facts
from ragconf.types import Principal

BUNDLE = Path(__file__).resolve().parents[2] / "policies"


def _bundle(tmp_path: Path, body: str, *, extra: dict[str, str] | None = None) -> Path:
    root = tmp_path / "b"
    (root / "ragconf").mkdir(parents=True)
    (root / "ragconf" / "x.rego").write_text("package ragconf.x\n\n" + body + "\n")
    for name, text in (extra or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _outcome(engine: RegoEngine, rule: str, data: dict[str, Any]) -> Any:
    try:
        return engine.decide(rule, data)[0]
    except PolicyError as exc:  # the same failure either way
        return type(exc).__name__


def _fresh(engine: RegoEngine, rule: str, data: dict[str, Any]) -> Any:
    memo, engine._memo = engine._memo, None
    try:
        return _outcome(engine, rule, data)
    finally:
        engine._memo = memo


def _agrees(engine: RegoEngine, rule: str, inputs: list[dict[str, Any]]) -> None:
    for data in inputs:
        assert _outcome(engine, rule, data) == _fresh(engine, rule, data), data


def _q(query: str, **more: Any) -> dict[str, Any]:
    return {"principal": {"id": "alice", "groups": ["sre"]}, "request": {"query": query, "profile": "p", **more}}


# ----- what the bundle reads -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        # a template string whose expression holds a string: the tokenizer used to end the template at the inner
        # quote and read `{input.request.query}` as string text (found: the question never split decisions)
        'v := $"{concat("", ["a"])}{input.request.query}"',
        'v := $"{"x"}{input.request.query}"',
        'v := $"{`}`}{input.request.query}"',
        'v := $"{ {"k": 1}["k"] }{input.request.query}"',
        'v := $"{$"{input.request.query}"}"',
        'v := $"{1 # a comment with "quotes" and }\n}{input.request.query}"',
        # the request whole, by a computed key, through an alias, a function, a built-in
        "v := input.request[input.principal.id]",
        "v := {k | some k in object.keys(input.request)}",
        "v := count(input.request)",
        "v := json.marshal(input)",
        "v := [x | walk(input, x)]",
        "v := object.get(input.request, input.principal.id, 0)",
        "v if input.request == {}",
        "f(x) := x.request.query\n\nv := f(input)",
        "r := input.request\n\nv := r.query",
        "import input.request as req\n\nv := req.query",
        "v := data.m[input.request.query]",
    ],
)
def test_a_reused_decision_is_the_decision_a_fresh_evaluation_gives(tmp_path: Path, body: str) -> None:
    extra = {"data.json": json.dumps({"m": {"one": 1, "two": 2}})}
    engine = RegoEngine(_bundle(tmp_path, body, extra=extra), entrypoints=())
    inputs = [_q("one"), _q("two"), _q("one", action="x"), {**_q("two"), "principal": {"id": "query"}}]
    _agrees(engine, "ragconf/x/v", inputs)
    _agrees(engine, "ragconf/x/v", inputs)  # the second round is served from the memo where it may be


def test_the_template_string_scan_reads_expressions_as_rego_cpp_does() -> None:
    src = 'package p\n\nv := $"{concat("", ["a"])}{input.request.query}"\n'
    assert request_fields_read({"m.rego": src}) == frozenset({"query"})
    with pytest.raises(PolicyConfigError, match="http.send"):  # the forbidden-built-in check reads it too
        check_forbidden("m.rego", 'package p\n\nv := $"{"x"}{http.send({"url": "u", "method": "get"})}"\n')


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ("x := input.request.profile\n\ny := input.principal.id", {"profile"}),
        ('x := input["request"]["query"]', {"query"}),
        ('v := $"{"x"}{input.request.query}"', {"query"}),
        ("f(x) := input.request.a\n\nv := f(1)", {"a"}),
        ("v if { not input.request.a }", {"a"}),
        ("x := input.request", None),
        ("x := input", None),
        ("x if { some k, v in input.request; v == k }", None),
        ('x := object.get(input.request, "query", "")', None),
        ("v := count(input.request)", None),
        ("v := input.request[input.principal.k]", None),
        ('v := {"a": input.request}', None),
        ("f(x) := x.request.query\n\nv := f(input)", None),
    ],
)
def test_the_compiled_plan_names_the_request_fields_it_reads(body: str, fields: set[str] | None) -> None:
    facts = plan_facts({"m.rego": "package p\n\n" + body + "\n"}, [])
    assert facts.request_fields == (None if fields is None else frozenset(fields))


def test_either_analysis_giving_up_keeps_the_whole_request() -> None:
    src = "package p\n\nx := input.request.profile\n"
    assert request_fields_read({"m.rego": src}, None) is None
    assert request_fields_read({"m.rego": src}, frozenset({"query"})) == frozenset({"profile", "query"})


def test_the_shipped_bundle_still_reuses_across_questions() -> None:
    engine = RegoEngine(BUNDLE)
    assert engine._memo is not None and engine._request_fields == frozenset({"profile"})


# ----- what the bundle calls -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        'v := 1 if print("x")',  # compiled as internal.print, which the old deny list missed
        'v := io.jwt.encode_sign({"alg": "HS256"}, {"a": 1}, {"kty": "oct", "k": "c2VjcmV0"})',
        "f(_) := time.now_ns()\n\nv := f(1)",
        "v := data.other.t",
    ],
)
def test_a_bundle_calling_anything_not_known_pure_is_evaluated_every_time(tmp_path: Path, body: str) -> None:
    extra = {"other/o.rego": "package other\n\nt := time.now_ns()\n"} if "data.other" in body else None
    engine = RegoEngine(_bundle(tmp_path, body, extra=extra), entrypoints=())
    assert engine._memo is None
    assert engine.decide("ragconf/x/v", {})[1] is False and engine.decide("ragconf/x/v", {})[1] is False


def test_the_pure_list_holds_nothing_unrepeatable() -> None:
    assert not PURE_BUILTINS & UNREPEATABLE_BUILTINS


# ----- what the input holds --------------------------------------------------------------------------------
def test_request_keys_that_json_would_rename_are_never_reused(tmp_path: Path) -> None:
    engine = RegoEngine(_bundle(tmp_path, 'v := [input.request["1"], input.request["true"]]'), entrypoints=())
    _agrees(engine, "ragconf/x/v", [{"request": {1: "a"}}, {"request": {1: "b"}}, {"request": {True: "c"}}])
    assert engine.decide("ragconf/x/v", {"request": {1: "a"}})[1] is False


def test_a_request_that_is_not_a_dict_is_never_filtered(tmp_path: Path) -> None:
    engine = RegoEngine(_bundle(tmp_path, "v := input.request.profile"), entrypoints=())
    inputs: list[dict[str, Any]] = [
        {"request": {"profile": "p", "query": "q"}},
        {"request": types.MappingProxyType({"profile": "p", "query": "q"})},  # reaches rego-cpp as its str()
    ]
    _agrees(engine, "ragconf/x/v", inputs)


def test_the_memo_is_bounded_by_entries_and_entry_size(tmp_path: Path) -> None:
    engine = RegoEngine(_bundle(tmp_path, "v := input.request.query"), entrypoints=())
    big = "x" * (DECISION_MEMO_MAX_RESULT + 10)
    engine.decide("ragconf/x/v", {"request": {"query": big}})
    assert engine.decide("ragconf/x/v", {"request": {"query": big}})[1] is False  # too large to remember
    engine.decide("ragconf/x/v", {"request": {"query": "y" * 5000}})
    assert engine.decide("ragconf/x/v", {"request": {"query": "y" * 5000}})[1] is True
    assert all(len(k) == 64 for k in engine._memo._data)  # a digest, whatever the input held


# ----- bundle revisions, threads, audit --------------------------------------------------------------------
def test_the_audited_revision_is_the_one_the_engine_loaded(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(BUNDLE, bundle)
    before = bundle_revision(bundle)
    engine = RegoEngine(bundle)
    access = bundle / "ragconf" / "access" / "access.rego"
    access.write_text(access.read_text() + "\n# edited while the engine loaded\n")  # a deploy mid-reload
    svc = PolicyService(engine, None, bundle)
    assert engine.revision == before and svc.bundle_revision == before != bundle_revision(bundle)
    assert PolicyService(RegoEngine(bundle), None, bundle).bundle_revision == bundle_revision(bundle)


def test_a_reload_never_serves_a_decision_of_the_old_bundle(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, 'v := "old" if input.request.profile')
    old = RegoEngine(bundle, entrypoints=())
    assert old.decide("ragconf/x/v", {"request": {"profile": "p"}}) == ("old", False)
    (bundle / "ragconf" / "x.rego").write_text('package ragconf.x\n\nv := "new" if input.request.profile\n')
    new = RegoEngine(bundle, entrypoints=())
    assert new.decide("ragconf/x/v", {"request": {"profile": "p"}}) == ("new", False)
    assert old.revision != new.revision


def test_threads_sharing_an_engine_get_their_own_decisions(tmp_path: Path) -> None:
    engine = RegoEngine(BUNDLE)
    users = [Principal(f"u{i}", (f"g{i % 3}",), f"t{i % 2}", "internal") for i in range(6)]
    want = {u.id: _fresh(engine, "ragconf/access/filter", {"principal": u.to_input(), "request": {}}) for u in users}
    errors: list[str] = []

    def work(n: int) -> None:
        for k in range(40):
            u = users[(n + k) % len(users)]
            got = engine.decide("ragconf/access/filter", {"principal": u.to_input(), "request": {"query": str(k)}})
            if got[0] != want[u.id]:
                errors.append(u.id)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_every_reused_decision_is_audited_with_its_own_id(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    svc = PolicyService(RegoEngine(BUNDLE), AuditLog(audit), BUNDLE)
    alice = Principal("alice", ("sre",), "acme", "confidential")
    ids = [svc.retrieval_filter(alice, {"query": f"q{i}"}).decision_id for i in range(5)]
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert len(set(ids)) == 5 and [x["decision_id"] for x in lines] == ids
    assert [x["reused"] for x in lines] == [False, True, True, True, True]
