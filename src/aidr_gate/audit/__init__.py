"""The audit trail: one tamper-evident record per decision, delivered to the SIEM, never lost.

Start with :class:`AuditTrail` (built from :func:`audit_config`), submit an :class:`AuditEvent` per
request, and check files with :func:`verify_files` or ``aidr-gate audit verify``.
"""

from __future__ import annotations

from aidr_gate.audit.chain import GENESIS, Chain, Signer, parse_link
from aidr_gate.audit.delivery import SinkStats
from aidr_gate.audit.ecs import EcsRenderer
from aidr_gate.audit.ocsf import OcsfRenderer
from aidr_gate.audit.record import (
    AuditEvent,
    Ending,
    Redactor,
    Renderer,
    RequestContext,
)
from aidr_gate.audit.trail import AuditTrail, TrailStats
from aidr_gate.audit.verify import Finding, VerifyResult, verify_files
from aidr_gate.settings.audit import (
    AuditConfig,
    DeliveryConfig,
    FailurePolicy,
    FileSinkConfig,
    FsyncPolicy,
    HttpSinkConfig,
    RecordFormat,
    SigningConfig,
    StdoutSinkConfig,
    SyslogSinkConfig,
    audit_config,
    read_audit,
)

__all__ = [
    "GENESIS",
    "AuditConfig",
    "AuditEvent",
    "AuditTrail",
    "Chain",
    "DeliveryConfig",
    "EcsRenderer",
    "Ending",
    "FailurePolicy",
    "FileSinkConfig",
    "Finding",
    "FsyncPolicy",
    "HttpSinkConfig",
    "OcsfRenderer",
    "RecordFormat",
    "Redactor",
    "Renderer",
    "RequestContext",
    "Signer",
    "SigningConfig",
    "SinkStats",
    "StdoutSinkConfig",
    "SyslogSinkConfig",
    "TrailStats",
    "VerifyResult",
    "audit_config",
    "parse_link",
    "read_audit",
    "verify_files",
]
