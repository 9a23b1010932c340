"""Per-request cost of identity resolution: cache hit vs first verification, per algorithm.

Baseline, measured in the same run: pyjwt's ``jwt.decode`` with a prepared public-key object, pinned
algorithm, issuer, audience and required claims (what a careful integration would call per request).
Run: ``.venv/bin/python bench/identity.py`` (about 10 seconds; every loop is bounded in count and time).

Figures are this thread's CPU time per call (``time.thread_time_ns``), not wall time: on a machine
shared with other work, time spent descheduled would otherwise be counted against the code.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import jwt
from cachetools import TTLCache
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from aidr_gate.errors import IdentityError
from aidr_gate.facts import Identity
from aidr_gate.request.identity import Authenticator, bearer_token
from aidr_gate.request.jwks import StaticKeys
from aidr_gate.request.keys import build_key_set
from aidr_gate.settings.identity import IdentityConfig

ISSUER = "https://idp.example/"
AUDIENCE = "aidr-gate"
ROUNDS = 5  # each measurement is the median of this many timed rounds
ROUND_SECONDS = 0.2  # a round stops after this long, whatever its count
MAX_LOOPS = 200_000


def _round(fn: Callable[[], object], loops: int) -> float:
    """CPU nanoseconds per call over at most *loops* calls and ROUND_SECONDS of wall time."""
    done = 0
    deadline = time.perf_counter_ns() + int(ROUND_SECONDS * 1e9)
    start = time.thread_time_ns()
    while done < min(loops, MAX_LOOPS):
        for _ in range(100):
            fn()
        done += 100
        if time.perf_counter_ns() > deadline:
            break
    return (time.thread_time_ns() - start) / done


def measure(fn: Callable[[], object], loops: int) -> float:
    """Median nanoseconds per call over ROUNDS rounds."""
    return statistics.median(_round(fn, loops) for _ in range(ROUNDS))


def interleaved(cases: dict[str, tuple[Callable[[], object], int]]) -> dict[str, float]:
    """Medians of rounds taken in turn, so machine noise and drift hit every case alike."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, (fn, loops) in cases.items():
            samples[name].append(_round(fn, loops))
    return {name: statistics.median(values) for name, values in samples.items()}


def _keys() -> list[tuple[str, Any, dict[str, Any]]]:
    out: list[tuple[str, Any, dict[str, Any]]] = []
    private_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out.append(("RS256", private_rsa, RSAAlgorithm.to_jwk(private_rsa.public_key(), as_dict=True)))
    private_ec = ec.generate_private_key(ec.SECP256R1())
    out.append(("ES256", private_ec, ECAlgorithm.to_jwk(private_ec.public_key(), as_dict=True)))
    private_ed = ed25519.Ed25519PrivateKey.generate()
    out.append(("EdDSA", private_ed, OKPAlgorithm.to_jwk(private_ed.public_key(), as_dict=True)))
    return out


def _run_coroutine(auth: Authenticator, header: bytes) -> Identity:
    # Drive authenticate() one step, as the event loop would: a cache hit finishes without suspending.
    coroutine = auth.authenticate(header)
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: Identity = done.value
        return result
    coroutine.close()
    raise RuntimeError("authenticate() suspended on a cache hit")


