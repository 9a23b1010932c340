"""What requests are decided with: the gate state and the stages that serve it, as one value.

A :class:`~aidr_gate.runtime.Runtime` holds one :class:`Serving` and replaces it whole on a reload
(one assignment), so a request that reads it once decides with the old one or the new one, never a
mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aidr_gate.gate import GateState
from aidr_gate.limits import Limits
from aidr_gate.request.headers import HeaderPlan
from aidr_gate.request.identity import Authenticator
from aidr_gate.request.origin import OriginResolver
from aidr_gate.settings.loader import GateConfig
from aidr_gate.settings.middleware import MiddlewareSettings


@dataclass(frozen=True, slots=True)
class Serving:
    """What requests are decided with, built together and replaced together (one assignment)."""

    state: GateState
    identity: Authenticator
    origin: OriginResolver
    settings: MiddlewareSettings
    config: GateConfig | None = None
    limits: Limits = field(default_factory=Limits)
    # The headers a request's one pass collects for these stages (the token, the model header,
    # the content type, the trusted forwarding headers): derived, built with the rest.
    headers: HeaderPlan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plan = HeaderPlan(self.settings.models.header, self.origin.forwarding_headers)
        object.__setattr__(self, "headers", plan)
