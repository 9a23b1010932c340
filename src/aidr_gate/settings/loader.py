"""The one loader: a configuration file, every section, and every file a section names.

``load_config`` reads the document, the top-level keys (the pack, the registry, the catalogue, the
mode) and every registered section through its reader, and raises one :class:`ConfigError`
listing every problem as ``file:line: key.path: message``. Paths are relative to the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from aidr_gate.decision import Mode
from aidr_gate.document import (
    Checker,
    Document,
    did_you_mean,
    join,
    load_document,
    parse_document,
)
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.policy.pack import bundled_pack_dir, find_pack_file
from aidr_gate.settings.across import check_across
from aidr_gate.settings.identity import IDENTITY, IdentityConfig
from aidr_gate.settings.schema import KeyDoc, Section, subkeys
from aidr_gate.settings.sections import SECTIONS
from aidr_gate.stores.settings import REGISTRY, RegistrySettings

T = TypeVar("T")

CONFIG_ENV = "AIDR_GATE_CONFIG"
DEFAULT_CONFIG_PATHS = (Path("/etc/aidr-gate/config.yaml"),)

TOP = (
    KeyDoc(
        "policy",
        "the enforced pack: an id or a file, or a mapping",
        (
            KeyDoc("pack", "a bundled pack id, an id in search, or a path to a pack file"),
            KeyDoc("shadow", "a pack decided beside the enforced one, never enforced"),
            KeyDoc("search", "folders where pack ids are looked up first"),
        ),
    ),
    KeyDoc("mode", "enforce, or dry-run (decide and record, never block)"),
    KeyDoc("catalog", "the model catalogue file"),
)
TOP_KEYS = tuple(k.name for k in TOP)
POLICY_KEYS = subkeys(TOP, "policy")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Which pack is enforced, which one runs in shadow, and where pack ids are looked up."""

    pack: str
    shadow: str | None = None
    search: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class GateConfig:
    """The whole configuration: the top-level keys and every section, each a frozen settings value.

    ``get(IDENTITY)`` is the ``identity:`` section's settings (its defaults when the file has
    none); ``sections`` keeps the raw mappings as written, for messages and diffs.
    """

    file: str
    base_dir: Path
    policy: PolicyConfig
    mode: Mode
    catalog: Path
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    document: Document | None = None
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def registry_settings(self) -> RegistrySettings | None:
        """The ``registry:`` settings (the store, the cache's bounds); what open_registry reads."""
        return self.get(REGISTRY)

    @property
    def registry(self) -> Path | None:
        """The registry file, loaded whole with the policy; ``None`` for a database store."""
        settings = self.registry_settings
        return settings.file if settings is not None else None

    def section(self, name: str) -> Mapping[str, Any]:
        """A section's raw mapping (empty when absent)."""
        return self.sections.get(name, {})

    def get(self, section: Section[T]) -> T:
        """A section's settings; a configuration built by hand reads its defaults."""
        if section.name in self.values:
            return self.values[section.name]  # type: ignore[no-any-return]
        return _defaults(section, self.base_dir)

    def given(self, section: Section[Any]) -> bool:
        """True when the file has the section."""
        return section.name in self.sections

    def resolve(self, value: str | Path) -> Path:
        """A path from the configuration, made absolute against the file's directory."""
        return _resolve(self.base_dir, value)

    def with_values(self, values: Mapping[str, Any]) -> GateConfig:
        """The same configuration with some sections' settings replaced (restart-only ones)."""
        return replace(self, values={**self.values, **values})


def _defaults(section: Section[T], base_dir: Path) -> T:
    check = Checker(Document("<defaults>", None, {}))
    value = section.read(check, None, base_dir)
    check.raise_if_errors()  # an absent section reads as its defaults, without a problem
    return value  # type: ignore[return-value]


