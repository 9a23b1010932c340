"""The ``middleware:`` section: which paths are gated, where model ids come from, response headers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidr_gate.document import Checker, join
from aidr_gate.request.model_id import (
    DEFAULT_FORM_PATHS,
    DEFAULT_JSON_PATHS,
    DEFAULT_MAX_FORM_BYTES,
    DEFAULT_PATH_PATTERNS,
    ModelSources,
    compile_path_pattern,
)
from aidr_gate.settings.schema import KeyDoc, Section

DEFAULT_EXEMPT = ("/health", "/healthz", "/readyz", "/livez", "/ping", "/metrics", "/version")
DEFAULT_MAX_BODY = 8 * 1024 * 1024
DEFAULT_LISTING_PATHS = ("/v1/models", "/models")
DEFAULT_MAX_LISTING = 4 * 1024 * 1024
# Read by the sidecar's proxy too: the names it must not let a client set.
DEFAULT_DECISION_HEADER = "x-aidr-decision-id"
DEFAULT_STATE_KEY = "aidr_decision"
MIN_BODY_LIMIT = 1024

KEYS = (
    KeyDoc("exempt_paths", "paths that pass without a decision; a trailing * matches a prefix"),
    KeyDoc("json_model_paths", "paths whose JSON body names the model"),
    KeyDoc("form_model_paths", "paths whose multipart form names the model"),
    KeyDoc("path_model_patterns", "path patterns with {model}"),
    KeyDoc("model_header", "a header that names the model, checked first"),
    KeyDoc("max_body_bytes", "JSON bodies read to find the model at most; larger: 413"),
    KeyDoc("max_form_bytes", "the same for multipart uploads"),
    KeyDoc("list_models_paths", "model listings, filtered to what the caller may use"),
    KeyDoc("max_listing_bytes", "a larger model listing is answered as an empty list"),
    KeyDoc("decision_header", "response header with the decision id"),
    KeyDoc("overhead_header", "response header with the gate's added time"),
    KeyDoc("dry_run_header", "response header saying what dry-run would have done"),
    KeyDoc("state_key", "scope state key the app reads the decision from"),
)


@dataclass(frozen=True, slots=True)
class MiddlewareSettings:
    """Parsed ``middleware:`` settings with their defaults."""

    exempt_exact: frozenset[str]
    exempt_prefixes: tuple[str, ...]
    models: ModelSources
    list_models_paths: frozenset[str] = frozenset(DEFAULT_LISTING_PATHS)
    decision_header: bytes = DEFAULT_DECISION_HEADER.encode()
    overhead_header: bytes = b"x-aidr-gate-overhead-ms"
    dry_run_header: bytes = b"x-aidr-dry-run"
    state_key: str = DEFAULT_STATE_KEY
    max_listing_bytes: int = DEFAULT_MAX_LISTING

    def exempt(self, path: str) -> bool:
        """True for paths that pass without a decision (health checks)."""
        return path in self.exempt_exact or (
            bool(self.exempt_prefixes) and path.startswith(self.exempt_prefixes)
        )


def default_settings() -> MiddlewareSettings:
    """The settings used when the configuration has no ``middleware:`` section."""
    return _build(DEFAULT_EXEMPT, DEFAULT_JSON_PATHS, DEFAULT_PATH_PATTERNS, None, DEFAULT_MAX_BODY)


def _build(
    exempt: tuple[str, ...],
    json_paths: tuple[str, ...],
    patterns: tuple[str, ...],
    header: str | None,
    max_body: int,
    form_paths: tuple[str, ...] = DEFAULT_FORM_PATHS,
    max_form: int = DEFAULT_MAX_FORM_BYTES,
) -> MiddlewareSettings:
    return MiddlewareSettings(
        exempt_exact=frozenset(p for p in exempt if not p.endswith("*")),
        exempt_prefixes=tuple(p[:-1] for p in exempt if p.endswith("*")),
        models=ModelSources(
            json_paths=frozenset(json_paths),
            path_patterns=tuple(compile_path_pattern(p) for p in patterns),
            header=header.lower().encode("latin-1") if header else None,
            max_body_bytes=max_body,
            form_paths=frozenset(form_paths),
            max_form_bytes=max_form,
        ),
    )


def _paths(check: Checker, raw: object, path: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if raw is None:
        return default
    out: list[str] = []
    for index, item in enumerate(check.sequence(raw, path) or []):
        text = check.string(item, join(path, index))
        if text is None:
            continue
        if not text.startswith("/"):
            check.error(join(path, index), f"{text!r} must start with '/'")
            continue
        out.append(text)
    return tuple(out)


def _limit(check: Checker, data: dict[str, Any], key: str, default: int) -> int:
    if data.get(key) is None:
        return default
    got = check.integer(data[key], join("middleware", key), minimum=MIN_BODY_LIMIT)
    return default if got is None else got


def read_middleware(check: Checker, raw: Any, base_dir: Path) -> MiddlewareSettings | None:
    """Read the ``middleware:`` section (absent: the defaults); problems go to *check*."""
    if raw is None:
        return default_settings()
    data = check.mapping(raw, "middleware", keys=[k.name for k in KEYS])
    if data is None:
        return None
    exempt = _paths(check, data.get("exempt_paths"), "middleware.exempt_paths", DEFAULT_EXEMPT)
    json_paths = _paths(
        check, data.get("json_model_paths"), "middleware.json_model_paths", DEFAULT_JSON_PATHS
    )
    form_paths = _paths(
        check, data.get("form_model_paths"), "middleware.form_model_paths", DEFAULT_FORM_PATHS
    )
    for index, form_path in enumerate(form_paths):
        if form_path in json_paths:
            check.error(
                f"middleware.form_model_paths[{index}]",
                f"{form_path!r} is also in json_model_paths: a body is either JSON or a form",
            )
    patterns = _paths(
        check,
        data.get("path_model_patterns"),
        "middleware.path_model_patterns",
        DEFAULT_PATH_PATTERNS,
    )
    for index, pattern in enumerate(patterns):
        if "{model}" not in pattern:
            check.error(f"middleware.path_model_patterns[{index}]", "must contain '{model}'")
    header = None
    if data.get("model_header") is not None:
        header = check.string(data["model_header"], "middleware.model_header")
    listing = _paths(
        check, data.get("list_models_paths"), "middleware.list_models_paths", DEFAULT_LISTING_PATHS
    )
    built = _build(
        exempt,
        json_paths,
        patterns,
        header,
        _limit(check, data, "max_body_bytes", DEFAULT_MAX_BODY),
        form_paths,
        _limit(check, data, "max_form_bytes", DEFAULT_MAX_FORM_BYTES),
    )
    names: dict[str, bytes] = {}
    for key in ("decision_header", "overhead_header", "dry_run_header"):
        if data.get(key) is not None:
            text = check.string(data[key], f"middleware.{key}")
            if text is not None:
                names[key] = text.lower().encode("latin-1")
    state_key = DEFAULT_STATE_KEY
    if data.get("state_key") is not None:
        state_key = check.string(data["state_key"], "middleware.state_key") or state_key
    return MiddlewareSettings(
        exempt_exact=built.exempt_exact,
        exempt_prefixes=built.exempt_prefixes,
        models=built.models,
        list_models_paths=frozenset(listing),
        decision_header=names.get("decision_header", built.decision_header),
        overhead_header=names.get("overhead_header", built.overhead_header),
        dry_run_header=names.get("dry_run_header", built.dry_run_header),
        state_key=state_key,
        max_listing_bytes=_limit(check, data, "max_listing_bytes", DEFAULT_MAX_LISTING),
    )


# The sidecar's proxy reads the decision from scope state under state_key: it is fixed at start.
MIDDLEWARE: Section[MiddlewareSettings] = Section(
    "middleware", read_middleware, KEYS, restart=("state_key",)
)
