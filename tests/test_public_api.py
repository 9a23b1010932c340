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
