"""aidr_gate: the access-policy gate for AI model serving.

Who is calling, from where, under which agreement, for which model tier: decided from a versioned
policy pack, enforced, and audited.

The public API is ``__all__``: the middleware and its runtime, the gate and its state, decisions
and the facts they rest on, packs, the registry and catalogue, the identity and origin stages, the
configuration loader, and every error class. The engine, its facts and verdicts, section parsers
and the like are importable from their modules, as internals that may change.
"""

from __future__ import annotations

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.catalog import InMemoryCatalog, Model, ModelCatalog, Weights, load_catalog
from aidr_gate.decision import Decision, Effect, Evidence, Mode
from aidr_gate.errors import (
    AccessRevoked,
    AidrGateError,
    AuditUnavailable,
    BodyIncomplete,
    BodyNotForm,
    BodyNotJSON,
    BodyTimeout,
    BodyTooComplex,
    BodyTooLarge,
    BufferBudgetExhausted,
    ConfigError,
    FormAmbiguous,
    GateNotReady,
    HeaderRepeated,
    HeadersTooLarge,
    IdentityError,
    ModelConflict,
    ModelMissing,
    OriginError,
    PolicyEvaluationError,
    Problem,
    RegistryUnavailable,
    RequestError,
    ScreeningUnavailable,
    TokenAlgorithmNotAllowed,
    TokenAudienceInvalid,
    TokenClaimInvalid,
    TokenClaimMissing,
    TokenExpired,
    TokenIssuerInvalid,
    TokenKeysUnavailable,
    TokenKeyUnknown,
    TokenMalformed,
    TokenMissing,
    TokenNotYetValid,
    TokenSignatureInvalid,
)
from aidr_gate.facts import AnonymizerFlag, CountrySource, Identity, Origin, declared_origin
from aidr_gate.gate import Gate, GateState, load_state
from aidr_gate.policy.pack import Pack, load_pack
from aidr_gate.registry import (
    Agreement,
    AgreementStatus,
    Entity,
    EntityRegistry,
    InMemoryRegistry,
    load_registry,
)
from aidr_gate.request.identity import Authenticator
from aidr_gate.request.origin import OriginResolver, origin_resolver_for
from aidr_gate.runtime import Runtime
from aidr_gate.settings.loader import GateConfig, PolicyConfig, load_config
from aidr_gate.version import __version__

__all__ = [
    "AIDRGateMiddleware",
    "AccessRevoked",
    "Agreement",
    "AgreementStatus",
    "AidrGateError",
    "AnonymizerFlag",
    "AuditUnavailable",
    "Authenticator",
    "BodyIncomplete",
    "BodyNotForm",
    "BodyNotJSON",
    "BodyTimeout",
    "BodyTooComplex",
    "BodyTooLarge",
    "BufferBudgetExhausted",
    "ConfigError",
    "CountrySource",
    "Decision",
    "Effect",
    "Entity",
    "EntityRegistry",
    "Evidence",
    "FormAmbiguous",
    "Gate",
    "GateConfig",
    "GateNotReady",
    "GateState",
    "HeaderRepeated",
    "HeadersTooLarge",
    "Identity",
    "IdentityError",
    "InMemoryCatalog",
    "InMemoryRegistry",
    "Mode",
    "Model",
    "ModelCatalog",
    "ModelConflict",
    "ModelMissing",
    "Origin",
    "OriginError",
    "OriginResolver",
    "Pack",
    "PolicyConfig",
    "PolicyEvaluationError",
    "Problem",
    "RegistryUnavailable",
    "RequestError",
    "Runtime",
    "ScreeningUnavailable",
    "TokenAlgorithmNotAllowed",
    "TokenAudienceInvalid",
    "TokenClaimInvalid",
    "TokenClaimMissing",
    "TokenExpired",
    "TokenIssuerInvalid",
    "TokenKeyUnknown",
    "TokenKeysUnavailable",
    "TokenMalformed",
    "TokenMissing",
    "TokenNotYetValid",
    "TokenSignatureInvalid",
    "Weights",
    "__version__",
    "declared_origin",
    "load_catalog",
    "load_config",
    "load_pack",
    "load_registry",
    "load_state",
    "origin_resolver_for",
]
