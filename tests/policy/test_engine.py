"""The embedded Rego engine and the decision service: shipped bundle tests, fail-closed behaviour, audit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from haystack import Document
from hypothesis import given, settings
from hypothesis import strategies as st

from ragconf.errors import AccessDenied, PolicyError
from ragconf.policy import AuditLog, PolicyService, RegoEngine, load_engine, run_policy_tests
from ragconf.policy.filters import matches
from ragconf.types import CLASSIFICATIONS, Principal

BUNDLE = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(scope="module")
def engine() -> RegoEngine:
    return RegoEngine(BUNDLE)


def test_every_rego_has_a_test_beside_it() -> None:
    for rego in BUNDLE.rglob("*.rego"):
        if not rego.name.endswith("_test.rego"):
            assert rego.with_name(rego.stem + "_test.rego").is_file(), rego
    manifest = json.loads((BUNDLE / ".manifest").read_text())
    assert manifest["rego_version"] == 1 and manifest["roots"] == ["ragconf"]


def test_shipped_policy_tests_pass() -> None:
    report = run_policy_tests(BUNDLE, load_engine({"engine": "embedded", "bundle": str(BUNDLE)}, tests=True))
    assert report.failed == 0, [r for r in report.results if not r.passed]
    assert report.passed >= 30


def test_a_wrong_expectation_is_reported_as_failed(tmp_path: Path) -> None:
    bundle = tmp_path / "policies"
    shutil.copytree(BUNDLE, bundle)
    test = bundle / "ragconf" / "output" / "output_test.rego"
    test.write_text(
        test.read_text().replace('"max_passages": 5, "redact_pii": false', '"max_passages": 7, "redact_pii": false')
    )
    report = run_policy_tests(bundle, RegoEngine(bundle, tests=True))
    failed = [r for r in report.results if not r.passed]
    assert len(failed) == 1 and "max_passages" in failed[0].error


def test_no_tests_found_counts_nothing(tmp_path: Path) -> None:
    bundle = tmp_path / "p"
    (bundle / "ragconf").mkdir(parents=True)
    (bundle / "ragconf" / "x.rego").write_text("package ragconf.x\n\nallow := true\n")
    report = run_policy_tests(bundle, RegoEngine(bundle, tests=True, entrypoints=()))
    assert report.passed == 0 and report.failed == 0


def _bundle_with(tmp_path: Path, body: str) -> Path:
    bundle = tmp_path / "bad"
    shutil.copytree(BUNDLE, bundle)
    (bundle / "ragconf" / "access" / "extra.rego").write_text(body)
    return bundle


def test_syntax_error_fails_to_load_with_file_name(tmp_path: Path) -> None:
    bundle = _bundle_with(tmp_path, "package ragconf.extra\n\nallow if {\n")
    with pytest.raises(PolicyError, match="extra.rego"):
        RegoEngine(bundle)


@pytest.mark.parametrize(
    "call", ['http.send({"method": "get", "url": "http://x"})', "opa.runtime()", 'net.lookup_ip_addr("example.com")']
)
def test_network_and_environment_builtins_rejected(tmp_path: Path, call: str) -> None:
    bundle = _bundle_with(tmp_path, f"package ragconf.extra\n\n# {call} in a comment is fine\nx := {call}\n")
    with pytest.raises(PolicyError, match=r"extra.rego:4: policies may not call"):
        RegoEngine(bundle)


def test_missing_bundle_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        RegoEngine(tmp_path / "nope")


def test_undefined_filter_is_access_denied(engine: RegoEngine, tmp_path: Path) -> None:
    svc = PolicyService(engine, AuditLog(tmp_path / "audit.jsonl"), BUNDLE)
    with pytest.raises(AccessDenied, match="undefined decision means deny"):
        svc.retrieval_filter(Principal(id=""), {"query": "q"})
    with pytest.raises(AccessDenied):
        svc.retrieval_filter(Principal(id="x", clearance="galactic"), {})
    record = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[0])
    assert record["result"] is None


def test_engine_error_is_a_policy_error_and_audited(tmp_path: Path) -> None:
    bundle = _bundle_with(tmp_path, "package ragconf.extra\n\nboom := 1 if true\n\nboom := 2 if true\n")
    svc = PolicyService(RegoEngine(bundle, entrypoints=()), AuditLog(tmp_path / "a.jsonl"), bundle)
    with pytest.raises(PolicyError, match="treated as deny"):
        svc._decide("ragconf/extra/boom", {}, "u")
    assert "error" in json.loads((tmp_path / "a.jsonl").read_text().splitlines()[-1])


def test_decisions_are_audited_with_required_fields(engine: RegoEngine, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    svc = PolicyService(engine, AuditLog(audit), BUNDLE)
    alice = Principal("alice", ("sre",), "acme", "confidential")
    docs = [
        Document(id="1", content="secret text", meta={"tenant": "acme", "acl_groups": ["sre"]}),
        Document(id="2", content="x", meta={"tenant": "globex"}),
    ]
    f = svc.retrieval_filter(alice, {"query": "q"})
    d = svc.check_documents(alice, docs, {"query": "q"})
    r = svc.route(alice, {}, d.allowed, [{"name": "extractive", "locality": "local"}])
    o = svc.output_rules(alice, {}, d.allowed)
    assert [x.id for x in d.allowed] == ["1"] and d.denied == 1
    assert r.profile == "extractive" and not r.refused and o.require_citations
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [x["decision_id"] for x in lines] == [f.decision_id, d.decision_id, r.decision_id, o.decision_id]
    for rec in lines:
        assert {
            "decision_id",
            "time",
            "policy",
            "rule",
            "bundle_revision",
            "principal",
            "input_sha256",
            "masked_fields",
        } <= set(rec)
        assert rec["principal"] == "alice" and rec["bundle_revision"] == svc.bundle_revision
        assert "secret text" not in json.dumps(rec)
    assert lines[1]["allowed"] == 1 and lines[1]["denied"] == 1


LEVELS = {c: i for i, c in enumerate(CLASSIFICATIONS)}
GROUPS = ["hr", "sre", "eng", "sales"]
TENANTS = [None, "acme", "globex"]


def visible(p: dict, meta: dict) -> bool:
    """The default policy, written from its description (the oracle for the property tests)."""
    if not p.get("id") or p.get("clearance") not in LEVELS:
        return False
    tenant = meta.get("tenant")
    if tenant is not None and tenant != p.get("tenant"):
        return False
    cls = meta.get("classification")
    if cls is not None and (cls not in LEVELS or LEVELS[cls] > LEVELS[p["clearance"]]):
        return False
    groups = meta.get("acl_groups")
    return groups is None or bool(set(groups) & set(p["groups"]))


principals = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["u1", "u2", ""]),
        "groups": st.lists(st.sampled_from(GROUPS), unique=True, max_size=3),
        "tenant": st.sampled_from(TENANTS),
        "clearance": st.sampled_from([*CLASSIFICATIONS, "unknown"]),
        "attributes": st.just({}),
    }
)
metas = st.fixed_dictionaries(
    {},
    optional={
        "tenant": st.sampled_from(TENANTS),
        "classification": st.sampled_from([None, *CLASSIFICATIONS, "secret"]),
        "acl_groups": st.one_of(st.none(), st.lists(st.sampled_from(GROUPS), unique=True, max_size=3)),
    },
)


@settings(max_examples=400, deadline=None)
@given(p=principals, meta=metas)
def test_filter_allow_and_description_agree(engine: RegoEngine, p: dict, meta: dict) -> None:
    allow = bool(engine.evaluate("ragconf/access/allow", {"principal": p, "document": {"meta": meta}}))
    assert allow == visible(p, meta)
    flt = engine.evaluate("ragconf/access/filter", {"principal": p})
    if flt is None:
        assert not allow
    else:
        assert matches(flt, {"meta": meta}) == allow


def test_redaction_masks_email_and_phone() -> None:
    pytest.importorskip("presidio_analyzer")
    from ragconf.policy.redact import redact

    text, masked = redact("Contact Jane Doe at jane.doe@example.com or +1 415 555 0199 [1].")
    assert "jane.doe@example.com" not in text and "555 0199" not in text and "[1]" in text
    assert {"EMAIL_ADDRESS", "PHONE_NUMBER"} <= set(masked)


# ----- decisions the engine remembers ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "fields"),
    [
        ("package p\n\nx := input.request.profile\n\ny := input.principal.id\n", {"profile"}),
        ("package p\n\nx := input.request.query\n", {"query"}),
        ('package p\n\nx := input["request"]["query"]\n', {"query"}),
        ('package p\n\n# input.request in a comment\nx := "input.request"\n', set()),
        ("package p\n\nx := input.request\n", None),
        ("package p\n\nx := input\n", None),
        ("package p\n\nx := input[k]\n", None),
        ("package p\n\nx if { some k, v in input.request; v == k }\n", None),
        ('package p\n\nx := object.get(input.request, "query", "")\n', None),
        ("package p\n\nimport input.request\n\nx := request.query\n", None),
        ('package p\n\nx := y with input.request.query as "q"\n', {"query"}),
    ],
)
def test_request_fields_read(source: str, fields: set[str] | None) -> None:
    from ragconf.policy.engine import request_fields_read

    got = request_fields_read({"m.rego": source})
    assert got == (None if fields is None else frozenset(fields))


def test_a_decision_is_reused_for_an_input_equal_in_what_the_policy_reads(tmp_path: Path) -> None:
    engine = RegoEngine(BUNDLE)  # the shipped bundle reads request.profile only, never the question
    audit = tmp_path / "audit.jsonl"
    svc = PolicyService(engine, AuditLog(audit), BUNDLE)
    alice = Principal("alice", ("sre",), "acme", "confidential")
    first = svc.retrieval_filter(alice, {"query": "one question", "action": "retrieve"})
    first.filters["conditions"].clear()  # the caller owns what it got: the next decision is a fresh value
    second = svc.retrieval_filter(alice, {"query": "another question", "action": "retrieve"})
    assert second.filters["conditions"] and second.decision_id != first.decision_id
    carol = svc.retrieval_filter(Principal("carol", ("contractors",), "acme", "public"), {"query": "one question"})
    assert carol.filters != second.filters
    docs = [
        Document(id="1", content="x", meta={"tenant": "acme", "acl_groups": ["sre"]}),
        Document(id="2", content="x", meta={"tenant": "globex"}),
    ]
    d1 = svc.check_documents(alice, docs, {"query": "q"})
    d2 = svc.check_documents(alice, list(reversed(docs)), {"query": "q"})  # same signatures, other ranking
    assert [d.id for d in d1.allowed] == ["1"] and [d.id for d in d2.allowed] == ["1"] and d2.denied == 1
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    # every decision is audited with its own id, whether evaluated or reused
    assert [x["decision_id"] for x in lines] == [
        first.decision_id,
        second.decision_id,
        carol.decision_id,
        d1.decision_id,
        d2.decision_id,
    ]
    assert [x["reused"] for x in lines] == [False, True, False, False, True]
    assert lines[1]["input_sha256"] != lines[0]["input_sha256"]  # the audited input is the whole input
    assert lines[4]["allowed_ids"] == ["1"] and lines[4]["denied_ids"] == ["2"]


def test_a_policy_that_reads_the_question_is_not_reused_across_questions(tmp_path: Path) -> None:
    bundle = _bundle_with(tmp_path, "package ragconf.extra\n\nn := count(input.request.query)\n")
    engine = RegoEngine(bundle)
    assert engine.decide("ragconf/extra/n", {"request": {"query": "short"}}) == (5, False)
    assert engine.decide("ragconf/extra/n", {"request": {"query": "a longer one"}}) == (12, False)
    assert engine.decide("ragconf/extra/n", {"request": {"query": "short", "action": "x"}}) == (5, True)


@pytest.mark.parametrize("call", ["time.now_ns()", 'rand.intn("k", 10)', 'uuid.rfc4122("k")'])
def test_a_policy_with_unrepeatable_builtins_is_evaluated_every_time(tmp_path: Path, call: str) -> None:
    bundle = _bundle_with(tmp_path, f"package ragconf.extra\n\nv := {call}\n")
    engine = RegoEngine(bundle)
    assert engine.decide("ragconf/extra/v", {})[1] is False
    assert engine.decide("ragconf/extra/v", {})[1] is False


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.text(alphabet="abc-_ 09", max_size=6),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(alphabet='abyz_é"', max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(value=_values, query=st.text(max_size=8))
def test_a_reused_decision_is_the_decision_an_evaluation_gives(value: object, query: str) -> None:
    """Whatever the input holds (escapes, floats, nulls, big numbers), a remembered result equals what a new
    evaluation of the same input returns, inputs that differ only in the question included."""
    engine = _echo_engine()

    def outcome(fn: Any) -> object:
        try:
            return fn()
        except Exception as exc:  # the same failure either way
            return type(exc).__name__

    for q, profile in ((query, "p"), (query + "!", "p"), (query, "q")):
        data = {"principal": {"v": value}, "request": {"query": q, "profile": profile}}
        memo, engine._memo = engine._memo, None
        fresh = outcome(lambda d=data: engine.decide("ragconf/echo/v", d)[0])  # type: ignore[misc]
        engine._memo = memo
        assert outcome(lambda d=data: engine.decide("ragconf/echo/v", d)[0]) == fresh  # type: ignore[misc]
    engine.decide("ragconf/echo/v", {"principal": {"v": 1}, "request": {"query": "x", "profile": "p"}})
    assert engine.decide("ragconf/echo/v", {"principal": {"v": 1}, "request": {"query": "y", "profile": "p"}})[1]


_ECHO: list[RegoEngine] = []


def _echo_engine() -> RegoEngine:
    if not _ECHO:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="echo-")) / "ragconf"
        root.mkdir()
        (root / "echo.rego").write_text(
            "package ragconf.echo\n\n"
            'v := [type_name(input.principal.v), json.marshal(input.principal), input.principal.v == "é",\n'
            "\tis_number(input.principal.v), input.request.profile, input.principal]\n"
        )
        _ECHO.append(RegoEngine(root.parent))
    return _ECHO[0]
