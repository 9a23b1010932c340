"""Every section of the configuration file, registered in one place, in the order they are read.

A new section is one import and one line here (see :mod:`aidr_gate.settings` for the three parts
a section has: its frozen settings, its reader, its :class:`~aidr_gate.settings.schema.Section`).
"""

from __future__ import annotations

from typing import Any

from aidr_gate.limits import LIMITS
from aidr_gate.patterns.settings import PATTERNS
from aidr_gate.settings.audit import AUDIT
from aidr_gate.settings.identity import IDENTITY
from aidr_gate.settings.middleware import MIDDLEWARE
from aidr_gate.settings.origin import GEOIP, NETWORK
from aidr_gate.settings.proxy import PROXY
from aidr_gate.settings.schema import Section
from aidr_gate.settings.screening import SCREENING
from aidr_gate.stores.settings import REGISTRY
from aidr_gate.telemetry.settings import TELEMETRY

SECTIONS: tuple[Section[Any], ...] = (
    REGISTRY,
    IDENTITY,
    NETWORK,
    GEOIP,
    MIDDLEWARE,
    AUDIT,
    PROXY,
    TELEMETRY,
    SCREENING,
    LIMITS,
    PATTERNS,
)
