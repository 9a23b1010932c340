"""The public API: ``aidr_gate.__all__`` is complete and every name in it exists."""

from __future__ import annotations

import inspect

import aidr_gate
from aidr_gate import errors


def test_all_names_exist() -> None:
    for name in aidr_gate.__all__:
        assert hasattr(aidr_gate, name), name


def test_all_is_unique() -> None:
    assert len(set(aidr_gate.__all__)) == len(aidr_gate.__all__)


def test_every_error_class_is_exported() -> None:
    classes = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, errors.AidrGateError)
    }
    assert classes <= set(aidr_gate.__all__), classes - set(aidr_gate.__all__)


def test_reason_codes_are_unique_and_stable() -> None:
    seen: dict[str, str] = {}
    for name, obj in vars(errors).items():
        if inspect.isclass(obj) and issubclass(obj, errors.AidrGateError):
            assert obj.reason.isupper(), name
            assert obj.reason not in seen, (name, seen.get(obj.reason))
            seen[obj.reason] = name
            assert obj.status in (400, 401, 403, 408, 413, 431, 451, 503), name
            assert obj.__doc__, f"{name} must say when it is raised"


def test_public_names_have_docstrings() -> None:
    for name in aidr_gate.__all__:
        obj = getattr(aidr_gate, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name


def test_the_facade_exports_exactly_what_it_imports() -> None:
    # Submodules become attributes of the package as they are imported: they are not API names;
    # nor is ``annotations``, the __future__ feature.
    imported = {
        name
        for name, obj in vars(aidr_gate).items()
        if not name.startswith("_") and not inspect.ismodule(obj) and name != "annotations"
    }
    assert imported == set(aidr_gate.__all__) - {"__version__"}


def test_internals_are_not_exported() -> None:
    # The engine and what it works with are reached through Gate; section parsers through
    # load_config. They stay importable from their modules.
    for name in ("PolicyEngine", "PolicyFacts", "Verdict", "state_for", "parse_identity_config"):
        assert name not in aidr_gate.__all__, name


def test_the_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    assert aidr_gate.__version__ == version("aidr-gate")
