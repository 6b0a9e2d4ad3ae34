"""The forbidden built-ins check cannot be bypassed by Rego string edge cases, and bundle problems are config
mistakes (exit 2) with one clean line, through the real CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ragconf.errors import PolicyConfigError
from ragconf.policy import RegoEngine
from ragconf.policy.lint import check_forbidden, compiled_builtins, tokenize
from tests.conftest import run_cli

BUNDLE = Path(__file__).resolve().parents[2] / "policies"

# Each of these calls (or refers to) a forbidden built-in in code. The first ones got past the old
# line-based check (it took `#` inside a raw string for a comment, lost track of strings after `\"`, and
# only matched `name(` without spaces).
HOSTILE = {
    "after a raw string holding #": 'package ragconf.extra\n\ns := `# not a comment`; y := http.send({"url": "u"})\n',
    "after a string ending in an escaped backslash": (
        'package ragconf.extra\n\ns := "\\\\"; t := "#"; y := http.send({"url": "u"})\n'
    ),
    "after a string with an escaped quote": (
        'package ragconf.extra\n\ns := "say \\"#\\" twice"; y := http.send({"url": "u"})\n'
    ),
    "after a multi-line raw string": (
        'package ragconf.extra\n\ns := `first line "\n# still the string`; y := opa.runtime()\n'
    ),
    "with spaces around the dot": 'package ragconf.extra\n\ny := http . send ({"url": "u"})\n',
    "split over lines with a comment between": (
        'package ragconf.extra\n\ny := http # the client\n  .send({"url": "u"})\n'
    ),
    "bracket reference": 'package ragconf.extra\n\ny := http["send"]({"url": "u"})\n',
    "function reference": "package ragconf.extra\n\nf := http.send\n",
    "through with": ("package ragconf.extra\n\nfetch(req) := req\n\ny := fetch({}) with fetch as http.send\n"),
    "template string expression": 'package ragconf.extra\n\ny := $"{http.send({})}"\n',
    "net lookup": 'package ragconf.extra\n\nips := net.lookup_ip_addr("example.com")\n',
}

# Mentions that are not calls: must load.
HARMLESS = (
    "package ragconf.extra\n\n"
    "# http.send(...) and opa.runtime() are forbidden: this comment says so\n"
    'doc := "never call http.send({}) or opa.runtime() here # really"\n'
    "raw := `http.send({})\n opa.runtime()`\n"
    'escaped := "quote \\" then http.send({}) still inside"\n'
    "x := input.http.send\n"
)


def _bundle_with(tmp_path: Path, body: str | bytes) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    target = bundle / "ragconf" / "access" / "extra.rego"
    if isinstance(body, bytes):
        target.write_bytes(body)
    else:
        target.write_text(body, encoding="utf-8")
    return bundle


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_source_is_rejected(case: str) -> None:
    with pytest.raises(PolicyConfigError, match=r"extra.rego:\d+: policies may not call") as err:
        check_forbidden(Path("extra.rego"), HOSTILE[case])
    assert err.value.exit_code == 2


def test_comments_and_strings_naming_builtins_are_not_rejected(tmp_path: Path) -> None:
    check_forbidden(Path("extra.rego"), HARMLESS)
    engine = RegoEngine(_bundle_with(tmp_path, HARMLESS))  # loads, compiles, plan vetted
    assert engine.evaluate("ragconf/extra/doc", {}).startswith("never call http.send")


def test_tokenizer_understands_rego_strings() -> None:
    toks = tokenize('a := "x\\"#y" # c\nb := `r\n#s`\nc := 1')
    assert [t.text for t in toks if t.kind == "string"] == ['x"#y', "r\n#s"]
    assert [(t.text, t.line) for t in toks if t.kind == "ident"] == [("a", 1), ("b", 2), ("c", 4)]
    with pytest.raises(ValueError, match="unterminated"):
        tokenize('x := "open\ny := 1')


def test_unterminated_string_is_rejected_naming_the_line() -> None:
    with pytest.raises(PolicyConfigError, match=r"extra.rego:3: unterminated raw string"):
        check_forbidden(Path("extra.rego"), "package ragconf.extra\n\nx := `never closed\nhttp.send({})\n")


def test_compiled_plan_lists_builtins_whatever_the_spelling(tmp_path: Path) -> None:
    """The second, independent check: rego-cpp's compiled plan (every rule, reachable or not)."""
    modules = {"x.rego": 'package ragconf.x\n\nz := 1\n\ny := http["send"]({"url": "u"})\n\nr := opa.runtime()\n'}
    assert {"http.send", "opa.runtime"} <= compiled_builtins(modules, [])
    shipped = RegoEngine(BUNDLE)  # the shipped bundle passes both checks
    alice = {"id": "alice", "groups": [], "tenant": "acme", "clearance": "public"}
    assert shipped.evaluate("ragconf/access/filter", {"principal": alice})["operator"] == "AND"


