"""The installed distribution's version, read once from its metadata (``pyproject.toml`` sets it).

Its own module so the audit renderers and the telemetry can name the version without importing
the package's facade, which imports nearly everything (a cycle through ``aidr_gate/__init__``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aidr-gate")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
