"""The ``middleware:`` section: which paths are gated, where model ids come from, response headers."""

from __future__ import annotations

from dataclasses import dataclass

from aidr_gate.config import GateConfig
from aidr_gate.document import Checker, join
from aidr_gate.model_id import (
    DEFAULT_FORM_PATHS,
    DEFAULT_JSON_PATHS,
    DEFAULT_MAX_FORM_BYTES,
    DEFAULT_PATH_PATTERNS,
    ModelSources,
    compile_path_pattern,
)

DEFAULT_EXEMPT = ("/health", "/healthz", "/readyz", "/livez", "/ping", "/metrics", "/version")
DEFAULT_MAX_BODY = 8 * 1024 * 1024
_KEYS = (
    "exempt_paths",
    "json_model_paths",
    "form_model_paths",
    "path_model_patterns",
    "model_header",
    "max_body_bytes",
    "max_form_bytes",
    "list_models_paths",
    "decision_header",
    "overhead_header",
    "dry_run_header",
    "state_key",
    "max_listing_bytes",
)


@dataclass(frozen=True, slots=True)
class MiddlewareSettings:
    """Parsed ``middleware:`` settings with their defaults."""

    exempt_exact: frozenset[str]
    exempt_prefixes: tuple[str, ...]
    models: ModelSources
    list_models_paths: frozenset[str]
    decision_header: bytes = b"x-aidr-decision-id"
    overhead_header: bytes = b"x-aidr-gate-overhead-ms"
    dry_run_header: bytes = b"x-aidr-dry-run"
    state_key: str = "aidr_decision"
    max_listing_bytes: int = 4 * 1024 * 1024

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
        list_models_paths=frozenset({"/v1/models", "/models"}),
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


def parse_middleware_settings(config: GateConfig) -> MiddlewareSettings:
    """Parse the ``middleware:`` section; raise :class:`ConfigError` naming file, key and line."""
    if config.document is None or "middleware" not in config.sections:
        return default_settings()
    check = Checker(config.document)
    data = check.mapping(config.section("middleware"), "middleware", keys=_KEYS) or {}
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
    max_body = DEFAULT_MAX_BODY
    if data.get("max_body_bytes") is not None:
        max_body = (
            check.integer(data["max_body_bytes"], "middleware.max_body_bytes", minimum=1024)
            or max_body
        )
    max_form = DEFAULT_MAX_FORM_BYTES
    if data.get("max_form_bytes") is not None:
        max_form = (
            check.integer(data["max_form_bytes"], "middleware.max_form_bytes", minimum=1024)
            or max_form
        )
    listing = _paths(
        check,
        data.get("list_models_paths"),
        "middleware.list_models_paths",
        ("/v1/models", "/models"),
    )
    names: dict[str, bytes] = {}
    for key in ("decision_header", "overhead_header", "dry_run_header"):
        if data.get(key) is not None:
            text = check.string(data[key], f"middleware.{key}")
            if text is not None:
                names[key] = text.lower().encode("latin-1")
    state_key = "aidr_decision"
    if data.get("state_key") is not None:
        state_key = check.string(data["state_key"], "middleware.state_key") or state_key
    max_listing = 4 * 1024 * 1024
    if data.get("max_listing_bytes") is not None:
        max_listing = (
            check.integer(data["max_listing_bytes"], "middleware.max_listing_bytes", minimum=1024)
            or max_listing
        )
    check.raise_if_errors()
    settings = _build(exempt, json_paths, patterns, header, max_body, form_paths, max_form)
    return MiddlewareSettings(
        exempt_exact=settings.exempt_exact,
        exempt_prefixes=settings.exempt_prefixes,
        models=settings.models,
        list_models_paths=frozenset(listing),
        decision_header=names.get("decision_header", settings.decision_header),
        overhead_header=names.get("overhead_header", settings.overhead_header),
        dry_run_header=names.get("dry_run_header", settings.dry_run_header),
        state_key=state_key,
        max_listing_bytes=max_listing,
    )