def test_plan_check_catches_what_the_text_check_would_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ragconf.policy.engine as engine_mod

    monkeypatch.setattr(engine_mod, "check_forbidden", lambda path, source: None)
    bundle = _bundle_with(tmp_path, HOSTILE["bracket reference"])
    with pytest.raises(PolicyConfigError, match="the compiled policy calls http.send"):
        RegoEngine(bundle)


@pytest.mark.parametrize("case", ["after a raw string holding #", "bracket reference", "with spaces around the dot"])
def test_cli_refuses_the_bundle_with_exit_2(tmp_path: Path, case: str) -> None:
    bundle = _bundle_with(tmp_path, HOSTILE[case])
    for args in (["policy", "test"], ["validate"]):
        proc = run_cli(*args, f"policy.bundle={bundle}", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "extra.rego:3: policies may not call" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'package ragconf.extra\n\nx := "\xff\xfe"\n', r"extra.rego:3: not valid UTF-8"),
        ("package ragconf.extra\n\nallow if {\n", r"extra.rego does not parse: .*extra.rego:3:10"),
        (
            "package ragconf.extra\n\nallow if undefined_function(1)\n",
            r"extra.rego:3: calls undefined function undefined_",
        ),
    ],
    ids=["not-utf8", "syntax-error", "unknown-function"],
)
def test_unusable_bundle_is_a_config_mistake_everywhere(tmp_path: Path, body: str | bytes, message: str) -> None:
    """exit 2, one line, nothing on stdout (rego-cpp's own error printout is silenced), for every command."""
    bundle = _bundle_with(tmp_path, body)
    inp = tmp_path / "in.json"
    inp.write_text('{"principal": {"id": "alice"}}')
    for args in (
        ["policy", "test"],
        ["policy", "eval", "ragconf.access.filter", "--input", str(inp)],
        ["validate"],
        ["ask", "anything", "--user", "alice"],
    ):
        proc = run_cli(*args, f"policy.bundle={bundle}", "tracking=disabled", cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and __import__("re").search(message, errors[0]), proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stdout


def test_rule_failing_at_evaluation_fails_closed_with_one_line(tmp_path: Path) -> None:
    """A rule that errors at evaluation time: the request is denied (exit 3), nothing retrieved, no traceback."""
    body = (
        "package ragconf.access\n\n"
        "conflict := 1 if true\n\nconflict := 2 if count(input.documents) >= 0\n\n"
        "allowed_ids contains d.id if {\n\tsome d in input.documents\n\tconflict > 0\n}\n"
    )
    bundle = _bundle_with(tmp_path, body)
    (bundle / "ragconf" / "access" / "extra_test.rego").write_text(
        'package ragconf.access.extra_test\n\ncases := [{"name": "n", "rule": "allow", "input": {}, "expect": false}]\n'
    )
    run_cli("ingest", "tracking=disabled", cwd=tmp_path, check=True)
    proc = run_cli(
        "ask",
        "When should we fail over?",
        "--user",
        "alice",
        "--json",
        f"policy.bundle={bundle}",
        "tracking=disabled",
        cwd=tmp_path,
    )
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "evaluating data.ragconf.access.allowed_ids failed" in errors[0]
    assert "treated as deny" in errors[0]
    inp = tmp_path / "in.json"
    inp.write_text('{"documents": [{"id": "1", "meta": {}}]}')
    proc = run_cli(
        "policy", "eval", "ragconf.access.conflict", "--input", str(inp), f"policy.bundle={bundle}", cwd=tmp_path
    )
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "evaluating data.ragconf.access.conflict failed" in proc.stderr


def test_policy_eval_input_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "in.json"
    bad.write_bytes(b"\xff\xfe{}")
    proc = run_cli("policy", "eval", "ragconf.access.filter", "--input", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr and "Traceback" not in proc.stderr
