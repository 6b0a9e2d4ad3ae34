"""Authentication: API keys (sha256 digests, constant-time comparison) and JWT bearer tokens -> a Principal.

Credentials come only from headers (``Authorization: Bearer <key or JWT>`` or ``X-API-Key: <key>``); nothing in
a request body can name a user. The identity directory decides who a user is: an authenticated id the
directory does not know is refused (403). With ``serve.auth.jwt.claims_win`` the mapped token claims
(groups, tenant, clearance) replace the directory's values; otherwise the directory wins and claims are ignored.
Keys and tokens are never logged, echoed in an error or kept after the request. Failed authentications are
counted per client address (:class:`FailedAuthLimiter`, ``serve.auth.failed_attempts``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ragconf.errors import SpecError
from ragconf.spec.models import ApiKeySpec, AuthSpec, FailedAttemptsSpec
from ragconf.types import CLASSIFICATIONS, Principal

__all__ = ["AuthError", "Authenticator", "FailedAuthLimiter", "hash_key"]


def hash_key(key: str) -> str:
    """The sha256 hex digest stored in ``serve.auth.api_keys[].sha256`` for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass
class AuthError(Exception):
    """A refused request: 401 (no or bad credentials) or 403 (authenticated but not allowed)."""

    status: int
    detail: str
    #: False when the request sent no credential at all (nothing was guessed: not a failed attempt).
    presented: bool = True


def _load_keys(spec: AuthSpec) -> list[ApiKeySpec]:
    keys = list(spec.api_keys)
    if spec.api_keys_file:
        from pydantic import ValidationError

        from ragconf.yamlsafe import safe_load_file

        path = Path(spec.api_keys_file)
        if not path.is_file():
            raise SpecError(f"API key file '{path}' does not exist", key="serve.auth.api_keys_file")
        raw = safe_load_file(path) or []
        if not isinstance(raw, list):
            raise SpecError("expected a list of {sha256, user, name}", key="serve.auth.api_keys_file", source=str(path))
        for i, item in enumerate(raw):
            try:
                keys.append(ApiKeySpec.model_validate(item))
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise SpecError(err["msg"], key=f"[{i}].{loc}", source=str(path)) from None
    return keys


