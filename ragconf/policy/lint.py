"""Static checks of a policy bundle: the forbidden built-ins.

Two independent checks, both failing closed:

- :func:`check_forbidden` tokenizes the Rego source (``"..."`` strings with escapes, raw `` `...` `` strings that
  may span lines and hold ``#``, template strings, ``#`` comments) and rejects every *reference* to a forbidden
  built-in in code: ``http.send(...)``, ``http . send (...)``, ``http["send"](...)``, ``f := http.send``,
  ``with g as http.send``. Comments and string contents never count. It needs no engine, so the OPA server
  engine runs it on the local bundle too.
- :func:`compiled_builtins` asks rego-cpp's compiler which built-ins the compiled plan of the whole bundle calls
  (``static.builtin_funcs`` of the plan, every rule, reachable or not): whatever spelling the source used, a call
  that compiles is listed there. The embedded engine rejects a bundle whose plan calls a forbidden built-in.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragconf.errors import PolicyConfigError

__all__ = [
    "FORBIDDEN_BUILTINS",
    "PlanFacts",
    "Token",
    "check_forbidden",
    "check_plan",
    "compiled_builtins",
    "plan_facts",
    "tokenize",
]

#: Built-ins that reach the network or the runtime environment: they could leak secrets into decisions.
FORBIDDEN_BUILTINS = ("http.send", "opa.runtime", "net.lookup_ip_addr", "io.jwt.decode_verify")

_HINT = "pass what the policy needs through input or data.json"
_IDENT_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_IDENT = _IDENT_START + "0123456789"
_OPS2 = (":=", "==", "!=", "<=", ">=")


@dataclass(frozen=True)
class Token:
    kind: str  # ident, string, number, op, other
    text: str  # for strings: the decoded value
    line: int


class _Unterminated(Exception):
    def __init__(self, what: str, line: int) -> None:
        super().__init__(what)
        self.what, self.line = what, line


def _decode(body: str) -> str:
    """The value of a "..." string body (JSON escapes); undecodable bodies are kept as written."""
    try:
        value = json.loads('"' + body + '"')
    except (json.JSONDecodeError, ValueError):
        return body
    return value if isinstance(value, str) else body


def _scan_quoted(src: str, i: int, line: int) -> tuple[int, str]:
    """End index (after the closing quote) and body of the "..." string starting at ``src[i] == '"'``."""
    j = i + 1
    while j < len(src):
        ch = src[j]
        if ch == "\\":
            j += 2
            continue
        if ch == '"':
            return j + 1, src[i + 1 : j]
        if ch == "\n":
            break
        j += 1
    raise _Unterminated('string "..."', line)


def _scan_raw(src: str, i: int, line: int) -> tuple[int, str]:
    end = src.find("`", i + 1)
    if end < 0:
        raise _Unterminated("raw string `...`", line)
    return end + 1, src[i + 1 : end]


def _scan_template(src: str, i: int, line: int) -> tuple[int, str, list[str]]:
    """End index, body and ``{expression}`` parts of the template string starting at ``src[i] == '$'``.

    As rego-cpp reads it: inside an expression a ``"..."`` or raw string, a nested template or a ``#`` comment is
    skipped whole, so its quotes and braces neither end the template nor the expression
    (``$"{concat("", [x])}{input.y}"``); in the text part ``\\{`` is a literal brace, in a ``"`` template ``\\"`` a
    literal quote, and a newline is text."""
    quote = src[i + 1]
    j, n = i + 2, len(src)
    parts: list[str] = []
    depth, start = 0, 0
    while j < n:
        ch = src[j]
        if depth == 0:
            if ch == "\\" and quote == '"':
                j += 2
                continue
            if ch == "\\" and j + 1 < n and src[j + 1] == "{":
                j += 2
                continue
            if ch == quote:
                return j + 1, src[i + 2 : j], parts
            if ch == "{":
                depth, start = 1, j + 1
            j += 1
            continue
        # inside {expression}: code, with strings, nested templates and comments
        if ch == "#":
            end = src.find("\n", j)
            j = n if end < 0 else end
        elif ch == '"':
            j = _scan_quoted(src, j, line)[0]
        elif ch == "`":
            j = _scan_raw(src, j, line)[0]
        elif ch == "$" and j + 1 < n and src[j + 1] in '"`':
            j = _scan_template(src, j, line)[0]
        elif ch == "{":
            depth += 1
            j += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                parts.append(src[start:j])
            j += 1
        else:
            j += 1
    raise _Unterminated("template string", line)


def tokenize(src: str, first_line: int = 1) -> list[Token]:
    """Rego tokens of ``src`` without whitespace and comments. Raises ``ValueError`` (with ``.line``) on an
    unterminated string."""
    out: list[Token] = []
    i, line, n = 0, first_line, len(src)
    try:
        while i < n:
            ch = src[i]
            if ch == "\n":
                line += 1
                i += 1
            elif ch.isspace():
                i += 1
            elif ch == "#":
                end = src.find("\n", i)
                i = n if end < 0 else end
            elif ch == '"':
                end, body = _scan_quoted(src, i, line)
                out.append(Token("string", _decode(body), line))
                i = end
            elif ch == "`":
                end, body = _scan_raw(src, i, line)
                out.append(Token("string", body, line))
                line += body.count("\n")
                i = end
            elif ch == "$" and i + 1 < n and src[i + 1] in '"`':
                # template string: its {expressions} are code
                end, body, code_parts = _scan_template(src, i, line)
                for code in code_parts:
                    out.extend(tokenize(code, line))
                out.append(Token("string", body, line))
                line += body.count("\n")
                i = end
            elif ch in _IDENT_START:
                j = i + 1
                while j < n and src[j] in _IDENT:
                    j += 1
                out.append(Token("ident", src[i:j], line))
                i = j
            elif ch.isdigit():
                j = i + 1
                while j < n and (src[j].isalnum() or src[j] == "."):
                    j += 1
                out.append(Token("number", src[i:j], line))
                i = j
            elif src[i : i + 2] in _OPS2:
                out.append(Token("op", src[i : i + 2], line))
                i += 2
            else:
                out.append(Token("op" if ch in "[](){}.,;:|&=+-*/%<>!" else "other", ch, line))
                i += 1
    except _Unterminated as exc:
        err = ValueError(f"unterminated {exc.what} starting on line {exc.line}")
        err.line = exc.line  # type: ignore[attr-defined]
        raise err from None
    return out


def _references(tokens: list[Token]) -> list[tuple[list[str], bool, int]]:
    """Every reference in code: (static path parts, followed by a dynamic index, line)."""
    refs = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.kind != "ident" or (i and tokens[i - 1].text == "." and tokens[i - 1].kind == "op"):
            i += 1
            continue
        parts, j, dynamic = [t.text], i + 1, False
        while j < len(tokens):
            if tokens[j].text == "." and j + 1 < len(tokens) and tokens[j + 1].kind == "ident":
                parts.append(tokens[j + 1].text)
                j += 2
            elif tokens[j].text == "[":
                if j + 2 < len(tokens) and tokens[j + 1].kind == "string" and tokens[j + 2].text == "]":
                    parts.append(tokens[j + 1].text)
                    j += 3
                else:
                    dynamic = True
                    break
            else:
                break
        refs.append((parts, dynamic, t.line))
        i = j
    return refs


def check_forbidden(path: Path | str, source: str) -> None:
    """Reject a policy that refers to a network/environment built-in anywhere in code, naming file and line.
    Comments and strings never count; an unterminated string is rejected (the rest of the file is unknown)."""
    try:
        tokens = tokenize(source)
    except ValueError as exc:
        raise PolicyConfigError(f"{path}:{getattr(exc, 'line', 0)}: {exc}") from None
    forbidden = {tuple(name.split(".")): name for name in FORBIDDEN_BUILTINS}
    for parts, dynamic, line in _references(tokens):
        for k in range(1, len(parts) + 1):
            name = forbidden.get(tuple(parts[:k]))
            if name:
                raise PolicyConfigError(
                    f"{path}:{line}: policies may not call {name} (network and environment built-ins could "
                    "leak secrets into decisions)",
                    hint=_HINT,
                )
        if dynamic and any(tuple(parts) == f[: len(parts)] for f in forbidden):
            raise PolicyConfigError(
                f"{path}:{line}: a dynamic reference into '{'.'.join(parts)}' cannot be checked against the "
                f"forbidden built-ins ({', '.join(FORBIDDEN_BUILTINS)})",
                hint="rename the variable or use a static reference",
            )


def _location(message: str, sources: Mapping[str, str]) -> str:
    """rego-cpp reports ``file|offset|length``: turn the offset into line:col of the text that was loaded."""

    def repl(m: re.Match[str]) -> str:
        name, offset = m.group(1), int(m.group(2))
        text = sources.get(name)
        if text is None:
            return name
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        return f"{name}:{line}:{col}"

    return re.sub(r"([^\s|()]+)\|(\d+)\|\d+", repl, message)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + " ..."


def _first_error(exc: Exception | str, sources: Mapping[str, str] | None = None) -> str:
    """rego-cpp's error sequence as one line: each message with file:line:col when known."""
    text = str(exc)
    errors = re.findall(r"\(error \d+:([^\s]*)\s+\(errormsg \d+:([^)]*)\)", text)
    if errors:
        out = []
        for loc, msg in errors[:3]:
            where = _location(loc, sources or {}) if loc else ""
            out.append(f"{msg.strip()} ({where})" if where else msg.strip())
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        return "; ".join(dict.fromkeys(out)) + more
    return _one_line(text)


@dataclass(frozen=True)
class PlanFacts:
    """What the compiled plan of a bundle tells: the built-ins it calls and the ``input.request`` fields it can
    read (None: the request whole or by a computed key, see :func:`_plan_request_fields`)."""

    builtins: frozenset[str]
    request_fields: frozenset[str] | None


_VETTED: dict[str, PlanFacts] = {}


def compiled_builtins(modules: dict[str, str], data: list[str]) -> set[str]:
    """Names of the built-ins the compiled plan of these modules calls (rego-cpp's ``static.builtin_funcs``)."""
    return set(plan_facts(modules, data).builtins)


def plan_facts(modules: dict[str, str], data: list[str]) -> PlanFacts:
    """The built-ins and request fields of the compiled plan of these modules (cached per content).

    Runs in a child process: rego-cpp's plan writer has crashed the host process (``free(): invalid size``)
    depending on its heap state, and a policy check must never take a request server down with it."""
    import subprocess
    import sys

    payload = json.dumps({"modules": modules, "data": data}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()
    if key in _VETTED:
        return _VETTED[key]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ragconf.policy.lint"],
            input=payload,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PolicyConfigError(f"cannot compile the policy bundle to check its built-ins: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PolicyConfigError(
            f"cannot compile the policy bundle to check its built-ins (exit {proc.returncode}): {last}",
            hint="the bundle is refused until its built-ins can be checked",
        )
    out = json.loads(proc.stdout)
    if "error" in out:
        raise PolicyConfigError(
            f"policy bundle does not compile: {_first_error(out['error'], modules)}",
            hint="fix the policy; until it compiles every request is denied",
        )
    unknown = [str(n) for n in out.get("unknown") or []]
    if unknown:
        where = _first_reference(modules, unknown[0])
        raise PolicyConfigError(
            f"{where}calls undefined function{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (neither a "
            "built-in nor a function of the bundle; rego-cpp would treat the rule as undefined, OPA rejects it)",
            hint="fix the name; until then the bundle is refused",
        )
    fields = out.get("request_fields")
    facts = PlanFacts(
        frozenset(str(n) for n in out["builtins"]),
        frozenset(str(f) for f in fields) if isinstance(fields, list) else None,
    )
    _VETTED[key] = facts
    return facts


def _first_reference(modules: Mapping[str, str], dotted: str) -> str:
    """``file:line: `` of the first code reference to ``dotted`` in ``modules`` (empty when not found)."""
    want = dotted.split(".")
    for name, text in modules.items():
        try:
            refs = _references(tokenize(text))
        except ValueError:
            continue
        for parts, _dynamic, line in refs:
            if parts[: len(want)] == want:
                return f"{name}:{line}: "
    return ""


def check_plan(bundle: Path, modules: dict[str, str], data: list[str]) -> None:
    """Reject a bundle whose compiled plan calls a forbidden built-in, however the source spelled it."""
    used = compiled_builtins(modules, data) & set(FORBIDDEN_BUILTINS)
    if used:
        raise PolicyConfigError(
            f"policy bundle {bundle}: the compiled policy calls {', '.join(sorted(used))} (network and environment "
            "built-ins could leak secrets into decisions)",
            hint=_HINT,
        )


def _plan_builtins_main() -> None:
    """Child process of :func:`compiled_builtins`: modules on stdin, built-in names on stdout."""
    import sys

    from regopy import Interpreter, LogLevel, RegoError

    payload = json.loads(sys.stdin.read())
    interp = Interpreter()
    interp.log_level = LogLevel.NONE
    try:
        for name, text in payload["modules"].items():
            interp.add_module(name, text)
        for text in payload["data"]:
            interp.add_data_json(text)
        plan = interp.build("x = true", [])
    except RegoError as exc:
        sys.stdout.write(json.dumps({"error": str(exc)}))
        return
    with tempfile.TemporaryDirectory(prefix="ragconf-plan-") as tmp:
        interp.save_bundle(tmp, plan)
        plan_json = json.loads((Path(tmp) / "plan.json").read_text(encoding="utf-8"))
    static = plan_json.get("static") or {}
    names = sorted({str(f.get("name")) for f in static.get("builtin_funcs") or [] if isinstance(f, dict)})
    defined = {str(f.get("name")) for f in (plan_json.get("funcs") or {}).get("funcs") or []}
    called: set[str] = set()
    _calls(plan_json.get("funcs"), called)
    _calls(plan_json.get("plans"), called)
    unknown = sorted(called - defined - set(names))
    fields = _plan_request_fields(plan_json)
    request_fields = None if fields is None else sorted(fields)
    sys.stdout.write(json.dumps({"builtins": names, "unknown": unknown, "request_fields": request_fields}))


def _calls(node: Any, out: set[str]) -> None:
    """Every ``CallStmt`` target in a plan (JSON) tree."""
    if isinstance(node, dict):
        if node.get("type") == "CallStmt" and isinstance(node.get("stmt"), dict):
            out.add(str(node["stmt"].get("func")))
        for value in node.values():
            _calls(value, out)
    elif isinstance(node, list):
        for value in node:
            _calls(value, out)


#: Plan (IR) statements and the operands each reads; a statement type not listed here makes the analysis give up.
#: Targets (``target``, ``result``, ScanStmt ``key``/``value``), blocks and source positions are not reads.
_STMT_READS: dict[str, tuple[str, ...]] = {
    "ArrayAppendStmt": ("value", "array"),
    "AssignIntStmt": (),
    "AssignVarOnceStmt": ("source",),
    "AssignVarStmt": ("source",),
    "BlockStmt": (),
    "BreakStmt": (),
    "CallDynamicStmt": ("args", "path"),
    "CallStmt": ("args",),
    "DotStmt": ("source", "key"),
    "EqualStmt": ("a", "b"),
    "IsArrayStmt": ("source",),
    "IsDefinedStmt": ("source",),
    "IsObjectStmt": ("source",),
    "IsSetStmt": ("source",),
    "IsUndefinedStmt": ("source",),
    "LenStmt": ("source",),
    "MakeArrayStmt": (),
    "MakeNullStmt": (),
    "MakeNumberIntStmt": (),
    "MakeNumberRefStmt": (),
    "MakeObjectStmt": (),
    "MakeSetStmt": (),
    "NopStmt": (),
    "NotEqualStmt": ("a", "b"),
    "NotStmt": (),
    "ObjectInsertOnceStmt": ("key", "value", "object"),
    "ObjectInsertStmt": ("key", "value", "object"),
    "ObjectMergeStmt": ("a", "b"),
    "ResetLocalStmt": (),
    "ResultSetAddStmt": ("value",),
    "ReturnLocalStmt": ("source",),
    "ScanStmt": ("source",),
    "SetAddStmt": ("value", "set"),
    "WithStmt": ("value", "local"),
}
_STMT_OTHER = frozenset(
    {"target", "result", "func", "blocks", "block", "capacity", "index", "key", "value", "path", "file", "row", "col"}
)


class _Unknown(Exception):
    """The plan holds something the request-field analysis does not understand."""


def _local(operand: Any) -> int | None:
    """The local an operand (``{"type": "local", "value": n}``) or a bare local index names; None for constants."""
    if isinstance(operand, bool):
        return None
    if isinstance(operand, int):
        return operand
    if isinstance(operand, dict):
        if operand.get("type") == "local" and isinstance(operand.get("value"), int):
            return int(operand["value"])
        if operand.get("type") in ("string_index", "bool", "number_ref", "null"):
            return None
    raise _Unknown(f"operand {operand!r}")


def _statements(blocks: Any, out: list[tuple[str, dict[str, Any]]]) -> None:
    for block in blocks or []:
        for item in block.get("stmts") or []:
            kind, stmt = item.get("type"), item.get("stmt")
            if kind not in _STMT_READS or not isinstance(stmt, dict):
                raise _Unknown(str(kind))
            if any(k not in _STMT_READS[kind] and k not in _STMT_OTHER for k in stmt):
                raise _Unknown(f"{kind} fields {sorted(stmt)}")
            out.append((kind, stmt))
            _statements(stmt.get("blocks"), out)
            if isinstance(stmt.get("block"), dict):
                _statements([stmt["block"]], out)


def _plan_request_fields(plan: dict[str, Any]) -> set[str] | None:
    """The fields of ``input.request`` the compiled plan can read, from its IR: in every function (and query
    plan) the input is its first parameter (local 0 in a plan); a local holding the input or ``input.request``
    (or a copy of one) may only be indexed by a constant string (``input.request.<field>``), tested for being
    defined, or, for the input, passed on as the first argument of a function of the bundle (whose own first
    parameter is then the input). Any other use of them (a dynamic key, iteration, comparison, a built-in
    argument, a return value, a ``with`` value ...) and any statement or operand this does not know give None:
    the request may be read whole. Independent of the source tokenizer: together they are the fields of
    :func:`ragconf.policy.engine.request_fields_read`."""
    try:
        strings = [str(s.get("value")) for s in (plan.get("static") or {}).get("strings") or []]
        funcs = (plan.get("funcs") or {}).get("funcs") or []
        names = {str(f.get("name")) for f in funcs}
        bodies: list[tuple[int, Any]] = []
        for f in funcs:
            params = f.get("params") or []
            if len(params) < 2 or not isinstance(params[0], int):
                raise _Unknown(f"function {f.get('name')} params {params}")
            bodies.append((params[0], f.get("blocks")))
        bodies.extend((0, p.get("blocks")) for p in (plan.get("plans") or {}).get("plans") or [])
        fields: set[str] = set()
        for input_local, blocks in bodies:
            stmts: list[tuple[str, dict[str, Any]]] = []
            _statements(blocks, stmts)
            if not _body_request_fields(input_local, stmts, strings, names, fields):
                return None
        return fields
    except (_Unknown, AttributeError, TypeError, ValueError, IndexError):
        return None


def _body_request_fields(
    input_local: int, stmts: list[tuple[str, dict[str, Any]]], strings: list[str], funcs: set[str], fields: set[str]
) -> bool:
    """Add the request fields one function body reads to ``fields``; False when it may read the request whole."""
    # locals holding the input / input.request (flow-insensitive: a local ever holding one counts everywhere)
    whole: set[int] = {input_local}
    request: set[int] = set()
    changed = True
    while changed:
        changed = False
        for kind, stmt in stmts:
            if kind in ("AssignVarStmt", "AssignVarOnceStmt"):
                src = _local(stmt["source"])
                for group in (whole, request):
                    if src in group and stmt["target"] not in group:
                        group.add(int(stmt["target"]))
                        changed = True
            elif kind == "DotStmt" and _local(stmt["source"]) in whole:
                key = stmt["key"]
                is_request = isinstance(key, dict) and key.get("type") == "string_index"
                if is_request and strings[int(key["value"])] == "request" and stmt["target"] not in request:
                    request.add(int(stmt["target"]))
                    changed = True
    tracked = whole | request
    for kind, stmt in stmts:
        for name in _STMT_READS[kind]:
            if name not in stmt:
                continue
            operands = stmt[name] if isinstance(stmt[name], list) else [stmt[name]]
            for pos, operand in enumerate(operands):
                local = _local(operand)
                if local is None or local not in tracked:
                    continue
                if kind in ("AssignVarStmt", "AssignVarOnceStmt", "IsDefinedStmt", "IsUndefinedStmt"):
                    continue  # a copy (tracked above) or whether it is defined
                if kind == "DotStmt" and name == "source":
                    key = stmt["key"]
                    if not (isinstance(key, dict) and key.get("type") == "string_index"):
                        return False  # input[k] / input.request[k]
                    if local in request:
                        fields.add(strings[int(key["value"])])
                    continue
                as_input = pos == 0 and local in whole and local not in request
                if as_input and kind == "CallStmt" and str(stmt.get("func")) in funcs:
                    continue  # the input handed to a function of the bundle, as its input
                if as_input and kind == "CallDynamicStmt" and name == "args":
                    continue  # the same, to a rule named at run time
                return False
    return True


if __name__ == "__main__":  # pragma: no cover - exercised through compiled_builtins
    _plan_builtins_main()