def main() -> None:
    """Measure and print the table."""
    keys = _keys()
    jwks = {"keys": [{**jwk, "kid": alg.lower()} for alg, _, jwk in keys]}
    algorithms = tuple(alg for alg, _, _ in keys)
    key_set = build_key_set(jwks, algorithms, source="bench")
    config = IdentityConfig(issuers=(ISSUER,), audiences=(AUDIENCE,), algorithms=algorithms)
    cached = Authenticator(config, keys=StaticKeys(key_set))
    uncached = Authenticator(
        IdentityConfig(
            issuers=(ISSUER,), audiences=(AUDIENCE,), algorithms=algorithms, cache_size=0
        ),
        keys=StaticKeys(key_set),
    )
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "nordlys-se",
        "iat": now,
        "exp": now + 3600,
        "jti": "a" * 32,
        "scope": "inference models:read",
    }
    print(f"pyjwt {jwt.__version__}; medians of {ROUNDS} rounds; CPU µs per request\n")
    header_row = (
        f"{'alg':6} {'jwt.decode':>11} {'first verify':>13} {'ratio':>6} "
        f"{'cache hit':>10} {'(async)':>8} {'ratio':>7} {'hit vs first':>13}"
    )
    print(header_row)
    print("-" * len(header_row))
    for alg, private, _ in keys:
        token = jwt.encode(claims, private, algorithm=alg, headers={"kid": alg.lower()})
        header = f"Bearer {token}".encode()
        public = private.public_key()

        def baseline(token: str = token, public: Any = public, alg: str = alg) -> object:
            return jwt.decode(
                token,
                public,
                algorithms=[alg],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )

        def first(header: bytes = header) -> object:
            return uncached.authenticate_sync(header)

        def hit(header: bytes = header) -> object:
            return cached.authenticate_sync(header)

        def hit_async(header: bytes = header) -> object:
            return _run_coroutine(cached, header)

        # Same verdict before timing anything.
        decoded = baseline()
        assert isinstance(decoded, dict)
        assert decoded["sub"] == "nordlys-se"
        assert cached.authenticate_sync(header).cached is False
        assert cached.authenticate_sync(header).cached is True
        assert _run_coroutine(cached, header).cached is True

        times = interleaved(
            {
                "base": (baseline, 20_000),
                "first": (first, 20_000),
                "hit": (hit, MAX_LOOPS),
                "async": (hit_async, MAX_LOOPS),
            }
        )
        t_base, t_first, t_hit, t_async = (times[k] for k in ("base", "first", "hit", "async"))
        print(
            f"{alg:6} {t_base / 1e3:11.1f} {t_first / 1e3:13.1f} {t_first / t_base:6.2f} "
            f"{t_hit / 1e3:10.2f} {t_async / 1e3:8.2f} {t_hit / t_base:7.4f} "
            f"{t_first / t_hit:12.0f}x"
        )

    raw = jwt.encode(claims, keys[0][1], algorithm="RS256", headers={"kid": "rs256"}).encode()
    header = b"Bearer " + raw
    print(f"\nparts of a cache hit ({len(raw)}-byte RS256 token), µs:")
    digest = hashlib.sha256(raw).digest()
    plain: dict[bytes, tuple[int, float]] = {digest: (1, time.time() + 3600)}
    # The alternative we measured against: cachetools' TTLCache (one TTL for all, timer per call).
    ttl: TTLCache[bytes, int] = TTLCache(maxsize=10_000, ttl=3600)
    ttl[digest] = 1

    def dict_hit() -> object:
        entry = plain.get(digest)
        return entry is not None and time.time() < entry[1]

    parts = {
        "bearer_token() parse": lambda: bearer_token(header, 8192),
        "sha256 of the token": lambda: hashlib.sha256(raw).digest(),
        "dict lookup + exp check": dict_hit,
        "cachetools TTLCache.get": lambda: ttl.get(digest),
    }
    for name, fn in parts.items():
        print(f"  {name:24} {measure(fn, MAX_LOOPS) / 1e3:6.2f}")

    # Inside a running event loop, as the middleware calls it.
    async def in_loop() -> float:
        loops = 50_000
        start = time.thread_time_ns()
        for _ in range(loops):
            await cached.authenticate(header)
        return (time.thread_time_ns() - start) / loops

    print(f"  {'await authenticate() hit':24} {asyncio.run(in_loop()) / 1e3:6.2f}")
    forged_flood(cached, raw)


def forged_flood(auth: Authenticator, raw: bytes) -> None:
    """A flood of one forged token: the first costs a signature check, repeats a cache lookup."""
    head, payload, signature = raw.split(b".")
    forged = b"Bearer " + b".".join((head, payload, signature[:-4] + b"AAAA"))
    fresh = Authenticator(auth.config, keys=auth.keys)  # nothing cached yet

    def refused(authenticator: Authenticator) -> object:
        try:
            authenticator.authenticate_sync(forged)
        except IdentityError as exc:
            return exc
        raise RuntimeError("a forged token was accepted")

    def first() -> object:
        fresh._refused.clear()  # every call a first sight: a signature check
        return refused(fresh)

    refused(auth)
    times = interleaved({"first": (first, 20_000), "repeat": (lambda: refused(auth), MAX_LOOPS)})
    repeat_us = times["repeat"] / 1e3
    print(
        f"\nforged RS256 token, refused: first sight {times['first'] / 1e3:.2f} µs (a signature "
        f"check), repeated {repeat_us:.2f} µs (a lookup)   target <= 5 µs   "
        f"{'OK' if repeat_us <= 5 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
