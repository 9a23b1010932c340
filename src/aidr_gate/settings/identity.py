"""The ``identity:`` section: how bearer tokens are verified and which claims mean what.

Read by :func:`read_identity`; the key file is read here too (a file that holds no usable key is
a problem at ``identity.key_file``, not a failure at start), and a JWKS URL must be https (plain
http only to a loopback address). The section is optional for ``check`` and required to serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aidr_gate.document import Checker, join
from aidr_gate.request.client_ip import normalize_ip
from aidr_gate.request.jwks import (
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_MAX_JWKS_BYTES,
    DEFAULT_REFRESH_MAX,
    DEFAULT_REFRESH_MIN,
    DEFAULT_RELOAD_INTERVAL,
    DEFAULT_UNKNOWN_KID_INTERVAL,
    FileKeys,
)
from aidr_gate.request.keys import SUPPORTED_ALGORITHMS, KeySetError
from aidr_gate.settings.schema import KeyDoc, Section

SECTION = "identity"

DEFAULT_LEEWAY = 30.0
MAX_LEEWAY = 300.0
DEFAULT_CACHE_SIZE = 10_000
DEFAULT_MAX_TOKEN_LENGTH = 8192
MAX_CLAIM_NAME = 256


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """The ``identity:`` section, validated: how tokens are verified and which claims mean what."""

    issuers: tuple[str, ...]
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    key_file: Path | None = None
    leeway: float = DEFAULT_LEEWAY
    required_claims: tuple[str, ...] = ()
    entity_claim: str = "sub"
    headquarters_claim: str | None = None
    parent_claim: str | None = None
    cache_size: int = DEFAULT_CACHE_SIZE
    refresh_min: float = DEFAULT_REFRESH_MIN
    refresh_max: float = DEFAULT_REFRESH_MAX
    unknown_kid_interval: float = DEFAULT_UNKNOWN_KID_INTERVAL
    max_token_length: int = DEFAULT_MAX_TOKEN_LENGTH
    http_timeout: float = DEFAULT_HTTP_TIMEOUT
    max_jwks_bytes: int = DEFAULT_MAX_JWKS_BYTES
    reload_interval: float = DEFAULT_RELOAD_INTERVAL
    file: str = "<identity>"  # the configuration file, for startup errors


def read_identity(check: Checker, raw: Any, base_dir: Path) -> IdentityConfig | None:
    """Read the section (absent: ``None``, no identity configured); problems go to *check*."""
    if raw is None:
        return None
    data = check.mapping(
        raw, SECTION, keys=[k.name for k in KEYS], required=("issuer", "audience", "algorithms")
    )
    if data is None:
        return None

    def at(key: str) -> str:
        return join(SECTION, key)

    # A missing required key is already reported; read the others so one run lists every problem.
    issuers = _strings(check, data["issuer"], at("issuer")) if "issuer" in data else ()
    audiences = _strings(check, data["audience"], at("audience")) if "audience" in data else ()
    algorithms: tuple[str, ...] = ()
    if "algorithms" in data:
        algorithms = _algorithms(check, data["algorithms"], at("algorithms"))
    jwks_url, key_file = _key_source(check, data, base_dir)
    leeway = _seconds(check, data, "leeway", DEFAULT_LEEWAY, 0, MAX_LEEWAY)
    refresh_min = _seconds(check, data, "refresh_min", DEFAULT_REFRESH_MIN, 0.01)
    refresh_max = _seconds(check, data, "refresh_max", DEFAULT_REFRESH_MAX, 0.01)
    if refresh_max < refresh_min:
        check.error(at("refresh_max"), f"must be at least refresh_min ({refresh_min:g})")
    unknown_kid_interval = _seconds(
        check, data, "unknown_kid_interval", DEFAULT_UNKNOWN_KID_INTERVAL, 0.01
    )
    http_timeout = _seconds(check, data, "http_timeout", DEFAULT_HTTP_TIMEOUT, 0.01, 60)
    reload_interval = _seconds(check, data, "reload_interval", DEFAULT_RELOAD_INTERVAL, 0)
    cache_size = _whole(check, data, "cache_size", DEFAULT_CACHE_SIZE, 0, 10_000_000)
    max_token_length = _whole(
        check, data, "max_token_length", DEFAULT_MAX_TOKEN_LENGTH, 64, 1024 * 1024
    )
    max_jwks_bytes = _whole(
        check, data, "max_jwks_bytes", DEFAULT_MAX_JWKS_BYTES, 1024, 16 * 1024 * 1024
    )
    required, entity_claim, hq_claim, parent_claim = _claims(check, data)

    if key_file is not None and algorithms:
        _check_key_file(check, key_file, algorithms, at("key_file"))
    return IdentityConfig(
        issuers=issuers,
        audiences=audiences,
        algorithms=algorithms,
        jwks_url=jwks_url,
        key_file=key_file,
        leeway=leeway,
        required_claims=required,
        entity_claim=entity_claim,
        headquarters_claim=hq_claim,
        parent_claim=parent_claim,
        cache_size=cache_size,
        refresh_min=refresh_min,
        refresh_max=refresh_max,
        unknown_kid_interval=unknown_kid_interval,
        max_token_length=max_token_length,
        http_timeout=http_timeout,
        max_jwks_bytes=max_jwks_bytes,
        reload_interval=reload_interval,
        file=check.document.file,
    )


def _key_source(
    check: Checker, data: dict[str, Any], base_dir: Path
) -> tuple[str | None, Path | None]:
    """Where the keys come from: exactly one of a JWKS URL and a key file."""
    jwks_url = key_file = None
    if ("jwks_url" in data) == ("key_file" in data):
        check.error(SECTION, "give exactly one of jwks_url and key_file")
    if "jwks_url" in data:
        jwks_url = _url(check, data["jwks_url"], join(SECTION, "jwks_url"))
    if "key_file" in data:
        text = check.string(data["key_file"], join(SECTION, "key_file"))
        key_file = _resolve(base_dir, text) if text is not None else None
    return jwks_url, key_file


def _seconds(
    check: Checker,
    data: dict[str, Any],
    key: str,
    default: float,
    minimum: float,
    maximum: float | None = None,
) -> float:
    where = join(SECTION, key)
    value = check.number(data.get(key, default), where, minimum=minimum)
    if value is not None and maximum is not None and value > maximum:
        check.error(where, f"must be at most {maximum:g}, not {value:g}")
    return default if value is None else value


def _whole(
    check: Checker, data: dict[str, Any], key: str, default: int, minimum: int, maximum: int
) -> int:
    where = join(SECTION, key)
    value = check.integer(data.get(key, default), where, minimum=minimum)
    if value is not None and value > maximum:
        check.error(where, f"must be at most {maximum}, not {value}")
    return default if value is None else value


def _claims(
    check: Checker, data: dict[str, Any]
) -> tuple[tuple[str, ...], str, str | None, str | None]:
    """The required claims, and the claims naming the entity, headquarters and parent."""
    required = tuple(
        check.each(
            data.get("required_claims", []),
            join(SECTION, "required_claims"),
            lambda v, p: _claim_name(check, v, p),
        )
        or ()
    )
    entity_value = data.get("entity_claim", "sub")
    entity_claim = _claim_name(check, entity_value, join(SECTION, "entity_claim")) or "sub"
    hq_claim = parent_claim = None
    if data.get("headquarters_claim") is not None:
        hq_claim = _claim_name(
            check, data["headquarters_claim"], join(SECTION, "headquarters_claim")
        )
    if data.get("parent_claim") is not None:
        parent_claim = _claim_name(check, data["parent_claim"], join(SECTION, "parent_claim"))
    return required, entity_claim, hq_claim, parent_claim


def _strings(check: Checker, value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, list):
        check.sequence(value, path, allow_empty=False)  # reports an empty list
        return tuple(check.each(value, path, check.string) or ())
    text = check.string(value, path)
    return (text,) if text is not None else ()


def _algorithms(check: Checker, value: Any, path: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else check.sequence(value, path, allow_empty=False)
    out: list[str] = []
    for index, item in enumerate(items or []):
        where = join(path, index) if not isinstance(value, str) else path
        if not isinstance(item, str):
            check.error(where, "must be an algorithm name")
        elif item.lower() == "none" or item.upper().startswith("HS"):
            check.error(
                where,
                f"{item!r} is refused: only asymmetric algorithms are accepted "
                "(a public key must never serve as an HMAC secret)",
            )
        elif item not in SUPPORTED_ALGORITHMS:
            check.error(where, f"{item!r} is not one of: {', '.join(sorted(SUPPORTED_ALGORITHMS))}")
        elif item not in out:
            out.append(item)
    return tuple(out)


def _url(check: Checker, value: Any, path: str) -> str | None:
    text = check.string(value, path)
    if text is None:
        return None
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
    except ValueError:
        check.error(path, f"{text!r} is not a URL")
        return None
    if not host:
        check.error(path, f"{text!r} has no host")
        return None
    if host == "localhost":
        loopback = True
    else:  # an address, never a name that merely starts like one (127.0.0.1.nip.io)
        address = normalize_ip(host)
        loopback = address is not None and address.is_loopback
    if parts.scheme == "https" or (parts.scheme == "http" and loopback):
        return text
    check.error(path, "must be an https:// URL (plain http only to a loopback address)")
    return None


def _claim_name(check: Checker, value: Any, path: str) -> str | None:
    text = check.string(value, path)
    if text is not None and (len(text) > MAX_CLAIM_NAME or text.strip() != text):
        check.error(path, "must be a claim name or dotted path without surrounding spaces")
        return None
    return text


def _resolve(base_dir: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


def _check_key_file(check: Checker, path: Path, algorithms: tuple[str, ...], where: str) -> None:
    """The key file must exist and hold a usable key now: serving would refuse it at start."""
    if not path.is_file():
        check.error(where, f"no such file: {path}")
        return
    try:
        FileKeys(path, algorithms).read_now()
    except KeySetError as exc:
        check.error(where, str(exc))


KEYS = (
    KeyDoc("issuer", "one or a list; a token's iss must match"),
    KeyDoc("audience", "one or a list; a token's aud must contain one"),
    KeyDoc("algorithms", "pinned asymmetric algorithms; none and HS* are refused"),
    KeyDoc("jwks_url", "the issuer's JWKS, https (http only to loopback)"),
    KeyDoc("key_file", "or a JWKS or PEM file, reloaded when it changes"),
    KeyDoc("entity_claim", "the claim (or dotted path) naming the entity; default sub"),
    KeyDoc("headquarters_claim", "a claim with the headquarters country"),
    KeyDoc("parent_claim", "a claim with the ultimate parent's country"),
    KeyDoc("leeway", "seconds of clock skew for exp, nbf and iat"),
    KeyDoc("required_claims", "claims required beyond exp, iss and aud"),
    KeyDoc("cache_size", "verified tokens kept, until their exp at most"),
    KeyDoc("refresh_min", "JWKS refresh, at least this many seconds apart"),
    KeyDoc("refresh_max", "JWKS refresh, at most this many seconds apart"),
    KeyDoc("unknown_kid_interval", "at most one refetch per interval for unknown kids"),
    KeyDoc("max_token_length", "longer bearer tokens are refused"),
    KeyDoc("http_timeout", "seconds a JWKS fetch may take"),
    KeyDoc("max_jwks_bytes", "larger JWKS documents are refused"),
    KeyDoc("reload_interval", "seconds between checks of the key file"),
)

IDENTITY: Section[IdentityConfig | None] = Section(SECTION, read_identity, KEYS)
