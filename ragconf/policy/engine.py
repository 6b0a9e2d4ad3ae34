"""Policy engines behind one interface: embedded Rego (regopy / rego-cpp) and an OPA server (REST)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from ragconf.errors import PolicyConfigError, PolicyError, SpecError
from ragconf.policy.lint import (
    FORBIDDEN_BUILTINS,
    _first_error,
    _one_line,
    _references,
    check_forbidden,
    check_plan,
    compiled_builtins,
    tokenize,
)

__all__ = [
    "FORBIDDEN_BUILTINS",
    "UNREPEATABLE_BUILTINS",
    "request_fields_read",
    "strip_test_rules",
    "OpaServerEngine",
    "PolicyEngine",
    "RegoEngine",
    "bundle_files",
    "bundle_revision",
    "check_forbidden",
    "load_engine",
]


#: Built-ins whose value is not a function of the input and the bundle (the clock, randomness, the network, the
#: environment) or that act (``print``, ``trace``): a decision of a bundle whose compiled plan calls one of them is
#: never reused, every evaluation runs.
UNREPEATABLE_BUILTINS = frozenset(
    {
        "time.now_ns",
        "rand.intn",
        "uuid.rfc4122",
        "crypto.x509.parse_and_verify_certificates",
        "crypto.x509.parse_and_verify_certificates_with_options",
        "print",
        "trace",
        *FORBIDDEN_BUILTINS,
    }
)

#: Decisions remembered per engine (one bundle revision): rule + the input as the policy can read it -> result.
DECISION_MEMO_SIZE = 4096


def request_fields_read(modules: Mapping[str, str]) -> frozenset[str] | None:
    """The fields of ``input.request`` the Rego ``modules`` can read, from every reference to ``input`` in code
    (comments and strings never count): ``input.request.profile`` reads ``profile``. None when the request can be
    read whole or by a computed key: ``input``, ``input[k]``, ``input.request``, ``input.request[k]``,
    ``object.get(input.request, ...)``, ``some k, v in input.request``, ``import input`` / ``import
    input.request``, a module that does not tokenize. Other parts of the input are never left out."""
    fields: set[str] = set()
    for text in modules.values():
        try:
            refs = _references(tokenize(text))
        except ValueError:
            return None
        for parts, _dynamic, _line in refs:
            if parts[0] != "input":
                continue
            if len(parts) == 1 or (parts[1] == "request" and len(parts) == 2):
                return None
            if parts[1] == "request":
                fields.add(parts[2])
    return frozenset(fields)


class PolicyEngine(Protocol):
    def evaluate(self, path: str, input: Mapping[str, Any]) -> Any:
        """The value of rule ``path`` (``ragconf/access/filter``) for ``input``; None when undefined."""
        ...


def bundle_files(bundle: Path, *, tests: bool = False) -> list[Path]:
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.suffix in (".rego", ".json"))
    if not tests:
        files = [p for p in files if not p.name.endswith("_test.rego")]
    return files


def bundle_revision(bundle: Path) -> str:
    """sha256 over every file of the bundle (relative path + content), tests and .manifest included."""
    h = hashlib.sha256()
    for p in sorted(q for q in bundle.rglob("*") if q.is_file()):
        h.update(p.relative_to(bundle).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def strip_test_rules(source: str) -> str:
    """Drop the top-level ``test_*`` rules of a test module (they use ``with``, which rego-cpp cannot
    evaluate; ragconf runs the module's ``cases`` table instead). Blocks are separated by blank lines."""
    blocks = re.split(r"\n\s*\n(?=\S)", source)
    return "\n\n".join(b for b in blocks if not re.match(r"(?:#[^\n]*\n)*test_\w*", b.lstrip("\n")))


def _bundle_dir(bundle: str | Path) -> Path:
    p = Path(bundle)
    if not p.is_dir():
        raise PolicyConfigError(f"policy bundle '{p}' does not exist", hint="set policy.bundle to the policies/ folder")
    return p


def read_policy_file(path: Path) -> str:
    """The text of a bundle file; unreadable or not UTF-8 (OPA requires UTF-8) is a config mistake."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyConfigError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyConfigError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            hint="policy files must be UTF-8 text; re-save the file as UTF-8",
        ) from None


class RegoEngine:
    """The embedded engine: every module and data.json of the bundle in one rego-cpp interpreter.

    A bundle is a pure function of its input unless its compiled plan calls one of :data:`UNREPEATABLE_BUILTINS`;
    then (and for every bundle loaded with ``tests=True``) each call evaluates. Otherwise results are remembered
    per rule and per input *as the policy can read it* (the whole input, except the ``input.request`` fields no
    module refers to, see :func:`request_fields_read`; the shipped bundle reads ``request.profile`` only, so a
    decision does not depend on the question text): an evaluation the engine would repeat with the same
    result is looked up instead. The caller still makes and audits a decision per call
    (:class:`ragconf.policy.service.PolicyService`)."""

    #: Rules compiled ahead of time (a compiled plan evaluates ~15x faster than an ad-hoc query).
    ENTRYPOINTS = (
        "ragconf/access/filter",
        "ragconf/access/allowed_ids",
        "ragconf/access/allow",
        "ragconf/routing/decision",
        "ragconf/output/decision",
    )

    def __init__(self, bundle: str | Path, *, tests: bool = False, entrypoints: tuple[str, ...] | None = None) -> None:
        from regopy import Interpreter, LogLevel, RegoError

        self.bundle = _bundle_dir(bundle)
        if tests:
            # the policies themselves are vetted (compiled plan included) without the test modules, whose
            # `with` the ahead-of-time compiler cannot plan
            RegoEngine(self.bundle, entrypoints=())
        self._lock = threading.Lock()
        self._interp = Interpreter()
        self._interp.log_level = LogLevel.NONE  # errors come back in the exception, not printed on stdout
        files = bundle_files(self.bundle, tests=tests)
        if not any(p.suffix == ".rego" for p in files):
            raise PolicyConfigError(f"policy bundle '{self.bundle}' holds no .rego files")
        sources: dict[str, str] = {}
        data: list[str] = []
        for p in files:
            text = read_policy_file(p)
            name = str(p.relative_to(self.bundle))
            try:
                if p.suffix == ".rego":
                    check_forbidden(p, text)
                    if p.name.endswith("_test.rego"):
                        text = strip_test_rules(text)
                    sources[name] = text
                    self._interp.add_module(name, text)
                elif p.name == "data.json":
                    json.loads(text)
                    data.append(text)
                    self._interp.add_data_json(text)
            except RegoError as exc:
                raise PolicyConfigError(
                    f"policy {p} does not parse: {_first_error(exc, sources)}",
                    hint="fix the file; until it loads every request is denied",
                ) from None
            except json.JSONDecodeError as exc:
                raise PolicyConfigError(f"{p}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        self._plan: Any = None
        self._entrypoints: set[str] = set()
        self._memo: Any = None
        self._request_fields: frozenset[str] | None = None
        if not tests:
            check_plan(self.bundle, sources, data)
            if not compiled_builtins(sources, data) & UNREPEATABLE_BUILTINS:  # the vetted plan's list (cached)
                from ragconf.cache import LRUCache

                self._memo = LRUCache("policy_decisions", DECISION_MEMO_SIZE)
                self._request_fields = request_fields_read(sources)
        wanted = (() if tests else self.ENTRYPOINTS) if entrypoints is None else entrypoints
        if wanted:
            try:
                self._plan = self._interp.build("x = true", list(wanted))
                self._entrypoints = set(wanted)
            except RegoError as exc:
                raise PolicyConfigError(
                    f"policy bundle {self.bundle} does not compile: {_first_error(exc, sources)}",
                    hint="fix the policy; until it compiles every request is denied",
                ) from None

    def evaluate(self, path: str, input: Mapping[str, Any]) -> Any:
        return self.decide(path, input)[0]

    def _memo_key(self, rule: str, input: Mapping[str, Any]) -> str | None:
        """``rule`` + the input without the request fields no module reads, as canonical JSON (None: the input
        does not serialise canonically, e.g. mixed key types or NaN; such an input is evaluated every time)."""
        fields = self._request_fields
        request = input.get("request") if fields is not None else None
        if isinstance(request, Mapping):
            input = {**input, "request": {k: v for k, v in request.items() if k in fields}}  # type: ignore[operator]
        try:
            return rule + "\0" + json.dumps(input, default=str, allow_nan=False)
        except (TypeError, ValueError):
            return None

    def decide(self, path: str, input: Mapping[str, Any]) -> tuple[Any, bool]:
        """The value of rule ``path`` for ``input`` (None when undefined) and whether it was a remembered result
        of the same rule for an input equal in everything the bundle can read."""
        from regopy import RegoError

        rule = path.strip("/").replace(".", "/")
        query = "data." + rule.replace("/", ".")
        key = self._memo_key(rule, input) if self._memo is not None else None
        if key is not None:
            out = self._memo.get(key)
            if out is not None:
                return self._result(query, out), True
        text = json.dumps(input, default=str)
        with self._lock:
            try:
                self._interp.set_input_term(text)
                if rule in self._entrypoints:
                    out = str(self._interp.query_bundle_entrypoint(self._plan, rule))
                else:
                    out = str(self._interp.query(query))
            except RegoError as exc:
                raise PolicyError(f"evaluating {query} failed: {_first_error(exc)}") from None
        result = self._result(query, out)  # raises on an evaluation error: never remembered
        if key is not None:
            self._memo.put(key, out)
        return result, False

    @staticmethod
    def _result(query: str, out: str) -> Any:
        if out == "undefined":
            return None
        if out.startswith("<error"):
            # rego-cpp gives no detail for evaluation errors (conflicting values of a complete rule or
            # function, a built-in error in strict mode, ...)
            raise PolicyError(
                f"evaluating {query} failed: the rule raised an evaluation error (e.g. a complete rule or "
                "function with conflicting values)"
            )
        try:
            result = json.loads(out)
        except json.JSONDecodeError:
            raise PolicyError(f"evaluating {query} failed: {_one_line(out)}") from None
        if not isinstance(result, dict) or "expressions" not in result:
            raise PolicyError(f"evaluating {query} failed: {_one_line(out)}")
        exprs = result["expressions"]
        return exprs[0] if exprs else None


class OpaServerEngine:
    """An OPA server (``opa run --server policies/``) through opa-python-client; undefined means deny."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 2.0) -> None:
        try:
            from opa_client.opa import OpaClient
        except ImportError:
            raise PolicyConfigError(
                "the OPA server engine needs opa-python-client", hint="pip install 'ragconf[opa]'"
            ) from None
        parsed = urlparse(url)
        if not parsed.hostname:
            raise SpecError(f"invalid OPA URL '{url}'", key="policy.url")
        self.url = url
        self._client = OpaClient(
            host=parsed.hostname,
            port=parsed.port or (443 if parsed.scheme == "https" else 8181),
            ssl=parsed.scheme == "https",
            token=token,
            timeout=timeout,
            retries=0,
        )

    def evaluate(self, path: str, input: Mapping[str, Any]) -> Any:
        try:
            response = self._client.query_rule(dict(input), path.strip("/").replace(".", "/"))
        except Exception as exc:  # connection refused, HTTP error, bad JSON: all fail closed
            raise PolicyError(f"OPA server {self.url} failed on {path}: {exc}") from None
        return response.get("result") if isinstance(response, dict) else None


def load_engine(cfg: Mapping[str, Any], *, tests: bool = False) -> PolicyEngine:
    """The engine the `policy` config selects."""
    engine = cfg.get("engine", "embedded")
    if engine == "embedded":
        return RegoEngine(cfg.get("bundle") or "policies", tests=tests)
    if engine == "opa":
        if not cfg.get("url"):
            raise SpecError("the opa engine needs a server URL", key="policy.url")
        token_env = cfg.get("token_env")
        token = os.environ.get(token_env) if token_env else None
        if token_env and not token:
            raise SpecError(f"environment variable {token_env} is not set", key="policy.token_env")
        # still vet the local bundle: the same files are what governance reviewed
        bundle = Path(cfg.get("bundle") or "policies")
        if bundle.is_dir():
            for p in bundle_files(bundle):
                if p.suffix == ".rego":
                    check_forbidden(p, read_policy_file(p))
        return OpaServerEngine(str(cfg["url"]), token)
    raise SpecError(f"unknown policy engine '{engine}'", key="policy.engine", valid=["embedded", "opa"], got=engine)
