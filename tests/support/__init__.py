"""Helpers the tests share: import them as ``from support.name import ...`` (tests/ is on the path)."""