def parse_identity_config(config: GateConfig) -> IdentityConfig:
    """The ``identity:`` settings of a loaded configuration: serving needs them (``check``, with
    facts given by hand, does not)."""
    identity = config.get(IDENTITY)
    if identity is None:
        line = config.document.lines.get("") if config.document is not None else None
        raise ConfigError(
            Problem(
                config.file,
                IDENTITY.name,
                "is required to verify tokens (issuer, audience, algorithms, jwks_url or key_file)",
                line,
            )
        )
    return identity


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
    """Read a configuration document and every section; problems are on the returned checker."""
    check = Checker(document)
    # absolute(), not resolve(): a Kubernetes ConfigMap mounts the file through a symlink into a
    # timestamped folder that the kubelet deletes on the next update; relative paths must follow
    # the stable name, not the folder it points at today.
    base_dir = Path(document.file).absolute().parent if document.file else Path.cwd()
    names = {s.name: s for s in SECTIONS}
    data = check.mapping(
        document.data, "", keys=(*TOP_KEYS, *names), required=("policy", "registry", "catalog")
    )
    if data is None:
        return None, check
    policy = _read_policy(check, data.get("policy"), base_dir)
    mode_text = check.string(
        data.get("mode", Mode.ENFORCE.value), "mode", choices=[m.value for m in Mode]
    )
    catalog = _named_file(check, data.get("catalog"), "catalog", base_dir)
    raw_sections: dict[str, Mapping[str, Any]] = {}
    values: dict[str, Any] = {}
    for name, section in names.items():
        raw = data.get(name)
        if isinstance(raw, dict):
            raw_sections[name] = raw
        values[name] = section.read(check, raw, base_dir)
    check_across(check, values)
    if policy is None or mode_text is None or values[REGISTRY.name] is None or catalog is None:
        return None, check
    config = GateConfig(
        file=document.file,
        base_dir=base_dir,
        policy=policy,
        mode=Mode(mode_text),
        catalog=catalog,
        sections=raw_sections,
        document=document,
        values=values,
    )
    return config, check


def _resolve(base_dir: Path, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _named_file(check: Checker, raw: Any, key: str, base_dir: Path) -> Path | None:
    """A data file the configuration names: reported at the key that names it when missing."""
    text = check.string(raw, key) if raw is not None else None
    if text is None:
        return None
    path = _resolve(base_dir, text)
    if not path.is_file():
        check.error(key, f"no such file: {path}")
    return path


def _pack_ref(base_dir: Path, ref: str) -> str:
    # A reference that looks like a path is relative to the config file; a bare id is looked up.
    if ref.endswith((".yaml", ".yml", ".json")) or "/" in ref:
        return str(_resolve(base_dir, ref))
    return ref


def pack_ids(search: Iterable[Path]) -> list[str]:
    """Pack ids a bare reference can name: files in the search folders and the bundled packs."""
    ids: list[str] = []
    for folder in (*search, bundled_pack_dir()):
        for suffix in ("*.yaml", "*.yml", "*.json"):
            ids += [p.stem for p in sorted(folder.glob(suffix))] if folder.is_dir() else []
    return ids


def _pack(check: Checker, raw: Any, path: str, base_dir: Path, search: list[Path]) -> str | None:
    text = check.string(raw, path)
    if text is None:
        return None
    ref = _pack_ref(base_dir, text)
    if find_pack_file(ref, search) is None:
        if ref != text or "/" in text:
            check.error(path, f"no such pack file: {ref}")
        else:
            hint = did_you_mean(text, pack_ids(search))
            check.error(path, f"unknown pack id {text!r}{hint} (`aidr-gate packs` lists them)")
        return None
    return ref


def _read_policy(check: Checker, raw: Any, base_dir: Path) -> PolicyConfig | None:
    if isinstance(raw, str):
        raw = {"pack": raw}
    data = check.mapping(raw, "policy", keys=POLICY_KEYS, required=("pack",))
    if data is None:
        return None
    search: list[Path] = []
    for index, item in enumerate(check.sequence(data.get("search", []), "policy.search") or []):
        text = check.string(item, join("policy.search", index))
        if text is not None:
            search.append(_resolve(base_dir, text))
    pack = _pack(check, data.get("pack"), "policy.pack", base_dir, search)
    shadow = None
    if data.get("shadow") is not None:
        shadow = _pack(check, data["shadow"], "policy.shadow", base_dir, search)
    if pack is None:
        return None
    return PolicyConfig(pack=pack, shadow=shadow, search=tuple(search))


def read_config(path: str | Path | None = None) -> tuple[GateConfig | None, Checker]:
    """Read the configuration file (or the default one); problems, warnings too, on the checker."""
    document = load_document(find_config_path(path))
    return config_from_document(document)


def load_config(
    path: str | Path | None = None, *, warnings: list[Problem] | None = None
) -> GateConfig:
    """Load and validate the configuration file; raise :class:`ConfigError` listing every problem."""
    config, check = read_config(path)
    return _checked(config, check, warnings)


def config_from_text(text: str, file: str, *, warnings: list[Problem] | None = None) -> GateConfig:
    """Parse configuration text (tests, ``check`` flags); paths resolve against *file*'s directory."""
    config, check = config_from_document(parse_document(text, file))
    return _checked(config, check, warnings)


def _checked(
    config: GateConfig | None, check: Checker, warnings: list[Problem] | None
) -> GateConfig:
    if warnings is not None:
        warnings.extend(check.warnings)
    check.raise_if_errors()
    if config is None:  # pragma: no cover - raise_if_errors covers every path that returns None
        raise ConfigError.single(check.document.file, "", "configuration could not be read")
    return config