class Authenticator:
    """Turns request headers into a Principal of the identity directory, or raises :class:`AuthError`."""

    def __init__(self, spec: AuthSpec, directory: Any) -> None:
        self.spec = spec
        self.directory = directory
        self.keys = _load_keys(spec)
        self._jwt_key: Any = None
        self._jwks: Any = None
        jwt_spec = spec.jwt
        if jwt_spec.enabled:
            try:
                import jwt  # noqa: F401
            except ImportError:
                raise SpecError(
                    "JWT authentication needs PyJWT", key="serve.auth.jwt", hint="pip install 'ragconf[serve]'"
                ) from None
            self._load_jwt_key()

    @property
    def configured(self) -> bool:
        return bool(self.keys) or self.spec.jwt.enabled

    def _load_jwt_key(self) -> None:
        j = self.spec.jwt
        if j.algorithm == "HS256":
            if not j.secret_env:
                raise SpecError("HS256 needs secret_env (the variable holding the secret)", key="serve.auth.jwt")
            secret = os.environ.get(j.secret_env)
            if not secret:
                raise SpecError(f"environment variable {j.secret_env} is not set", key="serve.auth.jwt.secret_env")
            if len(secret.encode()) < 32:
                raise SpecError(
                    f"the HS256 secret in {j.secret_env} is shorter than 32 bytes", key="serve.auth.jwt.secret_env"
                )
            self._jwt_key = secret
            return
        if j.jwks_file:
            import jwt

            path = Path(j.jwks_file)
            try:
                self._jwks = jwt.PyJWKSet.from_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise SpecError(
                    f"cannot read the JWKS: {exc}", key="serve.auth.jwt.jwks_file", source=str(path)
                ) from None
            return
        if j.public_key_file:
            path = Path(j.public_key_file)
            if not path.is_file():
                raise SpecError(f"public key file '{path}' does not exist", key="serve.auth.jwt.public_key_file")
            self._jwt_key = path.read_text(encoding="utf-8")
            return
        raise SpecError("RS256 needs public_key_file or jwks_file", key="serve.auth.jwt")

    # ----- per request ---------------------------------------------------------------------------------
    def authenticate(self, headers: Any) -> Principal:
        token = _credential(headers)
        if not token:
            raise AuthError(401, "missing credentials: send 'Authorization: Bearer <API key or JWT>'", presented=False)
        if token.count(".") == 2 and self.spec.jwt.enabled:
            user, claims = self._verify_jwt(token)
        else:
            user, claims = self._verify_key(token), {}
        return self._principal(user, claims)

    def _verify_key(self, token: str) -> str:
        digest = hash_key(token)
        found = None
        for key in self.keys:  # every digest is compared, in constant time each
            if hmac.compare_digest(digest, key.sha256):
                found = key.user
        if found is None:
            raise AuthError(401, "invalid credentials")
        return found

    def _verify_jwt(self, token: str) -> tuple[str, dict[str, Any]]:
        import jwt

        j = self.spec.jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "invalid token: malformed header") from None
        if header.get("alg") != j.algorithm:
            raise AuthError(401, f"invalid token: algorithm must be {j.algorithm}")
        key = self._jwt_key
        if self._jwks is not None:
            kid = header.get("kid")
            match = [k for k in self._jwks.keys if k.key_id == kid] if kid else list(self._jwks.keys)
            if len(match) != 1:
                raise AuthError(401, "invalid token: no unique key in the JWKS for its 'kid'")
            key = match[0].key
        required = ["exp", j.user_claim] + (["iss"] if j.issuer else []) + (["aud"] if j.audience else [])
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[j.algorithm],
                audience=j.audience,
                issuer=j.issuer,
                leeway=j.leeway_s,
                options={"require": required, "verify_aud": j.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "invalid token: expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError(401, "invalid token: wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, "invalid token: wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(401, f"invalid token: missing claim '{exc.claim}'") from None
        except jwt.PyJWTError:
            raise AuthError(401, "invalid token") from None
        user = claims.get(j.user_claim)
        if not isinstance(user, str) or not user:
            raise AuthError(401, f"invalid token: claim '{j.user_claim}' must be a non-empty string")
        return user, claims

    def _principal(self, user: str, claims: dict[str, Any]) -> Principal:
        if user not in self.directory.users:
            raise AuthError(403, f"user '{user}' is not in the identity directory")
        principal: Principal = self.directory.resolve(user)
        j = self.spec.jwt
        if claims and j.claims_win and j.claims:
            changes: dict[str, Any] = {}
            for field, claim in j.claims.items():
                if claim not in claims:
                    continue
                value = claims[claim]
                if field == "groups":
                    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
                        raise AuthError(401, f"invalid token: claim '{claim}' must be a list of strings")
                    changes["groups"] = tuple(value)
                elif field == "tenant":
                    if not isinstance(value, str):
                        raise AuthError(401, f"invalid token: claim '{claim}' must be a string")
                    changes["tenant"] = value
                elif field == "clearance":
                    if value not in CLASSIFICATIONS:
                        raise AuthError(401, f"invalid token: claim '{claim}' must be one of {list(CLASSIFICATIONS)}")
                    changes["clearance"] = value
            principal = replace(principal, **changes)
        return principal

    def is_admin(self, principal: Principal) -> bool:
        return has_role(principal, self.spec.admin_role)


def has_role(principal: Principal, role: str) -> bool:
    """Whether the directory entry lists ``role`` in ``attributes.roles``."""
    roles = principal.attributes.get("roles")
    return isinstance(roles, list) and role in roles


class FailedAuthLimiter:
    """``serve.auth.failed_attempts``: the times of the last ``limit`` failed authentications of each client
    address, a sliding window. A client with ``limit`` failures younger than ``window_s`` is blocked until the
    oldest leaves the window. Memory is bounded: at most ``max_clients`` addresses (expired ones are dropped
    first, then the least recently failing), each with at most ``limit`` times. It only ever sees addresses,
    never credentials. Used only on the event loop, so it needs no lock."""

    def __init__(self, spec: FailedAttemptsSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = spec.limit
        self.window = spec.window_s
        self.max_clients = spec.max_clients
        self.clock = clock
        self.clients: OrderedDict[str, deque[float]] = OrderedDict()  # least recently failing first

    def retry_after(self, client: str) -> int:
        """Whole seconds until ``client`` may try again; 0 when it is not blocked."""
        times = self.clients.get(client)
        if not self.limit or times is None or len(times) < self.limit:
            return 0
        wait = times[0] + self.window - self.clock()
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def failed(self, client: str) -> bool:
        """Record a failed authentication of ``client``; True when this failure blocks it."""
        if not self.limit:
            return False
        now = self.clock()
        while self.clients:  # forget clients whose last failure left the window (oldest first)
            oldest = next(iter(self.clients.values()))
            if oldest[-1] + self.window > now:
                break
            self.clients.popitem(last=False)
        times = self.clients.get(client)
        if times is None:
            while len(self.clients) >= self.max_clients:
                self.clients.popitem(last=False)
            times = self.clients[client] = deque(maxlen=self.limit)
        else:
            self.clients.move_to_end(client)
        times.append(now)
        return len(times) == self.limit and times[0] + self.window > now


def client_key(host: str) -> str:
    """What the failed-authentication limit counts per: an IPv4 address as is (also written IPv4-mapped,
    ``::ffff:a.b.c.d``), an IPv6 address by its /64 network (one host usually holds a whole /64, so counting
    per address would give it 2**64 tries), anything else (a Unix socket path, ``unknown``) as given."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # a zone index (fe80::1%eth0) is not the address
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _credential(headers: Any) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return str(value.strip())
        return None
    key = headers.get("x-api-key")
    return str(key).strip() if key and str(key).strip() else None


def describe(spec: AuthSpec) -> str:
    """A one-line, secret-free description of the configured authentication (for the start-up log)."""
    parts = [f"{len(spec.api_keys)} inline API key(s)"]
    if spec.api_keys_file:
        parts.append(f"API keys from {spec.api_keys_file}")
    if spec.jwt.enabled:
        parts.append(f"JWT {spec.jwt.algorithm}" + (f" aud={spec.jwt.audience}" if spec.jwt.audience else ""))
    return json.dumps(", ".join(parts))[1:-1]
