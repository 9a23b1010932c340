"""Typed configuration, validated once at load with errors that name the file and the field.

The top-level file names the policy pack, the registry and the catalogue; later stages (identity,
network, GeoIP, middleware, audit, proxy) each own a section and parse it in their own module, from
:attr:`GateConfig.sections`. Paths are relative to the configuration file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidr_gate.decision import Mode
from aidr_gate.document import Checker, Document, join, load_document, parse_document
from aidr_gate.errors import ConfigError
from aidr_gate.policy.pack import bundled_pack_dir
from aidr_gate.stores.settings import RegistrySettings, read_registry

CONFIG_ENV = "AIDR_GATE_CONFIG"
DEFAULT_CONFIG_PATHS = (Path("/etc/aidr-gate/config.yaml"),)

# Sections parsed by the modules that own them; the top level only checks they are mappings.
SECTIONS = (
    "identity",
    "network",
    "geoip",
    "middleware",
    "audit",
    "proxy",
    "telemetry",
    "screening",  # read by aidr_gate.screening.settings.read_screening
    "limits",  # read by aidr_gate.limits.parse_limits
)
_TOP_KEYS = ("policy", "mode", "registry", "catalog", *SECTIONS)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Which pack is enforced, which one runs in shadow, and where pack ids are looked up."""

    pack: str
    shadow: str | None = None
    search: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class GateConfig:
    """The whole configuration; section contents are parsed by their own modules."""

    file: str
    base_dir: Path
    policy: PolicyConfig
    mode: Mode
    registry: Path | None  # the registry file; None when the registry is a database store
    catalog: Path
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    document: Document | None = None
    registry_settings: RegistrySettings | None = None  # stores/settings.py reads ``registry:``

    def section(self, name: str) -> Mapping[str, Any]:
        """A section's raw mapping (empty when absent)."""
        return self.sections.get(name, {})

    def resolve(self, value: str | Path) -> Path:
        """A path from the configuration, made absolute against the file's directory."""
        return _resolve(self.base_dir, value)


def embedded_config_path() -> Path:
    """The bundled example configuration: aidr-2025-01 with the example registry and catalogue."""
    return bundled_pack_dir() / "examples" / "config.yaml"


def find_config_path(explicit: str | Path | None = None) -> Path:
    """The configuration to use: *explicit*, then ``$AIDR_GATE_CONFIG``, then /etc, then embedded."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    return embedded_config_path()


def config_from_document(document: Document) -> tuple[GateConfig | None, Checker]:
    """Parse a configuration document; problems are on the returned checker."""
    check = Checker(document)
    # absolute(), not resolve(): a Kubernetes ConfigMap mounts the file through a symlink into a
    # timestamped folder that the kubelet deletes on the next update; relative paths must follow
    # the stable name, not the folder it points at today.
    base_dir = Path(document.file).absolute().parent if document.file else Path.cwd()
    data = check.mapping(
        document.data, "", keys=_TOP_KEYS, required=("policy", "registry", "catalog")
    )
    if data is None:
        return None, check
    policy = _read_policy(check, data.get("policy"), base_dir)
    mode_text = check.string(
        data.get("mode", Mode.ENFORCE.value), "mode", choices=[m.value for m in Mode]
    )
    registry = read_registry(check, data.get("registry"), base_dir)
    catalog = check.string(data.get("catalog"), "catalog")
    sections: dict[str, Mapping[str, Any]] = {}
    for name in SECTIONS:
        if data.get(name) is not None:
            section = check.mapping(data[name], name)
            if section is not None:
                sections[name] = section
    # The telemetry section is checked here, with the rest, so ``validate`` reports what ``serve``
    # would refuse (a lazy import: the telemetry package imports this module).
    from aidr_gate.telemetry.settings import read_telemetry

    read_telemetry(check, sections.get("telemetry"), base_dir)
    if policy is None or mode_text is None or registry is None or catalog is None:
        return None, check
    config = GateConfig(
        file=document.file,
        base_dir=base_dir,
        policy=policy,
        mode=Mode(mode_text),
        registry=registry.file,
        catalog=_resolve(base_dir, catalog),
        sections=sections,
        document=document,
        registry_settings=registry,
    )
    return config, check


def _resolve(base_dir: Path, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _pack_ref(base_dir: Path, ref: str) -> str:
    # A reference that looks like a path is relative to the config file; a bare id is looked up.
    if ref.endswith((".yaml", ".yml", ".json")) or "/" in ref:
        return str(_resolve(base_dir, ref))
    return ref


def _read_policy(check: Checker, raw: Any, base_dir: Path) -> PolicyConfig | None:
    if isinstance(raw, str):
        raw = {"pack": raw}
    data = check.mapping(raw, "policy", keys=("pack", "shadow", "search"), required=("pack",))
    if data is None:
        return None
    pack = check.string(data.get("pack"), "policy.pack")
    shadow = None
    if data.get("shadow") is not None:
        shadow = check.string(data["shadow"], "policy.shadow")
    search: list[Path] = []
    for index, item in enumerate(check.sequence(data.get("search", []), "policy.search") or []):
        text = check.string(item, join("policy.search", index))
        if text is not None:
            search.append(_resolve(base_dir, text))
    if pack is None:
        return None
    return PolicyConfig(
        pack=_pack_ref(base_dir, pack),
        shadow=_pack_ref(base_dir, shadow) if shadow else None,
        search=tuple(search),
    )


def load_config(path: str | Path | None = None) -> GateConfig:
    """Load and validate the configuration file; raise :class:`ConfigError` listing every problem."""
    document = load_document(find_config_path(path))
    config, check = config_from_document(document)
    check.raise_if_errors()
    if config is None:  # pragma: no cover - raise_if_errors covers every path that returns None
        raise ConfigError.single(document.file, "", "configuration could not be read")
    return config


def config_from_text(text: str, file: str) -> GateConfig:
    """Parse configuration text (tests, ``check`` flags); paths resolve against *file*'s directory."""
    document = parse_document(text, file)
    config, check = config_from_document(document)
    check.raise_if_errors()
    if config is None:  # pragma: no cover
        raise ConfigError.single(file, "", "configuration could not be read")
    return config
