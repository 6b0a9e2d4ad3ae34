"""Authenticator paths the server tests do not reach: RS256 with a PEM key and a JWKS file (key chosen by
`kid`), algorithm confusion (an HS256 token signed with the public key), claims_win and malformed claims,
configuration mistakes (named keys, no traceback)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ragconf.errors import SpecError
from ragconf.identity import Directory
from ragconf.server.auth import Authenticator, AuthError, FailedAuthLimiter, client_key, hash_key
from ragconf.spec.models import AuthSpec, FailedAttemptsSpec, IdentitySpec, UserSpec

DIRECTORY = Directory(IdentitySpec(users={"alice": UserSpec(groups=["sre"], tenant="acme", clearance="confidential")}))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _claims(**extra: object) -> dict:
    return {"sub": "alice", "aud": "ragconf", "exp": int(time.time()) + 60, **extra}


def _headers(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_rs256_public_key_and_algorithm_confusion(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    pem = tmp_path / "pub.pem"
    pem.write_text(_pem(rsa_key))
    auth = Authenticator(
        AuthSpec.model_validate({"jwt": {"algorithm": "RS256", "public_key_file": str(pem), "audience": "ragconf"}}),
        DIRECTORY,
    )
    good = jwt.encode(_claims(), rsa_key, algorithm="RS256")
    assert auth.authenticate(_headers(good)).id == "alice"
    # HS256 "signed" with the public key text: rejected by algorithm, never verified with the PEM as a secret
    import base64
    import hashlib
    import hmac

    def b64(d: bytes) -> str:
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(_claims()).encode())
    sig = b64(hmac.new(pem.read_bytes(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    with pytest.raises(AuthError) as exc:
        auth.authenticate(_headers(f"{head}.{body}.{sig}"))
    assert exc.value.status == 401 and "RS256" in exc.value.detail


def test_jwks_selects_the_key_by_kid(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = []
    for kid, k in (("k1", rsa_key), ("k2", other)):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key()))
        keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": keys}))
    auth = Authenticator(AuthSpec.model_validate({"jwt": {"algorithm": "RS256", "jwks_file": str(jwks)}}), DIRECTORY)
    ok = jwt.encode(_claims(), other, algorithm="RS256", headers={"kid": "k2"})
    assert auth.authenticate(_headers(ok)).id == "alice"
    wrong = jwt.encode(_claims(), other, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(AuthError, match="invalid token"):
        auth.authenticate(_headers(wrong))
    unknown = jwt.encode(_claims(), other, algorithm="RS256", headers={"kid": "nope"})
    with pytest.raises(AuthError, match="kid"):
        auth.authenticate(_headers(unknown))


def test_claims_win_replaces_directory_fields_and_rejects_bad_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s" * 40
    monkeypatch.setenv("T_SECRET", secret)
    spec = {"jwt": {"secret_env": "T_SECRET", "claims": {"groups": "grp", "clearance": "clr"}, "claims_win": True}}
    auth = Authenticator(AuthSpec.model_validate(spec), DIRECTORY)
    p = auth.authenticate(_headers(jwt.encode(_claims(grp=["hr"], clr="public"), secret, algorithm="HS256")))
    assert p.groups == ("hr",) and p.clearance == "public" and p.tenant == "acme"
    for bad in ({"grp": "hr"}, {"clr": "top-secret"}):
        with pytest.raises(AuthError) as exc:
            auth.authenticate(_headers(jwt.encode(_claims(**bad), secret, algorithm="HS256")))
        assert exc.value.status == 401
    # default: the directory wins
    plain = Authenticator(
        AuthSpec.model_validate({"jwt": {"secret_env": "T_SECRET", "claims": {"groups": "grp"}}}), DIRECTORY
    )
    assert plain.authenticate(_headers(jwt.encode(_claims(grp=["hr"]), secret, algorithm="HS256"))).groups == ("sre",)


def test_api_keys_and_config_mistakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = Authenticator(
        AuthSpec.model_validate({"api_keys": [{"sha256": hash_key("k-1"), "user": "alice"}]}), DIRECTORY
    )
    assert auth.authenticate({"x-api-key": "k-1"}).id == "alice"
    with pytest.raises(AuthError):
        auth.authenticate({"x-api-key": "k-2"})
    monkeypatch.delenv("NOPE_SECRET", raising=False)
    with pytest.raises(SpecError, match="NOPE_SECRET"):
        Authenticator(AuthSpec.model_validate({"jwt": {"secret_env": "NOPE_SECRET"}}), DIRECTORY)
    monkeypatch.setenv("SHORT_SECRET", "short")
    with pytest.raises(SpecError, match="32 bytes"):
        Authenticator(AuthSpec.model_validate({"jwt": {"secret_env": "SHORT_SECRET"}}), DIRECTORY)
    with pytest.raises(SpecError, match="api_keys_file"):
        Authenticator(AuthSpec.model_validate({"api_keys_file": str(tmp_path / "missing.yaml")}), DIRECTORY)
    bad = tmp_path / "keys.yaml"
    bad.write_text("- {sha256: not-a-digest, user: alice}\n")
    with pytest.raises(SpecError, match="sha256"):
        Authenticator(AuthSpec.model_validate({"api_keys_file": str(bad)}), DIRECTORY)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_auth_limiter_sliding_window_and_client_cap() -> None:
    clock = _Clock()
    limiter = FailedAuthLimiter(FailedAttemptsSpec(limit=3, window_s=10, max_clients=2), clock=clock)
    blocked = []
    for _ in range(3):  # failures at t=1000, 1002, 1004
        blocked.append(limiter.failed("a"))
        clock.now += 2
    assert blocked == [False, False, True]
    clock.now -= 2
    assert limiter.retry_after("a") == 6 and limiter.retry_after("b") == 0  # until t=1000 is 10 s old
    clock.now += 5.5
    assert limiter.retry_after("a") == 1  # 0.5 s, rounded up
    clock.now += 1
    assert limiter.retry_after("a") == 0
    # a sliding window, not a reset: one more failure now blocks until t=1002 is 10 s old
    assert limiter.failed("a") is True and limiter.retry_after("a") == 2
    # at most max_clients addresses: the least recently failing is forgotten first
    assert limiter.failed("b") is False and limiter.failed("c") is False
    assert list(limiter.clients) == ["b", "c"] and limiter.retry_after("a") == 0
    # expired addresses are dropped when the next failure is recorded
    clock.now += 11
    limiter.failed("d")
    assert list(limiter.clients) == ["d"]
    assert all(len(times) <= 3 for times in limiter.clients.values())
    off = FailedAuthLimiter(FailedAttemptsSpec(limit=0), clock=clock)
    assert not any(off.failed("a") for _ in range(100)) and off.retry_after("a") == 0 and not off.clients


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # the same IPv4 client through a dual-stack socket
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),  # the same /64: one host's addresses
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64: another client
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
        ("/run/ragconf.sock", "/run/ragconf.sock"),
    ],
)
def test_failed_attempts_count_per_ipv4_address_and_ipv6_slash_64(host: str, key: str) -> None:
    assert client_key(host) == key


def test_rotating_ipv6_addresses_of_one_network_are_blocked_together() -> None:
    """An attacker holding a /64 (every IPv6 host does) cannot reset the limit by changing address."""
    limiter = FailedAuthLimiter(FailedAttemptsSpec(limit=5, window_s=60, max_clients=100))
    blocked = [limiter.failed(client_key(f"2001:db8:7:7::{i:x}")) for i in range(1, 6)]
    assert blocked == [False, False, False, False, True]
    assert limiter.retry_after(client_key("2001:db8:7:7:ffff::42")) > 0
    assert limiter.retry_after(client_key("2001:db8:7:8::1")) == 0
