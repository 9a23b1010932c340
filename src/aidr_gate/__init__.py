"""aidr_gate: the access-policy gate for AI model serving.

Who is calling, from where, under which agreement, for which model tier: decided from a versioned
policy pack, enforced, and audited.
"""

from __future__ import annotations

# Before the imports: submodules read it while this package is still initialising.
__version__ = "0.1.0"

from aidr_gate.catalog import InMemoryCatalog, Model, ModelCatalog, Weights, load_catalog
from aidr_gate.config import GateConfig, PolicyConfig, load_config
from aidr_gate.decision import Decision, Effect, Evidence, Mode, Outcome, PolicyRef, ShadowResult
from aidr_gate.errors import (
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
from aidr_gate.gate import Gate, GateState, load_state, state_for
from aidr_gate.identity import Authenticator, IdentityConfig, parse_identity_config
from aidr_gate.middleware import AIDRGateMiddleware
from aidr_gate.origin import OriginResolver, origin_resolver_for
from aidr_gate.policy.engine import PolicyEngine, PolicyFacts, Verdict
from aidr_gate.policy.pack import Pack, load_pack
from aidr_gate.registry import (
    Agreement,
    AgreementState,
    AgreementStatus,
    Entity,
    EntityRegistry,
    InMemoryRegistry,
    load_registry,
)
from aidr_gate.runtime import Runtime

__all__ = [
    "AIDRGateMiddleware",
    "Agreement",
    "AgreementState",
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
    "IdentityConfig",
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
    "Outcome",
    "Pack",
    "PolicyConfig",
    "PolicyEngine",
    "PolicyEvaluationError",
    "PolicyFacts",
    "PolicyRef",
    "Problem",
    "RegistryUnavailable",
    "RequestError",
    "Runtime",
    "ShadowResult",
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
    "Verdict",
    "Weights",
    "__version__",
    "declared_origin",
    "load_catalog",
    "load_config",
    "load_pack",
    "load_registry",
    "load_state",
    "origin_resolver_for",
    "parse_identity_config",
    "state_for",
]
