"""A whole gate on disk for end-to-end tests: keys, GeoIP databases and a configuration file.

Keys are generated at test time, the .mmdb files are written at test time with known networks, and
the registry and catalogue are the bundled examples, so tests read like the README's examples.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidr_gate.audit.reader import RecordReader
from support.environment import EXAMPLES
from support.jwks_server import AUDIENCE, ISSUER, SigningKey, claims, jwks_of, rsa_key
from support.mmdb_files import write_anonymous_db, write_country_db

# One address per country in the test GeoIP database (public ranges, so never "special").
IP = {
    "US": "8.8.8.8",
    "JP": "1.0.16.5",
    "SG": "13.228.1.1",
    "SE": "89.160.20.10",
    "BR": "177.0.1.1",
    "CN": "175.16.199.5",
    "HK": "1.36.0.5",
    "IN": "14.139.0.5",
    "MY": "175.136.0.5",
    "IR": "2.176.0.5",
    "DE": "5.1.0.5",
}
VPN_IP = "8.8.8.200"  # US, flagged as a VPN in the Anonymous IP database
TOR_IP = "89.160.20.200"  # SE, a Tor exit node
PRIVATE_IP = "10.1.2.3"  # private: country unknown

_NETWORKS = {
    "8.8.8.0/24": "US",
    "1.0.16.0/24": "JP",
    "13.228.0.0/16": "SG",
    "89.160.20.0/24": "SE",
    "177.0.0.0/16": "BR",
    "175.16.199.0/24": "CN",
    "1.36.0.0/16": "HK",
    "14.139.0.0/16": "IN",
    "175.136.0.0/16": "MY",
    "2.176.0.0/16": "IR",
    "5.1.0.0/16": "DE",
}
_ANONYMOUS = {
    "8.8.8.128/25": ("is_anonymous_vpn",),
    "89.160.20.128/25": ("is_tor_exit_node",),
}


@dataclass
class GateEnv:
    """Paths and keys of one gate set up under a temporary directory."""

    root: Path
    config: Path
    key: SigningKey
    audit_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def token(self, entity: str, **overrides: Any) -> str:
        """A valid token naming *entity* (claims can be overridden; None deletes one)."""
        return self.key.sign(claims(sub=entity, **overrides))

    def audit_records(self) -> list[dict[str, Any]]:
        """Every audit record written so far, in order, parsed; ``aidr`` holds the whole
        evidence tree as the record reader gives it back (compact records name shared facts)."""
        records = []
        reader = RecordReader()
        for path in sorted(self.audit_dir.glob("*.jsonl*")):
            for line in path.read_bytes().splitlines():
                if line.strip():
                    record = json.loads(line)
                    record["aidr"] = reader.tree(line)
                    records.append(record)
        return records


def make_gate_env(
    root: Path,
    *,
    pack: str = "aidr-2025-01",
    mode: str = "enforce",
    shadow: str | None = None,
    middleware: str = "",
    audit: str | None = None,
    registry: Path | None = None,
) -> GateEnv:
    """Write keys, GeoIP databases and a configuration under *root*."""
    key = rsa_key("gate-test")
    (root / "jwks.json").write_text(json.dumps(jwks_of(key)))
    write_country_db(root / "country.mmdb", _NETWORKS)
    write_anonymous_db(root / "anonymous.mmdb", _ANONYMOUS)
    audit_dir = root / "audit"
    audit_dir.mkdir(exist_ok=True)
    policy = f"{{pack: {pack}" + (f", shadow: {shadow}" if shadow else "") + "}"
    audit_section = (
        audit
        if audit is not None
        else textwrap.dedent(
            f"""\
        audit:
          directory: {audit_dir}
          sinks:
            - {{type: file, path: {audit_dir / "audit.jsonl"}, fsync: always}}
        """
        )
    )
    text = textwrap.dedent(
        f"""\
        policy: {policy}
        mode: {mode}
        registry: {registry or EXAMPLES / "entities.yaml"}
        catalog: {EXAMPLES / "models.yaml"}
        identity:
          issuer: {ISSUER}
          audience: {AUDIENCE}
          algorithms: [RS256]
          key_file: jwks.json
        network:
          trusted_proxies: [127.0.0.0/8, "::1/128"]
        geoip:
          country_database: country.mmdb
          anonymous_ip_database: anonymous.mmdb
        """
    )
    text += textwrap.dedent(middleware) + audit_section
    config = root / "config.yaml"
    config.write_text(text)
    return GateEnv(root=root, config=config, key=key, audit_dir=audit_dir)
