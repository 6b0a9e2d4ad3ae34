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
    plan_facts,
    tokenize,
)

__all__ = [
    "FORBIDDEN_BUILTINS",
    "PURE_BUILTINS",
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
#: environment, signatures with a random nonce) or that act (``print``, compiled as ``internal.print``, ``trace``).
#: Listed for reference: reuse is decided by :data:`PURE_BUILTINS` (what is not listed there is never reused).
UNREPEATABLE_BUILTINS = frozenset(
    {
        "time.now_ns",
        "rand.intn",
        "uuid.rfc4122",
        "io.jwt.encode_sign",
        "io.jwt.encode_sign_raw",
        "crypto.x509.parse_and_verify_certificates",
        "crypto.x509.parse_and_verify_certificates_with_options",
        "print",
        "internal.print",
        "trace",
        *FORBIDDEN_BUILTINS,
    }
)

#: Built-ins whose value depends on their arguments only (OPA's deterministic built-ins, as the compiled plan
#: names them, operators included). A decision is reused only when every built-in the bundle's compiled plan
#: calls is listed here: a built-in this list does not know (a new rego-cpp, a non-deterministic one) turns
#: reuse off for the bundle.
PURE_BUILTINS = frozenset(
    {
        # operators and internal helpers
        *("equal", "neq", "lt", "lte", "gt", "gte", "plus", "minus", "mul", "div", "rem", "and", "or", "assign", "eq"),
        *("internal.member_2", "internal.member_3", "internal.template_string"),
        # numbers, aggregates, arrays, sets, objects, types
        *("abs", "ceil", "floor", "round", "numbers.range", "numbers.range_step", "count", "sum", "product"),
        *("max", "min", "sort", "all", "any", "array.concat", "array.slice", "array.reverse", "intersection"),
        *("union", "set_diff", "object.get", "object.keys", "object.remove", "object.subset", "object.union"),
        *("object.union_n", "object.filter", "is_array", "is_boolean", "is_null", "is_number", "is_object"),
        *("is_set", "is_string", "type_name", "to_number", "cast_array", "cast_boolean", "cast_null"),
        *("cast_object", "cast_set", "cast_string", "walk", "graph.reachable", "graph.reachable_paths"),
        *("bits.and", "bits.or", "bits.xor", "bits.negate", "bits.lsh", "bits.rsh", "units.parse", "units.parse_bytes"),
        # strings, regular expressions, globs
        *("concat", "contains", "endswith", "startswith", "format_int", "indexof", "indexof_n", "lower", "upper"),
        *("replace", "split", "sprintf", "substring", "trim", "trim_left", "trim_prefix", "trim_right"),
        *("trim_space", "trim_suffix", "strings.any_prefix_match", "strings.any_suffix_match", "strings.count"),
        *("strings.replace_n", "strings.reverse", "strings.render_template", "regex.find_all_string_submatch_n"),
        *("regex.find_n", "regex.globs_match", "regex.is_valid", "regex.match", "regex.replace", "regex.split"),
        *("regex.template_match", "re_match", "glob.match", "glob.quote_meta", "semver.compare", "semver.is_valid"),
        # encodings
        *("base64.encode", "base64.decode", "base64.is_valid", "base64url.encode", "base64url.encode_no_pad"),
        *("base64url.decode", "hex.encode", "hex.decode", "urlquery.encode", "urlquery.decode"),
        *("urlquery.encode_object", "urlquery.decode_object", "json.marshal", "json.marshal_with_options"),
        *("json.unmarshal", "json.is_valid", "json.filter", "json.remove", "json.patch", "json.verify_schema"),
        *("json.match_schema", "yaml.marshal", "yaml.unmarshal", "yaml.is_valid", "uuid.parse"),
        # time arithmetic on given timestamps (never the clock), networks, hashes, token decoding
        *("time.add_date", "time.clock", "time.date", "time.diff", "time.format", "time.parse_duration_ns"),
        *("time.parse_ns", "time.parse_rfc3339_ns", "time.weekday", "net.cidr_contains", "net.cidr_contains_matches"),
        *("net.cidr_expand", "net.cidr_intersects", "net.cidr_is_valid", "net.cidr_merge", "net.cidr_overlap"),
        *("crypto.md5", "crypto.sha1", "crypto.sha256", "crypto.hmac.md5", "crypto.hmac.sha1", "crypto.hmac.sha256"),
        *("crypto.hmac.sha512", "crypto.hmac.equal", "io.jwt.decode", "io.jwt.verify_rs256", "io.jwt.verify_rs384"),
        *("io.jwt.verify_rs512", "io.jwt.verify_ps256", "io.jwt.verify_ps384", "io.jwt.verify_ps512"),
        *("io.jwt.verify_es256", "io.jwt.verify_es384", "io.jwt.verify_es512", "io.jwt.verify_hs256"),
        *("io.jwt.verify_hs384", "io.jwt.verify_hs512", "io.jwt.verify_eddsa"),
        # metadata of the bundle itself
        *("rego.metadata.chain", "rego.metadata.rule", "metadata.chain", "metadata.rule"),
    }
)
#: Decisions remembered per engine (one bundle revision): rule + the input as the policy can read it -> result.
DECISION_MEMO_SIZE = 4096
#: A result longer than this (JSON characters) is not remembered: the memo stays within ~4096 x 16 KiB.
DECISION_MEMO_MAX_RESULT = 16_384


def request_fields_read(
    modules: Mapping[str, str], plan_fields: frozenset[str] | None = frozenset()
) -> frozenset[str] | None:
    """The fields of ``input.request`` the Rego ``modules`` can read, from every reference to ``input`` in code
    (comments and strings never count): ``input.request.profile`` reads ``profile``. None when the request can be
    read whole or by a computed key: ``input``, ``input[k]``, ``input.request``, ``input.request[k]``,
    ``object.get(input.request, ...)``, ``some k, v in input.request``, ``import input`` / ``import
    input.request``, a module that does not tokenize. Other parts of the input are never left out.

    ``plan_fields`` is the same question answered from the compiled plan (:class:`ragconf.policy.lint.PlanFacts`,
    None when it may read the request whole): the answer is the union of both, None when either is None, so a
    read one analysis misses (a tokenizer that reads a construct otherwise than rego-cpp) the other still sees."""
    if plan_fields is None:
        return None
    fields: set[str] = set(plan_fields)
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
    return _revision(bundle, {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()})


def _revision(bundle: Path, contents: Mapping[Path, bytes]) -> str:
    h = hashlib.sha256()
    for p in sorted(contents):
        h.update(p.relative_to(bundle).as_posix().encode() + b"\0" + contents[p] + b"\0")
    return h.hexdigest()


def _bundle_snapshot(bundle: Path) -> dict[Path, bytes]:
    """Every file of the bundle, read once: what an engine loads and the revision it reports are the same bytes
    even while the files are being replaced (a reload during a deploy)."""
    contents: dict[Path, bytes] = {}
    for p in sorted(bundle.rglob("*")):
        if p.is_file():
            try:
                contents[p] = p.read_bytes()
            except OSError as exc:
                raise PolicyConfigError(f"cannot read policy file {p}: {exc.strerror or exc}") from None
    return contents


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
    return _policy_text(path, raw)


def _policy_text(path: Path, raw: bytes) -> str:
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

    A bundle is a pure function of its input when every built-in its compiled plan calls is one of
    :data:`PURE_BUILTINS`; otherwise (and for every bundle loaded with ``tests=True``) each call evaluates. A pure
    bundle's results are remembered per rule and per input *as the policy can read it* (the whole input, except
    the ``input.request`` fields neither the source nor the compiled plan reads, see :func:`request_fields_read`;
    the shipped bundle reads ``request.profile`` only, so a decision does not depend on the question text): an
    evaluation the engine would repeat with the same result is looked up instead. The caller still makes and
    audits a decision per call (:class:`ragconf.policy.service.PolicyService`). ``revision`` is the
    :func:`bundle_revision` of the bytes this engine loaded."""

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
        contents = _bundle_snapshot(self.bundle)
        #: bundle_revision of exactly the files this engine loaded
        self.revision = _revision(self.bundle, contents)
        files = [p for p in contents if p.suffix in (".rego", ".json") and (tests or not p.name.endswith("_test.rego"))]
        if not any(p.suffix == ".rego" for p in files):
            raise PolicyConfigError(f"policy bundle '{self.bundle}' holds no .rego files")
        sources: dict[str, str] = {}
        data: list[str] = []
        for p in files:
            text = _policy_text(p, contents[p])
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
            facts = plan_facts(sources, data)  # the vetted plan's (cached)
            if facts.builtins <= PURE_BUILTINS:
                from ragconf.cache import LRUCache

                self._memo = LRUCache("policy_decisions", DECISION_MEMO_SIZE)
                self._request_fields = request_fields_read(sources, facts.request_fields)
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
        """sha256 of ``rule`` + the input without the request fields no module reads, as JSON (None: the input
        does not serialise as the engine would read it, e.g. NaN, or its request has a key that is not a string,
        which JSON would turn into one; such an input is evaluated every time). A digest, not the text: an entry
        costs the same whatever the input holds."""
        fields = self._request_fields
        request = input.get("request") if fields is not None and isinstance(input, dict) else None
        if isinstance(request, dict):  # another Mapping reaches the engine as its str(): never filtered
            if not all(type(k) is str for k in request):
                return None
            input = {**input, "request": {k: v for k, v in request.items() if k in fields}}  # type: ignore[operator]
        try:
            text = rule + "\0" + json.dumps(input, default=str, allow_nan=False)
        except (TypeError, ValueError):
            return None
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

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
            except (RegoError, ValueError) as exc:  # regopy fails to parse some error replies (JSONDecodeError)
                raise PolicyError(f"evaluating {query} failed: {_first_error(exc)}") from None
        result = self._result(query, out)  # raises on an evaluation error: never remembered
        if key is not None and len(out) <= DECISION_MEMO_MAX_RESULT:
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
